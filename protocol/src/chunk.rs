//! Chunked `Hello` and `Inventory` frames: splitting a long list into frames
//! that each fit the frame limit, and the receiver's bounded reassembly.
//!
//! This module holds the rules only; the caller owns the clock (the
//! reassembly deadline) and the connection.

use crate::frame::Chunk;

/// Why a chunked frame was refused (wire code `chunk_error`).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// `count` is 0, or `index` is not below `count`.
    #[error("chunk index {index} of count {count} is not valid")]
    Invalid {
        /// `index` as received.
        index: u32,
        /// `count` as received.
        count: u32,
    },
    /// More chunks announced than the receiver accepts.
    #[error("{count} chunks announced, at most {max} accepted")]
    TooManyChunks {
        /// `count` as received.
        count: u32,
        /// The receiver's `max_chunks`.
        max: u32,
    },
    /// A chunk arrived out of order or with another `count`.
    #[error("expected chunk {expected} of {count}, got {index} of {got_count}")]
    OutOfOrder {
        /// The index the receiver waits for.
        expected: u32,
        /// The count of the set in progress.
        count: u32,
        /// `index` as received.
        index: u32,
        /// `count` as received.
        got_count: u32,
    },
    /// An unchunked frame of the same type arrived while a set was incomplete.
    #[error("unchunked frame while chunk {expected} of {count} is awaited")]
    Interrupted {
        /// The index the receiver waits for.
        expected: u32,
        /// The count of the set in progress.
        count: u32,
    },
    /// The set holds more entries in all than the receiver accepts.
    #[error("more than {max} entries in one chunked frame")]
    TooManyEntries {
        /// The receiver's bound.
        max: usize,
    },
    /// The set was not completed in time.
    #[error("chunked frame not completed within {secs} s")]
    TimedOut {
        /// The receiver's deadline, seconds.
        secs: u64,
    },
}

/// Reassembles one kind of chunked frame (one per frame type and connection).
///
/// Memory is bounded by `max_chunks` frames of at most `max_frame_bytes`
/// each and by `max_entries` in all.
#[derive(Debug)]
pub struct Assembly<T> {
    max_chunks: u32,
    max_entries: usize,
    /// `(count, next index)` of the set in progress.
    pending: Option<(u32, u32)>,
    entries: Vec<T>,
}

impl<T> Assembly<T> {
    /// An empty assembly accepting at most `max_chunks` chunks and
    /// `max_entries` entries per set.
    pub fn new(max_chunks: u32, max_entries: usize) -> Self {
        Self {
            max_chunks,
            max_entries,
            pending: None,
            entries: Vec::new(),
        }
    }

    /// Whether a set is in progress (its first chunk arrived, its last not yet).
    pub fn in_progress(&self) -> bool {
        self.pending.is_some()
    }

    /// Takes one frame's entries. Returns the whole list once the set is
    /// complete (at once for an unchunked frame), `None` while chunks are
    /// still awaited. On an error the set in progress is dropped.
    pub fn push(
        &mut self,
        chunk: Option<Chunk>,
        entries: Vec<T>,
    ) -> Result<Option<Vec<T>>, ChunkError> {
        let r = self.push_inner(chunk, entries);
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn push_inner(
        &mut self,
        chunk: Option<Chunk>,
        entries: Vec<T>,
    ) -> Result<Option<Vec<T>>, ChunkError> {
        let Some(c) = chunk else {
            if let Some((count, expected)) = self.pending {
                return Err(ChunkError::Interrupted { expected, count });
            }
            if entries.len() > self.max_entries {
                return Err(ChunkError::TooManyEntries {
                    max: self.max_entries,
                });
            }
            return Ok(Some(entries));
        };
        if c.count == 0 || c.index >= c.count {
            return Err(ChunkError::Invalid {
                index: c.index,
                count: c.count,
            });
        }
        if c.count > self.max_chunks {
            return Err(ChunkError::TooManyChunks {
                count: c.count,
                max: self.max_chunks,
            });
        }
        let (count, expected) = self.pending.unwrap_or((c.count, 0));
        if c.index != expected || c.count != count {
            return Err(ChunkError::OutOfOrder {
                expected,
                count,
                index: c.index,
                got_count: c.count,
            });
        }
        if self.entries.len().saturating_add(entries.len()) > self.max_entries {
            return Err(ChunkError::TooManyEntries {
                max: self.max_entries,
            });
        }
        self.entries.extend(entries);
        if c.is_last() {
            self.pending = None;
            Ok(Some(std::mem::take(&mut self.entries)))
        } else {
            self.pending = Some((count, expected + 1));
            Ok(None)
        }
    }

    /// Drops the set in progress (after a timeout, for instance).
    pub fn reset(&mut self) {
        self.pending = None;
        self.entries = Vec::new();
    }
}

/// Splits `entries` into `ceil(len / per_chunk)` chunks (at least one, even
/// for an empty list), each tagged with its [`Chunk`] position.
pub fn split<T>(entries: Vec<T>, per_chunk: usize) -> Vec<(Chunk, Vec<T>)> {
    let per_chunk = per_chunk.max(1);
    let count = entries.len().div_ceil(per_chunk).max(1);
    let count32 = u32::try_from(count).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(count);
    let mut it = entries.into_iter();
    for index in 0..count32 {
        let part: Vec<T> = it.by_ref().take(per_chunk).collect();
        out.push((
            Chunk {
                index,
                count: count32,
            },
            part,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(index: u32, count: u32) -> Option<Chunk> {
        Some(Chunk { index, count })
    }

    #[test]
    fn a_set_in_order_is_assembled_on_its_last_chunk() {
        let mut a = Assembly::new(4, 100);
        assert_eq!(a.push(c(0, 3), vec![1, 2]), Ok(None));
        assert!(a.in_progress());
        assert_eq!(a.push(c(1, 3), vec![3]), Ok(None));
        assert_eq!(a.push(c(2, 3), vec![4]), Ok(Some(vec![1, 2, 3, 4])));
        assert!(!a.in_progress());
        assert_eq!(a.push(None, vec![5]), Ok(Some(vec![5])));
    }

    #[test]
    fn broken_sets_are_refused_and_dropped() {
        let mut a = Assembly::new(4, 5);
        assert!(matches!(
            a.push(c(0, 0), vec![1]),
            Err(ChunkError::Invalid { .. })
        ));
        assert!(matches!(
            a.push(c(0, 5), vec![1]),
            Err(ChunkError::TooManyChunks { count: 5, max: 4 })
        ));
        assert!(matches!(
            a.push(c(1, 2), vec![1]),
            Err(ChunkError::OutOfOrder { expected: 0, .. })
        ));
        a.push(c(0, 2), vec![1]).unwrap();
        assert!(matches!(
            a.push(c(1, 3), vec![1]),
            Err(ChunkError::OutOfOrder { .. })
        ));
        assert!(!a.in_progress(), "an error drops the set");
        a.push(c(0, 2), vec![1]).unwrap();
        assert!(matches!(
            a.push(None, vec![1]),
            Err(ChunkError::Interrupted { .. })
        ));
        a.push(c(0, 2), vec![1, 2, 3]).unwrap();
        assert_eq!(
            a.push(c(1, 2), vec![4, 5, 6]),
            Err(ChunkError::TooManyEntries { max: 5 })
        );
        assert_eq!(
            a.push(None, vec![0; 6]),
            Err(ChunkError::TooManyEntries { max: 5 })
        );
    }

    #[test]
    fn split_covers_every_entry_in_order() {
        let parts = split((0..10).collect::<Vec<_>>(), 4);
        let counts: Vec<_> = parts
            .iter()
            .map(|(c, p)| (c.index, c.count, p.len()))
            .collect();
        assert_eq!(counts, vec![(0, 3, 4), (1, 3, 4), (2, 3, 2)]);
        let empty = split(Vec::<u8>::new(), 4);
        assert_eq!(empty.len(), 1);
        assert_eq!(empty[0].0, Chunk { index: 0, count: 1 });
    }
}
