//! Bytes on their way out: a frame as a few bytes of its own (`Head`) in
//! front of a body that may be shared by many connections (`Out`). The
//! reliable-push heads (`core/push.rs`) and the WebSocket wrapping
//! (`ws.rs`) write heads; the drivers write `head ++ body`.

use bytes::Bytes;

/// Room in a head: a push head (at most `core::push::HEAD_BYTES_MAX`, 24
/// bytes) with a WebSocket header (up to 10 bytes) in place of its 4-byte
/// length prefix.
pub const HEAD_BUF: usize = 32;

/// The per-recipient bytes in front of a shared body.
#[derive(Clone, Copy)]
pub struct Head {
    pub(crate) buf: [u8; HEAD_BUF],
    pub(crate) len: u8,
}

impl Head {
    pub const EMPTY: Head = Head {
        buf: [0; HEAD_BUF],
        len: 0,
    };
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
    /// `prefix` followed by this head from byte `from` (at most HEAD_BUF bytes).
    pub fn replaced_prefix(&self, prefix: &[u8], from: usize) -> Head {
        let rest = &self.as_slice()[from.min(self.len as usize)..];
        let mut h = Head::EMPTY;
        let n = (prefix.len() + rest.len()).min(HEAD_BUF);
        h.buf[..prefix.len()].copy_from_slice(prefix);
        h.buf[prefix.len()..n].copy_from_slice(&rest[..n - prefix.len()]);
        h.len = n as u8;
        h
    }
}

/// One item of a connection's outbound queue: `head ++ body` is one frame.
pub struct Out {
    pub head: Head,
    pub body: Bytes,
}

impl Out {
    /// A frame encoded on its own (replies, pongs, errors).
    pub fn frame(bytes: Bytes) -> Out {
        Out {
            head: Head::EMPTY,
            body: bytes,
        }
    }
    pub fn len(&self) -> usize {
        self.head.len as usize + self.body.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
