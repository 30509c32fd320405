//! The agent's shutdown broadcast as a future cheap enough to poll on every
//! request.

use super::*;

/// The agent's shutdown broadcast, as a future that is cheap to poll on every
/// request. Polling a pending `broadcast::Recv` takes the channel's locks,
/// which every connection shares; so the channel is polled once to register,
/// and again only after it has woken this connection.
pub(super) struct ShutdownSignal<F> {
    recv: Pin<Box<F>>,
    wake: Arc<SignalWake>,
    registered: bool,
}

/// The waker the channel holds: records that it fired, then wakes the task.
#[derive(Default)]
pub(super) struct SignalWake {
    fired: AtomicBool,
    task: std::sync::Mutex<Option<Waker>>,
}

impl Wake for SignalWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::SeqCst);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(task) = task.as_ref() {
            task.wake_by_ref();
        }
    }
}

impl<F: Future> ShutdownSignal<F> {
    pub(super) fn new(recv: F) -> Self {
        ShutdownSignal {
            recv: Box::pin(recv),
            wake: Arc::new(SignalWake::default()),
            registered: false,
        }
    }
}

impl<F: Future> Future for ShutdownSignal<F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        {
            // Forward to the task's current waker (it rarely changes).
            let mut task = self
                .wake
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !task.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                *task = Some(cx.waker().clone());
            }
        }
        if self.registered && !self.wake.fired.swap(false, Ordering::SeqCst) {
            return Poll::Pending;
        }
        self.registered = true;
        let waker = Waker::from(Arc::clone(&self.wake));
        let mut inner = Context::from_waker(&waker);
        self.recv.as_mut().poll(&mut inner).map(|_| ())
    }
}
