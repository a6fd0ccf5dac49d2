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

/// How to read a key type's text: its input function, looked up once per filter.
#[derive(Clone, Copy)]
struct KeyInput {
    input: pg_sys::Oid,
    ioparam: pg_sys::Oid,
}

impl KeyInput {
    /// In a transaction.
    fn of(typid: u32) -> KeyInput {
        debug_assert!(SLICEABLE.contains(&typid));
        let mut k = KeyInput {
            input: pg_sys::Oid::INVALID,
            ioparam: pg_sys::Oid::INVALID,
        };
        // SAFETY: a catalog look-up, in a transaction.
        unsafe { pg_sys::getTypeInputInfo(pg_sys::Oid::from(typid), &mut k.input, &mut k.ioparam) };
        k
    }

    /// A key's value (COPY or pgoutput text) as the ordered integer it is in PostgreSQL.
    /// In a transaction.
    fn value(self, text: &[u8]) -> Result<i64> {
        let s = CString::new(text).map_err(|_| Error::internal("a key value holds a NUL byte"))?;
        // SAFETY: the input function of a built-in by-value type; an invalid value raises an
        // ERROR, which the caller's guard catches.
        let d = unsafe {
            pg_sys::OidInputFunctionCall(self.input, s.as_ptr() as *mut _, self.ioparam, -1)
        };
        // By-value types narrower than 64 bits are sign-extended into the Datum.
        Ok(d.value() as i64)
    }
}

/// The catch-up rule for one table (see the module header).
pub struct KeyFilter {
    /// The key column's name, and how to read its values.
    pub column: String,
    key: Option<KeyInput>,
    /// Loaded parts: [lo, hi) (None: unbounded), and their snapshot's LSN.
    parts: Vec<(Option<i64>, Option<i64>, Lsn)>,
    /// Every part was read under one snapshot: no key needs to be looked at.
    uniform: Option<Lsn>,
}

impl KeyFilter {
    /// From the table's loaded parts (`catalog::done_ranges`). In a transaction.
    pub fn new(column: String, typid: u32, done: &[DoneRange]) -> Result<KeyFilter> {
        let key = KeyInput::of(typid);
        let mut parts = Vec::with_capacity(done.len());
        for d in done {
            let b = |v: &Option<String>| -> Result<Option<i64>> {
                v.as_deref().map(|t| key.value(t.as_bytes())).transpose()
            };
            parts.push((b(&d.lo)?, b(&d.hi)?, d.lsn));
        }
        let first = parts.first().map(|p| p.2);
        let uniform = first.filter(|l| parts.iter().all(|p| p.2 == *l));
        Ok(KeyFilter {
            column,
            key: Some(key),
            parts,
            uniform,
        })
    }

    /// A filter for a table copied as one part, at `lsn`.
    pub fn whole(lsn: Lsn) -> KeyFilter {
        KeyFilter {
            column: String::new(),
            key: None,
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
        let k = self
            .key
            .ok_or_else(|| {
                Error::internal("the parts of a copy read under several snapshots have no key type")
            })?
            .value(key)?;
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

/// How COPY rows are framed: text lines, or binary tuples (an int16 field count, then per
/// field an int32 length, -1 for NULL, and the bytes). Binary data here has no header and
/// no trailer (`copyread` strips them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Binary,
}

impl Format {
    /// The length of the row that `c` starts with (None: `c` holds no whole row).
    fn row_len(self, c: &[u8]) -> Option<usize> {
        match self {
            Format::Text => c.iter().position(|&b| b == b'\n').map(|p| p + 1),
            Format::Binary => {
                let n = i16::from_be_bytes(c.get(..2)?.try_into().ok()?);
                let mut at = 2usize;
                for _ in 0..n.max(0) {
                    let len = i32::from_be_bytes(c.get(at..at + 4)?.try_into().ok()?);
                    at += 4 + len.max(0) as usize;
                }
                (at <= c.len()).then_some(at)
            }
        }
    }

    /// The offsets where each whole row of `c` starts.
    pub fn row_starts(self, c: &[u8]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < c.len() {
            let Some(len) = self.row_len(&c[at..]) else {
                break;
            };
            out.push(at);
            at += len;
        }
        out
    }

    /// Rows in `c` (whole rows).
    pub fn count_rows(self, c: &[u8]) -> usize {
        match self {
            // Newlines inside values are escaped in COPY text: one per row.
            Format::Text => c.iter().filter(|&&b| b == b'\n').count(),
            Format::Binary => self.row_starts(c).len(),
        }
    }

    /// The offset just after the `n`-th row of `c` (n >= 1), or its end.
    pub fn after_rows(self, c: &[u8], n: usize) -> usize {
        self.row_starts(c).get(n.max(1)).copied().unwrap_or(c.len())
    }

    /// Field `col` of the row `c` starts with.
    pub fn field(self, c: &[u8], col: usize) -> Option<&[u8]> {
        match self {
            Format::Text => {
                let end = c.iter().position(|&b| b == b'\n').unwrap_or(c.len());
                c[..end].split(|&b| b == b'\t').nth(col)
            }
            Format::Binary => {
                let mut at = 2usize;
                for i in 0..=col {
                    let len = i32::from_be_bytes(c.get(at..at + 4)?.try_into().ok()?);
                    at += 4;
                    if i == col {
                        return c.get(at..at + len.max(0) as usize);
                    }
                    at += len.max(0) as usize;
                }
                None
            }
        }
    }

    /// A key's value as the source reads it back in SQL: COPY text as is; a binary integer
    /// (int2, int4, int8: the only key types copied in binary) in decimal.
    pub fn key_text(self, k: &[u8]) -> String {
        match (self, k.len()) {
            (Format::Binary, 2) => i16::from_be_bytes([k[0], k[1]]).to_string(),
            (Format::Binary, 4) => i32::from_be_bytes(k.try_into().unwrap()).to_string(),
            (Format::Binary, 8) => i64::from_be_bytes(k.try_into().unwrap()).to_string(),
            _ => String::from_utf8_lossy(k).into_owned(),
        }
    }
}

/// The first row of `chunks` (whole rows, sorted by the key in field `col`) whose key
/// differs from `key`: (chunk index, offset of the row, its key). A loader commits just
/// before it: the part then ends at that key, exclusive.
pub fn first_other_key(
    f: Format,
    chunks: &[bytes::Bytes],
    col: usize,
    key: &[u8],
) -> Option<(usize, usize, Vec<u8>)> {
    for (i, c) in chunks.iter().enumerate() {
        for start in f.row_starts(c) {
            let k = f.field(&c[start..], col)?;
            if k != key {
                return Some((i, start, k.to_vec()));
            }
        }
    }
    None
}

/// The key (field `col`) of the last row of `chunks`.
pub fn last_key(f: Format, chunks: &[bytes::Bytes], col: usize) -> Option<&[u8]> {
    let c = chunks.iter().rev().find(|c| !c.is_empty())?;
    let start = *f.row_starts(c).last()?;
    f.field(&c[start..], col)
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
        assert_eq!(
            first_other_key(Format::Text, &c, 0, b"2"),
            Some((1, 4, b"3".to_vec()))
        );
        assert_eq!(
            first_other_key(Format::Text, &c, 0, b"1"),
            Some((0, 0, b"2".to_vec()))
        );
        assert_eq!(
            first_other_key(Format::Text, &c, 1, b"a"),
            Some((0, 4, b"b".to_vec()))
        );
        assert_eq!(
            first_other_key(Format::Text, &chunks(&["5\tx\n5\ty\n"]), 0, b"5"),
            None
        );
        assert_eq!(first_other_key(Format::Text, &chunks(&[""]), 0, b"5"), None);
    }

    #[test]
    fn last_key_reads_the_last_line() {
        assert_eq!(
            last_key(Format::Text, &chunks(&["1\ta\n2\tb\n", ""]), 0),
            Some(&b"2"[..])
        );
        assert_eq!(
            last_key(Format::Text, &chunks(&["1\ta\n"]), 1),
            Some(&b"a"[..])
        );
        assert_eq!(last_key(Format::Text, &chunks(&[]), 0), None);
    }

    #[test]
    fn field_picks_a_column() {
        assert_eq!(Format::Text.field(b"a\tbb\tc\n", 1), Some(&b"bb"[..]));
        assert_eq!(Format::Text.field(b"a", 1), None);
    }

    /// A binary COPY row: the given fields (None: NULL).
    fn binary_row(fields: &[Option<&[u8]>]) -> Vec<u8> {
        let mut r = (fields.len() as i16).to_be_bytes().to_vec();
        for f in fields {
            match f {
                Some(v) => {
                    r.extend((v.len() as i32).to_be_bytes());
                    r.extend(*v);
                }
                None => r.extend((-1i32).to_be_bytes()),
            }
        }
        r
    }

    #[test]
    fn binary_rows_are_framed_and_keyed() {
        let one = 1i64.to_be_bytes();
        let two = 2i64.to_be_bytes();
        let mut c = binary_row(&[Some(&one), None, Some(b"x")]);
        let second = c.len();
        c.extend(binary_row(&[Some(&one), Some(b"yy"), Some(b"")]));
        let third = c.len();
        c.extend(binary_row(&[Some(&two), None, None]));
        let f = Format::Binary;
        assert_eq!(f.row_starts(&c), vec![0, second, third]);
        assert_eq!(f.count_rows(&c), 3);
        assert_eq!(f.after_rows(&c, 2), third);
        assert_eq!(f.after_rows(&c, 5), c.len());
        assert_eq!(f.field(&c[second..], 1), Some(&b"yy"[..]));
        let chunks = vec![bytes::Bytes::from(c)];
        assert_eq!(
            first_other_key(f, &chunks, 0, &one),
            Some((0, third, two.to_vec()))
        );
        assert_eq!(last_key(f, &chunks, 0), Some(&two[..]));
        assert_eq!(f.key_text(&two), "2");
        assert_eq!(f.key_text(&(-7i32).to_be_bytes()), "-7");
        // A partial row is not a row.
        assert_eq!(f.count_rows(&chunks[0][..third + 3]), 2);
    }
}
