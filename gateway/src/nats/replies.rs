//! Answers to a core's upstream requests, from the bridge (tokio) back to
//! the request's task on the core. One channel per core carries them all,
//! tagged with the request's id, and one task on the core hands each to its
//! request: the core then waits on a single cross-thread channel (see
//! `core/wake.rs`: with the io_uring driver, every such wait is a waiter
//! on the core's eventfd, so there are few of them), and a request that
//! stops waiting (timeout) is simply forgotten.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use gw_proto::ErrorCode;

use crate::backend::BackendReply;
use crate::core::{wake, WakeTx};

/// Where the answer to one request goes (travels with the request). Dropped
/// unanswered, it answers BACKEND_UNAVAILABLE.
pub struct ReplyTo {
    tx: WakeTx<(u64, BackendReply)>,
    id: u64,
    answered: bool,
}

impl ReplyTo {
    pub fn send(mut self, r: BackendReply) {
        self.answered = true;
        let _ = self.tx.try_send((self.id, r));
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        if !self.answered {
            let r = BackendReply::error(
                ErrorCode::BackendUnavailable,
                "the NATS bridge dropped the request",
            );
            let _ = self.tx.try_send((self.id, r));
        }
    }
}

/// The requests of one core waiting for their answers.
pub struct Replies {
    waiting: RefCell<HashMap<u64, flume::Sender<BackendReply>>>,
    next_id: Cell<u64>,
    tx: WakeTx<(u64, BackendReply)>,
}

impl Replies {
    /// Starts the task that hands answers out (on the calling core).
    pub fn start(core_wake: std::task::Waker) -> Rc<Replies> {
        let (tx, rx) = flume::unbounded();
        let r = Rc::new(Replies {
            waiting: RefCell::new(HashMap::new()),
            next_id: Cell::new(0),
            tx: WakeTx::new(tx, core_wake),
        });
        let weak = Rc::downgrade(&r);
        wake::spawn(async move {
            while let Ok((id, answer)) = wake::recv(&rx).await {
                let Some(r) = weak.upgrade() else { return };
                let to = r.waiting.borrow_mut().remove(&id);
                if let Some(to) = to {
                    let _ = to.try_send(answer);
                }
            }
        })
        .detach();
        r
    }

    /// A new request: where its answer goes, and the answer to await.
    pub fn expect(self: &Rc<Self>) -> (ReplyTo, Answer) {
        let id = self.next_id.get();
        self.next_id.set(id + 1);
        let (tx, rx) = flume::bounded(1);
        self.waiting.borrow_mut().insert(id, tx);
        let to = ReplyTo {
            tx: self.tx.clone(),
            id,
            answered: false,
        };
        let answer = Answer {
            rx,
            id,
            replies: self.clone(),
        };
        (to, answer)
    }
}

/// The answer to one request; dropped first, the request is forgotten.
pub struct Answer {
    rx: flume::Receiver<BackendReply>,
    id: u64,
    replies: Rc<Replies>,
}

impl Answer {
    /// Waits for the answer (local: the hand-out task sends it on this
    /// core); BACKEND_UNAVAILABLE if the hand-out task is gone.
    pub async fn get(self) -> BackendReply {
        self.rx.recv_async().await.unwrap_or_else(|_| {
            BackendReply::error(
                ErrorCode::BackendUnavailable,
                "the NATS bridge dropped the request",
            )
        })
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.replies.waiting.borrow_mut().remove(&self.id);
    }
}
