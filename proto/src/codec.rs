//! Length-prefixed framing: a 4-byte big-endian length `N`, then `N` bytes of
//! one protobuf [`Frame`]. Pure functions over byte slices; the connection
//! layer owns the sockets and buffers.
//!
//! The length is checked against `frame_bytes_max` before anything is
//! allocated or decoded, so a hostile prefix costs nothing.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::pb::Frame;

/// Size of the length prefix in bytes.
pub const LEN_PREFIX_BYTES: usize = 4;

/// Why a buffer could not be decoded. Each maps to a typed close reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The length prefix announces more than `frame_bytes_max` bytes.
    TooLarge { len: usize, max: usize },
    /// The payload is not a valid protobuf `Frame`, or has no body.
    Malformed(String),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooLarge { len, max } => {
                write!(f, "frame of {len} bytes exceeds frame_bytes_max {max}")
            }
            DecodeError::Malformed(why) => write!(f, "malformed frame: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Outcome of decoding from the front of a buffer.
#[derive(Debug, PartialEq)]
pub enum Decoded {
    /// A whole frame, and how many bytes of the buffer it used (prefix included).
    Frame(Frame, usize),
    /// Not enough bytes yet: at least this many more are needed.
    Incomplete(usize),
}

/// Reads the length prefix, if the buffer holds it, and checks it against
/// `frame_bytes_max`. Returns the total bytes (prefix + body) of the frame.
pub fn peek_len(buf: &[u8], frame_bytes_max: usize) -> Result<Option<usize>, DecodeError> {
    let Some(prefix) = buf.get(..LEN_PREFIX_BYTES) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
    if len > frame_bytes_max {
        return Err(DecodeError::TooLarge {
            len,
            max: frame_bytes_max,
        });
    }
    Ok(Some(LEN_PREFIX_BYTES + len))
}

/// Decodes one frame from the front of `buf`.
///
/// Byte fields of the result are copied out of `buf` (they are small and
/// `buf` is usually a scratch buffer that is reused at once).
pub fn decode(buf: &[u8], frame_bytes_max: usize) -> Result<Decoded, DecodeError> {
    let total = match peek_len(buf, frame_bytes_max)? {
        None => return Ok(Decoded::Incomplete(LEN_PREFIX_BYTES - buf.len())),
        Some(total) => total,
    };
    if buf.len() < total {
        return Ok(Decoded::Incomplete(total - buf.len()));
    }
    let frame = Frame::decode(&buf[LEN_PREFIX_BYTES..total])
        .map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if frame.body.is_none() {
        return Err(DecodeError::Malformed("frame has no body".into()));
    }
    Ok(Decoded::Frame(frame, total))
}

/// Appends one length-prefixed frame to `dst`.
pub fn encode_into(frame: &Frame, dst: &mut BytesMut) {
    let len = frame.encoded_len();
    dst.reserve(LEN_PREFIX_BYTES + len);
    // A Frame larger than 4 GiB cannot be built from the gateway's bounded inputs.
    dst.put_u32(len as u32);
    // Cannot fail: capacity was reserved above.
    let _ = frame.encode(dst);
}

/// Encodes one length-prefixed frame into fresh `Bytes`, shareable across
/// every recipient of a push.
pub fn encode(frame: &Frame) -> Bytes {
    let mut dst = BytesMut::with_capacity(LEN_PREFIX_BYTES + frame.encoded_len());
    encode_into(frame, &mut dst);
    dst.freeze()
}

#[cfg(test)]
mod tests;
