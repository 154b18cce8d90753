//! Length-prefixed frames out of a byte stream, without I/O: what arrived
//! is joined to the partial frame a connection kept, whole frames come
//! out one by one (each checked against the limit the caller gives at that
//! moment: it changes at Auth), and the start of a frame not complete yet
//! is kept in a buffer sized to that frame, not to what a doubling growth
//! would leave (`conn/input.rs` runs it; the `frames` fuzz target too).

use gw_proto::pb::Frame;
use gw_proto::{DecodeError, Decoded};

/// The bytes being split: what arrived, or the kept partial frame with
/// what arrived appended.
enum Source<'a> {
    Data(&'a [u8]),
    Joined(Vec<u8>),
}

/// Whole frames out of a connection's kept partial frame and new bytes.
pub struct Split<'a> {
    src: Source<'a>,
    pos: usize,
}

impl<'a> Split<'a> {
    pub fn new(partial: Vec<u8>, data: &'a [u8]) -> Split<'a> {
        let src = if partial.is_empty() {
            Source::Data(data)
        } else {
            // Exactly what arrived: no doubling of a partial frame's buffer.
            let mut partial = partial;
            partial.reserve_exact(data.len());
            partial.extend_from_slice(data);
            Source::Joined(partial)
        };
        Split { src, pos: 0 }
    }

    fn buf(&self) -> &[u8] {
        match &self.src {
            Source::Data(d) => d,
            Source::Joined(v) => v,
        }
    }

    /// The next whole frame within `max` bytes (prefix excluded), an
    /// error that ends the stream, or None when the rest is incomplete.
    pub fn next(&mut self, max: usize) -> Option<Result<Frame, DecodeError>> {
        let rest = &self.buf()[self.pos..];
        if rest.is_empty() {
            return None;
        }
        match gw_proto::decode(rest, max) {
            Ok(Decoded::Frame(frame, used)) => {
                debug_assert!(used > 0 && used <= rest.len());
                self.pos += used;
                Some(Ok(frame))
            }
            Ok(Decoded::Incomplete(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }

    /// The partial frame to keep: empty and unallocated when nothing is
    /// left; otherwise sized to the frame its length prefix announces
    /// (checked against `max`). The joined buffer stays when all of it is
    /// the partial frame and it is no bigger than that frame.
    pub fn rest(self, max: usize) -> Vec<u8> {
        let pos = self.pos;
        match self.src {
            Source::Joined(v) if pos == 0 && v.capacity() <= frame_size(&v, max) => v,
            src => {
                let rest = match &src {
                    Source::Data(d) => &d[pos..],
                    Source::Joined(v) => &v[pos..],
                };
                if rest.is_empty() {
                    return Vec::new();
                }
                let mut v = Vec::with_capacity(frame_size(rest, max));
                v.extend_from_slice(rest);
                v
            }
        }
    }
}

/// Bytes of the frame at the start of `rest` (prefix included), when its
/// length prefix is in; else what is there.
fn frame_size(rest: &[u8], max: usize) -> usize {
    match gw_proto::peek_len(rest, max) {
        Ok(Some(total)) => total.max(rest.len()),
        _ => rest.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gw_proto::pb::{frame::Body, Ping};

    fn ping() -> Vec<u8> {
        gw_proto::encode(&Frame {
            body: Some(Body::Ping(Ping {
                heartbeat_interval_ms: 7,
            })),
        })
        .to_vec()
    }

    #[test]
    fn frames_across_reads_and_a_partial_sized_to_its_frame() {
        let one = ping();
        let mut stream = one.clone();
        stream.extend_from_slice(&one);
        // First read: a frame and a half.
        let cut = one.len() + 3;
        let mut s = Split::new(Vec::new(), &stream[..cut]);
        assert!(matches!(s.next(64), Some(Ok(_))));
        assert!(s.next(64).is_none());
        let kept = s.rest(64);
        assert_eq!(kept.len(), 3);
        assert_eq!(kept.capacity(), 3, "no prefix yet: what is there");
        // Second read: the rest.
        let mut s = Split::new(kept, &stream[cut..]);
        assert!(matches!(s.next(64), Some(Ok(_))));
        assert!(s.next(64).is_none());
        assert_eq!(s.rest(64).capacity(), 0);
    }

    #[test]
    fn an_announced_frame_over_the_limit_is_an_error() {
        let mut big = 100u32.to_be_bytes().to_vec();
        big.extend_from_slice(&[0; 10]);
        let mut s = Split::new(Vec::new(), &big);
        assert!(matches!(
            s.next(64),
            Some(Err(DecodeError::TooLarge { .. }))
        ));
        let mut s = Split::new(Vec::new(), &big);
        assert!(s.next(128).is_none(), "within 128: incomplete");
        assert_eq!(s.rest(128).capacity(), 104, "sized to the announced frame");
    }
}
