//! The spool: remote_write request bodies the receiver could not take
//! (unreachable, 5xx, 429), kept on disk in FIFO order until they are
//! acknowledged, across restarts. Used by the agent's pusher and the
//! collector's `[forward]`.
//!
//! Owns the on-disk format and nothing else (no HTTP, no batching):
//! - Append-only segment files `<id>.seg` (20-digit, increasing ids). A process
//!   only appends to segments it created, so a torn tail left by a crash or a
//!   power loss is never followed by new records.
//! - Each record is `magic "DSP1" | payload length u32 | samples u32 | crc32 u32 |
//!   payload` (little endian); the CRC covers length, samples and payload. On
//!   open every segment is scanned: a record cut short (torn tail) or failing its
//!   CRC (flipped bytes) is skipped, the scan resynchronising on the next magic
//!   that starts a valid record. A record found corrupt when read back later is
//!   skipped and counted as dropped.
//! - The read position survives restarts in `cursor` (`v1 <segment> <offset>`,
//!   replaced atomically on each acknowledgement). It is not fsynced: after a
//!   power loss a few acknowledged records may be sent again, which the
//!   collector deduplicates (same series and timestamp count once).
//! - The bytes on disk never exceed `max_bytes`: before an append that would,
//!   the oldest segments are deleted and their unsent samples counted as
//!   dropped. Segments are about `max_bytes / 8`, so a drop frees room without
//!   discarding most of the spool.
//! - A `lock` file held with an exclusive lock keeps two agents off one spool.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: [u8; 4] = *b"DSP1";
/// Record header: magic, payload length, samples, CRC.
pub const HEADER_BYTES: u64 = 16;
/// Longest payload accepted when reading back; a longer length is corruption.
/// (Requests are at most 1 MiB.)
pub const MAX_PAYLOAD_BYTES: u32 = 4 << 20;
/// Segments never target more than this, whatever the spool size.
const MAX_SEGMENT_BYTES: u64 = 8 << 20;
/// The spool is split in about this many segments.
const SEGMENTS_PER_SPOOL: u64 = 8;
const CURSOR_FILE: &str = "cursor";
const LOCK_FILE: &str = "lock";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("spool {0} is in use by another process (give each agent or collector a spool directory of its own)")]
    Busy(PathBuf),
    #[error("a record of {bytes} bytes cannot fit in a spool of {max} bytes")]
    TooLarge { bytes: u64, max: u64 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

/// Position and size of one record in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RecMeta {
    offset: u64,
    len: u32,
    samples: u32,
}

impl RecMeta {
    fn end(&self) -> u64 {
        self.offset + HEADER_BYTES + u64::from(self.len)
    }
}

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    /// File length.
    bytes: u64,
    /// Records not yet acknowledged, in order.
    records: VecDeque<RecMeta>,
}

/// What opening the spool found, for the log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub records: usize,
    pub samples: u64,
    pub bytes: u64,
    /// Bytes skipped: torn tails and corrupt records.
    pub skipped_bytes: u64,
    /// Segments whose end was cut mid-record.
    pub torn_tails: usize,
}

/// A record read from the head of the spool, to send and then [`Spool::ack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    pub payload: Vec<u8>,
    pub samples: u32,
    segment: u64,
    offset: u64,
}

/// The spool directory, open and locked.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segment_target: u64,
    /// Oldest first. The last one is appended to when `writer` is set.
    segments: VecDeque<Segment>,
    writer: Option<File>,
    reader: Option<(u64, File)>,
    next_id: u64,
    disk_bytes: u64,
    pending_bytes: u64,
    pending_samples: u64,
    /// Samples dropped since the last [`Spool::take_dropped`].
    dropped: u64,
    _lock: File,
}

impl Spool {
    /// Opens (creating it if needed) and locks `dir`, and scans what an earlier
    /// run left, skipping torn and corrupt records.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, OpenReport), SpoolError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(SpoolError::Busy(dir.to_path_buf())),
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        let (cursor_id, cursor_offset) = read_cursor(dir);
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let name = entry.map_err(io(dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name.strip_suffix(".seg").and_then(|s| s.parse::<u64>().ok()) {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut report = OpenReport::default();
        let mut segments = VecDeque::new();
        let mut next_id = cursor_id.unwrap_or(0) + 1;
        for id in ids {
            next_id = next_id.max(id + 1);
            let path = segment_path(dir, id);
            if cursor_id.is_some_and(|c| id < c) {
                // Fully acknowledged before the last stop.
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            let data = std::fs::read(&path).map_err(io(&path))?;
            let scan = scan(&data);
            if scan.skipped > 0 {
                tracing::warn!(segment = %path.display(), skipped_bytes = scan.skipped, torn_tail = scan.torn,
                    "push spool: skipped torn or corrupt records");
            }
            report.skipped_bytes += scan.skipped;
            report.torn_tails += usize::from(scan.torn);
            let mut records: VecDeque<RecMeta> = scan.records.into();
            if cursor_id == Some(id) {
                records.retain(|r| r.offset >= cursor_offset);
            }
            if records.is_empty() {
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            segments.push_back(Segment { id, path, bytes: data.len() as u64, records });
        }
        let mut spool = Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            segment_target: (max_bytes / SEGMENTS_PER_SPOOL).clamp(1, MAX_SEGMENT_BYTES),
            segments,
            writer: None,
            reader: None,
            next_id,
            disk_bytes: 0,
            pending_bytes: 0,
            pending_samples: 0,
            dropped: 0,
            _lock: lock,
        };
        for s in &spool.segments {
            spool.disk_bytes += s.bytes;
            for r in &s.records {
                spool.pending_bytes += HEADER_BYTES + u64::from(r.len);
                spool.pending_samples += u64::from(r.samples);
                report.records += 1;
                report.samples += u64::from(r.samples);
            }
        }
        report.bytes = spool.pending_bytes;
        if spool.segments.is_empty() {
            spool.clear_cursor();
        }
        // A spool left larger than max_bytes (the bound was lowered) is trimmed now.
        spool.make_room(0)?;
        Ok((spool, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// No record waits.
    pub fn is_empty(&self) -> bool {
        self.segments.iter().all(|s| s.records.is_empty())
    }

    /// Bytes of the records waiting (headers included).
    pub fn pending_bytes(&self) -> u64 {
        self.pending_bytes
    }

    /// Samples in the records waiting.
    pub fn pending_samples(&self) -> u64 {
        self.pending_samples
    }

    /// Bytes of the segment files on disk, bounded by `max_bytes`.
    pub fn disk_bytes(&self) -> u64 {
        self.disk_bytes
    }

    /// Samples dropped (oldest segments to make room, records found corrupt)
    /// since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Appends one request body holding `samples` samples, dropping the oldest
    /// segments first if the spool would exceed its bound. The record is on
    /// disk (fdatasync) when this returns.
    pub fn append(&mut self, payload: &[u8], samples: u32) -> Result<(), SpoolError> {
        let rec_bytes = HEADER_BYTES + payload.len() as u64;
        if rec_bytes > self.max_bytes || payload.len() as u64 > u64::from(MAX_PAYLOAD_BYTES) {
            return Err(SpoolError::TooLarge { bytes: rec_bytes, max: self.max_bytes });
        }
        let full = self.segments.back().is_none_or(|s| s.bytes >= self.segment_target);
        if self.writer.is_none() || full {
            self.rotate()?;
        }
        self.make_room(rec_bytes)?;
        if self.writer.is_none() {
            // make_room dropped the write segment itself.
            self.rotate()?;
        }
        let len = payload.len() as u32;
        let mut rec = Vec::with_capacity(rec_bytes as usize);
        rec.extend_from_slice(&MAGIC);
        rec.extend_from_slice(&len.to_le_bytes());
        rec.extend_from_slice(&samples.to_le_bytes());
        rec.extend_from_slice(&crc(len, samples, payload).to_le_bytes());
        rec.extend_from_slice(payload);
        let (Some(seg), Some(w)) = (self.segments.back_mut(), self.writer.as_mut()) else {
            return Err(io(&self.dir)(std::io::Error::other("no write segment")));
        };
        let offset = seg.bytes;
        let written = w.write_all(&rec).and_then(|()| w.sync_data());
        if let Err(e) = written {
            // Cut a partial write off so the next record follows a valid one.
            let _ = w.set_len(offset);
            return Err(io(&seg.path)(e));
        }
        seg.bytes += rec_bytes;
        seg.records.push_back(RecMeta { offset, len, samples });
        self.disk_bytes += rec_bytes;
        self.pending_bytes += rec_bytes;
        self.pending_samples += u64::from(samples);
        Ok(())
    }

    /// The oldest record, read back and checked; records found corrupt are
    /// skipped (counted as dropped).
    pub fn peek(&mut self) -> Result<Option<Peeked>, SpoolError> {
        loop {
            self.drop_empty_head()?;
            let Some(seg) = self.segments.front() else { return Ok(None) };
            let Some(meta) = seg.records.front().copied() else { return Ok(None) };
            let (id, path) = (seg.id, seg.path.clone());
            if self.reader.as_ref().is_none_or(|(rid, _)| *rid != id) {
                self.reader = Some((id, File::open(&path).map_err(io(&path))?));
            }
            let Some((_, file)) = self.reader.as_ref() else { continue };
            let mut buf = vec![0u8; (HEADER_BYTES + u64::from(meta.len)) as usize];
            let read = file.read_exact_at(&mut buf, meta.offset);
            match read.ok().and_then(|()| parse(&buf, 0)) {
                Some(rec) if rec.len == meta.len && rec.samples == meta.samples => {
                    buf.drain(..HEADER_BYTES as usize);
                    return Ok(Some(Peeked { payload: buf, samples: meta.samples, segment: id, offset: meta.offset }));
                }
                _ => {
                    tracing::warn!(segment = %path.display(), offset = meta.offset, samples = meta.samples,
                        "push spool: a record no longer reads back intact; dropped");
                    self.dropped += u64::from(meta.samples);
                    self.pop_head(meta)?;
                }
            }
        }
    }

    /// Removes the record returned by [`Spool::peek`] (sent or rejected).
    pub fn ack(&mut self, p: &Peeked) -> Result<(), SpoolError> {
        let head = self.segments.front().and_then(|s| s.records.front().copied().map(|r| (s.id, r)));
        match head {
            Some((id, meta)) if id == p.segment && meta.offset == p.offset => self.pop_head(meta),
            // Already gone (dropped to make room while it was in flight).
            _ => Ok(()),
        }
    }

    fn pop_head(&mut self, meta: RecMeta) -> Result<(), SpoolError> {
        let Some(seg) = self.segments.front_mut() else { return Ok(()) };
        seg.records.pop_front();
        self.pending_bytes -= HEADER_BYTES + u64::from(meta.len);
        self.pending_samples -= u64::from(meta.samples);
        let (id, next) = (seg.id, seg.records.front().map(|r| r.offset).unwrap_or(meta.end()));
        self.drop_empty_head()?;
        if self.is_empty() {
            // Nothing waits: start over with no file at all.
            while let Some(seg) = self.segments.pop_front() {
                self.remove_segment(&seg)?;
            }
            self.writer = None;
            self.clear_cursor();
        } else {
            self.write_cursor(id, next);
        }
        Ok(())
    }

    /// Deletes fully acknowledged segments at the head (never the write segment).
    fn drop_empty_head(&mut self) -> Result<(), SpoolError> {
        while self.segments.len() > 1 && self.segments.front().is_some_and(|s| s.records.is_empty()) {
            if let Some(seg) = self.segments.pop_front() {
                self.remove_segment(&seg)?;
            }
        }
        Ok(())
    }

    /// Drops oldest segments until `incoming` more bytes fit.
    fn make_room(&mut self, incoming: u64) -> Result<(), SpoolError> {
        while self.disk_bytes + incoming > self.max_bytes {
            let Some(seg) = self.segments.pop_front() else { break };
            let samples: u64 = seg.records.iter().map(|r| u64::from(r.samples)).sum();
            let bytes: u64 = seg.records.iter().map(|r| HEADER_BYTES + u64::from(r.len)).sum();
            self.pending_bytes -= bytes;
            self.pending_samples -= samples;
            self.dropped += samples;
            if samples > 0 {
                tracing::warn!(segment = %seg.path.display(), samples, bytes,
                    "push spool full (spool_max_bytes): dropped its oldest segment");
            }
            if self.segments.is_empty() {
                self.writer = None;
            }
            self.remove_segment(&seg)?;
        }
        Ok(())
    }

    fn remove_segment(&mut self, seg: &Segment) -> Result<(), SpoolError> {
        if self.reader.as_ref().is_some_and(|(id, _)| *id == seg.id) {
            self.reader = None;
        }
        self.disk_bytes -= seg.bytes;
        match std::fs::remove_file(&seg.path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&seg.path)(e)),
        }
    }

    /// Starts a new write segment.
    fn rotate(&mut self) -> Result<(), SpoolError> {
        let id = self.next_id;
        self.next_id += 1;
        let path = segment_path(&self.dir, id);
        let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(io(&path))?;
        // Make the new name durable too.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        self.writer = Some(file);
        self.segments.push_back(Segment { id, path, bytes: 0, records: VecDeque::new() });
        Ok(())
    }

    fn write_cursor(&self, segment: u64, offset: u64) {
        let tmp = self.dir.join("cursor.tmp");
        let done = std::fs::write(&tmp, format!("v1 {segment} {offset}\n"))
            .and_then(|()| std::fs::rename(&tmp, self.dir.join(CURSOR_FILE)));
        if let Err(e) = done {
            tracing::warn!(dir = %self.dir.display(), error = %e,
                "push spool: cannot save the read position; acknowledged records may be sent again after a restart");
        }
    }

    fn clear_cursor(&self) {
        let _ = std::fs::remove_file(self.dir.join(CURSOR_FILE));
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

/// `(segment, offset)` of the next unacknowledged record, if saved.
fn read_cursor(dir: &Path) -> (Option<u64>, u64) {
    let Ok(text) = std::fs::read_to_string(dir.join(CURSOR_FILE)) else { return (None, 0) };
    let mut it = text.split_whitespace();
    match (it.next(), it.next().and_then(|s| s.parse().ok()), it.next().and_then(|s| s.parse().ok())) {
        (Some("v1"), Some(seg), Some(off)) => (Some(seg), off),
        _ => {
            tracing::warn!(dir = %dir.display(), "push spool: unreadable cursor; replaying every record left");
            (None, 0)
        }
    }
}

fn crc(len: u32, samples: u32, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&samples.to_le_bytes());
    h.update(payload);
    h.finalize()
}

struct Parsed {
    len: u32,
    samples: u32,
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    buf.get(at..at + 4).and_then(|b| b.try_into().ok()).map(u32::from_le_bytes)
}

/// A valid record starting at `pos`, or `None`.
fn parse(buf: &[u8], pos: usize) -> Option<Parsed> {
    if buf.get(pos..pos + 4)? != MAGIC {
        return None;
    }
    let len = u32_at(buf, pos + 4)?;
    let samples = u32_at(buf, pos + 8)?;
    let sum = u32_at(buf, pos + 12)?;
    if len > MAX_PAYLOAD_BYTES {
        return None;
    }
    let start = pos + HEADER_BYTES as usize;
    let payload = buf.get(start..start + len as usize)?;
    (crc(len, samples, payload) == sum).then_some(Parsed { len, samples })
}

struct Scan {
    records: Vec<RecMeta>,
    skipped: u64,
    /// The segment ends inside a record.
    torn: bool,
}

/// Every valid record of a segment, resynchronising after damage.
fn scan(buf: &[u8]) -> Scan {
    let mut out = Scan { records: Vec::new(), skipped: 0, torn: false };
    let mut pos = 0usize;
    while pos < buf.len() {
        if let Some(p) = parse(buf, pos) {
            out.records.push(RecMeta { offset: pos as u64, len: p.len, samples: p.samples });
            pos += HEADER_BYTES as usize + p.len as usize;
            continue;
        }
        // Damage at `pos`: find the next magic that starts a valid record.
        let next = (pos + 1..buf.len())
            .find(|&i| buf[i..].starts_with(&MAGIC) && parse(buf, i).is_some())
            .unwrap_or(buf.len());
        if next == buf.len() {
            out.torn = true;
        }
        out.skipped += (next - pos) as u64;
        pos = next;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    fn payload(i: u32, len: usize) -> Vec<u8> {
        (0..len).map(|j| (i as usize * 31 + j * 7) as u8).collect()
    }

    fn drain(s: &mut Spool) -> Vec<(Vec<u8>, u32)> {
        let mut out = Vec::new();
        while let Some(p) = s.peek().expect("peek") {
            out.push((p.payload.clone(), p.samples));
            s.ack(&p).expect("ack");
        }
        out
    }

    fn seg_files(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "seg"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn round_trip_in_order_and_empty_spool_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, report) = Spool::open(dir.path(), 64 * MIB).expect("open");
        assert_eq!(report, OpenReport::default());
        assert!(s.is_empty() && s.peek().expect("peek").is_none());
        let want: Vec<(Vec<u8>, u32)> = (0..50).map(|i| (payload(i, 100 + i as usize), i)).collect();
        for (p, n) in &want {
            s.append(p, *n).expect("append");
        }
        assert_eq!(s.pending_bytes(), want.iter().map(|(p, _)| HEADER_BYTES + p.len() as u64).sum::<u64>());
        assert_eq!(s.pending_samples(), (0..50).sum::<u32>() as u64);
        assert_eq!(drain(&mut s), want);
        assert!(s.is_empty() && s.pending_bytes() == 0 && s.disk_bytes() == 0);
        assert!(seg_files(dir.path()).is_empty());
        assert!(!dir.path().join(CURSOR_FILE).exists());
        assert_eq!(s.take_dropped(), 0);
    }

    #[test]
    fn survives_restart_and_resumes_after_the_last_ack() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let (mut s, _) = Spool::open(dir.path(), 64 * MIB).expect("open");
            for i in 0..10 {
                s.append(&payload(i, 64), 1).expect("append");
            }
            for _ in 0..4 {
                let p = s.peek().expect("peek").expect("record");
                s.ack(&p).expect("ack");
            }
        }
        let (mut s, report) = Spool::open(dir.path(), 64 * MIB).expect("reopen");
        assert_eq!(report.records, 6);
        assert_eq!(report.skipped_bytes, 0);
        let got: Vec<Vec<u8>> = drain(&mut s).into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, (4..10).map(|i| payload(i, 64)).collect::<Vec<_>>());
    }

    #[test]
    fn a_second_process_cannot_open_the_same_spool() {
        let dir = tempfile::tempdir().expect("tmp");
        let (_s, _) = Spool::open(dir.path(), 64 * MIB).expect("open");
        assert!(matches!(Spool::open(dir.path(), 64 * MIB), Err(SpoolError::Busy(_))));
    }

    /// Three records, the last one cut at every possible length: the first two
    /// survive, the torn one is skipped, and new appends after reopening are read.
    #[test]
    fn a_torn_tail_is_skipped_at_every_cut() {
        let lens = [40usize, 50, 60];
        let full: u64 = lens.iter().map(|l| HEADER_BYTES + *l as u64).sum();
        let third = HEADER_BYTES + lens[2] as u64;
        for cut in 1..third {
            let dir = tempfile::tempdir().expect("tmp");
            {
                let (mut s, _) = Spool::open(dir.path(), 64 * MIB).expect("open");
                for (i, l) in lens.iter().enumerate() {
                    s.append(&payload(i as u32, *l), i as u32 + 1).expect("append");
                }
            }
            let seg = seg_files(dir.path()).pop().expect("segment");
            let f = OpenOptions::new().write(true).open(&seg).expect("open seg");
            f.set_len(full - cut).expect("truncate");
            drop(f);
            let (mut s, report) = Spool::open(dir.path(), 64 * MIB).expect("reopen");
            assert_eq!(report.records, 2, "cut {cut}");
            assert_eq!(report.torn_tails, 1, "cut {cut}");
            assert_eq!(report.skipped_bytes, third - cut, "cut {cut}");
            s.append(&payload(9, 30), 9).expect("append after reopen");
            let got = drain(&mut s);
            assert_eq!(got, vec![(payload(0, 40), 1), (payload(1, 50), 2), (payload(9, 30), 9)], "cut {cut}");
        }
    }

    /// Flipping any byte of the middle record (header or payload) skips that
    /// record only; the records around it are read intact.
    #[test]
    fn a_flipped_byte_skips_only_its_record() {
        let middle_len = HEADER_BYTES as usize + 24;
        for at in 0..middle_len {
            let dir = tempfile::tempdir().expect("tmp");
            {
                let (mut s, _) = Spool::open(dir.path(), 64 * MIB).expect("open");
                for i in 0..3 {
                    s.append(&payload(i, 24), 5).expect("append");
                }
            }
            let seg = seg_files(dir.path()).pop().expect("segment");
            let mut data = std::fs::read(&seg).expect("read");
            data[middle_len + at] ^= 0x40;
            std::fs::write(&seg, &data).expect("write");
            let (mut s, report) = Spool::open(dir.path(), 64 * MIB).expect("reopen");
            assert_eq!(report.records, 2, "byte {at}");
            assert!(report.skipped_bytes > 0, "byte {at}");
            assert_eq!(drain(&mut s), vec![(payload(0, 24), 5), (payload(2, 24), 5)], "byte {at}");
        }
    }

    #[test]
    fn corruption_found_after_open_drops_the_record_and_counts_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spool::open(dir.path(), 64 * MIB).expect("open");
        for i in 0..3 {
            s.append(&payload(i, 24), 7).expect("append");
        }
        let seg = seg_files(dir.path()).pop().expect("segment");
        let f = OpenOptions::new().write(true).open(&seg).expect("open seg");
        // A payload byte of the first record.
        f.write_all_at(&[0xff, 0xee], HEADER_BYTES + 3).expect("corrupt");
        assert_eq!(drain(&mut s), vec![(payload(1, 24), 7), (payload(2, 24), 7)]);
        assert_eq!(s.take_dropped(), 7);
    }

    #[test]
    fn the_bound_drops_oldest_segments_first_and_counts_their_samples() {
        let dir = tempfile::tempdir().expect("tmp");
        let max = MIB;
        let (mut s, _) = Spool::open(dir.path(), max).expect("open");
        let rec = 10_000usize;
        let n = 400u32; // about 4 MB through a 1 MiB spool
        for i in 0..n {
            s.append(&payload(i, rec), 3).expect("append");
            assert!(s.disk_bytes() <= max, "{} > {max}", s.disk_bytes());
            let on_disk: u64 =
                seg_files(dir.path()).iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
            assert_eq!(on_disk, s.disk_bytes());
        }
        let dropped = s.take_dropped();
        let got = drain(&mut s);
        // Nothing lost silently: kept + dropped = appended, and what is kept is the newest, in order.
        assert_eq!(got.len() as u64 * 3 + dropped, u64::from(n) * 3);
        assert!(dropped > 0 && got.len() > 50, "kept {} dropped {dropped}", got.len());
        let first = n - got.len() as u32;
        assert_eq!(got, (first..n).map(|i| (payload(i, rec), 3)).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_larger_than_the_spool_is_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let (mut s, _) = Spool::open(dir.path(), MIB).expect("open");
        s.append(b"kept", 1).expect("small");
        let big = vec![0u8; MIB as usize];
        assert!(matches!(s.append(&big, 1), Err(SpoolError::TooLarge { .. })));
        assert_eq!(drain(&mut s), vec![(b"kept".to_vec(), 1)]);
    }

    #[test]
    fn a_lower_bound_on_restart_trims_the_oldest() {
        let dir = tempfile::tempdir().expect("tmp");
        {
            let (mut s, _) = Spool::open(dir.path(), 4 * MIB).expect("open");
            for i in 0..300 {
                s.append(&payload(i, 10_000), 1).expect("append");
            }
        }
        let (mut s, _) = Spool::open(dir.path(), MIB).expect("reopen smaller");
        assert!(s.disk_bytes() <= MIB);
        assert!(s.take_dropped() > 0);
        let got = drain(&mut s);
        assert_eq!(got.last().map(|(p, _)| p.clone()), Some(payload(299, 10_000)));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8, u16),
        Ack,
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (any::<u8>(), 0u16..3000).prop_map(|(tag, len)| Op::Append(tag, len)),
            3 => Just(Op::Ack),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// Against a VecDeque model: FIFO order across acks and restarts, with
        /// segments small enough that the sequence crosses many of them.
        #[test]
        fn fifo_across_restarts_matches_a_queue(ops in proptest::collection::vec(op(), 1..120)) {
            let dir = tempfile::tempdir().expect("tmp");
            let max = MIB; // segments of 128 KiB: never full here (≤ 120 × 3 KB)
            let (mut s, _) = Spool::open(dir.path(), max).expect("open");
            let mut model: VecDeque<(Vec<u8>, u32)> = VecDeque::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Append(tag, len) => {
                        let p: Vec<u8> = (0..len).map(|j| tag.wrapping_add(j as u8)).collect();
                        s.append(&p, i as u32).expect("append");
                        model.push_back((p, i as u32));
                    }
                    Op::Ack => {
                        let got = s.peek().expect("peek");
                        prop_assert_eq!(got.as_ref().map(|p| (p.payload.clone(), p.samples)), model.front().cloned());
                        if let Some(p) = got {
                            s.ack(&p).expect("ack");
                            model.pop_front();
                        }
                    }
                    Op::Reopen => {
                        drop(s);
                        s = Spool::open(dir.path(), max).expect("reopen").0;
                    }
                }
                prop_assert_eq!(s.pending_samples(), model.iter().map(|(_, n)| u64::from(*n)).sum::<u64>());
                prop_assert_eq!(s.is_empty(), model.is_empty());
            }
            prop_assert_eq!(s.take_dropped(), 0);
            prop_assert_eq!(drain(&mut s), model.into_iter().collect::<Vec<_>>());
        }

        /// Random damage anywhere in a segment never panics, never yields a
        /// record that was not written, and keeps the survivors in order.
        #[test]
        fn random_damage_yields_only_written_records_in_order(
            n in 1usize..12,
            flips in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let dir = tempfile::tempdir().expect("tmp");
            let written: Vec<Vec<u8>> = (0..n as u32).map(|i| payload(i, 20 + i as usize * 13)).collect();
            {
                let (mut s, _) = Spool::open(dir.path(), 64 * MIB).expect("open");
                for p in &written {
                    s.append(p, 1).expect("append");
                }
            }
            let seg = seg_files(dir.path()).pop().expect("segment");
            let mut data = std::fs::read(&seg).expect("read");
            for (at, x) in flips {
                let i = at.index(data.len());
                data[i] ^= x;
            }
            if let Some(c) = cut {
                data.truncate(c.index(data.len()));
            }
            std::fs::write(&seg, &data).expect("write");
            let (mut s, _) = Spool::open(dir.path(), 64 * MIB).expect("reopen");
            let got: Vec<Vec<u8>> = drain(&mut s).into_iter().map(|(p, _)| p).collect();
            // A subsequence of what was written.
            let mut it = written.iter();
            for g in &got {
                prop_assert!(it.any(|w| w == g), "record not written or out of order");
            }
        }
    }
}
