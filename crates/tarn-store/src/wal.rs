//! The write-ahead log: segment files of framed records.
//!
//! A segment is `wal/<seq, 20 digits>.wal`: a 32-byte header, then
//! records back to back. Each record is framed so that a torn or damaged
//! tail is detected and a recovery scan can find the next good record:
//! ```text
//! u32 payload length   u32 sentinel (0x4E52_5401)   u32 CRC32C(payload)
//! payload (codec.rs: a committed transaction, with its own version byte)
//! ```
//! The segment header is `"TARNWAL\0"`, `u32` format version, `u32`
//! reserved (0), `u64` segment number, `u32` CRC32C of the preceding 24
//! bytes, `u32` reserved (0).
//!
//! Each group of records written and synced together ends with a *sync
//! marker* (a record whose payload is `[1, 2]`). Group N+1 is written only
//! after group N's sync returned, so an intact marker after a damaged
//! record proves the damaged group was complete: real corruption. Damage
//! with no intact marker after it, in the newest segment, is a torn final
//! group that was never acknowledged: the tail is cut there, even if
//! records of that group persisted past the hole.
//!
//! What is assumed of the disk: a write may be torn at any byte, and
//! nothing written is durable until `fdatasync` returns; after a failed
//! `fdatasync` the page cache is not trusted again (the database stops).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path as FsPath, PathBuf};

use crate::codec::{self, CommitRecord, DecodeError};

/// Format version of segment files written by this build. Format 2 adds a
/// sync marker after each group of records; format 1 (no markers) is
/// still read.
pub const SEGMENT_FORMAT: u32 = 2;
/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Bytes of a record's frame before its payload.
pub const RECORD_HEADER_BYTES: usize = 12;
/// Marks the start of every record.
pub const SENTINEL: u32 = 0x4E52_5401;
const SEGMENT_MAGIC: &[u8; 8] = b"TARNWAL\0";

/// When a commit counts as durable (config `wal.sync`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `fdatasync` before acknowledging each group of commits.
    Always,
    /// `fdatasync` at most once per this many milliseconds: commits
    /// arriving within the window after a sync gather and share the next
    /// one, which acknowledges them all.
    Batch(u64),
    /// Acknowledge once written to the OS; survives a crash of tarn, not
    /// of the machine.
    Never,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        SyncPolicy::Batch(2)
    }
}

impl std::str::FromStr for SyncPolicy {
    type Err = String;

    /// Parses `always`, `never`, `batch` (2 ms) or `batch(<ms>)`.
    fn from_str(s: &str) -> Result<SyncPolicy, String> {
        let s = s.trim();
        match s {
            "always" => return Ok(SyncPolicy::Always),
            "never" => return Ok(SyncPolicy::Never),
            "batch" => return Ok(SyncPolicy::Batch(2)),
            _ => {}
        }
        let ms = s
            .strip_prefix("batch(")
            .and_then(|rest| rest.strip_suffix(')'))
            .and_then(|ms| ms.trim().trim_end_matches("ms").parse::<u64>().ok());
        match ms {
            Some(ms) if ms <= 10_000 => Ok(SyncPolicy::Batch(ms)),
            _ => Err(format!(
                "unknown sync policy '{s}': use always, never, or batch(<ms>) with at most 10000 ms"
            )),
        }
    }
}

impl std::fmt::Display for SyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SyncPolicy::Always => f.write_str("always"),
            SyncPolicy::Never => f.write_str("never"),
            SyncPolicy::Batch(ms) => write!(f, "batch({ms})"),
        }
    }
}

/// The file name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:020}.wal")
}

/// The segment number of a file name, if it is a segment's.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments in `dir`, sorted by number.
pub fn list_segments(dir: &FsPath) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Frames `payload` as a record, appending to `out`.
pub fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    frame_with(out, |buf| buf.extend_from_slice(payload));
}

/// Frames the payload that `write` appends, encoding it in place after a
/// reserved header (no intermediate buffer on the commit path).
pub fn frame_with(out: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_BYTES]);
    write(out);
    let payload = &out[start + RECORD_HEADER_BYTES..];
    let len = u32::try_from(payload.len())
        .expect("records are bounded well below 4 GiB by the transaction limits");
    let crc = crc32c::crc32c(payload);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&SENTINEL.to_le_bytes());
    out[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
    // Pair assertion: what we frame must read back.
    debug_assert!(matches!(
        read_record(&out[start..], 0, usize::MAX),
        RecordRead::Ok { .. } | RecordRead::Marker { .. }
    ));
}

/// The header of segment `seq`.
pub fn segment_header(seq: u64) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&SEGMENT_FORMAT.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What is wrong with a segment header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Shorter than a header: the segment's creation was torn.
    #[error("segment is {len} bytes, shorter than its header")]
    Short {
        /// Its length.
        len: usize,
    },
    /// Not a tarn WAL segment at all.
    #[error("not a tarn WAL segment (bad magic or header checksum)")]
    NotSegment,
    /// Written by a newer tarn.
    #[error("segment format {found} is newer than this build reads ({max}); upgrade tarn")]
    Newer {
        /// The format found.
        found: u32,
        /// The newest this build reads.
        max: u32,
    },
    /// The header names another segment number than the file name.
    #[error("header says segment {found}, file name says {expected}")]
    WrongNumber {
        /// From the file name.
        expected: u64,
        /// From the header.
        found: u64,
    },
}

/// Checks a segment's header.
pub fn check_header(buf: &[u8], seq: u64) -> Result<(), HeaderError> {
    if buf.len() < SEGMENT_HEADER_BYTES {
        return Err(HeaderError::Short { len: buf.len() });
    }
    let h = &buf[..SEGMENT_HEADER_BYTES];
    let crc = u32::from_le_bytes([h[24], h[25], h[26], h[27]]);
    if &h[..8] != SEGMENT_MAGIC || crc != crc32c::crc32c(&h[..24]) {
        return Err(HeaderError::NotSegment);
    }
    let format = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    if format > SEGMENT_FORMAT {
        return Err(HeaderError::Newer {
            found: format,
            max: SEGMENT_FORMAT,
        });
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&h[16..24]);
    let found = u64::from_le_bytes(n);
    if found != seq {
        return Err(HeaderError::WrongNumber {
            expected: seq,
            found,
        });
    }
    Ok(())
}

/// The result of reading one record at an offset.
#[derive(Debug, PartialEq)]
pub enum RecordRead {
    /// A sync marker (end of a group); the next record starts at `next`.
    Marker {
        /// Offset just past it.
        next: usize,
    },
    /// A good record; the next one starts at `next`.
    Ok {
        /// The decoded record.
        record: CommitRecord,
        /// Offset just past it.
        next: usize,
    },
    /// The buffer ends exactly here: no more records.
    End,
    /// The bytes here are not a good record.
    Bad(BadRecord),
}

/// Why the bytes at an offset are not a good record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadRecord {
    /// The buffer ends inside the frame or payload (a torn write).
    #[error("record is cut short ({have} of {need} bytes)")]
    Short {
        /// Bytes present.
        have: usize,
        /// Bytes the frame says it needs.
        need: usize,
    },
    /// No sentinel where a record should start.
    #[error("no record sentinel")]
    NoSentinel,
    /// A length over the configured maximum.
    #[error("record length {len} exceeds the limit {max}")]
    TooLong {
        /// The length in the frame.
        len: usize,
        /// `wal.max_record_bytes`.
        max: usize,
    },
    /// The payload does not match its checksum.
    #[error("checksum mismatch")]
    Checksum,
    /// The checksum matches but the payload does not decode.
    #[error("payload does not decode: {0}")]
    Decode(DecodeError),
}

/// Reads the record at `at` in `buf`.
pub fn read_record(buf: &[u8], at: usize, max_record_bytes: usize) -> RecordRead {
    read_record_cached(buf, at, max_record_bytes, &mut codec::PathCache::default())
}

/// Reads the record at `at` in `buf`, sharing decoded paths through
/// `cache` (recovery replays many records of the same paths).
pub fn read_record_cached(
    buf: &[u8],
    at: usize,
    max_record_bytes: usize,
    cache: &mut codec::PathCache,
) -> RecordRead {
    let rest = &buf[at.min(buf.len())..];
    if rest.is_empty() {
        return RecordRead::End;
    }
    if rest.len() < RECORD_HEADER_BYTES {
        return RecordRead::Bad(BadRecord::Short {
            have: rest.len(),
            need: RECORD_HEADER_BYTES,
        });
    }
    let word = |i: usize| u32::from_le_bytes([rest[i], rest[i + 1], rest[i + 2], rest[i + 3]]);
    let (len, sentinel, crc) = (word(0) as usize, word(4), word(8));
    if sentinel != SENTINEL {
        return RecordRead::Bad(BadRecord::NoSentinel);
    }
    if len > max_record_bytes {
        return RecordRead::Bad(BadRecord::TooLong {
            len,
            max: max_record_bytes,
        });
    }
    let need = RECORD_HEADER_BYTES + len;
    if rest.len() < need {
        return RecordRead::Bad(BadRecord::Short {
            have: rest.len(),
            need,
        });
    }
    let payload = &rest[RECORD_HEADER_BYTES..need];
    if crc32c::crc32c(payload) != crc {
        return RecordRead::Bad(BadRecord::Checksum);
    }
    match codec::decode_commit_cached(payload, cache) {
        Ok(record) => RecordRead::Ok {
            record,
            next: at + need,
        },
        Err(codec::DecodeError::SyncMarker) => RecordRead::Marker { next: at + need },
        Err(e) => RecordRead::Bad(BadRecord::Decode(e)),
    }
}

/// Appends a sync marker to a group of framed records.
pub fn push_sync_marker(out: &mut Vec<u8>) {
    frame(out, &codec::SYNC_MARKER);
}

/// True if an intact sync marker starts anywhere after `from` (the test
/// that tells real corruption from a torn final group).
pub fn marker_after(buf: &[u8], from: usize, max_record_bytes: usize) -> bool {
    let mut at = from;
    while let Some(found) = find_next_record(buf, at, max_record_bytes) {
        if matches!(
            read_record(buf, found, max_record_bytes),
            RecordRead::Marker { .. }
        ) {
            return true;
        }
        at = found + 1;
    }
    false
}

/// The format of a segment whose header checked out.
pub fn segment_format(buf: &[u8]) -> u32 {
    buf.get(8..12)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The offset of the next good record after `from`, if any: a recovery
/// scan looks at every byte offset for a sentinel whose frame checks out.
pub fn find_next_record(buf: &[u8], from: usize, max_record_bytes: usize) -> Option<usize> {
    let sentinel = SENTINEL.to_le_bytes();
    let mut at = from;
    while at + RECORD_HEADER_BYTES <= buf.len() {
        if buf[at + 4..at + 8] == sentinel
            && matches!(
                read_record(buf, at, max_record_bytes),
                RecordRead::Ok { .. } | RecordRead::Marker { .. }
            )
        {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// Appends to the newest segment and rolls to a new one when it is full.
/// Owned by the flusher thread: one writer, no locks.
#[derive(Debug)]
pub struct SegmentWriter {
    dir: PathBuf,
    file: File,
    seq: u64,
    len: u64,
    segment_bytes: u64,
    sync: SyncPolicy,
}

impl SegmentWriter {
    /// Opens segment `seq` for appending at `len` (after recovery) or
    /// creates it if `len` is `None`.
    pub fn open(
        dir: &FsPath,
        seq: u64,
        len: Option<u64>,
        segment_bytes: u64,
        sync: SyncPolicy,
    ) -> io::Result<SegmentWriter> {
        let path = dir.join(segment_name(seq));
        let (file, len) = match len {
            Some(len) => {
                let file = OpenOptions::new().write(true).open(&path)?;
                file.set_len(len)?;
                (file, len)
            }
            None => (create_segment(dir, seq, sync)?, SEGMENT_HEADER_BYTES as u64),
        };
        let mut w = SegmentWriter {
            dir: dir.to_path_buf(),
            file,
            seq,
            len,
            segment_bytes,
            sync,
        };
        use std::io::Seek;
        w.file.seek(io::SeekFrom::Start(len))?;
        Ok(w)
    }

    /// The number of the segment being written.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes whole records (`buf` holds one or more framed records) and,
    /// unless the policy is `Never`, makes them durable. Rolls to a new
    /// segment first if the current one is full. Returns the number of a
    /// segment that was sealed by the roll, if any.
    pub fn append(&mut self, buf: &[u8]) -> io::Result<Option<u64>> {
        let mut sealed = None;
        if self.len >= self.segment_bytes && self.len > SEGMENT_HEADER_BYTES as u64 {
            // The full segment was synced with its last group; start anew.
            let next = self.seq + 1;
            self.file = create_segment(&self.dir, next, self.sync)?;
            sealed = Some(self.seq);
            self.seq = next;
            self.len = SEGMENT_HEADER_BYTES as u64;
        }
        self.file.write_all(buf)?;
        self.len += buf.len() as u64;
        if self.sync != SyncPolicy::Never {
            self.file.sync_data()?;
        }
        Ok(sealed)
    }
}

/// Creates segment `seq` with its header, durably (file and directory
/// entry) unless the policy is `Never`.
fn create_segment(dir: &FsPath, seq: u64, sync: SyncPolicy) -> io::Result<File> {
    let path = dir.join(segment_name(seq));
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)?;
    file.write_all(&segment_header(seq))?;
    if sync != SyncPolicy::Never {
        file.sync_all()?;
        sync_dir(dir)?;
    }
    Ok(file)
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &FsPath) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_policies_parse() {
        assert_eq!("always".parse(), Ok(SyncPolicy::Always));
        assert_eq!("never".parse(), Ok(SyncPolicy::Never));
        assert_eq!("batch(5)".parse(), Ok(SyncPolicy::Batch(5)));
        assert_eq!("batch(5ms)".parse(), Ok(SyncPolicy::Batch(5)));
        assert_eq!("batch".parse(), Ok(SyncPolicy::Batch(2)));
        assert!("sometimes".parse::<SyncPolicy>().is_err());
        assert!("batch(99999)".parse::<SyncPolicy>().is_err());
        assert_eq!(SyncPolicy::default().to_string(), "batch(2)");
    }

    #[test]
    fn segment_names_round_trip() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.wal"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.wal"), None);
    }

    #[test]
    fn headers_are_checked() {
        let h = segment_header(7);
        assert_eq!(check_header(&h, 7), Ok(()));
        assert_eq!(
            check_header(&h, 8),
            Err(HeaderError::WrongNumber {
                expected: 8,
                found: 7
            })
        );
        assert_eq!(
            check_header(&h[..10], 7),
            Err(HeaderError::Short { len: 10 })
        );
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(check_header(&bad, 7), Err(HeaderError::NotSegment));
    }
}
