//! Loads the slices of one table's initial copy (see `crate::slices`).
//!
//! A loader takes a slice no other live worker of the table is loading (claims live in
//! shared memory, so they end with their process), reads it from the source in key order
//! under the copy's snapshot (`copyread`), and loads it into the target in portions of a
//! few MB. A commit is due once it has loaded [`COMMIT_BYTES`] since the last one, or holds
//! as many locks as `max_locks_per_transaction` (a hypertable copy locks every chunk it
//! writes); it happens before the next row whose key differs from the last loaded one (rows
//! that share a key are never split between parts). Each commit
//! records, in the same transaction as the rows, the part of the slice it loaded and the
//! snapshot's LSN (`catalog::commit_slice_part`): nothing is loaded twice and nothing is
//! lost, however the worker ends.
//!
//! A table-sync worker runs one loader; the copy workers it starts
//! ([`livesync_copy_main`]) run one each, under the same snapshot.

use super::copyread::{self, CopyReader, Meta};
use crate::apply::Applier;
use crate::catalog::{self, PendingSlice, RelRow, SyncRow};
use crate::copytext::CopyParser;
use crate::error::{Error, Result};
use crate::pgoutput::{Column, Lsn, Relation, ReplicaIdentity};
use crate::relmap::Mapping;
use crate::remote::{quote_ident, quote_literal};
use crate::shmem::{TableWorkerSlot, REGISTRY};
use crate::slices::{self, Format};
use crate::source::ConnInfo;
use crate::worker;
use bytes::Bytes;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::rc::Rc;

/// A portion ends after the chunk (about 1 MB, whole rows) that reaches this many bytes...
const PORTION_BYTES: usize = 8 << 20;
/// ... or this many rows.
const PORTION_ROWS: usize = 5_000;
/// A loader commits after loading this much since its last commit.
const COMMIT_BYTES: u64 = 64 << 20;

static mut MY_SLOT: usize = usize::MAX;

/// Register this process as a worker of a table in shared memory (`helper`: a copy
/// worker, otherwise the table's table-sync worker). False if the sync is not running, or
/// the table already has its table-sync worker, or no entry is free.
pub fn register(dboid: u32, subid: i32, relid: u32, helper: bool) -> bool {
    let mut reg = REGISTRY.exclusive();
    let ok = reg
        .sync(dboid, subid)
        .is_some_and(|s| s.enabled && !s.stopping);
    if !ok || (!helper && reg.table_worker(dboid, subid, relid).is_some()) {
        return false;
    }
    let Some(i) = reg.tables.iter().position(|t| !t.in_use) else {
        return false;
    };
    // SAFETY: our own pid; MY_SLOT is written once, before the exit callback exists.
    unsafe {
        reg.tables[i] = TableWorkerSlot {
            in_use: true,
            dboid,
            subid,
            relid,
            pid: pg_sys::MyProcPid,
            helper,
            ..Default::default()
        };
        MY_SLOT = i;
        pg_sys::before_shmem_exit(Some(unregister), pg_sys::Datum::from(0));
    }
    true
}

#[pg_guard]
unsafe extern "C-unwind" fn unregister(_code: i32, _arg: pg_sys::Datum) {
    if MY_SLOT != usize::MAX {
        let mut reg = REGISTRY.exclusive();
        if reg.tables[MY_SLOT].pid == pg_sys::MyProcPid {
            reg.tables[MY_SLOT] = TableWorkerSlot::default();
        }
    }
}

/// Change this process's entry in shared memory.
fn with_my_slot(f: impl FnOnce(&mut TableWorkerSlot)) {
    // SAFETY: MY_SLOT is written once, at registration, before any copy.
    let i = unsafe { MY_SLOT };
    if i == usize::MAX {
        return;
    }
    let mut reg = REGISTRY.exclusive();
    let t = &mut reg.tables[i];
    // SAFETY: reads our own pid.
    if t.pid == unsafe { pg_sys::MyProcPid } {
        f(t);
    }
}

/// Publish what the current part has loaded and not yet committed, for the views.
fn publish_progress(rows: u64, bytes: u64) {
    with_my_slot(|t| {
        t.rows_copied = rows;
        t.bytes_copied = bytes;
    });
}

/// The column a copy is sliced on: name, type, and position among the copied columns.
/// The planner (table-sync worker) and every loader decide it the same way.
pub fn usable_key(meta: &Meta, columns: &[String]) -> Option<(String, u32, usize)> {
    let (name, typid) = meta.key.clone()?;
    let i = columns.iter().position(|c| *c == name)?;
    Some((name, typid, i))
}

/// The columns to copy: as native tablesync, only what the publication publishes
/// (PostgreSQL 15 column lists and row filters, 18 generated columns); changes are
/// filtered by pgoutput the same way. Returns them and the row filter.
pub fn copied_columns(meta: &Meta) -> (Vec<String>, Option<String>) {
    let mut columns = meta.columns.clone();
    let mut row_filter = None;
    if let Some((published, rf)) = &meta.filter {
        if !published.is_empty() {
            columns.retain(|c| published.contains(c));
        }
        row_filter = rf.clone();
    }
    (columns, row_filter)
}

/// The source table, as a COPY or SELECT names it.
pub fn source_table(rel: &RelRow) -> String {
    format!(
        "{}.{}",
        quote_ident(&rel.srcschema),
        quote_ident(&rel.srcname)
    )
}

/// How the rows reach the target table.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Method {
    /// PostgreSQL's own COPY FROM (`copyin::copy_into`).
    Copy,
    /// TimescaleDB's COPY, which routes rows into chunks (`copyin::copy_into_hypertable`).
    HypertableCopy,
    /// The applier's runs of inserts (targets that skip a source column, tables without
    /// columns, and hypertables whose owner may not read server files), themselves written
    /// by COPY where `copyin::run_copy` allows.
    Insert,
}

pub struct Loader {
    dboid: u32,
    subid: i32,
    relid: u32,
    /// The LSN of the snapshot the reader reads under.
    lsn: Lsn,
    /// That snapshot is not the plan's: the copy resumed after an interruption.
    resumed: bool,
    reader: CopyReader,
    table: String,
    only: &'static str,
    columns: Vec<String>,
    row_filter: Option<String>,
    select: bool,
    key: Option<(String, u32, usize)>,
    /// COPY's binary format when both sides have the same built-in type for every column
    /// (and the key, if any, is an integer), its text format otherwise.
    format: Format,
    applier: Applier,
    target: Rc<Mapping>,
    method: Method,
    /// What this loader committed (for the log).
    pub rows: u64,
    pub bytes: u64,
}

impl Loader {
    /// A loader reading through `reader` (snapshot at `lsn`, `meta` already received).
    pub fn new(
        ids: (u32, i32, u32),
        rel: &RelRow,
        lsn: Lsn,
        reader: CopyReader,
        meta: &Meta,
    ) -> Result<Loader> {
        let (dboid, subid, relid) = ids;
        let (columns, row_filter) = copied_columns(meta);
        // The slices are ranges of the column the plan chose. If the source no longer
        // offers that column as the key of what is copied (its replica identity, column
        // list or type changed since), the ranges mean nothing now: start over.
        let key = usable_key(meta, &columns);
        let (planned, plan_lsn) = worker::xact(|| {
            Ok((
                catalog::copy_key(subid, relid)?,
                catalog::copy_plan_lsn(subid, relid)?,
            ))
        })?;
        if planned.is_some() && planned != key.as_ref().map(|k| (k.0.clone(), k.1)) {
            return Err(Error::NeedsResync {
                msg: format!(
                    "the column the copy was sliced on ({:?}) is no longer the key of what is copied",
                    planned.map(|k| k.0)
                ),
            });
        }
        let key = key.filter(|_| planned.is_some());
        let relation = Relation {
            id: relid,
            namespace: rel.schemaname.clone(),
            name: rel.tablename.clone(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|c| Column {
                    flags: 0,
                    name: c.clone(),
                    type_oid: meta
                        .types
                        .iter()
                        .find(|(n, _)| n == c)
                        .map_or(0, |(_, t)| *t),
                    type_mod: -1,
                })
                .collect(),
        };
        let mut applier = Applier::new();
        applier.add_columns = worker::xact(|| Ok(catalog::sync_by_id(subid)?))?
            .is_some_and(|s| s.options.add_columns);
        let (target, method) = worker::xact(|| {
            applier.relation(relation)?;
            let target = applier.mapping(relid)?;
            // As the table's owner (see apply::as_owner), and only where COPY checks what
            // the owner's INSERT would (`copyin::run_copy`: privileges, row-level
            // security; TimescaleDB's COPY reads staged files, which an owner without
            // pg_read_server_files may not). Other tables are loaded through the
            // applier's runs of inserts (slower, and refused where the owner's INSERT is).
            let copyable = !columns.is_empty()
                && target.cols.iter().all(Option::is_some)
                && crate::copyin::run_copy(&target) != crate::copyin::RunCopy::No;
            let method = match (copyable, target.hypertable) {
                (true, false) => Method::Copy,
                (true, true) => Method::HypertableCopy,
                (false, _) => Method::Insert,
            };
            Ok((target, method))
        })?;
        let format = if method != Method::Insert
            && crate::gucs::BINARY_COPY.get()
            && key
                .as_ref()
                .is_none_or(|k| matches!(k.1, slices::INT2 | slices::INT4 | slices::INT8))
            && crate::binval::readable_from(meta.source_version)
            && same_builtin_types(&target, &columns, &meta.types)
        {
            Format::Binary
        } else {
            Format::Text
        };
        Ok(Loader {
            dboid,
            subid,
            relid,
            lsn,
            resumed: plan_lsn != Some(lsn),
            reader,
            table: source_table(rel),
            only: if meta.partitioned { "" } else { "ONLY " },
            // `COPY t (generated) TO` is refused: published generated columns need a
            // SELECT; so do partitioned tables.
            select: meta.partitioned || columns.iter().any(|c| meta.generated.contains(c)),
            columns,
            row_filter,
            key,
            format,
            applier,
            target,
            method,
            rows: 0,
            bytes: 0,
        })
    }

    pub fn method(&self) -> &'static str {
        match (self.method, self.format) {
            (Method::Copy, Format::Binary) => "binary COPY",
            (Method::Copy, Format::Text) => "COPY",
            (Method::HypertableCopy, Format::Binary) => "TimescaleDB binary COPY",
            (Method::HypertableCopy, Format::Text) => "TimescaleDB COPY",
            (Method::Insert, _) => "batched INSERT",
        }
    }

    /// The key a slice is read in the order of, so that a loader may commit in the middle
    /// of it: a slice of a sliced table, or the whole table when its target locks more as
    /// it loads (a hypertable's chunks, a partitioned table's partitions). A plain table
    /// copied as one slice is read in the source's physical order, in one transaction.
    fn order_key(&self, s: &PendingSlice) -> Option<&(String, u32, usize)> {
        self.key.as_ref().filter(|_| {
            s.lo.is_some() || s.hi.is_some() || self.target.hypertable || self.target.partitioned
        })
    }

    /// The `COPY ... TO STDOUT` that reads one slice (or what is left of it).
    fn slice_sql(&self, s: &PendingSlice) -> String {
        let collist = self
            .columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let (table, only) = (&self.table, self.only);
        let mut conds: Vec<String> = self.row_filter.iter().map(|f| format!("({f})")).collect();
        let Some((key, typid, _)) = self.order_key(s) else {
            let sql = match (conds.pop(), self.select, self.columns.is_empty()) {
                (Some(f), _, _) => {
                    format!("COPY (SELECT {collist} FROM {only}{table} WHERE {f}) TO STDOUT")
                }
                (None, true, _) => {
                    format!("COPY (SELECT {collist} FROM {only}{table}) TO STDOUT")
                }
                (None, false, true) => format!("COPY {table} TO STDOUT"),
                (None, false, false) => format!("COPY {table} ({collist}) TO STDOUT"),
            };
            return format!("{sql}{}", self.format_option());
        };
        let k = quote_ident(key);
        let ty = type_name(*typid);
        if let Some(lo) = &s.lo {
            conds.push(format!(
                "{k} OPERATOR(pg_catalog.>=) {}::pg_catalog.{ty}",
                quote_literal(lo)
            ));
        }
        if let Some(hi) = &s.hi {
            conds.push(format!(
                "{k} OPERATOR(pg_catalog.<) {}::pg_catalog.{ty}",
                quote_literal(hi)
            ));
        }
        let wh = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        format!(
            "COPY (SELECT {collist} FROM {only}{table}{wh} ORDER BY {k}) TO STDOUT{}",
            self.format_option()
        )
    }

    fn format_option(&self) -> &'static str {
        match self.format {
            Format::Binary => " (FORMAT binary)",
            Format::Text => "",
        }
    }

    /// Claim a slice no live worker of this table loads, still pending as of now.
    fn claim(&self) -> Result<Option<PendingSlice>> {
        let pending = worker::xact(|| {
            if !self.plan_current()? {
                return Ok(Vec::new());
            }
            Ok(catalog::pending_slices(self.subid, self.relid)?)
        })?;
        for s in pending {
            let got = {
                let mut reg = REGISTRY.exclusive();
                if reg.slice_taken(self.dboid, self.subid, self.relid, s.sliceno) {
                    false
                } else {
                    // SAFETY: MY_SLOT is ours (see with_my_slot).
                    let i = unsafe { MY_SLOT };
                    i != usize::MAX && {
                        reg.tables[i].loading = true;
                        reg.tables[i].slice = s.sliceno;
                        true
                    }
                }
            };
            if !got {
                continue;
            }
            // Another worker may have finished it between our read and our claim.
            let now = worker::xact(|| Ok(catalog::pending_slices(self.subid, self.relid)?))?;
            if let Some(s) = now.into_iter().find(|p| p.sliceno == s.sliceno) {
                return Ok(Some(s));
            }
            release_claim();
        }
        Ok(None)
    }

    /// Is this loader's snapshot one the table's current copy may use? A copy that was
    /// started over (its slot was lost) has a new plan, whose catch-up starts at a later
    /// LSN: a copy worker of the old plan, still running with its older snapshot, must not
    /// load its slices. Locks the table's row until the transaction ends, so that the plan
    /// cannot change before a part commits.
    fn plan_current(&self) -> Result<bool> {
        Ok(catalog::copy_plan_lsn(self.subid, self.relid)?.is_some_and(|l| self.lsn >= l))
    }

    /// Load slices until none is left that no one loads. Returns how many it loaded.
    pub fn run(&mut self) -> Result<usize> {
        let mut n = 0;
        while let Some(s) = self.claim()? {
            let r = self.load_slice(&s);
            release_claim();
            r?;
            n += 1;
        }
        Ok(n)
    }

    /// Load one slice (see the module header). A part may end only between two rows with
    /// different keys: once a commit is due, the loader goes on loading the rows that
    /// share the last loaded row's key, and commits before the first row with another.
    fn load_slice(&mut self, s: &PendingSlice) -> Result<()> {
        if (s.lo.is_some() || s.hi.is_some()) && self.key.is_none() {
            return Err(Error::internal("a bounded slice of a copy without a key"));
        }
        let sql = self.slice_sql(s);
        let fmt = self.format;
        self.reader.copy(sql, fmt == Format::Binary)?;
        let key_col = self.order_key(s).map(|k| k.2);
        let mut lo = s.lo.clone();
        let (mut part_rows, mut part_bytes) = (0u64, 0u64);
        let mut carry: Vec<Bytes> = Vec::new();
        let mut eof = false;
        // The key of the last row loaded since the last commit; a commit is due.
        let mut last_key: Option<Vec<u8>> = None;
        let mut commit_due = false;
        publish_progress(0, 0);
        worker::begin();
        loop {
            // A portion: chunks until it is big enough or the slice ends.
            let mut portion = std::mem::take(&mut carry);
            let mut rows: usize = portion.iter().map(|c| fmt.count_rows(c)).sum();
            let mut size: usize = portion.iter().map(Bytes::len).sum();
            while !eof && size < PORTION_BYTES && rows < PORTION_ROWS {
                match self.reader.next_chunk()? {
                    Some(mut c) => {
                        // A chunk of small rows is cut at PORTION_ROWS (a hypertable copy
                        // may lock a chunk per few rows).
                        let mut n = fmt.count_rows(&c);
                        if rows + n > PORTION_ROWS && key_col.is_some() {
                            n = PORTION_ROWS - rows;
                            let off = fmt.after_rows(&c, n);
                            carry.push(c.split_off(off));
                        }
                        size += c.len();
                        rows += n;
                        portion.push(c);
                    }
                    None => eof = true,
                }
            }
            // A commit is due: load up to the first row with another key than the last
            // loaded one, and commit there.
            if let (true, Some(col), Some(last)) = (commit_due, key_col, last_key.as_deref()) {
                if let Some((i, off, cut)) = slices::first_other_key(fmt, &portion, col, last) {
                    let mut rest: Vec<Bytes> = portion.split_off(i);
                    let first = rest[0].clone();
                    portion.push(first.slice(..off));
                    rest[0] = first.slice(off..);
                    rest.append(&mut carry);
                    carry = rest;
                    self.load(portion, &mut part_rows, &mut part_bytes)?;
                    let cut = fmt.key_text(&cut);
                    self.commit_part(s, lo.as_deref(), Some(&cut), part_rows, part_bytes)?;
                    worker::begin();
                    lo = Some(cut);
                    (part_rows, part_bytes) = (0, 0);
                    (last_key, commit_due) = (None, false);
                    continue;
                }
            }
            if let Some(col) = key_col {
                if let Some(k) = slices::last_key(fmt, &portion, col) {
                    last_key = Some(k.to_vec());
                }
            }
            self.load(portion, &mut part_rows, &mut part_bytes)?;
            if eof && carry.is_empty() {
                self.commit_part(s, lo.as_deref(), None, part_rows, part_bytes)?;
                return Ok(());
            }
            if key_col.is_some() && !commit_due {
                commit_due = part_bytes >= COMMIT_BYTES || locks_held()? >= max_locks();
            }
        }
    }

    /// Commit what was loaded of slice `s` since `lo`, up to `cut` (None: its end).
    fn commit_part(
        &mut self,
        s: &PendingSlice,
        lo: Option<&str>,
        cut: Option<&str>,
        rows: u64,
        bytes: u64,
    ) -> Result<()> {
        if !self.plan_current()? {
            return Err(Error::internal(
                "the table's copy was started over: this worker's snapshot is too old for it",
            ));
        }
        if !catalog::commit_slice_part(
            self.subid, self.relid, s.sliceno, lo, cut, self.lsn, rows, bytes,
        )? {
            return Err(Error::internal(format!(
                "slice {} of the copy was loaded by another worker",
                s.sliceno
            )));
        }
        worker::commit();
        self.rows += rows;
        self.bytes += bytes;
        publish_progress(0, 0);
        Ok(())
    }

    /// [`Loader::load_portion`], with the ERROR it may raise as an error. Parts read under
    /// different snapshots can hold one value of a unique column in two rows for a while
    /// (it moved between them on the source): such a copy is started over, under one
    /// snapshot.
    fn load(&mut self, portion: Vec<Bytes>, rows: &mut u64, bytes: &mut u64) -> Result<()> {
        match worker::catch(|| self.load_portion(portion, rows, bytes)) {
            Err(Error::User { code, msg, .. })
                if self.resumed && code == pgrx::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION =>
            {
                Err(Error::NeedsResync {
                    msg: format!("{msg}, loading a part of a resumed copy"),
                })
            }
            other => other,
        }
    }

    /// Load whole COPY text rows into the target, in the open transaction.
    fn load_portion(
        &mut self,
        portion: Vec<Bytes>,
        part_rows: &mut u64,
        part_bytes: &mut u64,
    ) -> Result<()> {
        let mut chunks = portion.into_iter();
        let mut next = || -> Result<Option<Bytes>> {
            let c = chunks.next();
            if let Some(c) = &c {
                *part_bytes += c.len() as u64;
                *part_rows += self.format.count_rows(c) as u64;
                publish_progress(*part_rows, *part_bytes);
            }
            Ok(c)
        };
        let target = self.target.clone();
        match self.method {
            Method::Copy => {
                let binary = self.format == Format::Binary;
                crate::apply::as_owner(&target, || {
                    crate::copyin::copy_into(&target, binary, next)
                })?;
            }
            Method::HypertableCopy => {
                let tag = format!(
                    "{}_{}_{}_{}",
                    self.dboid,
                    self.subid,
                    self.relid,
                    // SAFETY: reads our own pid.
                    unsafe { pg_sys::MyProcPid }
                );
                crate::apply::as_owner(&target, || {
                    crate::copyin::copy_into_hypertable(
                        &target,
                        &tag,
                        self.format == Format::Binary,
                        next,
                    )
                })?;
            }
            Method::Insert => {
                let mut parser = CopyParser::new();
                let mut rows = Vec::new();
                let no_columns = self.columns.is_empty();
                while let Some(chunk) = next()? {
                    parser.push(&chunk, &mut rows).map_err(copy_error)?;
                    for row in rows.drain(..) {
                        // A table without columns sends an empty line per row.
                        let row = if no_columns { Vec::new() } else { row };
                        self.applier.push_row(
                            self.relid,
                            row.into_iter().map(|v| v.map(Bytes::from)).collect(),
                        )?;
                    }
                }
                parser.finish().map_err(copy_error)?;
                self.applier.flush()?;
            }
        }
        Ok(())
    }
}

fn release_claim() {
    with_my_slot(|t| t.loading = false);
}

/// Locks this transaction holds in the shared lock table (fast-path ones take no room).
fn locks_held() -> Result<i64> {
    Ok(Spi::get_one::<i64>(
        "SELECT pg_catalog.count(*) FROM pg_catalog.pg_locks \
          WHERE pid OPERATOR(pg_catalog.=) pg_catalog.pg_backend_pid() AND NOT fastpath",
    )?
    .unwrap_or(0))
}

fn max_locks() -> i64 {
    // SAFETY: reads a GUC variable.
    i64::from(unsafe { pg_sys::max_locks_per_xact })
}

/// The SQL name (in pg_catalog) of a sliceable key type.
fn type_name(typid: u32) -> &'static str {
    match typid {
        slices::INT2 => "int2",
        slices::INT4 => "int4",
        slices::DATE => "date",
        slices::TIME => "time",
        slices::TIMESTAMP => "timestamp",
        slices::TIMESTAMPTZ => "timestamptz",
        _ => "int8",
    }
}

fn copy_error(e: crate::copytext::CopyError) -> Error {
    Error::user(
        pgrx::PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
        e.to_string(),
    )
}

/// Entry point of a copy worker, which helps a table-sync worker load its table's slices
/// under the snapshot it names; bgw_extra is "dboid subid relid lsn snapshot".
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_copy_main(_arg: pg_sys::Datum) {
    let extra = BackgroundWorker::get_extra().to_owned();
    let parts: Vec<&str> = extra.split_whitespace().collect();
    let [db, sub, rel, lsn, snapshot] = parts[..] else {
        return;
    };
    let (Ok(dboid), Ok(subid), Ok(relid), Some(lsn)) = (
        db.parse::<u32>(),
        sub.parse::<i32>(),
        rel.parse::<u32>(),
        crate::lsn::parse(lsn),
    ) else {
        return;
    };
    worker::attach(dboid);
    if !register(dboid, subid, relid, true) {
        return;
    }
    let result = worker::catch(|| help(dboid, subid, relid, lsn, snapshot));
    worker::abort();
    match result {
        Ok(()) | Err(Error::Terminated) => {}
        // The table-sync worker loads what is left, or takes a new snapshot.
        Err(e) => e.report(PgLogLevel::LOG),
    }
}

fn help(dboid: u32, subid: i32, relid: u32, lsn: Lsn, snapshot: &str) -> Result<()> {
    let Some((sub, rel)) = worker::xact(|| Ok(catalog::sync_and_rel(subid, relid)?))? else {
        return Ok(());
    };
    if !sub.enabled {
        return Ok(());
    }
    worker::set_application_name(&format!(
        "livesync copy worker for \"{}\" table \"{}\"",
        sub.subname,
        rel.qualified_target()
    ));
    super::stream::prepare_session()?;
    let mut reader = start_reader(&sub, &rel, relid, snapshot.to_owned())?;
    let meta = reader.meta()?;
    let mut loader = Loader::new((dboid, subid, relid), &rel, lsn, reader, &meta)?;
    let n = loader.run()?;
    if n > 0 {
        log!(
            "livesync: copy worker loaded {n} slices ({} rows, {:.1} MB) of \"{}\"",
            loader.rows,
            loader.bytes as f64 / 1e6,
            rel.qualified_target()
        );
    }
    Ok(())
}

/// The source's connection parameters, and the application_name that the connections of
/// a table's copy show on the source.
pub fn source_of(sub: &SyncRow, relid: u32) -> Result<(ConnInfo, String)> {
    let info = ConnInfo::parse(&sub.source)
        .map_err(|e| Error::from_source("invalid connection string", e))?;
    Ok((info, format!("{}_sync_{relid}", sub.subname)))
}

/// A reader thread for a table's copy, importing `snapshot`.
pub fn start_reader(
    sub: &SyncRow,
    rel: &RelRow,
    relid: u32,
    snapshot: String,
) -> Result<CopyReader> {
    let (info, application_name) = source_of(sub, relid)?;
    CopyReader::start(copyread::Source {
        info,
        application_name,
        snapshot,
        relid,
        publication: sub.publication.clone(),
        schema: rel.srcschema.clone(),
        table: rel.srcname.clone(),
    })
}

/// Does every copied column have the same built-in type on both sides, one whose binary
/// form means the same on both ([`crate::binval::safe`]: so that COPY's binary format,
/// whose values are the types' send/recv forms, means the same there)? `m` maps the
/// relation of `columns` (the target's types from its catalog, `relmap::resolve`).
fn same_builtin_types(m: &Mapping, columns: &[String], source: &[(String, u32)]) -> bool {
    !columns.is_empty()
        && columns.iter().zip(&m.cols).all(|(name, t)| {
            let src = source.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
            matches!((src, t), (Some(s), Some(t)) if s == t.type_oid && crate::binval::safe(s))
        })
}
