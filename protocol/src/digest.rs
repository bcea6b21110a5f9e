//! Bucketed digests: after a reconnect the agent sends one hash per bucket
//! of its inventory (`InventorySummary`) instead of every entry, and the hub
//! asks only for the buckets whose hash differs from its own view
//! (docs/protocol.md section 7, *Bucketed digests*).
//!
//! Both ends must compute byte-identical hashes, so everything here is a
//! pure function of the entries; the hub and the agent share it.

use std::fmt;

use crate::frame::{InventoryEntry, InventorySummary, ObjectRef};

/// Fewest buckets in a summary.
pub const MIN_BUCKETS: u32 = 16;
/// Most buckets in a summary: 32,768 hashes of 16 bytes (18 encoded) make a
/// summary of about 590 KB, so it always fits one 1 MiB frame and is never
/// chunked.
pub const MAX_BUCKETS: u32 = 32_768;
/// Objects per bucket the reference agent aims at when it picks a count.
pub const OBJECTS_PER_BUCKET: usize = 8;
/// Length of one bucket hash, bytes.
pub const BUCKET_HASH_LEN: usize = 16;
/// Most buckets a hub asks for in one `ResyncRequest`; when more differ it
/// asks for the whole digest instead (an empty `ResyncRequest`).
pub const MAX_REQUESTED_BUCKETS: usize = 4096;

/// A bucketed digest broke the rules of section 7 (answered with
/// `Error{digest_error}` and a close).
#[non_exhaustive]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DigestError {
    /// `bucket_count` is not a power of two in `MIN_BUCKETS..=max`.
    BucketCount {
        /// The count received.
        count: u32,
        /// The most the receiver accepts.
        max: u32,
    },
    /// The number of hashes is not `bucket_count`.
    HashCount {
        /// Hashes received.
        got: usize,
        /// `bucket_count`.
        want: u32,
    },
    /// A hash is not [`BUCKET_HASH_LEN`] bytes.
    HashLength {
        /// Bucket of the hash.
        bucket: usize,
        /// Its length.
        len: usize,
    },
    /// A bucket list is empty, too long, not strictly ascending or names a
    /// bucket at or beyond `bucket_count`.
    BucketList {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A bucket inventory names other buckets than the hub asked for.
    NotRequested,
    /// An entry of a bucket inventory belongs to none of its buckets.
    EntryOutsideBuckets {
        /// The entry's bucket.
        bucket: u32,
    },
    /// A bucket frame arrived without the summary it refers to (or a second
    /// summary on one connection).
    OutOfOrder(&'static str),
}

impl fmt::Display for DigestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DigestError::BucketCount { count, max } => write!(
                f,
                "bucket_count {count} is not a power of two from {MIN_BUCKETS} to {max}"
            ),
            DigestError::HashCount { got, want } => {
                write!(f, "{got} bucket hashes for bucket_count {want}")
            }
            DigestError::HashLength { bucket, len } => write!(
                f,
                "hash of bucket {bucket} is {len} bytes, expected {BUCKET_HASH_LEN}"
            ),
            DigestError::BucketList { reason } => write!(f, "bucket list {reason}"),
            DigestError::NotRequested => {
                f.write_str("inventory buckets differ from the buckets requested")
            }
            DigestError::EntryOutsideBuckets { bucket } => write!(
                f,
                "an inventory entry of bucket {bucket} is outside the listed buckets"
            ),
            DigestError::OutOfOrder(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for DigestError {}

/// The bucket count the reference agent uses for `objects` entries: the
/// smallest power of two holding them at [`OBJECTS_PER_BUCKET`] per bucket,
/// at least [`MIN_BUCKETS`] and at most `max` (the hub's announced limit,
/// itself capped at [`MAX_BUCKETS`]).
pub fn bucket_count_for(objects: usize, max: u32) -> u32 {
    let max = floor_pow2(max.min(MAX_BUCKETS)).max(MIN_BUCKETS);
    let want = objects.div_ceil(OBJECTS_PER_BUCKET).max(1);
    let want = u32::try_from(want).unwrap_or(u32::MAX);
    want.checked_next_power_of_two()
        .unwrap_or(max)
        .clamp(MIN_BUCKETS, max)
}

fn floor_pow2(n: u32) -> u32 {
    if n == 0 {
        0
    } else {
        1 << (31 - n.leading_zeros())
    }
}

/// Whether `count` is a bucket count a receiver accepting up to `max` takes.
pub fn valid_bucket_count(count: u32, max: u32) -> bool {
    count.is_power_of_two() && count >= MIN_BUCKETS && count <= max.min(MAX_BUCKETS)
}

/// The bucket of an object: the first 4 bytes of
/// `SHA-256(kind ‖ 0x00 ‖ namespace ‖ 0x00 ‖ name)` as a big-endian `u32`,
/// modulo `count` (a power of two).
pub fn bucket_of(object: &ObjectRef, count: u32) -> u32 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(object.kind.as_str().as_bytes());
    ctx.update(&[0]);
    ctx.update(object.namespace.as_bytes());
    ctx.update(&[0]);
    ctx.update(object.name.as_bytes());
    let d = ctx.finish();
    let b = d.as_ref();
    let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    n % count.max(1)
}

/// The bytes one entry contributes to its bucket's hash:
/// `kind 0x00 namespace 0x00 name 0x00 version 0x00 status_hash 0x0A`, the
/// version in decimal ASCII.
pub fn entry_line(e: &InventoryEntry) -> Vec<u8> {
    let version = e.version.to_string();
    let o = &e.object;
    let mut line = Vec::with_capacity(
        o.kind.as_str().len()
            + o.namespace.len()
            + o.name.len()
            + version.len()
            + 5
            + e.status_hash.len(),
    );
    line.extend_from_slice(o.kind.as_str().as_bytes());
    line.push(0);
    line.extend_from_slice(o.namespace.as_bytes());
    line.push(0);
    line.extend_from_slice(o.name.as_bytes());
    line.push(0);
    line.extend_from_slice(version.as_bytes());
    line.push(0);
    line.extend_from_slice(e.status_hash.as_bytes());
    line.push(b'\n');
    line
}

/// Bytewise order of (kind, namespace, name), the order entries are hashed in.
fn sort_key(o: &ObjectRef) -> (&[u8], &[u8], &[u8]) {
    (
        o.kind.as_str().as_bytes(),
        o.namespace.as_bytes(),
        o.name.as_bytes(),
    )
}

/// One 16-byte hash per bucket: the first 16 bytes of SHA-256 over the
/// bucket's [`entry_line`]s, sorted bytewise by (kind, namespace, name). An
/// empty bucket hashes the empty string.
pub fn bucket_hashes<'a>(
    entries: impl IntoIterator<Item = &'a InventoryEntry>,
    count: u32,
) -> Vec<Vec<u8>> {
    let mut buckets: Vec<Vec<&InventoryEntry>> = vec![Vec::new(); count as usize];
    for e in entries {
        buckets[bucket_of(&e.object, count) as usize].push(e);
    }
    buckets
        .into_iter()
        .map(|mut b| {
            b.sort_by(|x, y| sort_key(&x.object).cmp(&sort_key(&y.object)));
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            for e in b {
                ctx.update(&entry_line(e));
            }
            ctx.finish().as_ref()[..BUCKET_HASH_LEN].to_vec()
        })
        .collect()
}

/// The summary of `entries` with `count` buckets.
pub fn summarize<'a>(
    entries: impl IntoIterator<Item = &'a InventoryEntry>,
    count: u32,
) -> InventorySummary {
    InventorySummary {
        bucket_count: count,
        hashes: bucket_hashes(entries, count),
    }
}

/// Checks a received summary against the receiver's bucket limit.
pub fn check_summary(s: &InventorySummary, max: u32) -> Result<(), DigestError> {
    if !valid_bucket_count(s.bucket_count, max) {
        return Err(DigestError::BucketCount {
            count: s.bucket_count,
            max: max.min(MAX_BUCKETS),
        });
    }
    if s.hashes.len() != s.bucket_count as usize {
        return Err(DigestError::HashCount {
            got: s.hashes.len(),
            want: s.bucket_count,
        });
    }
    if let Some((bucket, h)) = s
        .hashes
        .iter()
        .enumerate()
        .find(|(_, h)| h.len() != BUCKET_HASH_LEN)
    {
        return Err(DigestError::HashLength {
            bucket,
            len: h.len(),
        });
    }
    Ok(())
}

/// Checks a bucket list (of a `ResyncRequest` or a bucket `Inventory`):
/// non-empty, at most `min(count, MAX_REQUESTED_BUCKETS)` long, strictly
/// ascending, every index below `count`.
pub fn check_buckets(buckets: &[u32], count: u32) -> Result<(), DigestError> {
    let reason = if buckets.is_empty() {
        "is empty"
    } else if buckets.len() > MAX_REQUESTED_BUCKETS.min(count as usize) {
        "is too long"
    } else if buckets.windows(2).any(|w| w[0] >= w[1]) {
        "is not strictly ascending"
    } else if buckets.iter().any(|&b| b >= count) {
        "names a bucket at or beyond bucket_count"
    } else {
        return Ok(());
    };
    Err(DigestError::BucketList { reason })
}

/// The buckets whose hash differs between the summary received and the
/// receiver's own hashes (same count), ascending.
pub fn differing_buckets(ours: &[Vec<u8>], theirs: &[Vec<u8>]) -> Vec<u32> {
    ours.iter()
        .zip(theirs)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i as u32)
        .collect()
}

/// The entries of `entries` that fall in `buckets` (strictly ascending),
/// for the `Inventory` answering `ResyncRequest{buckets}`.
pub fn entries_in<'a>(
    entries: impl IntoIterator<Item = &'a InventoryEntry>,
    buckets: &[u32],
    count: u32,
) -> Vec<InventoryEntry> {
    entries
        .into_iter()
        .filter(|e| buckets.binary_search(&bucket_of(&e.object, count)).is_ok())
        .cloned()
        .collect()
}

/// Checks that every entry of a bucket inventory is in one of its buckets.
pub fn check_entries(
    entries: &[InventoryEntry],
    buckets: &[u32],
    count: u32,
) -> Result<(), DigestError> {
    for e in entries {
        let b = bucket_of(&e.object, count);
        if buckets.binary_search(&b).is_err() {
            return Err(DigestError::EntryOutsideBuckets { bucket: b });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::ObjectKind;

    fn entry(i: usize) -> InventoryEntry {
        InventoryEntry {
            object: ObjectRef::new(
                ObjectKind::ApplicationInstance,
                format!("team-{:02}", i % 50),
                format!("app-{i:05}"),
            ),
            version: i as u64 + 1,
            status_hash: format!("{i:016x}"),
        }
    }

    #[test]
    fn the_count_is_a_bounded_power_of_two() {
        assert_eq!(bucket_count_for(0, MAX_BUCKETS), MIN_BUCKETS);
        assert_eq!(bucket_count_for(100, MAX_BUCKETS), 16);
        assert_eq!(bucket_count_for(10_000, MAX_BUCKETS), 2048);
        assert_eq!(bucket_count_for(10_000, 1000), 512);
        assert_eq!(bucket_count_for(10_000_000, u32::MAX), MAX_BUCKETS);
        assert_eq!(bucket_count_for(10_000, 0), MIN_BUCKETS);
        for n in [0, 1, 7, 9, 129, 50_000, 1 << 20] {
            let c = bucket_count_for(n, MAX_BUCKETS);
            assert!(valid_bucket_count(c, MAX_BUCKETS), "{n} -> {c}");
        }
        assert!(!valid_bucket_count(8, MAX_BUCKETS));
        assert!(!valid_bucket_count(48, MAX_BUCKETS));
        assert!(!valid_bucket_count(MAX_BUCKETS * 2, u32::MAX));
    }

    #[test]
    fn the_bucket_is_the_first_four_bytes_of_the_sha256() {
        let o = ObjectRef::new(
            ObjectKind::ApplicationInstance,
            "team-07",
            "nextcloud-01234",
        );
        let d = ring::digest::digest(
            &ring::digest::SHA256,
            b"ApplicationInstance\0team-07\0nextcloud-01234",
        );
        let n = u32::from_be_bytes(d.as_ref()[..4].try_into().unwrap());
        assert_eq!(bucket_of(&o, 1024), n % 1024);
        assert_eq!(bucket_of(&o, 16), n % 16);
    }

    #[test]
    fn the_hash_does_not_depend_on_entry_order() {
        let all: Vec<_> = (0..500).map(entry).collect();
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(bucket_hashes(&all, 64), bucket_hashes(&rev, 64));
    }

    #[test]
    fn an_empty_bucket_hashes_the_empty_string() {
        let h = bucket_hashes(std::iter::empty(), 16);
        let empty = ring::digest::digest(&ring::digest::SHA256, b"");
        assert_eq!(h.len(), 16);
        assert!(h.iter().all(|b| b[..] == empty.as_ref()[..16]));
    }

    #[test]
    fn a_changed_version_or_status_changes_exactly_its_bucket() {
        let agent: Vec<_> = (0..2000).map(entry).collect();
        let count = bucket_count_for(agent.len(), MAX_BUCKETS);
        let hub = agent.clone();
        assert_eq!(
            differing_buckets(&bucket_hashes(&hub, count), &bucket_hashes(&agent, count)),
            Vec::<u32>::new()
        );
        for (i, change) in [(3usize, "version"), (1500, "status"), (77, "gone")] {
            let mut changed = agent.clone();
            match change {
                "version" => changed[i].version += 1,
                "status" => changed[i].status_hash = "different".into(),
                _ => {
                    changed.remove(i);
                }
            }
            let d = differing_buckets(&bucket_hashes(&hub, count), &bucket_hashes(&changed, count));
            assert_eq!(d, vec![bucket_of(&agent[i].object, count)], "{change}");
            // The hub asks for that bucket; the agent's entries of it bring it level.
            let got = entries_in(&changed, &d, count);
            check_entries(&got, &d, count).unwrap();
            let mut fixed: Vec<_> = hub
                .iter()
                .filter(|e| bucket_of(&e.object, count) != d[0])
                .cloned()
                .collect();
            fixed.extend(got);
            assert_eq!(bucket_hashes(&fixed, count), bucket_hashes(&changed, count));
        }
    }

    #[test]
    fn nonsense_summaries_and_bucket_lists_are_refused() {
        let ok = summarize(&[entry(1)], 16);
        check_summary(&ok, MAX_BUCKETS).unwrap();
        let mut s = ok.clone();
        s.bucket_count = 24;
        assert!(matches!(
            check_summary(&s, MAX_BUCKETS),
            Err(DigestError::BucketCount { .. })
        ));
        let mut s = ok.clone();
        s.hashes.pop();
        assert!(matches!(
            check_summary(&s, MAX_BUCKETS),
            Err(DigestError::HashCount { .. })
        ));
        let mut s = ok.clone();
        s.hashes[3] = vec![0; 32];
        assert_eq!(
            check_summary(&s, MAX_BUCKETS),
            Err(DigestError::HashLength { bucket: 3, len: 32 })
        );
        assert!(check_summary(&ok, 8).is_err(), "over the receiver's limit");
        check_buckets(&[0, 5, 15], 16).unwrap();
        for bad in [&[][..], &[16], &[3, 3], &[5, 2]] {
            assert!(check_buckets(bad, 16).is_err(), "{bad:?}");
        }
        let too_many: Vec<u32> = (0..(MAX_REQUESTED_BUCKETS as u32 + 1)).collect();
        assert!(check_buckets(&too_many, MAX_BUCKETS).is_err());
        let e = entry(9);
        let b = bucket_of(&e.object, 16);
        let other = (b + 1) % 16;
        assert_eq!(
            check_entries(std::slice::from_ref(&e), &[other], 16),
            Err(DigestError::EntryOutsideBuckets { bucket: b })
        );
    }
}
