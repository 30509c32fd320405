//! The panic boundary, the one argument-checking helper, and the thread's
//! last error.
//!
//! Every exported function's body is `ffi_boundary!("its_name", { … })`. The
//! body runs under `catch_unwind`, so a panic never unwinds into C: it turns
//! into the return type's [`Fallback`] (`REGENT_INTERNAL`, NULL, 0, …).
//! A body of type `Result<(), Error>` becomes a `regent_result` and records
//! the thread's last error (cleared on success).

use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr::NonNull;

use ::regent_client::{Error, ErrorCode};

use crate::result::{c_string, regent_result};

/// Runs an exported function's body behind the panic boundary; see the
/// module docs. The name is the exported function's, for the last error.
macro_rules! ffi_boundary {
    ($name:literal, $body:block) => {
        $crate::boundary::run($name, || $body)
    };
}

/// The body of [`ffi_boundary!`]: call it through the macro only.
pub(crate) fn run<B: IntoFfi>(function: &'static str, body: impl FnOnce() -> B) -> B::Ffi {
    // AssertUnwindSafe: after a panic the handles stay usable; the blocking
    // client drops a connection whose lock was poisoned, and nothing else
    // holds state across a call.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        inject::check(function);
        body().into_ffi()
    }));
    match outcome {
        Ok(value) => value,
        Err(_) => B::Ffi::on_panic(function),
    }
}

/// What a function body returns, converted to what C receives.
pub(crate) trait IntoFfi {
    /// The C return type.
    type Ffi: Fallback;
    /// Converts, recording the last error when there is one.
    fn into_ffi(self) -> Self::Ffi;
}

impl IntoFfi for Result<(), Error> {
    type Ffi = regent_result;
    fn into_ffi(self) -> regent_result {
        match self {
            Ok(()) => {
                set_last_error(None);
                regent_result::REGENT_OK
            }
            Err(e) => {
                set_last_error(Some(&e));
                regent_result::from(e.code)
            }
        }
    }
}

/// The value C receives when the body panicked.
pub(crate) trait Fallback {
    /// The fallback for a panic in `function`.
    fn on_panic(function: &'static str) -> Self;
}

impl Fallback for regent_result {
    fn on_panic(function: &'static str) -> Self {
        let e = Error::new(
            ErrorCode::Internal,
            format!(
                "internal error in {function}: libregent hit a bug (a panic, stopped at the \
                 library boundary); the call had no effect — please report it"
            ),
        );
        // A panic while the thread is being torn down must not panic again.
        let _ = catch_unwind(|| set_last_error(Some(&e)));
        regent_result::REGENT_INTERNAL
    }
}

/// Values passed through unchanged; a panic gives the type's "nothing".
macro_rules! plain_ffi {
    ($($t:ty => $fallback:expr),* $(,)?) => {$(
        impl IntoFfi for $t {
            type Ffi = $t;
            fn into_ffi(self) -> $t { self }
        }
        impl Fallback for $t {
            fn on_panic(_: &'static str) -> $t { $fallback }
        }
    )*};
}

plain_ffi! {
    () => (),
    bool => false,
    u32 => 0,
    u64 => 0,
    *const c_char => std::ptr::null(),
}

// ---------------------------------------------------------------------------
// Arguments: the one NULL check, and conversions built on it.

/// The one NULL check every pointer argument goes through.
pub(crate) fn non_null<T>(ptr: *const T, name: &'static str) -> Result<NonNull<T>, Error> {
    NonNull::new(ptr.cast_mut()).ok_or_else(|| {
        Error::new(
            ErrorCode::BadRequest,
            format!("the argument `{name}` is NULL; it must point to a valid object"),
        )
    })
}

/// A handle argument, borrowed for the call.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` (a handle this library returned and
/// that was not freed).
pub(crate) unsafe fn arg_ref<'a, T>(ptr: *const T, name: &'static str) -> Result<&'a T, Error> {
    // SAFETY: non-NULL here; validity is the caller's contract.
    Ok(unsafe { non_null(ptr, name)?.as_ref() })
}

/// A handle argument, borrowed mutably for the call.
///
/// # Safety
/// As for [`arg_ref`], and no other reference to it is live during the call.
pub(crate) unsafe fn arg_mut<'a, T>(ptr: *mut T, name: &'static str) -> Result<&'a mut T, Error> {
    // SAFETY: non-NULL here; validity and exclusivity are the caller's contract.
    Ok(unsafe { non_null(ptr, name)?.as_mut() })
}

/// A NUL-terminated UTF-8 string argument.
///
/// # Safety
/// `ptr` is NULL or points to a NUL-terminated string that stays valid for the call.
pub(crate) unsafe fn arg_str<'a>(ptr: *const c_char, name: &'static str) -> Result<&'a str, Error> {
    let ptr = non_null(ptr, name)?;
    // SAFETY: non-NULL and NUL-terminated by the caller's contract.
    let text = unsafe { CStr::from_ptr(ptr.as_ptr()) };
    text.to_str().map_err(|_| {
        Error::new(
            ErrorCode::BadRequest,
            format!("the argument `{name}` is not valid UTF-8"),
        )
    })
}

/// A string argument for which NULL means "none" (or "the default").
///
/// # Safety
/// As for [`arg_str`].
pub(crate) unsafe fn arg_opt_str<'a>(
    ptr: *const c_char,
    name: &'static str,
) -> Result<Option<&'a str>, Error> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: forwarded contract.
    unsafe { arg_str(ptr, name) }.map(Some)
}

/// An out-parameter: checked at the start of the call, written at the end,
/// only on success.
pub(crate) struct Out<T>(NonNull<T>);

/// Checks an out-parameter.
///
/// # Safety
/// `ptr` is NULL or valid for writing a `T` for the duration of the call.
pub(crate) unsafe fn arg_out<T>(ptr: *mut T, name: &'static str) -> Result<Out<T>, Error> {
    non_null(ptr, name).map(Out)
}

impl<T> Out<T> {
    /// Writes the result (the call succeeded).
    pub(crate) fn write(self, value: T) {
        // SAFETY: `arg_out`'s contract: valid for writes. `T` here is a
        // pointer type, so nothing is dropped in the caller's memory.
        unsafe { self.0.as_ptr().write(value) }
    }
}

/// Moves a value to the heap and hands C the pointer (an opaque handle).
pub(crate) fn into_handle<T>(value: T) -> *mut T {
    Box::into_raw(Box::new(value))
}

/// Frees a handle made by [`into_handle`]; NULL does nothing.
///
/// # Safety
/// `ptr` is NULL or came from `into_handle::<T>` and was not freed yet.
pub(crate) unsafe fn free_handle<T>(ptr: *mut T) {
    if !ptr.is_null() {
        // SAFETY: the caller's contract: ours, live, freed once.
        drop(unsafe { Box::from_raw(ptr) });
    }
}

// ---------------------------------------------------------------------------
// The thread's last error.

struct LastError {
    message: CString,
    retry_after_ms: u64,
}

thread_local! {
    static LAST_ERROR: RefCell<LastError> = RefCell::new(LastError {
        message: CString::default(),
        retry_after_ms: 0,
    });
}

fn set_last_error(error: Option<&Error>) {
    let (message, retry_after_ms) = match error {
        Some(e) => (
            c_string(&e.message),
            e.retry_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        ),
        None => (CString::default(), 0),
    };
    // Fails only while the thread is exiting: there is no one left to read it.
    let _ = LAST_ERROR.try_with(|last| {
        *last.borrow_mut() = LastError {
            message,
            retry_after_ms,
        };
    });
}

/// What went wrong in the last failed call on the calling thread, for
/// people: what happened, to what, and what to do (e.g. "cannot reach the
/// regent agent at /run/regent/agent.sock (…); start the agent …"). `""`
/// after a call that succeeded. The code itself is the call's return value
/// (`regent_result_name` names it).
///
/// Every function returning `regent_result` sets it (and clears it on
/// `REGENT_OK`); other functions leave it alone. Each thread has its own, so
/// concurrent calls do not mix messages. The returned string belongs to the
/// library and stays valid until the next `regent_result` call on the same
/// thread; copy it to keep it. Messages never contain a token or secret.
#[unsafe(no_mangle)]
pub extern "C" fn regent_last_error_message() -> *const c_char {
    ffi_boundary!("regent_last_error_message", {
        LAST_ERROR
            .try_with(|last| last.borrow().message.as_ptr())
            .unwrap_or(c"".as_ptr())
    })
}

/// How long the agent asked to wait before retrying the last failed call on
/// the calling thread, in milliseconds; 0 when it gave no hint (or the last
/// call succeeded). Typical with `REGENT_UNAVAILABLE` and `REGENT_RATE_LIMITED`.
#[unsafe(no_mangle)]
pub extern "C" fn regent_last_error_retry_after_ms() -> u64 {
    ffi_boundary!("regent_last_error_retry_after_ms", {
        LAST_ERROR
            .try_with(|last| last.borrow().retry_after_ms)
            .unwrap_or(0)
    })
}

// ---------------------------------------------------------------------------
// Fault injection for the tests: a panic inside the boundary of one function.

#[cfg(test)]
pub(crate) mod inject {
    use std::cell::Cell;

    thread_local! {
        static PANIC_IN: Cell<Option<&'static str>> = const { Cell::new(None) };
    }

    /// Makes `function` panic inside its boundary on this thread until the
    /// guard drops.
    pub(crate) fn panic_in(function: &'static str) -> Armed {
        PANIC_IN.set(Some(function));
        Armed
    }

    /// What is armed on this thread (to hand to a thread it spawns).
    pub(crate) fn current() -> Option<&'static str> {
        PANIC_IN.get()
    }

    /// Arms `function` on this thread (a spawned thread inheriting its parent's).
    pub(crate) fn set(function: Option<&'static str>) {
        PANIC_IN.set(function);
    }

    pub(crate) fn check(function: &'static str) {
        if PANIC_IN.get() == Some(function) {
            std::panic::panic_any(format!("injected panic in {function}"));
        }
    }

    pub(crate) struct Armed;

    impl Drop for Armed {
        fn drop(&mut self) {
            PANIC_IN.set(None);
        }
    }

    thread_local! {
        static BEFORE_PUBLISH: std::cell::RefCell<Option<Box<dyn Fn()>>> =
            const { std::cell::RefCell::new(None) };
    }

    /// Runs `hold` on this thread in `regent_client_subscribe` after the
    /// subscription's thread started and before the handle is published,
    /// until the guard drops.
    pub(crate) fn hold_before_publish(hold: Box<dyn Fn()>) -> Held {
        BEFORE_PUBLISH.set(Some(hold));
        Held
    }

    pub(crate) fn before_publish() {
        BEFORE_PUBLISH.with_borrow(|hold| {
            if let Some(hold) = hold {
                hold();
            }
        });
    }

    pub(crate) struct Held;

    impl Drop for Held {
        fn drop(&mut self) {
            BEFORE_PUBLISH.set(None);
        }
    }
}
