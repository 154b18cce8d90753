//! Sessions on a core: the member lists of the user and room indexes, and
//! binding an authenticated connection to its user.

use std::rc::Rc;

use super::ByKey;
use super::{ConnKey, Core};
use crate::backend::Interest;

/// The member list of a user or room on this core (no allocation for one).
#[derive(Debug)]
pub enum Members {
    One(u32),
    /// Boxed so that the common case stays 16 bytes.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<u32>>),
}

impl Members {
    pub(super) fn add(&mut self, idx: u32) {
        match self {
            Members::One(a) => *self = Members::Many(Box::new(vec![*a, idx])),
            Members::Many(v) => v.push(idx),
        }
    }
    /// Removes `idx`; true when the list became empty.
    pub(super) fn remove(&mut self, idx: u32) -> bool {
        match self {
            Members::One(a) => *a == idx,
            Members::Many(v) => {
                if let Some(p) = v.iter().position(|&i| i == idx) {
                    v.swap_remove(p);
                }
                if v.len() == 1 {
                    *self = Members::One(v[0]);
                }
                false
            }
        }
    }
    /// Members in the list (at least one: an empty list is removed).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        match self {
            Members::One(_) => 1,
            Members::Many(v) => v.len(),
        }
    }
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Members::One(a) => vec![*a],
            Members::Many(v) => v.to_vec(),
        }
    }
}

impl Core {
    /// Makes an authenticated session of a connection: indexes it under its
    /// user and schedules its idle deadline. Returns the shared names, and
    /// the ticket to wait for before the user is reachable (NATS).
    pub fn bind_session(
        &self,
        key: ConnKey,
        user: &str,
        device: &str,
        heartbeat_ms: u32,
    ) -> (Rc<str>, Rc<str>, Option<u64>) {
        let idx = key.idx();
        let now = self.now();
        let idle = self.ticks(self.cfg().idle_timeout_ms(heartbeat_ms));
        let mut st = self.state.borrow_mut();
        let st = &mut *st;
        let user: Rc<str> = match st.users.get_key_value(user) {
            Some((k, _)) => k.clone(),
            None => Rc::from(user),
        };
        let device: Rc<str> = Rc::from(device);
        let Some(c) = st.conns.by_key(key) else {
            return (user, device, None);
        };
        c.user = Some(user.clone());
        c.device = Some(device.clone());
        c.heartbeat_ms = heartbeat_ms;
        c.last_in = now;
        c.due = st.wheel.schedule(key, now + idle, c.due);
        let ticket = match st.users.get_mut(&*user) {
            Some(m) => {
                m.add(idx);
                self.backend.ticket(Interest::User(&user))
            }
            None => {
                st.users.insert(user.clone(), Members::One(idx));
                self.backend.interest(Interest::User(&user), true)
            }
        };
        st.sessions += 1;
        (user, device, ticket)
    }
}
