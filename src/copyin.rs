//! The fast path of the initial copy, for target tables that are not hypertables: the
//! source's `COPY ... TO STDOUT` stream goes straight into PostgreSQL's own COPY FROM
//! (`BeginCopyFrom`/`CopyFrom` with a read callback), exactly as PostgreSQL's tablesync does:
//! no per-row work in livesync at all.
//!
//! Never used for hypertables: a direct `CopyFrom` bypasses TimescaleDB's routing and would
//! put every row into the hypertable's root. Hypertables get [`copy_into_hypertable`]
//! instead: TimescaleDB's own COPY (reached through its ProcessUtility hook, which reads a
//! file), fed from staging files. Tables whose target skips a source column go through
//! [`crate::apply::Applier`]'s batched inserts.
//!
//! The apply path writes its runs of INSERTs the same ways ([`copy_rows`]), where
//! [`run_copy`] finds that COPY checks what the owner's INSERT would.

use crate::error::{Error, Result};
use crate::relmap::Mapping;
use bytes::{Buf, Bytes};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::ffi::{c_int, c_void, CString};
use std::ptr::null_mut;

type Next<'a> = dyn FnMut() -> Result<Option<Bytes>> + 'a;

/// What the read callback reads from, while a CopyFrom runs.
struct Feed {
    /// Valid only during [`copy_into`]'s CopyFrom call (cleared by [`FeedGuard`]).
    next: *mut Next<'static>,
    buf: Bytes,
    eof: bool,
    error: Option<Error>,
}

thread_local! {
    static FEED: RefCell<Option<Feed>> = const { RefCell::new(None) };
}

/// Clears the feed however CopyFrom ends (also when an ERROR unwinds through us).
struct FeedGuard;

impl Drop for FeedGuard {
    fn drop(&mut self) {
        FEED.with(|f| f.borrow_mut().take());
    }
}

/// PostgreSQL's `copy_data_source_cb`: fill `outbuf` with at least `minread` and at most
/// `maxread` bytes; 0 means end of data.
#[pg_guard]
unsafe extern "C-unwind" fn read_source(
    outbuf: *mut c_void,
    minread: c_int,
    maxread: c_int,
) -> c_int {
    let out = outbuf as *mut u8;
    let (minread, maxread) = (minread.max(1) as usize, maxread.max(0) as usize);
    let mut written = 0usize;
    let failed = FEED.with(|f| {
        let mut f = f.borrow_mut();
        let Some(feed) = f.as_mut() else { return true };
        while written < maxread {
            if feed.buf.is_empty() {
                if feed.eof || written >= minread {
                    break;
                }
                // SAFETY: `next` points at copy_into's closure, alive while CopyFrom runs.
                match unsafe { (*feed.next)() } {
                    Ok(Some(chunk)) => feed.buf = chunk,
                    Ok(None) => feed.eof = true,
                    Err(e) => {
                        feed.error = Some(e);
                        return true;
                    }
                }
                continue;
            }
            let n = feed.buf.len().min(maxread - written);
            // SAFETY: `out` has room for `maxread` bytes (COPY's raw buffer); n fits.
            unsafe { std::ptr::copy_nonoverlapping(feed.buf.as_ptr(), out.add(written), n) };
            feed.buf.advance(n);
            written += n;
        }
        false
    });
    if failed {
        pgrx::error!("livesync: reading the copy from the source failed");
    }
    written as c_int
}

/// The header of COPY's binary format: signature, flags, no extension. `copyread` strips
/// the source's; each COPY FROM here gets its own.
pub const BINARY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// COPY the stream `next` yields (COPY text format, or binary rows without header and
/// trailer when `binary`; the mapped columns in the source's order) into the target table
/// of `m`. Runs in the caller's transaction; returns rows.
pub fn copy_into(
    m: &Mapping,
    binary: bool,
    mut next: impl FnMut() -> Result<Option<Bytes>>,
) -> Result<u64> {
    let mut header = binary;
    let mut next = move || {
        if std::mem::take(&mut header) {
            return Ok(Some(Bytes::from_static(BINARY_HEADER)));
        }
        next()
    };
    let names: Vec<CString> = m
        .cols
        .iter()
        .flatten()
        .map(|t| CString::new(t.name.as_str()).expect("column names have no NUL"))
        .collect();
    let next: &mut Next<'_> = &mut next;
    // SAFETY: the 'static lifetime is a lie the guard makes true: the pointer is cleared
    // before `next` goes out of scope, and only read during the CopyFrom call below.
    let next: *mut Next<'static> = unsafe { std::mem::transmute(next as *mut Next<'_>) };
    FEED.with(|f| {
        *f.borrow_mut() = Some(Feed {
            next,
            buf: Bytes::new(),
            eof: false,
            error: None,
        })
    });
    let guard = FeedGuard;
    let result = crate::worker::catch(|| {
        // SAFETY: the sequence of PostgreSQL's tablesync.c copy_table(): open the relation,
        // a parse state with its range table entry, BeginCopyFrom with our callback,
        // CopyFrom, EndCopyFrom. We are in a transaction with an active snapshot.
        unsafe {
            let rel = pg_sys::table_open(m.local_oid, pg_sys::RowExclusiveLock as i32);
            let pstate = pg_sys::make_parsestate(null_mut());
            pg_sys::addRangeTableEntryForRelation(
                pstate,
                rel,
                pg_sys::AccessShareLock as i32,
                null_mut(),
                false,
                false,
            );
            let mut attnames: *mut pg_sys::List = null_mut();
            for n in &names {
                let s = pg_sys::makeString(pg_sys::pstrdup(n.as_ptr()));
                attnames = pg_sys::lappend(attnames, s as *mut c_void);
            }
            let mut options: *mut pg_sys::List = null_mut();
            if binary {
                let arg = pg_sys::makeString(pg_sys::pstrdup(c"binary".as_ptr()));
                let opt = pg_sys::makeDefElem(pg_sys::pstrdup(c"format".as_ptr()), arg.cast(), -1);
                options = pg_sys::lappend(options, opt as *mut c_void);
            }
            let cstate = pg_sys::BeginCopyFrom(
                pstate,
                rel,
                null_mut(),
                std::ptr::null(),
                false,
                Some(read_source),
                attnames,
                options,
            );
            let rows = pg_sys::CopyFrom(cstate);
            pg_sys::EndCopyFrom(cstate);
            pg_sys::table_close(rel, pg_sys::NoLock as i32);
            Ok(rows)
        }
    });
    // A failure of the source read is the real error, not the ERROR raised to stop COPY.
    let source_error = FEED.with(|f| f.borrow_mut().as_mut().and_then(|feed| feed.error.take()));
    drop(guard);
    match (result, source_error) {
        (_, Some(e)) => Err(e),
        (r, None) => r,
    }
}

/// Whether, and how, COPY may write a run of rows inserted into the target of `m`
/// ([`run_copy`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunCopy {
    /// Only an INSERT writes them as the owner's INSERT would.
    No,
    /// PostgreSQL's COPY FROM ([`copy_rows`]).
    Table,
    /// TimescaleDB's COPY through a staging file ([`copy_into_hypertable`]).
    Hypertable,
}

/// Whether COPY writes rows into the target of `m` exactly as an INSERT by its owner
/// would: the owner may insert into the table, and its row-level security does not apply
/// to the owner (COPY does not check policies; PostgreSQL refuses `COPY FROM` where they
/// apply). Triggers, defaults, generated columns and constraints are COPY's as they are
/// INSERT's. An ordinary or partitioned table takes PostgreSQL's COPY FROM; a hypertable
/// TimescaleDB's, which reads a staging file, so only where its owner may read server
/// files. Must run inside a transaction.
pub fn run_copy(m: &Mapping) -> RunCopy {
    if m.cols.iter().all(Option::is_none) {
        return RunCopy::No;
    }
    // SAFETY: catalog lookups on the main thread inside a transaction.
    let (kind, allowed) = unsafe {
        (
            pg_sys::get_rel_relkind(m.local_oid) as u8,
            pg_sys::pg_class_aclcheck(m.local_oid, m.owner, pg_sys::ACL_INSERT as pg_sys::AclMode)
                == pg_sys::AclResult::ACLCHECK_OK
                && pg_sys::check_enable_rls(m.local_oid, m.owner, true)
                    != pg_sys::CheckEnableRlsResult::RLS_ENABLED as i32,
        )
    };
    match (allowed, m.hypertable) {
        (false, _) => RunCopy::No,
        (true, true) if crate::apply::owner_reads_server_files(m) => RunCopy::Hypertable,
        (true, true) => RunCopy::No,
        (true, false)
            if kind == pg_sys::RELKIND_RELATION || kind == pg_sys::RELKIND_PARTITIONED_TABLE =>
        {
            RunCopy::Table
        }
        (true, false) => RunCopy::No,
    }
}

/// Rows of one apply run, in COPY text format ([`crate::copytext::encode_rows`]) or, when
/// `binary`, COPY's binary format without header and trailer
/// ([`crate::copytext::encode_binary_rows`]), into the target of `m` by COPY as
/// [`run_copy`] chose, run as a statement of the caller's
/// transaction: PostgreSQL's COPY FROM after the command counter is advanced and with a
/// fresh snapshot, as SPI does before each statement (TimescaleDB's COPY runs through SPI).
pub fn copy_rows(m: &Mapping, how: RunCopy, binary: bool, rows: Bytes) -> Result<u64> {
    let mut rows = Some(rows);
    let once = move || Ok(rows.take());
    match how {
        RunCopy::No => unreachable!("the caller inserts rows COPY may not write"),
        RunCopy::Hypertable => APPLY_STAGE.with(|s| {
            let mut s = s.borrow_mut();
            let stage = match s.as_mut() {
                Some(stage) => stage,
                None => s.insert(Stage::open_for_process()?),
            };
            load_hypertable(m, stage, binary, once)
        }),
        RunCopy::Table => {
            // SAFETY: main thread, inside a transaction; the snapshot is popped below, or
            // by the abort that follows an error.
            unsafe {
                pg_sys::CommandCounterIncrement();
                pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
            }
            let copied = copy_into(m, binary, once)?;
            // SAFETY: pairs with the push above.
            unsafe { pg_sys::PopActiveSnapshot() };
            Ok(copied)
        }
    }
}

/// Bytes of COPY text staged per file for [`copy_into_hypertable`]: small enough that the
/// reader thread (`worker::copyread`) keeps reading the source while a file loads.
const STAGE_BYTES: usize = 8 << 20;

/// A staging file for TimescaleDB's COPY in `base/pgsql_tmp`, rewritten in place for each
/// load, emptied after it, and removed when dropped (and by PostgreSQL at restart after a
/// crash).
struct Stage {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl Stage {
    /// The staging file named after `tag` (unique to its user), created, or emptied if a
    /// process of the same pid left one.
    fn open(tag: &str) -> Result<Stage> {
        let path = std::path::PathBuf::from("base/pgsql_tmp")
            .join(format!("pgsql_tmp_livesync_copy_{tag}"));
        std::fs::create_dir_all("base/pgsql_tmp")?;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        Ok(Stage { path, file })
    }

    /// [`APPLY_STAGE`]'s file, named after this process, and removed when it exits.
    fn open_for_process() -> Result<Stage> {
        // SAFETY: reads our own pid.
        let stage = Stage::open(&format!("apply_{}", unsafe { pg_sys::MyProcPid }))?;
        APPLY_STAGE_PATH.with(|p| p.set(Some(stage.path.clone())));
        // SAFETY: registers a callback that only removes the file by its path.
        unsafe { pg_sys::on_proc_exit(Some(drop_apply_stage), pg_sys::Datum::from(0)) };
        Ok(stage)
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

thread_local! {
    /// The staging file of this process's runs of INSERTs into hypertables (the apply
    /// worker's, or a table-sync worker's catch-up), kept for the process's life: creating
    /// and removing one for each run cost ext4 an inode each time (`__ext4_new_inode`
    /// searching past recently deleted ones), 2.5 % of the apply worker's CPU on 100-row
    /// INSERTs into a hypertable. Removed at exit by [`drop_apply_stage`].
    static APPLY_STAGE: RefCell<Option<Stage>> = const { RefCell::new(None) };
    /// Its path, for [`drop_apply_stage`] (the stage itself may be borrowed by a COPY
    /// that a FATAL error ends).
    static APPLY_STAGE_PATH: std::cell::Cell<Option<std::path::PathBuf>> =
        const { std::cell::Cell::new(None) };
}

/// `on_proc_exit` callback: removes [`APPLY_STAGE`]'s file. Registered with PostgreSQL
/// rather than left to the thread-local's destructor, which C libraries other than glibc
/// do not run for the main thread at `exit()`.
#[pg_guard]
unsafe extern "C-unwind" fn drop_apply_stage(_code: std::ffi::c_int, _arg: pg_sys::Datum) {
    let _ = APPLY_STAGE_PATH.try_with(|p| p.take().map(std::fs::remove_file));
}

/// COPY the stream `next` yields into the hypertable of `m`, routed into chunks by
/// TimescaleDB. TimescaleDB routes COPY only in its ProcessUtility hook, and a COPY run
/// through SPI can only read a file: the stream is staged in files of up to 8 MB in
/// `base/pgsql_tmp` (removed at the end, and by PostgreSQL at restart after a crash), each
/// then loaded with `COPY ... FROM 'file'`, in the caller's transaction. That is about
/// twice as fast as executor INSERTs, because TimescaleDB's COPY inserts in batches.
/// `tag` makes the file name unique to the caller. Returns the rows copied.
pub fn copy_into_hypertable(
    m: &Mapping,
    tag: &str,
    binary: bool,
    next: impl FnMut() -> Result<Option<Bytes>>,
) -> Result<u64> {
    let mut stage = Stage::open(tag)?;
    load_hypertable(m, &mut stage, binary, next)
}

/// [`copy_into_hypertable`] through `stage`.
fn load_hypertable(
    m: &Mapping,
    stage: &mut Stage,
    binary: bool,
    mut next: impl FnMut() -> Result<Option<Bytes>>,
) -> Result<u64> {
    let format = if binary {
        crate::slices::Format::Binary
    } else {
        crate::slices::Format::Text
    };
    use std::io::{Seek, Write};
    let path = stage.path.clone();
    let cols = m
        .cols
        .iter()
        .flatten()
        .map(|t| crate::relmap::quote_ident(&t.name))
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "COPY {} ({cols}) FROM {}{}",
        m.qualified,
        crate::remote::quote_literal(&path.to_string_lossy()),
        if binary { " WITH (FORMAT binary)" } else { "" }
    );
    let mut rows: u64 = 0;
    let mut eof = false;
    let (mut waiting, mut loading) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    while !eof {
        stage.file.rewind()?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, &stage.file);
        if binary {
            file.write_all(BINARY_HEADER)?;
        }
        let mut staged = 0usize;
        while staged < STAGE_BYTES {
            let t = std::time::Instant::now();
            let chunk = next()?;
            waiting += t.elapsed();
            match chunk {
                Some(chunk) => {
                    rows += format.count_rows(&chunk) as u64;
                    staged += chunk.len();
                    file.write_all(&chunk)?;
                }
                None => {
                    eof = true;
                    break;
                }
            }
        }
        file.flush()?;
        drop(file);
        // What an earlier, longer load left behind the new content goes.
        let len = stage.file.stream_position()?;
        stage.file.set_len(len)?;
        if staged > 0 {
            let t = std::time::Instant::now();
            Spi::run(&sql)?;
            loading += t.elapsed();
        }
        // Loaded: the rows need not stay on disk (nor be written there at all, if the
        // kernel has not flushed them yet).
        stage.file.set_len(0)?;
    }
    pgrx::debug1!(
        "livesync: {} loaded in {:.1} s; {:.1} s waiting for the source",
        m.display,
        loading.as_secs_f64(),
        waiting.as_secs_f64()
    );
    Ok(rows)
}
