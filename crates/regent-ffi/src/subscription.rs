//! `regent_subscription`: tokens and state changes pushed by the agent,
//! delivered to a C callback on a library thread.
//!
//! The stop rule: `regent_subscription_free` joins the thread, so no
//! callback runs after it returns. The thread waits for events in short
//! slices (`POLL`) and checks the stop flag between them.

use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use ::regent_client::{Error, ErrorCode, SubscriptionEvent, blocking};

use crate::boundary::{self, arg_out, arg_ref, into_handle};
use crate::client::regent_client;
use crate::result::c_string;
use crate::result::regent_result;
use crate::token::regent_token;

/// How often the thread looks at the stop flag while no event arrives: the
/// longest `regent_subscription_free` waits in the usual case.
const POLL: Duration = Duration::from_millis(100);
/// The first wait before resubscribing after a failure; it doubles up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What a subscription event reports.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum regent_event_kind {
    /// A token valid for at least the subscription's `min_valid_secs`: the
    /// first right after subscribing, then one each time the agent renews it.
    REGENT_EVENT_TOKEN = 1,
    /// The agent's state changed (`state`: "active", "degraded", "revoked",
    /// "unenrolled", …); `result` and `message` say why when it was a failure.
    REGENT_EVENT_STATE = 2,
    /// The subscription's connection failed (`result`, e.g.
    /// `REGENT_AGENT_UNREACHABLE`). The library keeps resubscribing on its
    /// own, with growing pauses (0.5 s up to 30 s); the same failure is
    /// reported once until an event arrives again.
    REGENT_EVENT_ERROR = 3,
}

/// One event, passed to the callback. Everything it points to belongs to the
/// library and is valid only during the callback: copy what you keep
/// (`regent_token_clone` for the token).
#[repr(C)]
#[derive(Debug)]
pub struct regent_event {
    /// What happened.
    pub kind: regent_event_kind,
    /// `REGENT_OK`, or the error (`REGENT_EVENT_ERROR`, or a state change
    /// caused by a failure, e.g. `REGENT_REVOKED`).
    pub result: regent_result,
    /// The new token (`REGENT_EVENT_TOKEN`); NULL otherwise. Borrowed.
    pub token: *const regent_token,
    /// The agent's new state (`REGENT_EVENT_STATE`); NULL otherwise.
    pub state: *const c_char,
    /// A message for people when `result` is an error; `""` otherwise. Never NULL.
    pub message: *const c_char,
    /// How long the agent asked to wait before the state may change back, in
    /// milliseconds; 0 when it gave no hint.
    pub retry_after_ms: u64,
}

/// Called by a subscription on the library's thread with each event and the
/// `userdata` given to `regent_client_subscribe`. It must return (not
/// `longjmp` or throw through the library) and should be quick: events wait
/// while it runs. It may call any regent function, including
/// `regent_subscription_free` on its own subscription (which then stops
/// after the callback returns).
pub type regent_subscription_callback =
    Option<unsafe extern "C" fn(userdata: *mut c_void, event: *const regent_event)>;

/// Tokens and state changes pushed by the agent to a callback (opaque), made
/// by `regent_client_subscribe`. Stop it with `regent_subscription_free`.
pub struct regent_subscription {
    stop: Arc<Stop>,
    thread: Option<JoinHandle<()>>,
    thread_id: ThreadId,
}

impl std::fmt::Debug for regent_subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("regent_subscription")
            .field("thread", &self.thread_id)
            .finish_non_exhaustive()
    }
}

/// The stop flag, with a condition variable to cut the retry pauses short.
#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    fn is_set(&self) -> bool {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self) {
        *self.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.wake.notify_all();
    }

    /// Waits up to `pause`; true when stopped meanwhile.
    fn wait(&self, pause: Duration) -> bool {
        let stopped = self.stopped.lock().unwrap_or_else(|p| p.into_inner());
        let (stopped, _) = self
            .wake
            .wait_timeout_while(stopped, pause, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *stopped
    }
}

/// The C callback and its userdata.
struct Callback {
    function: unsafe extern "C" fn(*mut c_void, *const regent_event),
    userdata: *mut c_void,
}

// SAFETY: `regent_client_subscribe` documents that the callback is called,
// with `userdata`, from a library thread; the C caller guarantees that this
// is allowed for the pointer it passed.
unsafe impl Send for Callback {}

impl Callback {
    fn token(&self, token: &regent_token) {
        self.call(&regent_event {
            kind: regent_event_kind::REGENT_EVENT_TOKEN,
            result: regent_result::REGENT_OK,
            token,
            state: std::ptr::null(),
            message: c"".as_ptr(),
            retry_after_ms: 0,
        });
    }

    fn state(&self, state: &CStr, error: Option<&Error>) {
        let message = error.map(|e| c_string(&e.message)).unwrap_or_default();
        self.call(&regent_event {
            kind: regent_event_kind::REGENT_EVENT_STATE,
            result: error.map_or(regent_result::REGENT_OK, |e| e.code.into()),
            token: std::ptr::null(),
            state: state.as_ptr(),
            message: message.as_ptr(),
            retry_after_ms: error.map_or(0, retry_after_ms),
        });
    }

    fn error(&self, error: &Error) {
        let message = c_string(&error.message);
        self.call(&regent_event {
            kind: regent_event_kind::REGENT_EVENT_ERROR,
            result: error.code.into(),
            token: std::ptr::null(),
            state: std::ptr::null(),
            message: message.as_ptr(),
            retry_after_ms: retry_after_ms(error),
        });
    }

    fn call(&self, event: &regent_event) {
        // SAFETY: the function pointer and userdata came from C with the
        // documented contract; `event` and what it points to outlive the call.
        unsafe { (self.function)(self.userdata, event) }
    }
}

fn retry_after_ms(e: &Error) -> u64 {
    e.retry_after
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The subscription thread: events to the callback until stopped.
fn deliver_events(mut events: blocking::Subscription, callback: &Callback, stop: &Stop) {
    let mut pause = RETRY_FIRST;
    let mut reported: Option<ErrorCode> = None;
    while !stop.is_set() {
        match events.next(Some(POLL)) {
            Ok(None) => {}
            Ok(Some(event)) => {
                pause = RETRY_FIRST;
                reported = None;
                if stop.is_set() {
                    break;
                }
                match event {
                    SubscriptionEvent::Token(token) => match regent_token::new(&token) {
                        Ok(token) => callback.token(&token),
                        Err(e) => callback.error(&e),
                    },
                    SubscriptionEvent::State { state, error } => {
                        callback.state(&c_string(&state), error.as_ref());
                    }
                }
            }
            Err(e) => {
                if stop.is_set() {
                    break;
                }
                if reported != Some(e.code) {
                    reported = Some(e.code);
                    callback.error(&e);
                }
                if stop.wait(pause) {
                    break;
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Subscribes to tokens that stay valid for at least `min_valid_secs` and to
/// the agent's state changes. `callback(userdata, event)` runs on a thread
/// the library starts, one event at a time: first the current token (or the
/// state saying why there is none), then each renewed token before the
/// previous one drops below `min_valid_secs`, and state changes such as
/// revocation. The subscription uses a connection of its own and may outlive
/// `client`. The caller owns `*subscription_out`.
///
/// The first callback runs only after `*subscription_out` is written, so
/// the callback may read the handle (e.g. to free it) from its first event.
///
/// Stopping: `regent_subscription_free(subscription)`. When it returns, the
/// thread has ended and no callback runs any more, so `userdata` may be
/// released then (not before).
///
/// Errors (nothing was started): `REGENT_AGENT_UNREACHABLE`,
/// `REGENT_TIMEOUT`, the agent's refusal, `REGENT_BAD_REQUEST` for NULL
/// arguments, `REGENT_INTERNAL` when no thread could be started.
///
/// Thread-safe, like `regent_client_token`. `userdata` is passed to the
/// callback on the library's thread: it must be usable from there.
///
/// # Safety
/// `client` is NULL or live; `callback` is NULL or a function with this
/// signature that stays callable until the subscription is freed;
/// `subscription_out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_client_subscribe(
    client: *const regent_client,
    min_valid_secs: u32,
    callback: regent_subscription_callback,
    userdata: *mut c_void,
    subscription_out: *mut *mut regent_subscription,
) -> regent_result {
    ffi_boundary!("regent_client_subscribe", {
        // SAFETY: the caller's contract.
        let client = unsafe { arg_ref(client, "client") }?;
        let function = callback.ok_or_else(|| {
            Error::new(
                ErrorCode::BadRequest,
                "the argument `callback` is NULL; it must point to a function",
            )
        })?;
        // SAFETY: the caller's contract.
        let out = unsafe { arg_out(subscription_out, "subscription_out") }?;
        let events = client
            .inner
            .subscribe(Duration::from_secs(u64::from(min_valid_secs)))?;
        let callback = Callback { function, userdata };
        let stop = Arc::new(Stop::default());
        let thread_stop = Arc::clone(&stop);
        // The start barrier: no callback before `*subscription_out` is
        // written, so a callback may use the handle from its first event.
        let (publish, published) = std::sync::mpsc::sync_channel::<()>(1);
        #[cfg(test)]
        let injected = boundary::inject::current();
        let thread = std::thread::Builder::new()
            .name("regent-subscription".into())
            .spawn(move || {
                #[cfg(test)]
                boundary::inject::set(injected);
                if published.recv().is_err() {
                    // Never published (the caller's side failed): no events.
                    return;
                }
                let delivered = catch_unwind(AssertUnwindSafe(|| {
                    #[cfg(test)]
                    boundary::inject::check("regent_subscription_thread");
                    deliver_events(events, &callback, &thread_stop);
                }));
                if delivered.is_err() && !thread_stop.is_set() {
                    // A bug: say so once, and end (the thread must not unwind into C).
                    let e = Error::new(
                        ErrorCode::Internal,
                        "internal error in the subscription thread: libregent hit a bug (a \
                         panic); no more events will come — free the subscription and \
                         subscribe again, and please report it",
                    );
                    let _ = catch_unwind(AssertUnwindSafe(|| callback.error(&e)));
                }
            })
            .map_err(|e| {
                Error::new(
                    ErrorCode::Internal,
                    format!("could not start the subscription thread ({e})"),
                )
            })?;
        #[cfg(test)]
        boundary::inject::before_publish();
        out.write(into_handle(regent_subscription {
            stop,
            thread_id: thread.thread().id(),
            thread: Some(thread),
        }));
        // After the write: the thread's first callback happens after it.
        // The thread holds the receiver until it ends, so this cannot fail.
        let _ = publish.send(());
        Ok(())
    })
}

impl Drop for regent_subscription {
    fn drop(&mut self) {
        self.stop.set();
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() == std::thread::current().id() {
                // Freed from its own callback: the thread ends when the
                // callback returns; joining here would wait for ever.
                return;
            }
            // The thread catches its own panics; an error here has nothing to report.
            let _ = thread.join();
        }
    }
}

/// Stops a subscription and frees it. NULL does nothing. When this returns,
/// the subscription's thread has ended and its callback will not run again
/// (called from that callback, it returns at once and the thread ends when
/// the callback returns). Usually returns within 100 ms; longer only while a
/// callback runs or a resubscription is under way (bounded by the client's
/// connect and request timeouts).
///
/// Must not run concurrently with itself on the same subscription.
///
/// # Safety
/// `subscription` is NULL or live, and not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn regent_subscription_free(subscription: *mut regent_subscription) {
    ffi_boundary!("regent_subscription_free", {
        // SAFETY: the caller's contract.
        unsafe { boundary::free_handle(subscription) }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::ffi::CStr;
    use std::ptr;
    use std::time::Instant;

    use regent_proto::message::{Event, WireError};

    use super::*;
    use crate::client::{regent_client_free, tests::connect};
    use crate::fake_agent::{FakeAgent, token_reply};
    use crate::result::regent_result::*;
    use crate::token::regent_token_value;

    /// An event as the callback saw it, copied.
    #[derive(Debug, Clone, PartialEq)]
    struct Seen {
        kind: regent_event_kind,
        result: regent_result,
        token: Option<String>,
        state: Option<String>,
        message: String,
        retry_after_ms: u64,
        thread: Option<String>,
    }

    /// The callback's userdata: what it saw, and a subscription to free from
    /// inside the callback when set.
    #[derive(Default)]
    struct Inbox {
        seen: Mutex<Vec<Seen>>,
        arrived: Condvar,
        free_from_callback: Mutex<Option<usize>>,
    }

    fn opt(p: *const c_char) -> Option<String> {
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_str().unwrap().to_owned())
    }

    unsafe extern "C" fn collect(userdata: *mut c_void, event: *const regent_event) {
        let inbox = unsafe { &*(userdata as *const Inbox) };
        let event = unsafe { &*event };
        let seen = Seen {
            kind: event.kind,
            result: event.result,
            token: opt(unsafe { regent_token_value(event.token) }),
            state: opt(event.state),
            message: opt(event.message).expect("message is never NULL"),
            retry_after_ms: event.retry_after_ms,
            thread: std::thread::current().name().map(str::to_owned),
        };
        // Taken before the event is recorded: a test arming it after seeing
        // this event means the next one.
        let free = inbox.free_from_callback.lock().unwrap().take();
        inbox.seen.lock().unwrap().push(seen);
        inbox.arrived.notify_all();
        if let Some(sub) = free {
            unsafe { regent_subscription_free(sub as *mut regent_subscription) };
        }
    }

    impl Inbox {
        fn userdata(&self) -> *mut c_void {
            self as *const Inbox as *mut c_void
        }

        /// Waits until `n` events arrived; returns them all.
        fn wait_for(&self, n: usize) -> Vec<Seen> {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut seen = self.seen.lock().unwrap();
            while seen.len() < n {
                let left = deadline
                    .checked_duration_since(Instant::now())
                    .unwrap_or_else(|| panic!("waited for {n} events, got {seen:?}"));
                seen = self.arrived.wait_timeout(seen, left).unwrap().0;
            }
            seen.clone()
        }

        fn count(&self) -> usize {
            self.seen.lock().unwrap().len()
        }
    }

    fn subscribe(agent: &FakeAgent, inbox: &Inbox) -> *mut regent_subscription {
        let client = connect(agent);
        let mut sub = ptr::null_mut();
        unsafe {
            assert_eq!(
                regent_client_subscribe(client, 30, Some(collect), inbox.userdata(), &mut sub),
                REGENT_OK
            );
            // The subscription outlives its client.
            regent_client_free(client);
        }
        sub
    }

    #[test]
    fn tokens_and_state_changes_reach_the_callback_until_free_returns() {
        let agent = FakeAgent::start();
        let inbox = Inbox::default();
        let sub = subscribe(&agent, &inbox);
        let first = &inbox.wait_for(1)[0];
        assert_eq!(first.kind, regent_event_kind::REGENT_EVENT_TOKEN);
        assert_eq!(first.result, REGENT_OK);
        assert_eq!(first.token.as_deref(), Some("pushed-30"));
        assert_eq!(first.state, None);
        assert_eq!(first.message, "");
        assert_eq!(first.thread.as_deref(), Some("regent-subscription"));

        let mut error = WireError::new(ErrorCode::Revoked, "the auth token was deleted");
        error.retry_after_ms = Some(2500);
        agent.push(Event::State {
            state: "revoked".into(),
            error: Some(error),
        });
        agent.push(Event::Token(token_reply(
            "renewed",
            Duration::from_secs(60),
        )));
        let seen = inbox.wait_for(3);
        assert_eq!(seen[1].kind, regent_event_kind::REGENT_EVENT_STATE);
        assert_eq!(seen[1].result, REGENT_REVOKED);
        assert_eq!(seen[1].state.as_deref(), Some("revoked"));
        assert_eq!(seen[1].message, "the auth token was deleted");
        assert_eq!(seen[1].retry_after_ms, 2500);
        assert_eq!(seen[1].token, None);
        assert_eq!(seen[2].token.as_deref(), Some("renewed"));

        let started = Instant::now();
        unsafe { regent_subscription_free(sub) };
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        // Nothing arrives after free returned, even when the agent pushes.
        agent.push(Event::Token(token_reply("late", Duration::from_secs(60))));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(inbox.count(), 3);
        unsafe { regent_subscription_free(ptr::null_mut()) };
    }

    #[test]
    fn a_lost_agent_is_reported_once_then_the_subscription_resumes() {
        let agent = FakeAgent::start();
        let inbox = Inbox::default();
        let sub = subscribe(&agent, &inbox);
        inbox.wait_for(1);
        agent.shut_down();
        let seen = inbox.wait_for(2);
        assert_eq!(seen[1].kind, regent_event_kind::REGENT_EVENT_ERROR);
        assert_eq!(seen[1].result, REGENT_AGENT_UNREACHABLE);
        assert!(!seen[1].message.is_empty());
        // Resubscription attempts fail while it is down (0.5 s, 1 s, …): one report.
        std::thread::sleep(Duration::from_millis(1800));
        assert_eq!(inbox.count(), 2, "{:?}", inbox.seen.lock().unwrap());
        agent.restart();
        let seen = inbox.wait_for(3);
        assert_eq!(seen[2].token.as_deref(), Some("pushed-30"));
        unsafe { regent_subscription_free(sub) };
    }

    #[test]
    fn the_callback_may_free_its_own_subscription() {
        let agent = FakeAgent::start();
        let inbox = Inbox::default();
        let sub = subscribe(&agent, &inbox);
        inbox.wait_for(1);
        *inbox.free_from_callback.lock().unwrap() = Some(sub as usize);
        agent.push(Event::Token(token_reply("one", Duration::from_secs(60))));
        inbox.wait_for(2);
        // Freed inside the callback: nothing more arrives, nothing hangs.
        agent.push(Event::Token(token_reply("two", Duration::from_secs(60))));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(inbox.count(), 2);
    }

    #[test]
    fn subscribe_checks_its_arguments_and_the_agent() {
        let agent = FakeAgent::start();
        let client = connect(&agent);
        let inbox = Inbox::default();
        let ud = inbox.userdata();
        unsafe {
            let mut sub = ptr::dangling_mut::<regent_subscription>();
            let refused = |rc, what: &str| {
                assert_eq!(rc, REGENT_BAD_REQUEST);
                let message = CStr::from_ptr(crate::regent_last_error_message());
                assert!(message.to_str().unwrap().contains(what), "{message:?}");
            };
            refused(
                regent_client_subscribe(ptr::null(), 1, Some(collect), ud, &mut sub),
                "`client` is NULL",
            );
            refused(
                regent_client_subscribe(client, 1, None, ud, &mut sub),
                "`callback` is NULL",
            );
            refused(
                regent_client_subscribe(client, 1, Some(collect), ud, ptr::null_mut()),
                "`subscription_out` is NULL",
            );
            assert_eq!(sub, ptr::dangling_mut());
            agent.shut_down();
            assert_eq!(
                regent_client_subscribe(client, 1, Some(collect), ud, &mut sub),
                REGENT_AGENT_UNREACHABLE
            );
            assert_eq!(sub, ptr::dangling_mut());
            regent_client_free(client);
        }
        assert_eq!(inbox.count(), 0);
    }

    /// Where `regent_client_subscribe` publishes the handle, and what the
    /// callback found there on its first call.
    struct Published {
        handle: std::cell::UnsafeCell<*mut regent_subscription>,
        first_call_saw: Mutex<Option<usize>>,
        arrived: Condvar,
    }

    unsafe extern "C" fn read_published(userdata: *mut c_void, _event: *const regent_event) {
        let published = unsafe { &*(userdata as *const Published) };
        let mut first = published.first_call_saw.lock().unwrap();
        if first.is_none() {
            // A plain read of the out-parameter, as a C callback would do.
            let handle = unsafe { published.handle.get().read_volatile() };
            *first = Some(handle as usize);
            published.arrived.notify_all();
        }
    }

    /// Issue 18 (item 14): the first callback used to race the write of
    /// `*subscription_out`. The test holds the subscribing thread just before
    /// it publishes, for as long as a callback could take to arrive (the
    /// agent pushes the first token at once), and the callback must still
    /// find the handle written.
    #[test]
    fn the_first_callback_sees_the_published_handle() {
        let agent = FakeAgent::start();
        let client = connect(&agent);
        // The hold runs on this thread: an `Rc` is enough.
        let published = std::rc::Rc::new(Published {
            handle: std::cell::UnsafeCell::new(ptr::null_mut()),
            first_call_saw: Mutex::new(None),
            arrived: Condvar::new(),
        });
        let watcher = std::rc::Rc::clone(&published);
        let _held = crate::boundary::inject::hold_before_publish(Box::new(move || {
            // Bounded: with the barrier no callback can come; without it one does.
            let first = watcher.first_call_saw.lock().unwrap();
            let _ = watcher
                .arrived
                .wait_timeout_while(first, Duration::from_millis(500), |f| f.is_none())
                .unwrap();
        }));
        let userdata = std::rc::Rc::as_ptr(&published) as *mut c_void;
        let rc = unsafe {
            regent_client_subscribe(
                client,
                30,
                Some(read_published),
                userdata,
                published.handle.get(),
            )
        };
        assert_eq!(rc, REGENT_OK);
        let sub = unsafe { published.handle.get().read() };
        assert!(!sub.is_null());
        let first = published.first_call_saw.lock().unwrap();
        let (first, _) = published
            .arrived
            .wait_timeout_while(first, Duration::from_secs(10), |f| f.is_none())
            .unwrap();
        assert_eq!(
            *first,
            Some(sub as usize),
            "the first callback ran before *subscription_out was written"
        );
        drop(first);
        unsafe {
            regent_subscription_free(sub);
            regent_client_free(client);
        }
    }

    #[test]
    fn a_panic_in_the_subscription_thread_is_reported_not_unwound() {
        let agent = FakeAgent::start();
        let inbox = Inbox::default();
        let sub = {
            let _armed = crate::boundary::inject::panic_in("regent_subscription_thread");
            subscribe(&agent, &inbox)
        };
        let seen = inbox.wait_for(1);
        assert_eq!(seen[0].kind, regent_event_kind::REGENT_EVENT_ERROR);
        assert_eq!(seen[0].result, REGENT_INTERNAL);
        assert!(seen[0].message.contains("internal error"), "{seen:?}");
        unsafe { regent_subscription_free(sub) };
    }
}
