//! The ledger journal: host samples booked since the last materialization.
//!
//! Writing each agent sample into three series-keyed tables (raw samples,
//! minutes, hours) dirties one B-tree page per host per table in every commit,
//! which made the SQLite writer spend most of its time writing WAL frames. So
//! the fast path (a host sample newer than its series' last one) only appends
//! an [`Entry`] to one `journal` row per commit: a few contiguous pages, still
//! fsynced before the 2xx. An entry carries the sample *and* the sample before
//! it, so its energy is a pure function of the entry ([`Entry::increment`]),
//! whatever happened since.
//!
//! [`super::sqlite`] materializes the journal (raw samples and buckets written
//! per series, journal rows deleted) in one transaction, every
//! `Policy::materialize_every_ms`, before a late sample needs the raw samples,
//! before pruning and at shutdown. Materialization reads the rows back from the
//! database, never from memory, so two processes (the server and
//! `import-meters`) can never book a row twice. Readers ([`super::query`])
//! add the unmaterialized entries to what the tables say, so every answer is
//! exact at all times, including after a crash.

use rusqlite::Connection;

use super::StoreError;
use super::book::{Value, increment};

/// One booked host sample and the series' sample before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub series_id: i64,
    pub ts_ms: i64,
    pub value: Value,
    /// The previous sample of the series (`None` for its first sample: a baseline).
    pub prev: Option<(i64, Value)>,
}

impl Entry {
    /// The interval this entry books and its energy (µJ), if it books one.
    pub fn interval(&self) -> Option<(i64, i64, i64)> {
        self.prev.map(|(t0, v0)| (t0, self.ts_ms, increment(v0, self.value)))
    }

    /// The energy (µJ) this entry adds to the ledger.
    pub fn increment(&self) -> i64 {
        self.interval().map(|(_, _, e)| e).unwrap_or(0)
    }
}

/// Encoding version, first byte of every row.
const VERSION: u8 = 2;
const HAS_VALUE: u8 = 1;
const HAS_PREV: u8 = 2;
const HAS_PREV_VALUE: u8 = 4;
/// Same series as the entry before, whose sample is this entry's `prev`:
/// the usual case (a request carries runs of one series), stored in 1 byte.
const CHAINED: u8 = 8;

/// Appends the encoding of `entries` to `out`: a version byte, the entry count
/// (u32 LE), then per entry a flags byte and zigzag LEB128 deltas against the
/// entry before (series id, timestamp, value) and against the entry itself
/// (its previous sample). About 6 bytes per chained entry instead of 41.
pub fn encode(entries: &[Entry], out: &mut Vec<u8>) {
    out.reserve(5 + entries.len() * 8);
    out.push(VERSION);
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let mut before = Entry { series_id: 0, ts_ms: 0, value: None, prev: None };
    for e in entries {
        let chained = e.series_id == before.series_id && e.prev == Some((before.ts_ms, before.value));
        let mut flags = 0;
        if e.value.is_some() {
            flags |= HAS_VALUE;
        }
        if chained {
            flags |= CHAINED;
        } else if let Some((_, pv)) = e.prev {
            flags |= HAS_PREV;
            if pv.is_some() {
                flags |= HAS_PREV_VALUE;
            }
        }
        out.push(flags);
        if !chained {
            put_varint(out, e.series_id.wrapping_sub(before.series_id));
        }
        put_varint(out, e.ts_ms.wrapping_sub(before.ts_ms));
        let base = before.value.unwrap_or(0);
        if let Some(v) = e.value {
            put_varint(out, v.wrapping_sub(base));
        }
        if !chained && let Some((pt, pv)) = e.prev {
            put_varint(out, pt.wrapping_sub(e.ts_ms));
            if let Some(v) = pv {
                put_varint(out, v.wrapping_sub(base));
            }
        }
        before = *e;
    }
}

/// Zigzag LEB128.
pub fn put_varint(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

/// Decodes one journal row; `seq` names the row in the error.
pub fn decode(seq: i64, bytes: &[u8]) -> Result<Vec<Entry>, StoreError> {
    let bad = |what: &str| StoreError::Journal { seq, message: what.to_string() };
    let mut r = Reader { bytes, pos: 0 };
    if r.u8() != Some(VERSION) {
        return Err(bad("unknown encoding version; was it written by a newer collector?"));
    }
    let count = r.u32().ok_or_else(|| bad("truncated header"))? as usize;
    // Every entry takes at least two bytes: a corrupt count cannot make us over-allocate.
    let mut out = Vec::with_capacity(count.min(bytes.len() / 2));
    let mut before = Entry { series_id: 0, ts_ms: 0, value: None, prev: None };
    while r.pos < bytes.len() {
        let truncated = || bad("truncated entry");
        let flags = r.u8().ok_or_else(truncated)?;
        let chained = flags & CHAINED != 0;
        let series_id =
            if chained { before.series_id } else { before.series_id.wrapping_add(r.get().ok_or_else(truncated)?) };
        let ts_ms = before.ts_ms.wrapping_add(r.get().ok_or_else(truncated)?);
        let base = before.value.unwrap_or(0);
        let value = if flags & HAS_VALUE != 0 { Some(base.wrapping_add(r.get().ok_or_else(truncated)?)) } else { None };
        let prev = if chained {
            Some((before.ts_ms, before.value))
        } else if flags & HAS_PREV != 0 {
            let pt = ts_ms.wrapping_add(r.get().ok_or_else(truncated)?);
            let pv = if flags & HAS_PREV_VALUE != 0 {
                Some(base.wrapping_add(r.get().ok_or_else(truncated)?))
            } else {
                None
            };
            Some((pt, pv))
        } else {
            None
        };
        before = Entry { series_id, ts_ms, value, prev };
        out.push(before);
    }
    if out.len() != count {
        return Err(bad(&format!("holds {} entries, its header says {count}", out.len())));
    }
    Ok(out)
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.bytes.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u32(&mut self) -> Option<u32> {
        let s = self.bytes.get(self.pos..self.pos + 4)?;
        self.pos += 4;
        Some(u32::from_le_bytes(s.try_into().ok()?))
    }

    fn get(&mut self) -> Option<i64> {
        get_varint(self.bytes, &mut self.pos)
    }
}

/// Zigzag LEB128 at `*pos`, advancing it; `None` when truncated or longer than 10 bytes.
pub fn get_varint(bytes: &[u8], pos: &mut usize) -> Option<i64> {
    let mut z: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *bytes.get(*pos)?;
        *pos += 1;
        z |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(((z >> 1) as i64) ^ -((z & 1) as i64));
        }
    }
    None
}

/// A journal row: its seq and its entries.
pub type Row = (i64, Vec<Entry>);

/// The oldest journal rows after seq `after` in order, `(seq, entries)`, until
/// they hold at least `max_entries` entries (always at least one row); and
/// whether rows remain.
pub fn rows(conn: &Connection, after: i64, max_entries: usize) -> Result<(Vec<Row>, bool), StoreError> {
    let mut st = conn.prepare_cached("SELECT seq, data FROM journal WHERE seq > ?1 ORDER BY seq")?;
    let mut out = Vec::new();
    let mut taken = 0usize;
    let mut q = st.query([after])?;
    while let Some(row) = q.next()? {
        if taken >= max_entries {
            return Ok((out, true));
        }
        let seq: i64 = row.get(0)?;
        let data = row.get_ref(1)?.as_blob().map_err(rusqlite::Error::from)?;
        let entries = decode(seq, data)?;
        taken += entries.len();
        out.push((seq, entries));
    }
    Ok((out, false))
}

/// The unmaterialized entries per series, in booking (and time) order.
#[derive(Debug, Default, Clone)]
pub struct Pending {
    pub by_series: super::IdMap<i64, Vec<Entry>>,
}

impl Pending {
    /// Adds the journal rows after seq `after` (all rows when `None`).
    pub fn load_after(&mut self, conn: &Connection, after: Option<i64>) -> Result<(), StoreError> {
        for (_, entries) in rows(conn, after.unwrap_or(i64::MIN), usize::MAX)?.0 {
            for e in entries {
                self.by_series.entry(e.series_id).or_default().push(e);
            }
        }
        Ok(())
    }

    pub fn of(&self, id: i64) -> &[Entry] {
        self.by_series.get(&id).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::super::book::any_value;
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn encoding_round_trips(
            raw in proptest::collection::vec((any::<i64>(), any::<i64>(), any_value(), proptest::option::of((any::<i64>(), any_value()))), 0..50)
        ) {
            let entries: Vec<Entry> =
                raw.into_iter().map(|(series_id, ts_ms, value, prev)| Entry { series_id, ts_ms, value, prev }).collect();
            let mut buf = Vec::new();
            encode(&entries, &mut buf);
            prop_assert_eq!(decode(1, &buf).expect("decode"), entries);
        }

        /// Any truncation of a valid row is an error, never a panic or a shorter list.
        #[test]
        fn truncated_rows_are_refused(cut in 1usize..200) {
            let entries = vec![
                Entry { series_id: 7, ts_ms: 1, value: Some(5), prev: Some((0, Some(2))) },
                Entry { series_id: 8, ts_ms: 2, value: None, prev: None },
                Entry { series_id: 9, ts_ms: 3, value: Some(1), prev: Some((2, None)) },
            ];
            let mut buf = Vec::new();
            encode(&entries, &mut buf);
            let cut = cut % buf.len();
            prop_assert!(decode(1, &buf[..cut]).is_err());
        }
    }

    /// Runs of one series, as requests carry them, round-trip too (the chained form).
    #[test]
    fn chained_runs_round_trip_compactly() {
        let mut entries = Vec::new();
        for id in [3i64, 1, 2] {
            let mut prev = None;
            for k in 0..100i64 {
                let e = Entry {
                    series_id: id,
                    ts_ms: 1_767_225_600_000 + k * 5_000,
                    value: Some(id * 1_000_000 + k * 1_500_000_000),
                    prev,
                };
                prev = Some((e.ts_ms, e.value));
                entries.push(e);
            }
        }
        entries[150].value = None;
        let mut buf = Vec::new();
        encode(&entries, &mut buf);
        assert_eq!(decode(1, &buf).expect("decode"), entries);
        assert!(buf.len() < entries.len() * 10, "{} bytes for {} entries", buf.len(), entries.len());
    }

    #[test]
    fn unknown_versions_are_named() {
        let e = decode(42, &[9, 0]).expect_err("version");
        assert!(e.to_string().contains("42") && e.to_string().contains("version"), "{e}");
        assert_eq!(Entry { series_id: 1, ts_ms: 10, value: Some(3), prev: Some((5, Some(9))) }.increment(), 3);
        assert_eq!(Entry { series_id: 1, ts_ms: 10, value: Some(12), prev: Some((5, Some(9))) }.increment(), 3);
        assert_eq!(Entry { series_id: 1, ts_ms: 10, value: Some(12), prev: None }.increment(), 0);
    }
}
