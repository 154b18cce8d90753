//! Waking a core from other threads, and knowing when a core is idle.
//!
//! The io_uring driver's loop sleeps in its own ring, not in glommio's, and
//! glommio runs its reactor (where it takes wake-ups from other threads)
//! only when its queue runs dry, which never happens while that loop runs.
//! So on such a core nothing waits on a cross-thread waker:
//!
//! - every channel into a core carries the core's [`Waker`] ([`WakeTx`]),
//!   and sending calls it: it writes the core's eventfd, which the loop
//!   always has a read armed on, at most once until the loop has taken the
//!   wake-up (a burst of messages costs one write);
//! - the few tasks that read such channels ([`recv`]: the inbox, the NATS
//!   inbound queue, upstream answers) park on a list of this thread's
//!   waiters, which the loop wakes when it reads the eventfd;
//! - a task waiting for room in another thread's channel ([`WakeTx::send_async`])
//!   retries on the core's timers.
//!
//! The loop waits in its ring only when no task of the core was woken
//! since it last looked ([`wakes`], counted by [`spawn`] and the wakers of
//! the tasks it spawns); otherwise it yields to them.
//! With the epoll driver glommio parks and wakes itself: all of this falls
//! back to flume's own waiting, and the waker does nothing.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

thread_local! {
    /// This thread's core is served by its own loop (io_uring driver).
    static OWN_LOOP: Cell<bool> = const { Cell::new(false) };
    /// Tasks waiting for the core's eventfd.
    static WAITERS: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
    /// Wake-ups (and spawns) of the core's tasks (see [`spawn`]).
    static WAKES: Cell<u64> = const { Cell::new(0) };
}

/// How often a task waiting for room in another thread's full channel
/// tries again (io_uring driver).
const ROOM_RETRY: Duration = Duration::from_millis(1);

/// Whether this thread's core is served by its own loop.
pub fn own_loop() -> bool {
    OWN_LOOP.with(|o| o.get())
}

/// The loop starts (true) or has ended (false). When it ends, the tasks
/// waiting on it are woken to wait through flume instead.
pub fn set_own_loop(on: bool) {
    OWN_LOOP.with(|o| o.set(on));
    if !on {
        wake_waiters();
    }
}

/// Wakes the tasks waiting for the eventfd (the loop read it).
pub fn wake_waiters() {
    let woken = WAITERS.with(|w| std::mem::take(&mut *w.borrow_mut()));
    for w in woken {
        w.wake();
    }
}

fn wait_on_eventfd(waker: &Waker) {
    WAITERS.with(|w| {
        let mut w = w.borrow_mut();
        if !w.iter().any(|x| x.will_wake(waker)) {
            w.push(waker.clone());
        }
    });
}

/// Receives from a channel other threads send into with a [`WakeTx`] of
/// this core (any channel, with the epoll driver).
pub async fn recv<T>(rx: &flume::Receiver<T>) -> Result<T, flume::RecvError> {
    loop {
        if !own_loop() {
            return rx.recv_async().await;
        }
        let got = std::future::poll_fn(|cx| match rx.try_recv() {
            Ok(v) => Poll::Ready(Some(Ok(v))),
            Err(flume::TryRecvError::Disconnected) => {
                Poll::Ready(Some(Err(flume::RecvError::Disconnected)))
            }
            Err(flume::TryRecvError::Empty) if !own_loop() => Poll::Ready(None),
            Err(flume::TryRecvError::Empty) => {
                wait_on_eventfd(cx.waker());
                Poll::Pending
            }
        })
        .await;
        if let Some(r) = got {
            return r;
        }
    }
}

/// Sends into another thread's channel, waiting for room. On a core served
/// by its own loop the wait is a retry on the core's timers: the other
/// side's wake-up would not reach the loop.
pub async fn send<T>(tx: &flume::Sender<T>, m: T) -> Result<(), flume::SendError<T>> {
    if !own_loop() {
        return tx.send_async(m).await;
    }
    let mut m = m;
    loop {
        match tx.try_send(m) {
            Ok(()) => return Ok(()),
            Err(flume::TrySendError::Full(v)) => {
                m = v;
                super::timers::sleep(ROOM_RETRY).await;
            }
            Err(flume::TrySendError::Disconnected(v)) => return Err(flume::SendError(v)),
        }
    }
}

/// Wake-ups of the core's tasks so far (those spawned with [`spawn`]),
/// spawns included: when it has not moved since the loop last looked, no
/// task of the core is runnable but the loop.
pub fn wakes() -> u64 {
    WAKES.with(|w| w.get())
}

fn count_wake() {
    // From another thread (epoll driver) it counts there, which is harmless:
    // only a core's own loop reads its count.
    let _ = WAKES.try_with(|w| w.set(w.get() + 1));
}

/// Spawns a task on this core whose wake-ups count in [`wakes`], so the
/// io_uring loop knows when it is runnable.
pub fn spawn<F: Future + 'static>(f: F) -> glommio::Task<F::Output> {
    count_wake(); // a new task is runnable
    glommio::spawn_local(Counted::new(f))
}

/// A future whose wake-ups are counted in [`wakes`]: it is polled with a
/// waker that counts, then wakes glommio's.
pub struct Counted<F> {
    f: F,
    /// The counting waker last made, kept weakly: a strong one would hold
    /// the task (glommio's waker inside it) from within the task itself,
    /// and a task pending forever would never be freed once the wakers
    /// held elsewhere are dropped (`Core::drop_wakers` relies on that).
    waker: std::sync::Weak<CountWake>,
}

impl<F> Counted<F> {
    pub fn new(f: F) -> Counted<F> {
        Counted {
            f,
            waker: std::sync::Weak::new(),
        }
    }
}

impl<F: Future> Future for Counted<F> {
    type Output = F::Output;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `f` is structurally pinned and never moved out; `waker`
        // is not pinned (plain replacement).
        let this = unsafe { self.get_unchecked_mut() };
        // The one made before, while something still holds it (a channel,
        // a timer); else a new one.
        let counting = match this.waker.upgrade() {
            Some(w) if w.0.will_wake(cx.waker()) => w,
            _ => {
                let w = Arc::new(CountWake(cx.waker().clone()));
                this.waker = Arc::downgrade(&w);
                w
            }
        };
        let counting = Waker::from(counting);
        let mut cx = Context::from_waker(&counting);
        // SAFETY: see above.
        unsafe { Pin::new_unchecked(&mut this.f) }.poll(&mut cx)
    }
}

/// A task's waker that counts its wake-ups in [`wakes`].
struct CountWake(Waker);

impl std::task::Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        count_wake();
        self.0.wake_by_ref();
    }
}

/// The cross-thread wake-up of one core.
pub struct Wake {
    /// An eventfd the core's loop reads (io_uring driver), or -1.
    fd: i32,
    /// A write is on its way and the loop has not taken it yet.
    pending: AtomicBool,
}

impl Wake {
    /// A wake-up for a core that sleeps in its own ring: makes its eventfd.
    pub fn eventfd() -> std::io::Result<Arc<Wake>> {
        // SAFETY: plain syscall; the fd is owned by the returned Wake.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Arc::new(Wake {
            fd,
            pending: AtomicBool::new(false),
        }))
    }

    /// A wake-up that does nothing (glommio wakes itself).
    pub fn none() -> Arc<Wake> {
        Arc::new(Wake {
            fd: -1,
            pending: AtomicBool::new(false),
        })
    }

    /// The eventfd the loop reads, if any.
    pub fn fd(&self) -> Option<i32> {
        (self.fd >= 0).then_some(self.fd)
    }

    /// The loop took the wake-up: the next message writes again. Called
    /// before the loop lets the woken tasks run, so none is missed.
    pub fn taken(&self) {
        self.pending.store(false, Ordering::SeqCst);
    }

    pub fn waker(self: &Arc<Self>) -> Waker {
        Waker::from(self.clone())
    }
}

impl std::task::Wake for Wake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.fd >= 0 && !self.pending.swap(true, Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: an 8-byte write to our eventfd; a full counter
            // (EAGAIN) still leaves it readable, which is all that matters.
            unsafe { libc::write(self.fd, (&one as *const u64).cast(), 8) };
        }
    }
}

impl Drop for Wake {
    fn drop(&mut self) {
        if self.fd >= 0 {
            // SAFETY: our eventfd, closed once.
            unsafe { libc::close(self.fd) };
        }
    }
}

/// A sender into a core's inbox that also wakes the core.
pub type CoreTx = WakeTx<super::CoreMsg>;

/// A sender into a channel a core reads, that also wakes the core (its
/// waker: [`Wake::waker`], or a no-op one where the core needs none).
pub struct WakeTx<T> {
    tx: flume::Sender<T>,
    wake: Waker,
}

impl<T> Clone for WakeTx<T> {
    fn clone(&self) -> Self {
        WakeTx {
            tx: self.tx.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<T> WakeTx<T> {
    pub fn new(tx: flume::Sender<T>, wake: Waker) -> WakeTx<T> {
        WakeTx { tx, wake }
    }

    /// A sender whose core needs no wake-up (glommio parks: epoll driver).
    pub fn plain(tx: flume::Sender<T>) -> WakeTx<T> {
        WakeTx::new(tx, Waker::noop().clone())
    }

    pub fn try_send(&self, m: T) -> Result<(), flume::TrySendError<T>> {
        self.tx.try_send(m)?;
        self.wake.wake_by_ref();
        Ok(())
    }

    pub fn send(&self, m: T) -> Result<(), flume::SendError<T>> {
        self.tx.send(m)?;
        self.wake.wake_by_ref();
        Ok(())
    }

    /// Sends from another thread than a core's (tokio), waiting for room.
    pub async fn send_async(&self, m: T) -> Result<(), flume::SendError<T>> {
        self.tx.send_async(m).await?;
        self.wake.wake_by_ref();
        Ok(())
    }

    /// Sends from a core, waiting for room (see [`send`]).
    pub async fn send_from_core(&self, m: T) -> Result<(), flume::SendError<T>> {
        send(&self.tx, m).await?;
        self.wake.wake_by_ref();
        Ok(())
    }

    pub fn is_disconnected(&self) -> bool {
        self.tx.is_disconnected()
    }

    /// Wakes the core without a message (it freed room it waits on).
    pub fn wake(&self) {
        self.wake.wake_by_ref();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn on_executor(f: impl Future<Output = ()> + 'static) {
        glommio::LocalExecutorBuilder::default()
            .make()
            .expect("a glommio executor (io_uring)")
            .run(f);
    }

    /// Yields until `cond` holds (the other tasks get their turns).
    async fn until(cond: impl Fn() -> bool) {
        while !cond() {
            futures_lite::future::yield_now().await;
        }
    }

    #[test]
    fn spawns_and_wake_ups_of_counted_tasks_are_counted() {
        on_executor(async {
            let (tx, rx) = glommio::channels::local_channel::new_bounded::<u32>(1);
            let parks = Rc::new(Cell::new(0u32));
            let before = wakes();
            let p = parks.clone();
            let t = spawn(async move {
                let mut sum = 0;
                for _ in 0..3 {
                    p.set(p.get() + 1);
                    // parks in the same poll that counted the park
                    sum += rx.recv().await.unwrap_or(0);
                }
                sum
            });
            assert_eq!(wakes(), before + 1, "a spawn makes a task runnable");
            for round in 1..=3 {
                until(|| parks.get() == round).await;
                let idle = wakes();
                futures_lite::future::yield_now().await; // not counted: not spawned here
                assert_eq!(wakes(), idle, "nothing woke the parked task");
                tx.send(round).await.expect("open channel");
                assert_eq!(
                    wakes(),
                    idle + 1,
                    "the send woke it through the counting waker (park {round})"
                );
            }
            assert_eq!(t.await, 6);
        });
    }

    /// A detached task pending forever is freed once the wakers held
    /// elsewhere are dropped: its own future holds no strong one.
    #[test]
    fn a_task_pending_forever_is_freed_when_its_wakers_go() {
        struct Guard(Rc<Cell<bool>>);
        impl Drop for Guard {
            fn drop(&mut self) {
                self.0.set(true);
            }
        }
        on_executor(async {
            let dropped = Rc::new(Cell::new(false));
            let held: Rc<RefCell<Option<Waker>>> = Default::default();
            let (g, h) = (Guard(dropped.clone()), held.clone());
            spawn(async move {
                let _g = g;
                std::future::poll_fn(|cx| {
                    *h.borrow_mut() = Some(cx.waker().clone());
                    Poll::<()>::Pending
                })
                .await;
            })
            .detach();
            until(|| held.borrow().is_some()).await;
            assert!(!dropped.get(), "pending, its waker held");
            held.borrow_mut().take(); // the last waker goes
            for _ in 0..100 {
                if dropped.get() {
                    break;
                }
                futures_lite::future::yield_now().await;
            }
            assert!(dropped.get(), "the task (and what it held) was freed");
        });
    }
}
