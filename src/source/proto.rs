//! Backend message framing and parsing (pure functions on byte buffers, unit-tested).
//!
//! We frame messages ourselves instead of using `postgres_protocol::message::backend`, because
//! that parser does not know CopyBothResponse (`'W'`) and we want zero-copy `Bytes` payloads
//! for CopyData. A frame is only taken out of the read buffer once it is complete, which is
//! what makes reading cancel-safe.

use bytes::{Buf, Bytes, BytesMut};

use super::{ReplMessage, ServerError, SourceError};

/// Largest backend message we accept (PostgreSQL's own limit for most messages is 1 GB).
const MAX_MESSAGE_LEN: usize = 1 << 30;

/// One complete backend message: its tag and body (without tag and length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub tag: u8,
    pub body: Bytes,
}

/// Length of the first complete frame in `buf`, `Ok(None)` if more bytes are needed.
pub fn complete_frame_len(buf: &[u8]) -> Result<Option<usize>, SourceError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    if !(4..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(SourceError::Protocol(format!(
            "invalid message length {len} for message type \"{}\"",
            printable(buf[0])
        )));
    }
    if buf.len() < 1 + len {
        return Ok(None);
    }
    Ok(Some(1 + len))
}

/// Takes the first complete frame out of `buf`, if there is one.
pub fn take_frame(buf: &mut BytesMut) -> Result<Option<Frame>, SourceError> {
    match complete_frame_len(buf)? {
        None => Ok(None),
        Some(n) => {
            let mut msg = buf.split_to(n).freeze();
            let tag = msg[0];
            msg.advance(5);
            Ok(Some(Frame { tag, body: msg }))
        }
    }
}

pub fn printable(tag: u8) -> char {
    if tag.is_ascii_graphic() {
        tag as char
    } else {
        '?'
    }
}

/// A cursor over a message body.
pub struct Reader {
    b: Bytes,
}

impl Reader {
    pub fn new(b: Bytes) -> Reader {
        Reader { b }
    }

    fn short(what: &str) -> SourceError {
        SourceError::Protocol(format!("message too short while reading {what}"))
    }

    pub fn u8(&mut self) -> Result<u8, SourceError> {
        if self.b.remaining() < 1 {
            return Err(Self::short("a byte"));
        }
        Ok(self.b.get_u8())
    }

    pub fn i16(&mut self) -> Result<i16, SourceError> {
        if self.b.remaining() < 2 {
            return Err(Self::short("an int16"));
        }
        Ok(self.b.get_i16())
    }

    pub fn i32(&mut self) -> Result<i32, SourceError> {
        if self.b.remaining() < 4 {
            return Err(Self::short("an int32"));
        }
        Ok(self.b.get_i32())
    }

    pub fn u64(&mut self) -> Result<u64, SourceError> {
        if self.b.remaining() < 8 {
            return Err(Self::short("an int64"));
        }
        Ok(self.b.get_u64())
    }

    pub fn i64(&mut self) -> Result<i64, SourceError> {
        if self.b.remaining() < 8 {
            return Err(Self::short("an int64"));
        }
        Ok(self.b.get_i64())
    }

    pub fn bytes(&mut self, n: usize) -> Result<Bytes, SourceError> {
        if self.b.remaining() < n {
            return Err(Self::short("a byte string"));
        }
        Ok(self.b.split_to(n))
    }

    /// A NUL-terminated string (lossy UTF-8).
    pub fn cstr(&mut self) -> Result<String, SourceError> {
        let pos = self
            .b
            .iter()
            .position(|&c| c == 0)
            .ok_or_else(|| SourceError::Protocol("unterminated string in message".into()))?;
        let s = String::from_utf8_lossy(&self.b[..pos]).into_owned();
        self.b.advance(pos + 1);
        Ok(s)
    }

    pub fn rest(self) -> Bytes {
        self.b
    }

    pub fn remaining(&self) -> usize {
        self.b.remaining()
    }
}

/// Parses the fields of an ErrorResponse / NoticeResponse body.
pub fn parse_error_fields(body: Bytes) -> Result<ServerError, SourceError> {
    let mut r = Reader::new(body);
    let mut e = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut localized_severity = String::new();
    loop {
        let t = r.u8()?;
        if t == 0 {
            break;
        }
        let v = r.cstr()?;
        match t {
            b'V' => e.severity = v,
            b'S' => localized_severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    if e.severity.is_empty() {
        e.severity = localized_severity;
    }
    Ok(e)
}

/// Parses a CopyData payload received inside CopyBoth into a replication message.
/// Returns `Ok(None)` for message kinds we do not know (they are skipped).
pub fn parse_copy_both_payload(data: Bytes) -> Result<Option<ReplMessage>, SourceError> {
    let mut r = Reader::new(data);
    let kind = r.u8().map_err(|_| {
        SourceError::Protocol("empty CopyData message in replication stream".into())
    })?;
    match kind {
        b'w' => {
            if r.remaining() < 24 {
                return Err(SourceError::Protocol(format!(
                    "XLogData message too short ({} header bytes, need 24)",
                    r.remaining()
                )));
            }
            let wal_start = r.u64()?;
            let wal_end = r.u64()?;
            let send_time = r.i64()?;
            Ok(Some(ReplMessage::XLogData {
                wal_start,
                wal_end,
                send_time,
                data: r.rest(),
            }))
        }
        b'k' => {
            if r.remaining() < 17 {
                return Err(SourceError::Protocol(format!(
                    "keepalive message too short ({} bytes, need 17)",
                    r.remaining()
                )));
            }
            let wal_end = r.u64()?;
            let send_time = r.i64()?;
            let reply_requested = r.u8()? != 0;
            Ok(Some(ReplMessage::Keepalive {
                wal_end,
                send_time,
                reply_requested,
            }))
        }
        _ => Ok(None),
    }
}

/// Microseconds between the Unix epoch and the PostgreSQL epoch (2000-01-01).
pub const PG_EPOCH_OFFSET_MICROS: i64 = 946_684_800_000_000;

/// Now in PostgreSQL-epoch microseconds.
pub fn pg_now_micros() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    now - PG_EPOCH_OFFSET_MICROS
}

/// Appends a CopyData('d') frame holding a standby status update ('r').
pub fn standby_status_update(
    out: &mut BytesMut,
    write: u64,
    flush: u64,
    apply: u64,
    clock: i64,
    reply_requested: bool,
) {
    use bytes::BufMut;
    out.put_u8(b'd');
    out.put_u32(4 + 1 + 8 * 4 + 1);
    out.put_u8(b'r');
    out.put_u64(write);
    out.put_u64(flush);
    out.put_u64(apply);
    out.put_i64(clock);
    out.put_u8(reply_requested as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn xlog(start: u64, end: u64, time: i64, data: &[u8]) -> Vec<u8> {
        let mut b = vec![b'w'];
        b.extend_from_slice(&start.to_be_bytes());
        b.extend_from_slice(&end.to_be_bytes());
        b.extend_from_slice(&time.to_be_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn frames_complete_and_partial() {
        let mut all = frame(b'd', &xlog(1, 2, 3, b"hello"));
        all.extend(frame(b'd', b"k"));
        // Every prefix either yields nothing or exactly the complete frames, never panics.
        for cut in 0..=all.len() {
            let mut buf = BytesMut::from(&all[..cut]);
            let mut n = 0;
            while let Some(f) = take_frame(&mut buf).unwrap() {
                assert_eq!(f.tag, b'd');
                n += 1;
            }
            let first = 5 + 1 + 24 + 5;
            let expect = if cut >= all.len() {
                2
            } else if cut >= first {
                1
            } else {
                0
            };
            assert_eq!(n, expect, "cut at {cut}");
        }
    }

    #[test]
    fn frame_bad_length() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 2][..]);
        assert!(matches!(
            take_frame(&mut buf),
            Err(SourceError::Protocol(_))
        ));
        let mut buf = BytesMut::from(&[b'd', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            take_frame(&mut buf),
            Err(SourceError::Protocol(_))
        ));
    }

    #[test]
    fn xlogdata_parses() {
        let m = parse_copy_both_payload(Bytes::from(xlog(0x10, 0x20, -5, b"abc")))
            .unwrap()
            .unwrap();
        assert_eq!(
            m,
            ReplMessage::XLogData {
                wal_start: 0x10,
                wal_end: 0x20,
                send_time: -5,
                data: Bytes::from_static(b"abc")
            }
        );
    }

    #[test]
    fn keepalive_parses() {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(0x1234);
        b.put_i64(99);
        b.put_u8(1);
        let m = parse_copy_both_payload(b.freeze()).unwrap().unwrap();
        assert_eq!(
            m,
            ReplMessage::Keepalive {
                wal_end: 0x1234,
                send_time: 99,
                reply_requested: true
            }
        );
    }

    #[test]
    fn truncated_payloads_do_not_panic() {
        let full = xlog(1, 2, 3, b"");
        for cut in 0..full.len() {
            let r = parse_copy_both_payload(Bytes::copy_from_slice(&full[..cut]));
            assert!(matches!(r, Err(SourceError::Protocol(_))), "cut {cut}");
        }
        let mut k = vec![b'k'];
        k.extend_from_slice(&[0u8; 17]);
        for cut in 0..k.len() {
            let r = parse_copy_both_payload(Bytes::copy_from_slice(&k[..cut]));
            assert!(matches!(r, Err(SourceError::Protocol(_))), "cut {cut}");
        }
        assert!(parse_copy_both_payload(Bytes::from_static(b"zzz"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn error_fields() {
        let body = b"SERROR\0VERROR\0C28P01\0Mpassword authentication failed for user \"x\"\0Dsome detail\0Hsome hint\0\0";
        let e = parse_error_fields(Bytes::from_static(body)).unwrap();
        assert_eq!(e.severity, "ERROR");
        assert_eq!(e.code, "28P01");
        assert_eq!(e.message, "password authentication failed for user \"x\"");
        assert_eq!(e.detail.as_deref(), Some("some detail"));
        assert_eq!(e.hint.as_deref(), Some("some hint"));
        // Truncated: error, no panic.
        for cut in 0..body.len() - 1 {
            let _ = parse_error_fields(Bytes::copy_from_slice(&body[..cut]));
        }
    }

    #[test]
    fn standby_update_layout() {
        let mut b = BytesMut::new();
        standby_status_update(&mut b, 1, 2, 3, 4, true);
        assert_eq!(b.len(), 1 + 4 + 1 + 32 + 1);
        let f = take_frame(&mut b).unwrap().unwrap();
        assert_eq!(f.tag, b'd');
        assert_eq!(f.body[0], b'r');
        assert_eq!(&f.body[1..9], &1u64.to_be_bytes());
        assert_eq!(&f.body[25..33], &4i64.to_be_bytes());
        assert_eq!(f.body[33], 1);
    }
}

/// Fuzzing of the protocol reader: arbitrary bytes from a (hostile or broken) server never
/// make it panic, and no length field makes it take more than the buffer holds.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]

        #[test]
        fn framing_never_panics_nor_overreads(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let before = buf.len();
            let mut taken = 0;
            while let Ok(Some(f)) = take_frame(&mut buf) {
                taken += 5 + f.body.len();
                prop_assert!(taken <= before);
            }
            prop_assert_eq!(buf.len() + taken, before);
        }

        #[test]
        fn huge_length_fields_wait_for_data_or_fail(tag in any::<u8>(), len in any::<u32>(), rest in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = vec![tag];
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&rest);
            match complete_frame_len(&bytes) {
                Ok(Some(n)) => prop_assert!(n <= bytes.len()),
                Ok(None) => prop_assert!((len as usize) + 1 > bytes.len()),
                Err(_) => prop_assert!(len < 4 || len as usize > MAX_MESSAGE_LEN),
            }
        }

        #[test]
        fn message_bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_error_fields(Bytes::from(bytes.clone()));
            let _ = parse_copy_both_payload(Bytes::from(bytes.clone()));
            for tag in [b'w', b'k'] {
                let mut b = vec![tag];
                b.extend_from_slice(&bytes);
                let _ = parse_copy_both_payload(Bytes::from(b));
            }
        }
    }
}
