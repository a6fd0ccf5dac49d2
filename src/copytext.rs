//! PostgreSQL's COPY text format <-> rows of optional text values, and rows of binary
//! values -> COPY's binary format (pure).
//!
//! The initial copy reads `COPY ... TO STDOUT` from the source; this turns that stream
//! into column values for the same batched INSERT the apply path uses, so rows are routed
//! into hypertable chunks by the executor. Chunks may split rows anywhere; [`CopyParser`]
//! keeps the unfinished tail. The other way, [`encode_rows`] writes a run of inserted rows
//! as COPY text, for the apply path's COPY (`apply::Applier`, `copyin::copy_rows`), and
//! [`encode_binary_rows`] a run of pgoutput's binary values as binary COPY.

use bytes::{Buf, BytesMut};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed COPY data from the source: {0}")]
pub struct CopyError(pub String);

#[derive(Default)]
pub struct CopyParser {
    buf: BytesMut,
}

pub type CopyRow = Vec<Option<String>>;

impl CopyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a chunk; return the rows it completed.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<CopyRow>) -> Result<(), CopyError> {
        self.buf.extend_from_slice(chunk);
        while let Some(nl) = self.buf.iter().position(|&b| b == b'\n') {
            let line = self.buf.split_to(nl);
            self.buf.advance(1);
            out.push(parse_line(&line)?);
        }
        Ok(())
    }

    /// The stream ended: anything left over is an error.
    pub fn finish(&self) -> Result<(), CopyError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CopyError("data after the last complete row".into()))
        }
    }
}

/// Decode one line (without its newline) into fields.
pub fn parse_line(line: &[u8]) -> Result<CopyRow, CopyError> {
    let mut fields = Vec::new();
    for raw in line.split(|&b| b == b'\t') {
        if raw == b"\\N" {
            fields.push(None);
            continue;
        }
        let mut v = Vec::with_capacity(raw.len());
        let mut i = 0;
        while i < raw.len() {
            let b = raw[i];
            i += 1;
            if b != b'\\' {
                v.push(b);
                continue;
            }
            let Some(&e) = raw.get(i) else {
                return Err(CopyError("backslash at the end of a field".into()));
            };
            i += 1;
            match e {
                b'b' => v.push(8),
                b'f' => v.push(12),
                b'n' => v.push(b'\n'),
                b'r' => v.push(b'\r'),
                b't' => v.push(b'\t'),
                b'v' => v.push(11),
                b'0'..=b'7' => {
                    let mut n = (e - b'0') as u32;
                    for _ in 0..2 {
                        match raw.get(i) {
                            Some(&d @ b'0'..=b'7') => {
                                n = n * 8 + (d - b'0') as u32;
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    v.push((n & 0xff) as u8);
                }
                b'x' => {
                    let mut n = 0u32;
                    let mut digits = 0;
                    while digits < 2 {
                        match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                            Some(d) => {
                                n = n * 16 + d;
                                i += 1;
                                digits += 1;
                            }
                            None => break,
                        }
                    }
                    if digits == 0 {
                        v.push(b'x');
                    } else {
                        v.push(n as u8);
                    }
                }
                other => v.push(other),
            }
        }
        let s = String::from_utf8(v).map_err(|_| CopyError("a value is not valid UTF-8".into()))?;
        fields.push(Some(s));
    }
    Ok(fields)
}

/// Append rows `rows` of a run given column by column (`cols[c][r]`, None: NULL) to `out`
/// in COPY text format: values separated by tabs, rows ended by newlines, NULL as `\N`,
/// and backslash, tab, newline and carriage return escaped.
pub fn encode_rows<T: AsRef<[u8]>>(
    cols: &[&[Option<T>]],
    rows: std::ops::Range<usize>,
    out: &mut BytesMut,
) {
    for r in rows {
        for (c, col) in cols.iter().enumerate() {
            if c > 0 {
                out.extend_from_slice(b"\t");
            }
            match &col[r] {
                None => out.extend_from_slice(b"\\N"),
                Some(v) => escape_into(v.as_ref(), out),
            }
        }
        out.extend_from_slice(b"\n");
    }
}

/// [`encode_rows`] in COPY's binary format, without its header and trailer: per row the
/// number of fields (int16), then each field's length (int32; -1: NULL) and bytes, the
/// values being the types' binary forms (pgoutput's binary values as they came).
pub fn encode_binary_rows<T: AsRef<[u8]>>(
    cols: &[&[Option<T>]],
    rows: std::ops::Range<usize>,
    out: &mut BytesMut,
) {
    for r in rows {
        out.extend_from_slice(&(cols.len() as i16).to_be_bytes());
        for col in cols {
            match &col[r] {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(v) => {
                    let v = v.as_ref();
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
            }
        }
    }
}

fn escape_into(v: &[u8], out: &mut BytesMut) {
    let special = |b: &u8| matches!(b, b'\\' | b'\t' | b'\n' | b'\r');
    if !v.iter().any(special) {
        out.extend_from_slice(v);
        return;
    }
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            _ => out.extend_from_slice(&[b]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_rows_are_counted_fields() {
        let a: Vec<Option<&[u8]>> = vec![Some(&[0, 0, 0, 7]), None];
        let b: Vec<Option<&[u8]>> = vec![Some(b""), Some(b"xy")];
        let mut out = BytesMut::new();
        encode_binary_rows(&[&a, &b], 0..2, &mut out);
        assert_eq!(
            &out[..],
            &[
                0, 2, 0, 0, 0, 4, 0, 0, 0, 7, 0, 0, 0, 0, // row 1: 7, ''
                0, 2, 255, 255, 255, 255, 0, 0, 0, 2, b'x', b'y', // row 2: NULL, 'xy'
            ][..]
        );
        assert_eq!(crate::slices::Format::Binary.count_rows(&out), 2);
    }

    #[test]
    fn fields_nulls_and_escapes() {
        let row = parse_line(b"1\t\\N\ta\\tb\\nc\\\\d\t\\101\\x41\t").unwrap();
        assert_eq!(
            row,
            vec![
                Some("1".into()),
                None,
                Some("a\tb\nc\\d".into()),
                Some("AA".into()),
                Some("".into())
            ]
        );
    }

    #[test]
    fn rows_split_across_chunks() {
        let mut p = CopyParser::new();
        let mut out = Vec::new();
        p.push(b"1\tx\n2\t", &mut out).unwrap();
        assert_eq!(out.len(), 1);
        p.push(b"y\n", &mut out).unwrap();
        assert_eq!(out[1], vec![Some("2".into()), Some("y".into())]);
        p.finish().unwrap();
        p.push(b"3", &mut out).unwrap();
        assert!(p.finish().is_err());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(parse_line(b"abc\\").is_err());
        assert!(parse_line(b"\\377\\376").is_err()); // not UTF-8
        assert_eq!(parse_line(b"").unwrap(), vec![Some(String::new())]);
    }

    #[test]
    fn encoded_rows_parse_back() {
        // Column by column: a NULL, an empty string, the text `\N` (not NULL), and every
        // character COPY escapes.
        let a: Vec<Option<&str>> = vec![Some("1"), None, Some("")];
        let b: Vec<Option<&str>> = vec![Some("\\N"), Some("t\tn\nr\rb\\"), Some("é x")];
        // In two parts, as a run is written in several COPYs.
        let mut out = BytesMut::new();
        encode_rows(&[&a, &b], 0..2, &mut out);
        encode_rows(&[&a, &b], 2..3, &mut out);
        let mut p = CopyParser::new();
        let mut rows = Vec::new();
        p.push(&out, &mut rows).unwrap();
        p.finish().unwrap();
        let own = |v: &Option<&str>| v.map(str::to_owned);
        let want: Vec<CopyRow> = (0..3).map(|r| vec![own(&a[r]), own(&b[r])]).collect();
        assert_eq!(rows, want);
    }
}
