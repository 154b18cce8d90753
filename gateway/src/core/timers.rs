//! Timers of one core's tasks (`Core::sleep`). With the epoll driver they
//! are glommio's. With the io_uring driver the core's own loop keeps them,
//! in a heap of deadlines, and sleeps in its ring until the next one: that
//! loop waits in its own ring instead of letting glommio park, so glommio's
//! timers (armed on glommio's rings) would not fire on time: they fire
//! only when the loop yields, at the latest after its longest wait (1 s).
//! Code on a core with no `Core` at hand (an embedded backend) sleeps with
//! [`sleep`], which finds the core's timers.

use std::cell::{Cell, RefCell};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// The timers of one core.
#[derive(Default)]
pub struct Timers {
    /// The core's own loop keeps the timers (io_uring driver).
    own: Cell<bool>,
    /// Deadlines, soonest first; entries of dropped sleeps stay until met.
    heap: RefCell<BinaryHeap<Reverse<(Instant, u64)>>>,
    /// The waker of each live sleep.
    wakers: RefCell<HashMap<u64, Waker>>,
    next_id: Cell<u64>,
}

thread_local! {
    /// The timers of the core on this thread, once its own loop keeps them.
    static OWN: RefCell<Option<Rc<Timers>>> = const { RefCell::new(None) };
}

/// Sleeps `d` on the timers of the core this thread runs: the io_uring
/// loop's own when it keeps them, glommio's otherwise. For code that runs
/// on a core without the `Core` at hand, such as an embedded backend.
pub fn sleep(d: Duration) -> Sleep {
    match OWN.with(|o| o.borrow().clone()) {
        Some(t) => t.sleep(d),
        None => Sleep::Glommio(glommio::timer::Timer::new(d)),
    }
}

impl Timers {
    /// From now on the core's own loop fires the timers (of this thread).
    pub fn run_own(self: &Rc<Self>) {
        self.own.set(true);
        OWN.with(|o| *o.borrow_mut() = Some(self.clone()));
    }

    /// The core's own loop has ended: sleeps go to glommio again, and the
    /// ones waiting on the loop are woken to move there.
    pub fn stop_own(&self) {
        self.own.set(false);
        OWN.with(|o| *o.borrow_mut() = None);
        self.heap.borrow_mut().clear();
        let wakers: Vec<Waker> = self.wakers.borrow_mut().drain().map(|(_, w)| w).collect();
        for w in wakers {
            w.wake();
        }
    }

    /// A sleep of `d` (the core's own, or glommio's).
    pub fn sleep(self: &Rc<Self>, d: Duration) -> Sleep {
        if !self.own.get() {
            return Sleep::Glommio(glommio::timer::Timer::new(d));
        }
        Sleep::Own {
            timers: self.clone(),
            deadline: Instant::now() + d,
            id: None,
        }
    }

    /// Wakes every sleep due by `now`; true when it woke any.
    pub fn fire(&self, now: Instant) -> bool {
        let mut due = Vec::new();
        {
            let mut heap = self.heap.borrow_mut();
            while let Some(Reverse((at, id))) = heap.peek().copied() {
                if at > now {
                    break;
                }
                heap.pop();
                due.push(id);
            }
        }
        let mut woke = false;
        for id in due {
            let w = self.wakers.borrow_mut().remove(&id);
            if let Some(w) = w {
                w.wake();
                woke = true;
            }
        }
        woke
    }

    /// The next deadline of a live sleep, if any.
    pub fn next(&self) -> Option<Instant> {
        let mut heap = self.heap.borrow_mut();
        let wakers = self.wakers.borrow();
        while let Some(Reverse((at, id))) = heap.peek().copied() {
            if wakers.contains_key(&id) {
                return Some(at);
            }
            heap.pop(); // a sleep dropped before its deadline
        }
        None
    }

    fn register(&self, deadline: Instant, id: &mut Option<u64>, waker: &Waker) {
        let key = *id.get_or_insert_with(|| {
            let n = self.next_id.get();
            self.next_id.set(n + 1);
            self.heap.borrow_mut().push(Reverse((deadline, n)));
            n
        });
        let mut wakers = self.wakers.borrow_mut();
        match wakers.get_mut(&key) {
            Some(w) if w.will_wake(waker) => {}
            Some(w) => w.clone_from(waker),
            None => {
                wakers.insert(key, waker.clone());
            }
        }
    }

    fn forget(&self, id: u64) {
        self.wakers.borrow_mut().remove(&id);
        let mut wakers = self.wakers.borrow_mut();
        if wakers.is_empty() && wakers.capacity() > 4096 {
            *wakers = HashMap::new();
            self.heap.borrow_mut().clear();
        }
    }
}

/// A sleep on a core (see [`Timers`]).
pub enum Sleep {
    Glommio(glommio::timer::Timer),
    Own {
        timers: Rc<Timers>,
        deadline: Instant,
        /// Registered in the heap (on first poll).
        id: Option<u64>,
    },
}

impl Future for Sleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if let Sleep::Own {
            timers, deadline, ..
        } = this
        {
            if !timers.own.get() {
                // The loop that kept it has ended: glommio's timer takes over.
                let left = deadline.saturating_duration_since(Instant::now());
                *this = Sleep::Glommio(glommio::timer::Timer::new(left));
            }
        }
        match this {
            Sleep::Glommio(t) => Pin::new(t).poll(cx).map(|_| ()),
            Sleep::Own {
                timers,
                deadline,
                id,
            } => {
                if Instant::now() >= *deadline {
                    if let Some(i) = id.take() {
                        timers.forget(i);
                    }
                    return Poll::Ready(());
                }
                timers.register(*deadline, id, cx.waker());
                Poll::Pending
            }
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        if let Sleep::Own {
            timers,
            id: Some(i),
            ..
        } = self
        {
            timers.forget(*i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Count(AtomicUsize);
    impl std::task::Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn own_timers_fire_in_order_and_dropped_ones_do_not_count() {
        let t = Rc::new(Timers::default());
        t.own.set(true);
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let mut cx = Context::from_waker(&waker);
        let mut a = Box::pin(t.sleep(Duration::from_millis(50)));
        let mut b = Box::pin(t.sleep(Duration::from_millis(10)));
        let mut c = Box::pin(t.sleep(Duration::from_millis(30)));
        assert!(a.as_mut().poll(&mut cx).is_pending());
        assert!(b.as_mut().poll(&mut cx).is_pending());
        assert!(c.as_mut().poll(&mut cx).is_pending());
        let first = t.next().expect("a deadline");
        drop(b); // its deadline no longer counts
        let next = t.next().expect("a deadline");
        assert!(next > first);
        assert!(t.fire(next));
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "only c is due");
        std::thread::sleep(Duration::from_millis(31));
        assert!(c.as_mut().poll(&mut cx).is_ready());
        t.fire(Instant::now() + Duration::from_secs(1));
        assert_eq!(count.0.load(Ordering::SeqCst), 2, "then a");
        assert!(t.next().is_none() || a.as_mut().poll(&mut cx).is_pending());
    }
}
