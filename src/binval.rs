//! pgoutput's binary values: which types the apply worker asks for them, and how a value
//! becomes text where it is not loaded as it is.
//!
//! With `binary 'true'` (PostgreSQL 14+ sources) the walsender sends each value through
//! its type's send function instead of its output function, which is cheaper for it, and
//! a run of INSERTs can then be loaded by `COPY ... (FORMAT binary)` without any text
//! being parsed on the target (`apply::Applier`). A binary value means the same on both
//! servers only for a built-in type whose OID and binary form they share, whose value is
//! not an OID of the source's catalog (`regclass` sends an OID, its text a name), and
//! from a source no newer than the target: [`safe`] and [`readable_from`]. The initial
//! copy's binary COPY (`worker::loader`) follows the same rules. The apply worker asks
//! for binary only when every published column has such a type
//! (`remote::publication_binary_safe`), and restarts in text when a Relation message
//! brings another (`stream::Stream`, `Error::TextStream`).
//!
//! Wherever values are used as text (UPDATE and DELETE runs, INSERT runs too short for
//! COPY or that COPY may not write, target columns of another type or with a `bit(n)`
//! limit, key filters), [`to_text`] turns a binary value into the text its type prints,
//! on the target: the type's receive function, then its output function, under the
//! worker session's pinned `DateStyle`, `IntervalStyle` and `extra_float_digits`
//! (`stream::prepare_session`), so that the target's input function reads back the same
//! value.

use crate::error::{Error, Result};
use bytes::Bytes;
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode as Code;
use std::cell::RefCell;
use std::collections::HashMap;

/// Built-in types (and their arrays) whose binary form carries no catalog OID and is read
/// alike by every PostgreSQL version livesync supports, from a server of the same or an
/// older major ([`readable_from`]). Not `tsquery`: PostgreSQL 18 refuses an empty one in
/// the binary form 15 sends ("malformed tsquery").
const SAFE: &[u32] = &[
    16,   // bool
    17,   // bytea
    18,   // char
    19,   // name
    20,   // int8
    21,   // int2
    23,   // int4
    25,   // text
    26,   // oid
    114,  // json
    142,  // xml
    600,  // point
    601,  // lseg
    602,  // path
    603,  // box
    604,  // polygon
    628,  // line
    650,  // cidr
    700,  // float4
    701,  // float8
    718,  // circle
    774,  // macaddr8
    790,  // money
    829,  // macaddr
    869,  // inet
    1042, // bpchar
    1043, // varchar
    1082, // date
    1083, // time
    1114, // timestamp
    1184, // timestamptz
    1186, // interval
    1266, // timetz
    1560, // bit
    1562, // varbit
    1700, // numeric
    2950, // uuid
    3220, // pg_lsn
    3614, // tsvector
    3802, // jsonb
    3904, // int4range
    3906, // numrange
    3908, // tsrange
    3910, // tstzrange
    3912, // daterange
    3926, // int8range
    4451, // int4multirange
    4532, // nummultirange
    4533, // tsmultirange
    4534, // tstzmultirange
    4535, // datemultirange
    4536, // int8multirange
    // Arrays of the above.
    1000, 1001, 1002, 1003, 1016, 1005, 1007, 1009, 1028, 199, 143, 1017, 1018, 1019, 1027, 629,
    1020, 651, 1021, 1022, 719, 775, 791, 1040, 1041, 1014, 1015, 1182, 1183, 1115, 1185, 1187,
    1270, 1561, 1563, 1231, 2951, 3221, 3643, 3807, 3905, 3907, 3909, 3911, 3913, 3927,
];

/// May values of type `oid` travel in pgoutput's binary format (see [`SAFE`])? (pure)
pub fn safe(oid: u32) -> bool {
    SAFE.contains(&oid)
}

/// May this server read binary values a server of `source_version` (`server_version_num`)
/// sends? An older or the same major, whose forms every newer one reads; a newer one may
/// send values this one cannot hold (17's infinite intervals), which its text input would
/// refuse, but its binary receive might store as something else.
pub fn readable_from(source_version: u32) -> bool {
    source_version / 10_000 <= pg_sys::PG_VERSION_NUM / 10_000
}

/// [`SAFE`] as an SQL array literal, for the source's check of a publication.
pub fn safe_sql_array() -> String {
    let list: Vec<String> = SAFE.iter().map(u32::to_string).collect();
    format!("'{{{}}}'::pg_catalog.oid[]", list.join(","))
}

/// A type's receive and output functions, looked up once per process.
struct Conv {
    recv: pg_sys::FmgrInfo,
    ioparam: pg_sys::Oid,
    out: pg_sys::FmgrInfo,
}

thread_local! {
    static CONVS: RefCell<HashMap<u32, Box<Conv>>> = RefCell::new(HashMap::new());
    /// Where conversions allocate; reset after each value.
    static CONTEXT: std::cell::Cell<pg_sys::MemoryContext> =
        const { std::cell::Cell::new(std::ptr::null_mut()) };
}

fn context() -> pg_sys::MemoryContext {
    CONTEXT.with(|c| {
        if c.get().is_null() {
            // SAFETY: a child of TopMemoryContext, kept for the process's life.
            c.set(unsafe {
                pg_sys::AllocSetContextCreateExtended(
                    pg_sys::TopMemoryContext,
                    c"livesync binary values".as_ptr(),
                    pg_sys::ALLOCSET_DEFAULT_MINSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_INITSIZE as usize,
                    pg_sys::ALLOCSET_DEFAULT_MAXSIZE as usize,
                )
            });
        }
        c.get()
    })
}

/// Switches back to the previous memory context and empties ours, also on an error.
struct Switched(pg_sys::MemoryContext, pg_sys::MemoryContext);

impl Drop for Switched {
    fn drop(&mut self) {
        // SAFETY: restores the context that was current before, then frees what the
        // conversion allocated (nothing of it is referenced any more).
        unsafe {
            pg_sys::MemoryContextSwitchTo(self.0);
            pg_sys::MemoryContextReset(self.1);
        }
    }
}

/// Types whose binary form is their text output: `pq_sendtext` of the value, in the
/// connection's encoding (UTF8, as the text form) and, for `bpchar`, with its padding.
const SENT_AS_TEXT: &[u32] = &[19, 25, 114, 1042, 1043];

/// The text of binary value `b` of built-in type `oid` (see the module header). Must run
/// on the main thread inside a transaction.
pub fn to_text(oid: u32, b: &Bytes) -> Result<Bytes> {
    if SENT_AS_TEXT.contains(&oid) {
        return Ok(b.clone());
    }
    if !safe(oid) {
        return Err(Error::user(
            Code::ERRCODE_PROTOCOL_VIOLATION,
            format!("the source sent a binary value of type {oid}, which livesync does not read in binary"),
        ));
    }
    CONVS.with(|convs| {
        let mut convs = convs.borrow_mut();
        let conv = &mut **convs.entry(oid).or_insert_with(|| Box::new(lookup(oid)));
        let cx = context();
        // SAFETY: the value is copied into a NUL-terminated buffer of our context, read by
        // the type's receive function (which must consume all of it, as COPY requires),
        // and printed by its output function; the result is copied out before the
        // context is reset.
        unsafe {
            let _switched = Switched(pg_sys::MemoryContextSwitchTo(cx), cx);
            let data = pg_sys::palloc(b.len() + 1) as *mut u8;
            std::ptr::copy_nonoverlapping(b.as_ptr(), data, b.len());
            *data.add(b.len()) = 0;
            let mut buf = pg_sys::StringInfoData {
                data: data as *mut std::ffi::c_char,
                len: b.len() as i32,
                maxlen: b.len() as i32 + 1,
                cursor: 0,
            };
            let d = pg_sys::ReceiveFunctionCall(&mut conv.recv, &mut buf, conv.ioparam, -1);
            if buf.cursor != buf.len {
                return Err(Error::user(
                    Code::ERRCODE_INVALID_BINARY_REPRESENTATION,
                    format!(
                        "incorrect binary data format in a value of type {oid} from the source"
                    ),
                ));
            }
            let s = std::ffi::CStr::from_ptr(pg_sys::OutputFunctionCall(&mut conv.out, d));
            Ok(Bytes::copy_from_slice(s.to_bytes()))
        }
    })
}

/// [`to_text`] of every value of a column of type `oid`, in place.
pub fn column_to_text(oid: u32, col: &mut [Option<Bytes>]) -> Result<()> {
    for v in col.iter_mut().flatten() {
        *v = to_text(oid, v)?;
    }
    Ok(())
}

fn lookup(oid: u32) -> Conv {
    let typ = pg_sys::Oid::from(oid);
    // SAFETY: catalog lookups of a built-in type; the FmgrInfos live in TopMemoryContext
    // for the process's life, as the boxed Conv does.
    unsafe {
        let (mut recv_fn, mut ioparam, mut out_fn, mut varlena) = (
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            pg_sys::InvalidOid,
            false,
        );
        pg_sys::getTypeBinaryInputInfo(typ, &mut recv_fn, &mut ioparam);
        pg_sys::getTypeOutputInfo(typ, &mut out_fn, &mut varlena);
        let mut conv = Conv {
            recv: std::mem::zeroed(),
            ioparam,
            out: std::mem::zeroed(),
        };
        pg_sys::fmgr_info_cxt(recv_fn, &mut conv.recv, pg_sys::TopMemoryContext);
        pg_sys::fmgr_info_cxt(out_fn, &mut conv.out, pg_sys::TopMemoryContext);
        conv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_oids_are_not_safe() {
        // regclass, regtype, regproc and their arrays send OIDs of the source's catalog.
        for oid in [2205, 2206, 24, 2210, 2211, 1008] {
            assert!(!safe(oid), "{oid}");
        }
        // Types of the user's own (above FirstNormalObjectId) never are.
        assert!(!safe(16_384));
        assert!(safe(1184) && safe(1185) && safe(20));
        assert!(safe_sql_array().starts_with("'{16,17,"));
    }
}
