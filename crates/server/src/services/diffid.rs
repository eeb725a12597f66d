//! A layer's diff ID (the sha256 of its uncompressed tar) computed while its
//! blob streams by, in bounded memory.
//!
//! gzip is inflated with `flate2` (multi-member, as Go's `gzip.Reader`
//! reads it); any other blob is hashed as it is (a plain tar layer).

use std::io::{self, Write};

use regcache_formats::{Digest, Sha256Hasher};

/// Feeds the hash with what the decoder writes.
struct HashSink(Sha256Hasher);

impl Write for HashSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum State {
    /// Fewer than two bytes seen: not known yet whether it is gzip.
    Start(Vec<u8>),
    Gzip(Box<flate2::write::MultiGzDecoder<HashSink>>),
    Plain(Sha256Hasher),
}

/// Push the blob's bytes in order with [`DiffHasher::update`], then [`DiffHasher::finish`].
pub struct DiffHasher {
    state: State,
    size: u64,
}

impl Default for DiffHasher {
    fn default() -> Self {
        DiffHasher {
            state: State::Start(Vec::with_capacity(2)),
            size: 0,
        }
    }
}

impl std::fmt::Debug for DiffHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiffHasher")
            .field("size", &self.size)
            .finish()
    }
}

impl DiffHasher {
    pub fn update(&mut self, mut chunk: &[u8]) -> io::Result<()> {
        self.size += chunk.len() as u64;
        if let State::Start(head) = &mut self.state {
            let take = chunk.len().min(2 - head.len());
            head.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if head.len() < 2 {
                return Ok(());
            }
            let head = std::mem::take(head);
            self.state = Self::decide(&head)?;
        }
        match &mut self.state {
            State::Gzip(d) => d.write_all(chunk),
            State::Plain(h) => {
                h.update(chunk);
                Ok(())
            }
            State::Start(_) => Ok(()),
        }
    }

    fn decide(head: &[u8]) -> io::Result<State> {
        if head == [0x1f, 0x8b] {
            let mut d = flate2::write::MultiGzDecoder::new(HashSink(Sha256Hasher::new()));
            d.write_all(head)?;
            Ok(State::Gzip(Box::new(d)))
        } else {
            let mut h = Sha256Hasher::new();
            h.update(head);
            Ok(State::Plain(h))
        }
    }

    /// The diff ID and the number of blob bytes seen.
    pub fn finish(self) -> io::Result<(Digest, u64)> {
        let hasher = match self.state {
            State::Start(head) => match Self::decide(&head)? {
                State::Plain(h) => h,
                _ => return Err(io::Error::other("truncated gzip stream")),
            },
            State::Gzip(d) => d.finish()?.0,
            State::Plain(h) => h,
        };
        Ok((hasher.finish(), self.size))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn hash_in_chunks(blob: &[u8], chunk: usize) -> (Digest, u64) {
        let mut h = DiffHasher::default();
        for c in blob.chunks(chunk) {
            h.update(c).unwrap();
        }
        h.finish().unwrap()
    }

    #[test]
    fn gzip_layers_hash_their_uncompressed_bytes_whatever_the_chunking() {
        let tar: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let blob = gzip(&tar);
        for chunk in [1, 2, 3, 4096, blob.len()] {
            assert_eq!(
                hash_in_chunks(&blob, chunk),
                (Digest::sha256_of(&tar), blob.len() as u64),
                "chunk {chunk}"
            );
        }
        // Two gzip members concatenated inflate to both parts (Go reads on).
        let mut two = gzip(b"abc");
        two.extend(gzip(b"def"));
        assert_eq!(hash_in_chunks(&two, 5).0, Digest::sha256_of(b"abcdef"));
    }

    #[test]
    fn other_blobs_are_hashed_as_they_are() {
        for blob in [&b""[..], b"x", b"plain tar bytes"] {
            assert_eq!(
                hash_in_chunks(blob, 1),
                (Digest::sha256_of(blob), blob.len() as u64)
            );
        }
        // The empty-layer blob regcache serves inflates to 1024 zero bytes.
        let empty = regcache_formats::schema1::EMPTY_LAYER_BYTES;
        assert_eq!(hash_in_chunks(&empty, 7).0, Digest::sha256_of(&[0u8; 1024]));
    }
}
