//! Sends in flight on the ring. The kernel reads a send's buffers until
//! its completion, so a send owns what it points at: copies of the queued
//! items' heads (inline in `Out`, which moves when the queue grows),
//! references to their shared bodies (`Bytes`), or owned bytes (TLS
//! ciphertext, a refusal frame). `MSG_WAITALL` makes the kernel finish the
//! whole send (or fail): a completion means every byte went.

use bytes::Bytes;

use crate::core::push::Head;
use crate::core::Conn;

/// Slices per send (the kernel's IOV_MAX is 1024; a few dozen items cover
/// a burst of pushes).
pub const IOV_MAX: usize = 64;
/// Bytes per send at most, so one connection's backlog does not hold
/// the loop.
pub const SEND_BYTES_MAX: usize = 256 * 1024;
/// A send of several slices carrying at most this many bytes is copied
/// into one buffer of the op and goes as one SEND: a push to a room member
/// (a head and a shared body) costs the kernel no message header or iovec
/// copy, and the op no 2.2 KB `Vectored` while it is in flight (a
/// broadcast keeps one send per member in flight at once).
pub const COPY_BYTES_MAX: usize = 1024;
/// Finished sends kept for reuse, and message headers with their iovec
/// arrays (about 2.2 KB each, only for sends of several slices): a send
/// costs no allocation and no zeroing.
pub const SPARE_SENDS_MAX: usize = 64;

/// Finished sends and vectored parts kept for reuse. Boxed: what the
/// kernel points at (a head copy, a message header, iovecs) must not move.
#[allow(clippy::vec_box)]
#[derive(Default)]
pub struct Spare {
    ops: Vec<Box<SendOp>>,
    vectored: Vec<Box<Vectored>>,
}

/// The message header, iovecs and head copies of a send of several slices.
struct Vectored {
    msg: libc::msghdr,
    iov: [libc::iovec; IOV_MAX],
    heads: [Head; IOV_MAX / 2],
}

impl Vectored {
    fn take(spare: &mut Spare) -> Box<Vectored> {
        spare.vectored.pop().unwrap_or_else(|| {
            Box::new(Vectored {
                // SAFETY: a zeroed msghdr is valid (no name, no control).
                msg: unsafe { std::mem::zeroed() },
                iov: [libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                }; IOV_MAX],
                heads: [Head::EMPTY; IOV_MAX / 2],
            })
        })
    }

    fn give_back(v: Box<Vectored>, spare: &mut Spare) {
        if spare.vectored.len() < SPARE_SENDS_MAX {
            spare.vectored.push(v);
        }
    }
}

/// One send in flight: about 100 bytes for a send of one slice (a Pong, a
/// reply, an AuthOk, TLS records), plus a `Vectored` for several. Sends
/// of one slice are the common case, and many can be in flight at once
/// (a login burst): a full-size op each held 2.2 KB per send in flight,
/// which the allocator kept (+40 B per connection in `peers`).
pub struct SendOp {
    /// The connection it belongs to (its completion finds it by id).
    pub conn_id: u64,
    /// The one slice, when there is one (points into `head`, a body or
    /// `owned`).
    one: Option<(*const u8, u32)>,
    /// A copy of the queued head the one slice is (heads move with the queue).
    head: Head,
    many: Option<Box<Vectored>>,
    bodies: Vec<Bytes>,
    /// Small sends of several slices, copied (`COPY_BYTES_MAX`); its
    /// capacity is kept when the op is reused.
    copy: Vec<u8>,
    owned: Vec<u8>,
    /// Bytes this send carries.
    pub len: usize,
}

impl SendOp {
    /// A send for `conn_id`: a spare one when there is one.
    fn empty(conn_id: u64, spare: &mut Spare) -> Box<SendOp> {
        if let Some(mut op) = spare.ops.pop() {
            op.conn_id = conn_id;
            return op;
        }
        Box::new(SendOp {
            conn_id,
            one: None,
            head: Head::EMPTY,
            many: None,
            bodies: Vec::new(),
            copy: Vec::new(),
            owned: Vec::new(),
            len: 0,
        })
    }

    /// Gives a finished send back for reuse: what it held goes now (the
    /// bodies' references, its own bytes).
    pub fn recycle(mut op: Box<SendOp>, spare: &mut Spare) {
        if let Some(v) = op.many.take() {
            Vectored::give_back(v, spare);
        }
        if spare.ops.len() >= SPARE_SENDS_MAX {
            return;
        }
        op.bodies.clear();
        op.copy.clear();
        op.owned = Vec::new();
        op.len = 0;
        op.one = None;
        spare.ops.push(op);
    }

    /// A send of the connection's queued items from the written offset on
    /// (plain TCP and WebSocket), or None when nothing is queued.
    pub fn queued(c: &Conn, spare: &mut Spare) -> Option<Box<SendOp>> {
        let mut op = SendOp::empty(c.id, spare);
        let mut v = Vectored::take(spare);
        let mut skip = c.out_off as usize;
        let (mut n, mut h) = (0usize, 0usize);
        for item in c.out.iter() {
            if n + 2 > IOV_MAX || op.len >= SEND_BYTES_MAX {
                break;
            }
            let head = item.head.as_slice();
            if skip < head.len() {
                v.heads[h] = item.head;
                let copy = &v.heads[h].as_slice()[skip..];
                v.iov[n] = iovec(copy.as_ptr(), copy.len());
                op.len += copy.len();
                (n, h, skip) = (n + 1, h + 1, 0);
            } else {
                skip -= head.len();
            }
            if skip < item.body.len() {
                let body = &item.body[skip..];
                v.iov[n] = iovec(body.as_ptr(), body.len());
                op.len += body.len();
                op.bodies.push(item.body.clone());
                (n, skip) = (n + 1, 0);
            } else {
                skip -= item.body.len();
            }
        }
        if op.len == 0 {
            Vectored::give_back(v, spare);
            SendOp::recycle(op, spare);
            return None;
        }
        if n == 1 {
            // One slice: a head (copied into the op) or a body (kept alive
            // by `bodies`); the vectored part goes back at once.
            let (base, len) = (v.iov[0].iov_base as *const u8, v.iov[0].iov_len);
            let in_head = h == 1;
            if in_head {
                op.head = v.heads[0];
                let from = op.head.as_slice().len() - len;
                op.one = Some((op.head.as_slice()[from..].as_ptr(), len as u32));
            } else {
                op.one = Some((base, len as u32));
            }
            Vectored::give_back(v, spare);
            return Some(op);
        }
        if op.len <= COPY_BYTES_MAX {
            // Small: one buffer, one SEND (the bodies' bytes are copied, so
            // the op need not keep them).
            op.copy.reserve_exact(op.len);
            for iov in &v.iov[..n] {
                // SAFETY: each iovec points into a head copy in `v` or a
                // body `op.bodies` holds, `iov_len` bytes long.
                let part =
                    unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
                op.copy.extend_from_slice(part);
            }
            debug_assert_eq!(op.copy.len(), op.len);
            op.bodies.clear();
            op.one = Some((op.copy.as_ptr(), op.copy.len() as u32));
            Vectored::give_back(v, spare);
            return Some(op);
        }
        v.msg.msg_iov = v.iov.as_mut_ptr();
        v.msg.msg_iovlen = n as _;
        op.many = Some(v);
        Some(op)
    }

    /// A send of bytes it owns (TLS ciphertext, a refusal frame).
    pub fn owned(conn_id: u64, bytes: Vec<u8>, spare: &mut Spare) -> Box<SendOp> {
        let mut op = SendOp::empty(conn_id, spare);
        op.len = bytes.len();
        op.owned = bytes;
        op.one = Some((op.owned.as_ptr(), op.owned.len() as u32));
        op
    }

    /// Whether it carries bytes of its own (TLS ciphertext): nothing of the
    /// connection's queue to drop when it completes.
    pub fn owns_bytes(&self) -> bool {
        !self.owned.is_empty()
    }

    /// The one slice of a send that has one: it goes as a SEND, which
    /// spares the kernel the message header and iovec copies of a SENDMSG.
    pub fn single(&self) -> Option<(*const u8, u32)> {
        self.one
    }

    /// The message header a SENDMSG entry points at (stable: boxed), for a
    /// send of several slices.
    pub fn msg(&self) -> *const libc::msghdr {
        self.many
            .as_ref()
            .map_or(std::ptr::null(), |v| &v.msg as *const libc::msghdr)
    }
}

fn iovec(p: *const u8, len: usize) -> libc::iovec {
    libc::iovec {
        iov_base: p as *mut libc::c_void,
        iov_len: len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::out::Out;

    fn head(bytes: &[u8]) -> Head {
        let mut h = Head::EMPTY;
        h.buf[..bytes.len()].copy_from_slice(bytes);
        h.len = bytes.len() as u8;
        h
    }

    fn conn(items: &[(&[u8], Vec<u8>)], out_off: u32) -> Conn {
        let mut c = Conn::new(1, -1, 1, 30_000);
        for (h, body) in items {
            c.out.push_back(Out {
                head: head(h),
                body: Bytes::from(body.clone()),
            });
        }
        c.out_off = out_off;
        c
    }

    /// What a send points the kernel at, as bytes.
    fn sent_bytes(op: &SendOp) -> Vec<u8> {
        // SAFETY: the op owns or holds every buffer it points at.
        unsafe {
            if let Some((p, len)) = op.single() {
                return std::slice::from_raw_parts(p, len as usize).to_vec();
            }
            let msg = &*op.msg();
            let iov = std::slice::from_raw_parts(msg.msg_iov, msg.msg_iovlen);
            iov.iter()
                .flat_map(|v| std::slice::from_raw_parts(v.iov_base as *const u8, v.iov_len))
                .copied()
                .collect()
        }
    }

    #[test]
    fn small_sends_of_several_slices_are_one_copied_slice() {
        let mut spare = Spare::default();
        let c = conn(
            &[(b"h1", b"body-one".to_vec()), (b"h2", b"two".to_vec())],
            1,
        );
        let op = SendOp::queued(&c, &mut spare).expect("something is queued");
        assert_eq!(sent_bytes(&op), b"1body-oneh2two");
        assert_eq!(op.len, 14);
        assert!(op.single().is_some(), "copied into one slice");
        assert!(op.bodies.is_empty(), "the copy needs no body kept alive");
        assert!(
            !op.owns_bytes(),
            "it is the queue's bytes: the queue advances"
        );
        // Recycled, it sends the next one from its kept buffer.
        SendOp::recycle(op, &mut spare);
        let c = conn(&[(b"h", b"x".to_vec()), (b"", b"y".to_vec())], 0);
        let op = SendOp::queued(&c, &mut spare).expect("queued");
        assert_eq!(sent_bytes(&op), b"hxy");
    }

    #[test]
    fn large_sends_stay_vectored_and_one_slice_is_not_copied() {
        let mut spare = Spare::default();
        let big = vec![7u8; COPY_BYTES_MAX];
        let c = conn(&[(b"hd", big.clone())], 0);
        let op = SendOp::queued(&c, &mut spare).expect("queued");
        assert!(op.single().is_none(), "over COPY_BYTES_MAX: SENDMSG");
        let mut want = b"hd".to_vec();
        want.extend_from_slice(&big);
        assert_eq!(sent_bytes(&op), want);
        assert_eq!(op.bodies.len(), 1, "the body is kept alive, not copied");

        // A body alone (head written) is sent from the body itself.
        let c = conn(&[(b"hd", b"abc".to_vec())], 2);
        let op = SendOp::queued(&c, &mut spare).expect("queued");
        assert_eq!(sent_bytes(&op), b"abc");
        assert!(op.copy.is_empty());
        assert!(SendOp::queued(&conn(&[], 0), &mut spare).is_none());
    }
}
