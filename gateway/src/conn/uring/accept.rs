//! Accepting on the core's listener through the ring: one multishot
//! accept, re-armed when it ends, paused with a backoff after errors
//! (EMFILE, ...), cancelled when the core drains.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{cqueue, opcode, types};

use super::setup::{user_data, Kind};
use super::Loop;
use crate::metrics::CoreMetrics;

impl Loop {
    pub(super) fn accepted(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.accept_armed = false;
        }
        if res >= 0 {
            self.accept_backoff_ms = 0;
            crate::listener::admit(&self.core, res);
            return;
        }
        if res == -libc::ECANCELED {
            return;
        }
        CoreMetrics::inc(&self.core.metrics.accept_errors);
        let e = std::io::Error::from_raw_os_error(-res);
        if self.accept_log.allow() {
            tracing::warn!(core = self.core.index, error = %e, "accept failed (io_uring); accepting again after a pause: if it is EMFILE, raise LimitNOFILE or lower conns_per_core_max");
        }
        if !self.accept_armed {
            self.accept_backoff_ms = self
                .accept_backoff_ms
                .saturating_mul(2)
                .clamp(10, self.core.cfg().accept_backoff_max_ms);
            self.accept_retry =
                Some(Instant::now() + Duration::from_millis(self.accept_backoff_ms as u64));
        }
    }

    /// Arms or re-arms accepting; stops it when the core drains.
    pub(super) fn accepting(&mut self) {
        let Some(l) = self.listener.as_ref() else {
            return;
        };
        let lfd = l.as_raw_fd();
        if self.core.draining.get() {
            if self.accept_armed {
                let cancel = opcode::AsyncCancel::new(user_data(Kind::Accept, 0))
                    .build()
                    .user_data(user_data(Kind::Cancel, 0));
                self.push(cancel);
                let _ = self.ring.submit();
                self.sends_unsubmitted = 0;
            }
            self.listener = None; // closes it
            self.core.accept_running.set(false);
            return;
        }
        if self.accept_armed || self.accept_retry.is_some_and(|t| Instant::now() < t) {
            return;
        }
        self.accept_retry = None;
        let e = opcode::AcceptMulti::new(types::Fd(lfd))
            .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
            .build()
            .user_data(user_data(Kind::Accept, 0));
        self.push(e);
        self.accept_armed = true;
    }
}
