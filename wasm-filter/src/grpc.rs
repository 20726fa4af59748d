//! gRPC as the filter sees it pass: whether a request is gRPC, and how many
//! messages each direction's body carries.
//!
//! A gRPC body is a sequence of length-prefixed messages (one byte of flags,
//! four of big-endian length, then the message; the gRPC-over-HTTP/2
//! protocol). The filter lets each body chunk through as it arrives, so a
//! prefix can be cut between two chunks and a message can span many: the
//! counter keeps where the next prefix starts across chunks, and reads only
//! the prefix bytes themselves, never the messages.

/// Whether a request's `content-type` is gRPC's (`application/grpc`, with an
/// optional `+proto`, `+json`... suffix or parameters).
pub fn is_grpc(content_type: &str) -> bool {
    content_type
        .strip_prefix("application/grpc")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
}

/// The length of a message's prefix.
const PREFIX: usize = 5;

/// Counts the messages of one body, fed chunk by chunk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MessageCounter {
    messages: u64,
    /// The prefix bytes read so far of the message being framed.
    prefix: [u8; PREFIX],
    prefix_len: usize,
    /// Bytes of the current message still to come before the next prefix.
    skip: u64,
}

impl MessageCounter {
    /// Messages whose prefix has passed.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Takes a chunk of `len` bytes, reading from it only the prefix bytes it
    /// holds: `read(offset, len)` returns up to `len` bytes of the chunk at
    /// `offset`. A read that fails leaves the rest of the chunk uncounted.
    pub fn feed(&mut self, len: usize, mut read: impl FnMut(usize, usize) -> Option<Vec<u8>>) {
        let mut at = 0;
        while at < len {
            let left = len - at;
            if self.skip > 0 {
                let skipped = usize::try_from(self.skip).map_or(left, |skip| skip.min(left));
                self.skip -= skipped as u64;
                at += skipped;
                continue;
            }
            let wanted = (PREFIX - self.prefix_len).min(left);
            let Some(bytes) = read(at, wanted).filter(|bytes| !bytes.is_empty()) else {
                return;
            };
            let taken = bytes.len().min(wanted);
            self.prefix[self.prefix_len..self.prefix_len + taken].copy_from_slice(&bytes[..taken]);
            self.prefix_len += taken;
            at += taken;
            if self.prefix_len == PREFIX {
                self.messages += 1;
                let [_, length @ ..] = self.prefix;
                self.skip = u64::from(u32::from_be_bytes(length));
                self.prefix_len = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(messages: &[&[u8]]) -> Vec<u8> {
        messages
            .iter()
            .flat_map(|message| {
                let mut frame = vec![0];
                frame.extend(u32::try_from(message.len()).unwrap().to_be_bytes());
                frame.extend_from_slice(message);
                frame
            })
            .collect()
    }

    /// Feeds `body` cut into chunks of `size`, and counts the bytes read.
    fn count(body: &[u8], size: usize) -> (u64, usize) {
        let mut counter = MessageCounter::default();
        let mut read_bytes = 0;
        for chunk in body.chunks(size) {
            counter.feed(chunk.len(), |offset, len| {
                let bytes = chunk.get(offset..(offset + len).min(chunk.len()))?.to_vec();
                read_bytes += bytes.len();
                Some(bytes)
            });
        }
        (counter.messages(), read_bytes)
    }

    #[test]
    fn messages_are_counted_however_the_body_is_cut_and_only_prefixes_are_read() {
        let body = framed(&[b"order 41", b"", &[7; 300], b"order 42"]);
        for size in [1, 2, 4, 5, 6, 13, 64, 4096] {
            assert_eq!(count(&body, size), (4, 4 * PREFIX), "chunks of {size}");
        }
        // The first message is 13 bytes; the second's prefix is complete
        // only with byte 18, and then counts although its message was cut.
        assert_eq!(count(&body[..17], 4).0, 1);
        assert_eq!(count(&body[..18], 4).0, 2);
        assert_eq!(count(&[], 4).0, 0);
    }

    #[test]
    fn a_chunk_that_cannot_be_read_is_not_counted_from() {
        let body = framed(&[b"a", b"b"]);
        let mut counter = MessageCounter::default();
        counter.feed(body.len(), |_, _| None);
        assert_eq!(counter.messages(), 0);
    }

    #[test]
    fn grpc_content_types_are_told_from_others() {
        for grpc in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;x=1",
        ] {
            assert!(is_grpc(grpc), "{grpc}");
        }
        for other in ["application/grpc-web", "application/json", "", "text/grpc"] {
            assert!(!is_grpc(other), "{other}");
        }
    }
}
