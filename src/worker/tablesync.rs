//! The table-sync worker: copies one table, catches up, hands it to the apply worker.
//!
//! As PostgreSQL's `tablesync.c`:
//! 1. (i or d) Create a slot on the source that exports its snapshot; a reader thread
//!    (`copyread`) imports it, so the COPY reads exactly the slot's consistent point L
//!    (PostgreSQL uses `USE_SNAPSHOT` on the same connection; a second connection lets
//!    reading overlap loading). Load the rows into the target in ONE transaction that
//!    also sets the table's state to f and records L in the table's replication origin:
//!    a copy that fails leaves nothing behind, and is redone from scratch.
//! 2. (f) Wait for the apply worker to publish its position P (`catchup_lsn`) and stop.
//!    If L >= P, the copy already holds everything the apply worker skipped. Otherwise
//!    stream this table's changes from the slot, from L up to P, committing each source
//!    transaction with its position in the origin.
//! 3. Set s with `sync_lsn` (everything of this table before it is here); the apply worker
//!    applies this table's transactions from `sync_lsn` on, and marks the table ready.
//! 4. Drop the table's slot and origin.

use super::copyread::{self, CopyReader};
use super::stream::{self, Batching, Owner, Step, Stream};
use crate::catalog::{self, RelRow, SyncRow};
use crate::copytext::CopyParser;
use crate::error::{Error, Result};
use crate::pgoutput::{Column, Lsn, RelId, Relation, ReplicaIdentity};
use crate::remote::{self, quote_ident};
use crate::shmem::{TableWorkerSlot, REGISTRY};
use crate::source::{ConnInfo, Connection};
use crate::state::TableState;
use crate::worker::{self, block_on};
use bytes::Bytes;
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::time::Duration;

static mut MY_SLOT: usize = usize::MAX;

/// Publish the copy's progress (rows and bytes loaded so far) for the views.
fn publish_progress(rows: u64, bytes: u64) {
    // SAFETY: MY_SLOT is written once, at startup, before any copy.
    let i = unsafe { MY_SLOT };
    if i == usize::MAX {
        return;
    }
    let mut reg = REGISTRY.exclusive();
    let t = &mut reg.tables[i];
    // SAFETY: reads our own pid.
    if t.pid == unsafe { pg_sys::MyProcPid } {
        t.rows_copied = rows;
        t.bytes_copied = bytes;
    }
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

/// Entry point; bgw_extra is "dboid subid relid".
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_tablesync_main(_arg: pg_sys::Datum) {
    let extra: Vec<u64> = BackgroundWorker::get_extra()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    let [dboid, subid, relid] = extra[..] else {
        return;
    };
    let (dboid, subid, relid) = (dboid as u32, subid as i32, relid as u32);
    worker::attach(dboid);
    {
        let mut reg = REGISTRY.exclusive();
        let ok = reg
            .sync(dboid, subid)
            .is_some_and(|s| s.enabled && !s.stopping);
        if !ok || reg.table_worker(dboid, subid, relid).is_some() {
            return;
        }
        let Some(i) = reg.tables.iter().position(|t| !t.in_use) else {
            return;
        };
        // SAFETY: our own pid; MY_SLOT is written once, before the exit callback exists.
        unsafe {
            reg.tables[i] = TableWorkerSlot {
                in_use: true,
                dboid,
                subid,
                relid,
                pid: pg_sys::MyProcPid,
                ..Default::default()
            };
            MY_SLOT = i;
            pg_sys::before_shmem_exit(Some(unregister), pg_sys::Datum::from(0));
        }
    }
    let mut w = TableSync {
        dboid,
        subid,
        relid,
        rt: worker::runtime(),
    };
    let result = worker::catch(|| w.run());
    worker::abort();
    match result {
        Ok(()) | Err(Error::Terminated) => {}
        Err(e) => {
            let e = explain_copy_error(e);
            let msg = e.summary();
            e.report(PgLogLevel::LOG);
            let _ = worker::xact(|| Ok(catalog::set_rel_error(subid, relid, &msg)?));
        }
    }
}

struct TableSync {
    dboid: u32,
    subid: i32,
    relid: u32,
    rt: tokio::runtime::Runtime,
}

struct OnlyTable(RelId);

impl Owner for OnlyTable {
    fn owns(&self, rel: RelId, _commit_lsn: Lsn) -> bool {
        rel == self.0
    }
}

impl TableSync {
    fn load(&self) -> Result<Option<(SyncRow, RelRow)>> {
        worker::xact(|| {
            let Some(sub) = catalog::sync_by_id(self.subid)? else {
                return Ok(None);
            };
            Ok(catalog::rel(self.subid, self.relid)?.map(|r| (sub, r)))
        })
    }

    /// The source's connection parameters, and the application_name this table's
    /// connections show on the source.
    fn source(&self, sub: &SyncRow) -> Result<(ConnInfo, String)> {
        let info = ConnInfo::parse(&sub.source)
            .map_err(|e| Error::from_source("invalid connection string", e))?;
        Ok((info, format!("{}_sync_{}", sub.subname, self.relid)))
    }

    fn connect(&self, sub: &SyncRow, replication: bool) -> Result<Connection> {
        let (info, app) = self.source(sub)?;
        block_on(&self.rt, Connection::connect(&info, replication, &app))?
            .map_err(|e| Error::from_source("could not connect to the source", e))
    }

    fn run(&mut self) -> Result<()> {
        let Some((sub, rel)) = self.load()? else {
            return Ok(());
        };
        if !sub.enabled {
            return Ok(());
        }
        worker::set_application_name(&format!(
            "livesync table sync worker for \"{}\" table \"{}\"",
            sub.subname,
            rel.qualified_target()
        ));
        stream::prepare_session()?;
        let origin = catalog::tablesync_origin_name(self.dboid, self.subid, self.relid);
        let slot = catalog::tablesync_slot_name(&sub.subname, self.relid);
        match rel.state {
            TableState::Init | TableState::DataSync => {
                self.copy(&sub, &rel, &slot, &origin)?;
                self.catch_up(&sub, &slot, &origin)?;
            }
            TableState::FinishedCopy => self.catch_up(&sub, &slot, &origin)?,
            TableState::SyncDone | TableState::Ready => {}
        }
        self.cleanup(&sub, &slot, &origin)
    }

    /// Step 1: copy under the slot's snapshot, commit rows + state f + origin at L together.
    fn copy(&mut self, sub: &SyncRow, rel: &RelRow, slot: &str, origin: &str) -> Result<()> {
        worker::xact(|| {
            Ok(catalog::set_rel_state(
                self.subid,
                self.relid,
                TableState::DataSync,
                None,
            )?)
        })?;
        // A failed earlier attempt may have left its origin and slot.
        stream::drop_origin(origin)?;
        let mut conn = self.connect(sub, true)?;
        block_on(&self.rt, remote::drop_slot(&mut conn, slot))??;
        // The slot's snapshot goes to a reader thread with a connection of its own, which
        // reads the table while this thread loads it (see `copyread`).
        let (lsn, snapshot) = block_on(&self.rt, remote::create_slot_exporting(&mut conn, slot))??;
        let (info, application_name) = self.source(sub)?;
        let mut reader = CopyReader::start(copyread::Source {
            info,
            application_name,
            snapshot,
            relid: self.relid,
            publication: sub.publication.clone(),
            schema: rel.srcschema.clone(),
            table: rel.srcname.clone(),
        })?;
        let meta = reader.meta()?;
        // The snapshot is imported: the exporting connection is no longer needed.
        block_on(&self.rt, conn.close())?;
        publish_progress(0, 0);
        worker::xact(|| {
            Ok(catalog::set_copy_started(
                self.subid,
                self.relid,
                meta.approximate_rows,
                meta.approximate_size,
            )?)
        })?;
        let (mut columns, partitioned) = (meta.columns, meta.partitioned);
        // As native tablesync: copy only what the publication publishes (PostgreSQL 15
        // column lists and row filters, 18 generated columns); changes are filtered by
        // pgoutput the same way.
        let mut row_filter = None;
        if let Some((published, rf)) = meta.filter {
            if !published.is_empty() {
                columns.retain(|c| published.contains(c));
            }
            row_filter = rf;
        }
        // `COPY t (generated) TO` is refused: published generated columns need a SELECT.
        let select = partitioned || columns.iter().any(|c| meta.generated.contains(c));
        let relation = Relation {
            id: self.relid,
            namespace: rel.srcschema.clone(),
            name: rel.srcname.clone(),
            replica_identity: ReplicaIdentity::Default,
            columns: columns
                .iter()
                .map(|c| Column {
                    flags: 0,
                    name: c.clone(),
                    type_oid: 0,
                    type_mod: -1,
                })
                .collect(),
        };
        let table = format!(
            "{}.{}",
            quote_ident(&rel.srcschema),
            quote_ident(&rel.srcname)
        );
        let collist = columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ");
        let only = if partitioned { "" } else { "ONLY " };
        let sql = match (&row_filter, select, columns.is_empty()) {
            (Some(f), _, _) => {
                format!("COPY (SELECT {collist} FROM {only}{table} WHERE {f}) TO STDOUT")
            }
            (None, true, _) => format!("COPY (SELECT {collist} FROM {only}{table}) TO STDOUT"),
            (None, false, true) => format!("COPY {table} TO STDOUT"),
            (None, false, false) => format!("COPY {table} ({collist}) TO STDOUT"),
        };
        let no_columns = columns.is_empty();

        let started = std::time::Instant::now();
        worker::begin();
        // Rows the sync already wrote through a partition or root that left the publication
        // as this table joined it come again with this copy: remove them in the same
        // transaction (DELETE, not TRUNCATE, so readers keep seeing the old rows meanwhile).
        for t in catalog::rel_replaces(self.subid, self.relid)? {
            Spi::run(&format!("DELETE FROM {t}"))?;
            log!(
                "livesync: emptied {t}: its rows come again with the copy of \"{}\"",
                rel.qualified_target()
            );
        }
        let mut applier = crate::apply::Applier::new();
        applier.relation(relation)?;
        let target = applier.mapping(self.relid)?;
        let mut count: u64 = 0;
        let mut bytes: u64 = 0;
        // As the table's owner (see apply::as_owner). TimescaleDB's COPY reads staged
        // files, which an owner without pg_read_server_files may not: such hypertables are
        // loaded through batched INSERTs (slower, as the owner all the same).
        let copyable = !no_columns
            && target.cols.iter().all(Option::is_some)
            && (!target.hypertable || crate::apply::owner_reads_server_files(&target));
        let method = match (copyable, target.hypertable) {
            (true, false) => "COPY",
            (true, true) => "TimescaleDB COPY",
            (false, _) => "batched INSERT",
        };
        reader.copy(sql)?;
        if copyable {
            // Rows counted as they go by for the progress columns: one line per row in COPY
            // text (newlines inside values are escaped).
            let mut rows_seen: u64 = 0;
            let next = || {
                let chunk = reader.next_chunk()?;
                if let Some(c) = &chunk {
                    bytes += c.len() as u64;
                    rows_seen += c.iter().filter(|&&b| b == b'\n').count() as u64;
                    publish_progress(rows_seen, bytes);
                }
                Ok(chunk)
            };
            count = if target.hypertable {
                // TimescaleDB's COPY, which routes rows into chunks.
                let tag = format!("{}_{}_{}", self.dboid, self.subid, self.relid);
                crate::apply::as_owner(&target, || {
                    crate::copyin::copy_into_hypertable(&target, &tag, next)
                })?
            } else {
                // Every column maps: PostgreSQL's own COPY FROM.
                crate::apply::as_owner(&target, || crate::copyin::copy_into(&target, next))?
            };
        } else {
            // Targets that skip a source column, and tables without columns: batched
            // INSERTs.
            let mut parser = CopyParser::new();
            let mut rows = Vec::new();
            while let Some(chunk) = reader.next_chunk()? {
                bytes += chunk.len() as u64;
                parser.push(&chunk, &mut rows).map_err(copy_error)?;
                for row in rows.drain(..) {
                    // A table without columns sends an empty line per row.
                    let row = if no_columns { Vec::new() } else { row };
                    applier.push_row(
                        self.relid,
                        row.into_iter().map(|v| v.map(Bytes::from)).collect(),
                    )?;
                    count += 1;
                }
                publish_progress(count, bytes);
            }
            parser.finish().map_err(copy_error)?;
        }
        applier.flush()?;
        // The origin is created and advanced to L by the same commit as the rows.
        Spi::run_with_args(
            "SELECT pg_catalog.pg_replication_origin_create($1)",
            &[origin.into()],
        )?;
        Spi::run_with_args(
            "SELECT pg_catalog.pg_replication_origin_advance($1, $2::pg_catalog.pg_lsn)",
            &[origin.into(), crate::lsn::format(lsn).into()],
        )?;
        catalog::set_rel_state(self.subid, self.relid, TableState::FinishedCopy, Some(lsn))?;
        catalog::set_copy_done(self.subid, self.relid, count, bytes)?;
        worker::commit();
        let secs = started.elapsed().as_secs_f64().max(0.001);
        log!(
            "livesync: copied {count} rows ({:.1} MB) of \"{}\" in {secs:.1} s ({:.1} MB/s, {}), consistent at {}",
            bytes as f64 / 1e6,
            rel.qualified_target(),
            bytes as f64 / 1e6 / secs,
            method,
            crate::lsn::format(lsn)
        );
        Ok(())
    }

    /// Steps 2 and 3: reach the apply worker's position, then state s.
    fn catch_up(&mut self, sub: &SyncRow, slot: &str, origin: &str) -> Result<()> {
        let mut pos = stream::setup_origin(origin)?;
        let mut stream: Option<Stream> = None;
        loop {
            worker::check_interrupts()?;
            let Some((_, rel)) = self.load()? else {
                return Ok(());
            };
            if rel.state != TableState::FinishedCopy {
                return Ok(());
            }
            if let Some(catchup) = rel.catchup_lsn {
                if pos >= catchup {
                    if worker::xact(|| {
                        Ok(catalog::set_rel_syncdone(
                            self.subid, self.relid, pos, catchup,
                        )?)
                    })? {
                        log!(
                            "livesync: table \"{}\" caught up at {}",
                            rel.qualified_target(),
                            crate::lsn::format(pos)
                        );
                        if let Some(s) = stream.take() {
                            let mut conn = s.conn;
                            let _ = block_on(&self.rt, conn.end_replication());
                        }
                        return Ok(());
                    }
                    continue;
                }
                // Stream this table's changes from the slot until we reach `catchup`.
                if stream.is_none() {
                    let conn = self.connect(sub, true)?;
                    let tag = format!("{}_{}_{}", self.dboid, self.subid, self.relid);
                    match Stream::start(&self.rt, conn, slot, pos, &sub.publication, &tag) {
                        Ok(s) => stream = Some(s),
                        Err(Error::NeedsResync { msg }) => {
                            // The changes between the copy and the hand-off are gone with
                            // the slot: copy the table again (emptied first, in the copy's
                            // transaction); the apply worker starts a new table sync.
                            let why = format!("{msg}; the table is copied again");
                            warning!("livesync: table \"{}\": {why}", rel.qualified_target());
                            worker::xact(|| {
                                Ok(catalog::restart_rel_copy(self.subid, self.relid, &why)?)
                            })?;
                            // `cleanup` drops the slot's remains and the origin.
                            return Ok(());
                        }
                        Err(e) => return Err(e),
                    }
                }
                let s = stream.as_mut().unwrap();
                let owner = OnlyTable(self.relid);
                // Read for a while, then look at the catalog again (the apply worker may
                // move `catchup_lsn`). Never in the middle of a source transaction: a
                // target transaction is open then, and only its commit may end the round,
                // however long the transaction (one that was not streamed arrives whole).
                let deadline = std::time::Instant::now() + Duration::from_millis(500);
                loop {
                    let step = s.step(
                        &self.rt,
                        &owner,
                        Duration::from_millis(20),
                        Batching::EachTransaction,
                    )?;
                    if step == Step::Idle {
                        s.advance_idle()?;
                        break;
                    }
                    if !s.xact_open()
                        && (s.confirmed() >= catchup || std::time::Instant::now() >= deadline)
                    {
                        break;
                    }
                }
                if !s.xact_open() {
                    pos = pos.max(s.confirmed());
                }
                s.feedback(&self.rt, false)?;
            } else {
                if let Some(s) = stream.as_mut() {
                    // Keep the walsender alive while the apply worker is busy.
                    s.feedback(&self.rt, false)?;
                }
                worker::wait_latch(50)?;
            }
        }
    }

    /// Step 4: the slot and origin are no longer needed.
    fn cleanup(&mut self, sub: &SyncRow, slot: &str, origin: &str) -> Result<()> {
        let mut conn = self.connect(sub, true)?;
        block_on(&self.rt, remote::drop_slot(&mut conn, slot))??;
        block_on(&self.rt, conn.close())?;
        worker::xact(|| {
            Spi::run(
                "SELECT pg_catalog.pg_replication_origin_session_reset() \
                       WHERE pg_catalog.pg_replication_origin_session_is_setup()",
            )?;
            Ok(())
        })?;
        stream::drop_origin(origin)
    }
}

/// A copy that exhausted the lock table (one lock per hypertable chunk and index, held until
/// the copy commits) says what to do; the apply worker retries it with a growing delay
/// (`livesync.max_retry_interval`), never in a tight loop, because every other session of
/// the server fails with "out of shared memory" while the lock table is full.
fn explain_copy_error(e: Error) -> Error {
    match e {
        Error::User { code, msg, detail, .. }
            if code == pgrx::PgSqlErrorCode::ERRCODE_OUT_OF_MEMORY
                && msg.contains("shared memory") =>
        {
            Error::User {
                code,
                msg: format!("{msg}: the copy needs more locks than the server's lock table holds"),
                detail,
                hint: Some("A copy holds a lock on every hypertable chunk (and its indexes) it writes until it commits: raise max_locks_per_transaction on the target (a restart is needed), or use a larger chunk_time_interval. livesync retries the copy with a growing delay.".into()),
            }
        }
        other => other,
    }
}

fn copy_error(e: crate::copytext::CopyError) -> Error {
    Error::user(
        pgrx::PgSqlErrorCode::ERRCODE_PROTOCOL_VIOLATION,
        e.to_string(),
    )
}
