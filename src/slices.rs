//! Slices of a table's initial copy: ranges of the source table's leading key column, each
//! loaded and committed on its own, and the catch-up rule that makes them exact.
//!
//! A table is copied as ranges `[lo, hi)` of the leading column of its replica identity
//! index (`remote::slice_key`), read in key order, so that a loader can commit after any
//! row whose key differs from the next one's and record how far it got
//! (`livesync.copy_range`). What is committed stays committed: after a crash only the
//! unloaded rest of each slice is read again.
//!
//! Why key ranges and not block (ctid) ranges: a snapshot exported by the slot lives only
//! as long as the session that exported it. After a restart the rest of the copy must be
//! read under a new snapshot, and an UPDATE moves a row to another block, so block ranges
//! read under two snapshots double or lose rows. A key range means the same rows under any
//! snapshot.
//!
//! Every loaded part records the LSN `L` of the snapshot it was read under (the table
//! slot's consistent point, or that of a temporary slot taken when the copy resumed). The
//! table's catch-up then streams from the table slot and applies a change of a
//! transaction that commits at `C` to a row with key `k` only if `C >= L` of the part
//! holding `k` ([`KeyFilter`]): that part's snapshot already has every transaction that
//! committed before `L`. An UPDATE that moves a row between parts is a DELETE in one and
//! an INSERT in the other.

use crate::catalog::DoneRange;
use crate::error::{Error, Result};
use crate::pgoutput::Lsn;
use pgrx::pg_sys;
use std::ffi::CString;

pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const INT8: u32 = 20;
pub const DATE: u32 = 1082;
pub const TIME: u32 = 1083;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;

/// Key types a copy can be sliced on: built-in (the same OID on both servers), without a
/// collation (ordered the same on both servers), whose text form is canonical (two rows
/// have the same key exactly when their text is equal) and whose value is passed by value
/// and ordered as a signed 64-bit integer.
pub const SLICEABLE: &[u32] = &[INT2, INT4, INT8, DATE, TIME, TIMESTAMP, TIMESTAMPTZ];

/// A key's value (COPY or pgoutput text) as the ordered integer it is in PostgreSQL,
/// parsed by the type's input function. In a transaction.
pub fn key_value(typid: u32, text: &[u8]) -> Result<i64> {
    debug_assert!(SLICEABLE.contains(&typid));
    let s = CString::new(text).map_err(|_| Error::internal("a key value holds a NUL byte"))?;
    let mut input = pg_sys::Oid::INVALID;
    let mut ioparam = pg_sys::Oid::INVALID;
    // SAFETY: catalog look-up and the input function of a built-in by-value type, in a
    // transaction; an invalid value raises an ERROR, which the caller's guard catches.
    let d = unsafe {
        pg_sys::getTypeInputInfo(pg_sys::Oid::from(typid), &mut input, &mut ioparam);
        pg_sys::OidInputFunctionCall(input, s.as_ptr() as *mut _, ioparam, -1)
    };
    // By-value types narrower than 64 bits are sign-extended into the Datum.
    Ok(d.value() as i64)
}

/// The catch-up rule for one table (see the module header).
pub struct KeyFilter {
    /// The key column's name and type.
    pub column: String,
    pub typid: u32,
    /// Loaded parts: [lo, hi) (None: unbounded), and their snapshot's LSN.
    parts: Vec<(Option<i64>, Option<i64>, Lsn)>,
    /// Every part was read under one snapshot: no key needs to be looked at.
    uniform: Option<Lsn>,
}

impl KeyFilter {
    /// From the table's loaded parts (`catalog::done_ranges`). In a transaction.
    pub fn new(column: String, typid: u32, done: &[DoneRange]) -> Result<KeyFilter> {
        let mut parts = Vec::with_capacity(done.len());
        for d in done {
            let b = |v: &Option<String>| -> Result<Option<i64>> {
                v.as_deref()
                    .map(|t| key_value(typid, t.as_bytes()))
                    .transpose()
            };
            parts.push((b(&d.lo)?, b(&d.hi)?, d.lsn));
        }
        let first = parts.first().map(|p| p.2);
        let uniform = first.filter(|l| parts.iter().all(|p| p.2 == *l));
        Ok(KeyFilter {
            column,
            typid,
            parts,
            uniform,
        })
    }

    /// A filter for a table copied as one part, at `lsn`.
    pub fn whole(lsn: Lsn) -> KeyFilter {
        KeyFilter {
            column: String::new(),
            typid: 0,
            parts: vec![(None, None, lsn)],
            uniform: Some(lsn),
        }
    }

    /// The latest snapshot a part was read under: the catch-up must reach it before the
    /// apply worker may take the table over (it applies everything from there on).
    pub fn latest(&self) -> Lsn {
        self.parts.iter().map(|p| p.2).max().unwrap_or(0)
    }

    /// Does the filter need the key's value (parts were read under different snapshots)?
    pub fn needs_key(&self) -> bool {
        self.uniform.is_none()
    }

    /// Does a change of a transaction committing at `commit_lsn` apply to the row with
    /// this key? `key` may be None only when [`KeyFilter::needs_key`] is false.
    pub fn applies(&self, commit_lsn: Lsn, key: Option<&[u8]>) -> Result<bool> {
        if let Some(l) = self.uniform {
            return Ok(commit_lsn >= l);
        }
        // The source's replica identity no longer includes the column (changed since the
        // copy): the parts cannot be told apart, so the copy starts over.
        let key = key.ok_or_else(|| Error::NeedsResync {
            msg: format!(
                "a change of the table lacks the column \"{}\" its copy was sliced on",
                self.column
            ),
        })?;
        let k = key_value(self.typid, key)?;
        match self.part_of(k) {
            Some(l) => Ok(commit_lsn >= l),
            None => Err(Error::internal(format!(
                "no copied part holds the key {}",
                String::from_utf8_lossy(key)
            ))),
        }
    }

    /// Does a TRUNCATE committing at `commit_lsn` apply: to every part (true), to none
    /// (false), or to some (None: the parts' snapshots straddle it).
    pub fn truncate_applies(&self, commit_lsn: Lsn) -> Option<bool> {
        let all = self.parts.iter().all(|p| commit_lsn >= p.2);
        let none = self.parts.iter().all(|p| commit_lsn < p.2);
        match (all, none) {
            (true, _) => Some(true),
            (_, true) => Some(false),
            _ => None,
        }
    }

    fn part_of(&self, k: i64) -> Option<Lsn> {
        self.parts
            .iter()
            .find(|(lo, hi, _)| lo.is_none_or(|lo| lo <= k) && hi.is_none_or(|hi| k < hi))
            .map(|p| p.2)
    }
}

/// The text of field `col` of one COPY text line (no line end).
pub fn field(line: &[u8], col: usize) -> Option<&[u8]> {
    line.split(|&b| b == b'\t').nth(col)
}

/// The first line of `chunks` (whole COPY text lines, sorted by the key in field `col`)
/// whose key differs from `key`: (chunk index, offset of the line, its key). A loader
/// commits just before it: the part then ends at that key, exclusive.
pub fn first_other_key(
    chunks: &[bytes::Bytes],
    col: usize,
    key: &[u8],
) -> Option<(usize, usize, Vec<u8>)> {
    for (i, c) in chunks.iter().enumerate() {
        let mut start = 0;
        while start < c.len() {
            let end = c[start..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(c.len(), |p| start + p);
            let k = field(&c[start..end], col)?;
            if k != key {
                return Some((i, start, k.to_vec()));
            }
            start = end + 1;
        }
    }
    None
}

/// The key (field `col`) of the last line of `chunks`.
pub fn last_key(chunks: &[bytes::Bytes], col: usize) -> Option<&[u8]> {
    let c = chunks.iter().rev().find(|c| !c.is_empty())?;
    let body = c.strip_suffix(b"\n").unwrap_or(c);
    let start = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    field(&body[start..], col)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&str]) -> Vec<bytes::Bytes> {
        parts
            .iter()
            .map(|p| bytes::Bytes::copy_from_slice(p.as_bytes()))
            .collect()
    }

    #[test]
    fn first_other_key_finds_where_a_part_may_end() {
        let c = chunks(&["2\ta\n2\tb\n", "2\tc\n3\td\n"]);
        assert_eq!(first_other_key(&c, 0, b"2"), Some((1, 4, b"3".to_vec())));
        assert_eq!(first_other_key(&c, 0, b"1"), Some((0, 0, b"2".to_vec())));
        assert_eq!(first_other_key(&c, 1, b"a"), Some((0, 4, b"b".to_vec())));
        assert_eq!(first_other_key(&chunks(&["5\tx\n5\ty\n"]), 0, b"5"), None);
        assert_eq!(first_other_key(&chunks(&[""]), 0, b"5"), None);
    }

    #[test]
    fn last_key_reads_the_last_line() {
        assert_eq!(last_key(&chunks(&["1\ta\n2\tb\n", ""]), 0), Some(&b"2"[..]));
        assert_eq!(last_key(&chunks(&["1\ta\n"]), 1), Some(&b"a"[..]));
        assert_eq!(last_key(&chunks(&[]), 0), None);
    }

    #[test]
    fn field_picks_a_column() {
        assert_eq!(field(b"a\tbb\tc", 1), Some(&b"bb"[..]));
        assert_eq!(field(b"a", 1), None);
    }
}
