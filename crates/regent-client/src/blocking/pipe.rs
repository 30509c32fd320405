//! Windows: reads and writes on the agent's named pipe that give up at a
//! deadline.
//!
//! `interprocess` 2.4 answers `Unsupported` to `set_recv_timeout` /
//! `set_send_timeout` on a named pipe, which made every blocking client (and
//! so the C library) fail to connect on Windows (issue 13, bug 1). The pipe is
//! opened with `FILE_FLAG_OVERLAPPED` (interprocess does so for every client),
//! so each call here starts an overlapped `ReadFile` / `WriteFile`, waits on
//! its event for at most the time left, and past it cancels that one
//! operation (`CancelIoEx`) and waits for the cancellation to land before the
//! buffer goes away. Bytes that arrived just as the deadline passed are kept.
// The Win32 calls have no safe wrapper among the dependencies; each unsafe
// block says what it relies on, and no operation outlives the call that
// started it.
#![allow(unsafe_code)]

use std::io;
use std::os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    ERROR_BROKEN_PIPE, ERROR_IO_PENDING, ERROR_OPERATION_ABORTED, HANDLE, WAIT_OBJECT_0,
    WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{ReadFile, WriteFile};
use windows_sys::Win32::System::IO::{CancelIoEx, GetOverlappedResult, OVERLAPPED};
use windows_sys::Win32::System::Threading::{CreateEventW, INFINITE, WaitForSingleObject};

/// The event one connection's operations wait on (they never overlap: a
/// connection is used by one thread at a time).
pub(super) struct PipeIo {
    event: OwnedHandle,
}

impl PipeIo {
    /// # Errors
    /// The OS error when no event can be created.
    pub(super) fn new() -> io::Result<PipeIo> {
        // SAFETY: no security attributes and no name; manual reset (ReadFile
        // and WriteFile reset it when they start), initially not signalled.
        let event = unsafe { CreateEventW(null(), 1, 0, null()) };
        if event.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: just created and owned by nothing else.
        let event = unsafe { OwnedHandle::from_raw_handle(event) };
        Ok(PipeIo { event })
    }

    /// Reads once, waiting at most `timeout` (`None`: as long as it takes).
    /// `Ok(0)` when the agent closed the pipe.
    ///
    /// # Errors
    /// `TimedOut` past the deadline, else the OS error.
    pub(super) fn read(
        &self,
        pipe: BorrowedHandle<'_>,
        buf: &mut [u8],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        let ptr = buf.as_mut_ptr();
        let result = self.overlapped(pipe, timeout, |handle, ov| {
            // SAFETY: `ptr` holds `len` writable bytes, and `overlapped`
            // does not return before the operation has finished.
            unsafe { ReadFile(handle, ptr, len, null_mut(), ov) }
        });
        match result {
            Err(e) if e.raw_os_error() == Some(ERROR_BROKEN_PIPE as i32) => Ok(0),
            other => other,
        }
    }

    /// Writes all of `buf` before `timeout` has passed.
    ///
    /// # Errors
    /// `TimedOut` past the deadline (part of `buf` may be out), else the OS
    /// error.
    pub(super) fn write_all(
        &self,
        pipe: BorrowedHandle<'_>,
        mut buf: &[u8],
        timeout: Duration,
    ) -> io::Result<()> {
        let deadline = Instant::now().checked_add(timeout);
        while !buf.is_empty() {
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left.is_some_and(|l| l.is_zero()) {
                return Err(io::ErrorKind::TimedOut.into());
            }
            let len = u32::try_from(buf.len()).unwrap_or(u32::MAX);
            let ptr = buf.as_ptr();
            let written = self.overlapped(pipe, left, |handle, ov| {
                // SAFETY: `ptr` holds `len` readable bytes, and `overlapped`
                // does not return before the operation has finished.
                unsafe { WriteFile(handle, ptr, len, null_mut(), ov) }
            })?;
            if written == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            buf = buf.get(written..).unwrap_or_default();
        }
        Ok(())
    }

    /// Starts one operation with `start` and returns its byte count once it
    /// has finished, cancelling it when `timeout` passes first.
    fn overlapped(
        &self,
        pipe: BorrowedHandle<'_>,
        timeout: Option<Duration>,
        start: impl FnOnce(HANDLE, *mut OVERLAPPED) -> i32,
    ) -> io::Result<usize> {
        let handle = pipe.as_raw_handle() as HANDLE;
        // SAFETY: OVERLAPPED is plain data; all zeroes is its initial state.
        let mut ov: OVERLAPPED = unsafe { std::mem::zeroed() };
        ov.hEvent = self.event.as_raw_handle() as HANDLE;
        let mut timed_out = false;
        if start(handle, &mut ov) == 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(ERROR_IO_PENDING as i32) {
                // Refused at once: nothing is in flight.
                return Err(e);
            }
            // SAFETY: the event is alive for the call.
            match unsafe { WaitForSingleObject(ov.hEvent, wait_millis(timeout)) } {
                WAIT_OBJECT_0 => {}
                WAIT_TIMEOUT => {
                    timed_out = true;
                    // SAFETY: cancels only this operation (by `ov`); when it
                    // finished meanwhile this fails harmlessly.
                    unsafe { CancelIoEx(handle, &ov) };
                }
                _ => {
                    let e = io::Error::last_os_error();
                    // SAFETY: as above; then wait for the operation to end
                    // so that `ov` and the buffer may go.
                    unsafe { CancelIoEx(handle, &ov) };
                    let mut done = 0u32;
                    // SAFETY: `ov` belongs to the operation started above.
                    unsafe { GetOverlappedResult(handle, &ov, &mut done, 1) };
                    return Err(e);
                }
            }
        }
        let mut done = 0u32;
        // SAFETY: `ov` belongs to the operation started above; waiting
        // (bWait = TRUE) means it has finished, cancelled or not, on return.
        if unsafe { GetOverlappedResult(handle, &ov, &mut done, 1) } == 0 {
            let e = io::Error::last_os_error();
            if timed_out && e.raw_os_error() == Some(ERROR_OPERATION_ABORTED as i32) {
                return Err(io::ErrorKind::TimedOut.into());
            }
            return Err(e);
        }
        // Completed, possibly just as the deadline passed: keep what came.
        Ok(done as usize)
    }
}

/// A wait in whole milliseconds, rounded up so a wait never ends early;
/// `None` waits forever.
fn wait_millis(timeout: Option<Duration>) -> u32 {
    match timeout {
        None => INFINITE,
        Some(t) => {
            let ms = t.as_nanos().div_ceil(1_000_000);
            u32::try_from(ms).unwrap_or(INFINITE - 1).min(INFINITE - 1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_round_up_and_never_mean_forever_by_accident() {
        assert_eq!(wait_millis(None), INFINITE);
        assert_eq!(wait_millis(Some(Duration::ZERO)), 0);
        assert_eq!(wait_millis(Some(Duration::from_micros(1))), 1);
        assert_eq!(wait_millis(Some(Duration::from_millis(1500))), 1500);
        assert_eq!(wait_millis(Some(Duration::MAX)), INFINITE - 1);
    }
}
