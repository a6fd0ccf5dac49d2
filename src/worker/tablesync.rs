//! The table-sync worker: copies one table, catches up, hands it to the apply worker.
//!
//! As PostgreSQL's `tablesync.c`, with the copy in slices (`crate::slices`):
//! 1. (i) Create the table's slot on the source, exporting its snapshot at L. A reader
//!    thread (`copyread`) imports it and plans the copy: a table larger than
//!    `livesync.copy_slice_size` is split into key ranges, others are one slice. The plan,
//!    state d, and the table's replication origin at L commit together.
//! 2. (d) Load the slices (`loader`), with up to `livesync.max_copy_workers_per_table - 1`
//!    copy workers importing the same snapshot; each part of a slice commits with its
//!    rows. A worker that resumes a copy whose snapshot is gone takes a new one from a
//!    temporary slot, and records its LSN with the parts it loads. Once every slice is
//!    loaded, state f.
//! 3. (f) Wait for the apply worker to publish its position P (`catchup_lsn`) and stop.
//!    Stream this table's changes from the slot, from L up to P and up to the latest
//!    snapshot any part was read under (nothing to stream when L is past both), committing
//!    each source transaction with its position in the origin; a part read under a later
//!    snapshot skips what its snapshot already had (`slices::KeyFilter`).
//! 4. Set s with `sync_lsn` (everything of this table before it is here); the apply worker
//!    applies this table's transactions from `sync_lsn` on, and marks the table ready.
//! 5. Drop the table's slot and origin.

use super::loader::{self, Loader};
use super::stream::{self, Batching, Owner, Step, Stream};
use crate::catalog::{self, RelRow, SyncRow};
use crate::error::{Error, Result};
use crate::gucs;
use crate::pgoutput::{Lsn, RelId};
use crate::remote;
use crate::shmem::REGISTRY;
use crate::slices::KeyFilter;
use crate::source::Connection;
use crate::state::TableState;
use crate::worker::{self, block_on};
use pgrx::bgworkers::BackgroundWorker;
use pgrx::prelude::*;
use std::time::Duration;

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
    if !loader::register(dboid, subid, relid, false) {
        return;
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
            // disable_on_error covers copies too, as native's table-sync workers do.
            let disable = worker::xact(|| Ok(catalog::sync_by_id(subid)?))
                .ok()
                .flatten()
                .filter(|s| s.options.disable_on_error);
            if let Some(sub) = disable {
                let _ = worker::xact(|| {
                    catalog::set_sync_error(
                        subid,
                        Some(&format!("table \"{}\": {msg}", relid_name(subid, relid))),
                    )?;
                    Ok(catalog::set_enabled(subid, false)?)
                });
                let pids = {
                    let mut reg = REGISTRY.exclusive();
                    if let Some(s) = reg.sync_mut(dboid, subid) {
                        s.enabled = false;
                    }
                    reg.pids_of(dboid, subid)
                };
                // SAFETY: reads our own pid.
                let me = unsafe { pg_sys::MyProcPid };
                pids.into_iter()
                    .filter(|p| *p != me)
                    .for_each(crate::shmem::terminate);
                log!(
                    "livesync subscription \"{}\" has been disabled because of an error (disable_on_error)",
                    sub.subname
                );
            }
        }
    }
}

/// The target table of a sync's table, for messages.
fn relid_name(subid: i32, relid: u32) -> String {
    worker::xact(|| Ok(catalog::rel(subid, relid)?))
        .ok()
        .flatten()
        .map(|r| r.qualified_target())
        .unwrap_or_else(|| relid.to_string())
}

struct TableSync {
    dboid: u32,
    subid: i32,
    relid: u32,
    rt: tokio::runtime::Runtime,
}

/// The catch-up owns one table, and of it what the copy's snapshots did not have.
struct OnlyTable(RelId, KeyFilter);

impl Owner for OnlyTable {
    fn owns(&self, rel: RelId, _commit_lsn: Lsn) -> bool {
        rel == self.0
    }

    fn key_filter(&self, rel: RelId) -> Option<&KeyFilter> {
        (rel == self.0).then_some(&self.1)
    }
}

impl TableSync {
    fn load(&self) -> Result<Option<(SyncRow, RelRow)>> {
        worker::xact(|| Ok(catalog::sync_and_rel(self.subid, self.relid)?))
    }

    fn connect(&self, sub: &SyncRow, replication: bool) -> Result<Connection> {
        let (info, app) = loader::source_of(sub, self.relid)?;
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
                match self.copy(&sub, &rel, &slot, &origin) {
                    // The copy's parts cannot be completed consistently.
                    Err(Error::NeedsResync { msg }) => {
                        worker::abort();
                        self.start_over(&rel, &msg)?;
                    }
                    other => other?,
                }
                self.catch_up(&sub, &slot, &origin)?;
            }
            TableState::FinishedCopy => self.catch_up(&sub, &slot, &origin)?,
            TableState::SyncDone | TableState::Ready => {}
        }
        self.cleanup(&sub, &slot, &origin)
    }

    /// Steps 1 and 2: plan the copy (or resume it), load every slice, state f.
    fn copy(&mut self, sub: &SyncRow, rel: &RelRow, slot: &str, origin: &str) -> Result<()> {
        let ids = (self.dboid, self.subid, self.relid);
        // The replication connection stays open until every slice is loaded: its
        // exported snapshot is the one the copy workers import.
        let mut conn = self.connect(sub, true)?;
        let planned = rel.state == TableState::DataSync
            && worker::xact(|| Ok(catalog::has_slices(self.subid, self.relid)?))?;
        // The slot the parts' catch-up streams from: still at the plan's consistent point
        // (nothing streams it before state f).
        let resumable = planned
            && block_on(&self.rt, remote::slot_state(&mut conn, slot))??.is_some_and(|st| {
                st.wal_status != "lost" && rel.lsn.is_some_and(|l| st.confirmed_flush == l)
            });
        if planned && !resumable {
            // Loaded parts without the slot their catch-up streams from.
            self.start_over(
                rel,
                &format!("replication slot \"{slot}\" of the interrupted copy is gone"),
            )?;
        }
        let started = std::time::Instant::now();
        // Interrupted after its last part committed: only state f is left to set.
        let all_loaded = resumable
            && worker::xact(|| Ok(catalog::pending_slices(self.subid, self.relid)?))?.is_empty();
        let (mut rows, mut bytes, mut method) = (0, 0, "nothing left to load");
        if !all_loaded {
            let (lsn, snapshot) = if resumable {
                // The first snapshot died with its session: the rest is read under a new
                // one, from a temporary slot (its consistent point is recorded with every
                // part).
                // SAFETY: reads our own pid.
                // (At most 40 + 6 + 10 + 4 characters: within NAMEDATALEN.)
                let tmp = format!("{slot}_{}", unsafe { pg_sys::MyProcPid } % 1000);
                let (lsn, snap) = block_on(
                    &self.rt,
                    remote::create_temp_slot_exporting(&mut conn, &tmp),
                )??;
                log!(
                    "livesync: resuming the copy of \"{}\" under a new snapshot at {}",
                    rel.qualified_target(),
                    crate::lsn::format(lsn)
                );
                (lsn, snap)
            } else {
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
                block_on(&self.rt, remote::drop_slot(&mut conn, slot))??;
                block_on(&self.rt, remote::create_slot_exporting(&mut conn, slot))??
            };
            let mut reader = loader::start_reader(sub, rel, self.relid, snapshot.clone())?;
            let meta = reader.meta()?;
            if !resumable {
                self.plan(rel, origin, lsn, &mut reader, &meta)?;
            }
            let mut own = Loader::new(ids, rel, lsn, reader, &meta)?;
            self.start_helpers(rel, lsn, &snapshot)?;
            // Load slices, then wait for the copy workers; take over a slice whose worker
            // died.
            loop {
                own.run()?;
                let left = worker::xact(|| Ok(catalog::pending_slices(self.subid, self.relid)?))?;
                if left.is_empty() {
                    break;
                }
                worker::wait_latch(200)?;
            }
            (rows, bytes, method) = (own.rows, own.bytes, own.method());
        }
        block_on(&self.rt, conn.close())?;
        let first_lsn = worker::xact(|| {
            let (rows, bytes) = catalog::copy_totals(self.subid, self.relid)?;
            catalog::set_rel_state(self.subid, self.relid, TableState::FinishedCopy, None)?;
            catalog::set_copy_done(self.subid, self.relid, rows, bytes)?;
            Ok(catalog::rel(self.subid, self.relid)?.and_then(|r| r.lsn))
        })?;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        log!(
            "livesync: copied \"{}\" ({method}): this worker loaded {rows} rows ({:.1} MB) in {secs:.1} s; consistent at {}",
            rel.qualified_target(),
            bytes as f64 / 1e6,
            crate::lsn::format(first_lsn.unwrap_or(0))
        );
        Ok(())
    }

    /// A new copy: its slices, state d, and the table's origin at the slot's consistent
    /// point `lsn`, in one transaction.
    fn plan(
        &mut self,
        rel: &RelRow,
        origin: &str,
        lsn: Lsn,
        reader: &mut super::copyread::CopyReader,
        meta: &super::copyread::Meta,
    ) -> Result<()> {
        let (columns, _) = loader::copied_columns(meta);
        let slice_bytes = i64::from(gucs::COPY_SLICE_MB.get().max(1)) << 20;
        let size = meta.approximate_size.unwrap_or(0);
        // A target other tables sync into too (the chunks of a source hypertable) is
        // loaded in one transaction: a failed copy leaves nothing of this table, and no
        // copy ever needs to empty it.
        let shared = worker::xact(|| Ok(catalog::target_shared(self.subid, self.relid)?))?;
        let key = loader::usable_key(meta, &columns).filter(|_| !shared);
        let bounds = match &key {
            Some((k, _, _)) if size > slice_bytes => {
                let workers = gucs::MAX_COPY_WORKERS.get().max(1) as i64;
                let n = ((size + slice_bytes - 1) / slice_bytes).max(2 * workers);
                let from = format!(
                    "{}{}",
                    if meta.partitioned { "" } else { "ONLY " },
                    loader::source_table(rel)
                );
                reader.bounds(from, k.clone(), size, n.min(4096) as usize)?
            }
            _ => Vec::new(),
        };
        worker::xact(|| {
            // Rows the sync already wrote through a partition or root that left the
            // publication as this table joined it come again with this copy: remove them
            // (and what an interrupted copy left).
            for t in catalog::rel_replaces(self.subid, self.relid)? {
                // As the table's owner: its DELETE triggers run with the owner's rights.
                let owner = Spi::get_one_with_args::<pg_sys::Oid>(
                    "SELECT relowner FROM pg_catalog.pg_class WHERE oid OPERATOR(pg_catalog.=) $1::pg_catalog.regclass",
                    &[t.as_str().into()],
                )?
                .unwrap_or(pg_sys::InvalidOid);
                crate::apply::as_role(owner, || Ok(Spi::run(&format!("DELETE FROM {t}"))?))?;
                log!(
                    "livesync: emptied {t}: its rows come again with the copy of \"{}\"",
                    rel.qualified_target()
                );
            }
            catalog::plan_slices(
                self.subid,
                self.relid,
                &bounds,
                key.as_ref().map(|k| (k.0.as_str(), k.1)),
            )?;
            Spi::run_with_args(
                "SELECT pg_catalog.pg_replication_origin_create($1)",
                &[origin.into()],
            )?;
            Spi::run_with_args(
                "SELECT pg_catalog.pg_replication_origin_advance($1, $2::pg_catalog.pg_lsn)",
                &[origin.into(), crate::lsn::format(lsn).into()],
            )?;
            catalog::set_rel_state(self.subid, self.relid, TableState::DataSync, Some(lsn))?;
            catalog::set_copy_started(
                self.subid,
                self.relid,
                meta.approximate_rows,
                meta.approximate_size,
            )?;
            Ok(())
        })?;
        if !bounds.is_empty() {
            log!(
                "livesync: copying \"{}\" in {} slices",
                rel.qualified_target(),
                bounds.len() + 1
            );
        }
        Ok(())
    }

    /// Copy workers for the slices this worker cannot load at once, within
    /// `livesync.max_copy_workers_per_table` and the sync's share of workers.
    fn start_helpers(&mut self, rel: &RelRow, lsn: Lsn, snapshot: &str) -> Result<()> {
        let pending = worker::xact(|| Ok(catalog::pending_slices(self.subid, self.relid)?))?.len();
        let (room, running) = {
            let reg = REGISTRY.share();
            let max = gucs::MAX_SYNC_WORKERS.get().max(1) as usize;
            (
                max.saturating_sub(reg.table_workers_of(self.dboid, self.subid)),
                reg.helpers_of(self.dboid, self.subid, self.relid),
            )
        };
        let want = (gucs::MAX_COPY_WORKERS.get().max(1) as usize - 1)
            .min(pending.saturating_sub(1))
            .saturating_sub(running)
            .min(room);
        let extra = format!(
            "{} {} {} {} {snapshot}",
            self.dboid,
            self.subid,
            self.relid,
            crate::lsn::format(lsn)
        );
        for _ in 0..want {
            let name = format!(
                "livesync copy worker for table \"{}\"",
                rel.qualified_target()
            );
            if worker::launch(
                &name,
                "livesync copy worker",
                "livesync_copy_main",
                0,
                &extra,
            )
            .is_none()
            {
                // No background worker slot: this worker loads the rest itself.
                break;
            }
        }
        Ok(())
    }

    /// Steps 2 and 3: reach the apply worker's position, then state s.
    fn catch_up(&mut self, sub: &SyncRow, slot: &str, origin: &str) -> Result<()> {
        let mut pos = stream::setup_origin(origin)?;
        let mut stream: Option<Stream> = None;
        let target = match self.load()? {
            Some((_, r)) => (r.schemaname, r.tablename),
            None => return Ok(()),
        };
        let owner = OnlyTable(self.relid, self.key_filter(pos)?);
        loop {
            worker::check_interrupts()?;
            let Some((_, rel)) = self.load()? else {
                return Ok(());
            };
            if rel.state != TableState::FinishedCopy {
                return Ok(());
            }
            if let Some(apply_at) = rel.catchup_lsn {
                // Past the apply worker's position, and past every part's snapshot: the
                // apply worker applies everything of the table after the hand-off.
                let catchup = apply_at.max(owner.1.latest());
                if pos >= catchup {
                    if worker::xact(|| {
                        Ok(catalog::set_rel_syncdone(
                            self.subid, self.relid, pos, apply_at,
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
                    match Stream::start(&self.rt, conn, slot, pos, &sub.publication, &tag, false) {
                        Ok(mut s) => {
                            s.applier.add_columns = sub.options.add_columns;
                            s.applier.set_target(self.relid, &target.0, &target.1);
                            stream = Some(s)
                        }
                        // The changes between the copy and the hand-off are gone with
                        // the slot.
                        Err(Error::NeedsResync { msg }) => return self.start_over(&rel, &msg),
                        Err(e) => return Err(e),
                    }
                }
                let s = stream.as_mut().unwrap();
                // Read for a while, then look at the catalog again (the apply worker may
                // move `catchup_lsn`). Never in the middle of a source transaction: a
                // target transaction is open then, and only its commit may end the round,
                // however long the transaction (one that was not streamed arrives whole).
                let deadline = std::time::Instant::now() + Duration::from_millis(500);
                loop {
                    let step = match worker::catch(|| {
                        s.step(
                            &self.rt,
                            &owner,
                            Duration::from_millis(20),
                            Batching::EachTransaction,
                        )
                    }) {
                        Err(Error::NeedsResync { msg }) => {
                            s.abort();
                            return self.start_over(&rel, &msg);
                        }
                        // Parts read under different snapshots may hold one value of a
                        // unique column in two rows until the catch-up passes the later
                        // snapshot (it moved between them on the source).
                        Err(Error::User { code, msg, .. })
                            if owner.1.needs_key()
                                && code == pgrx::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION =>
                        {
                            s.abort();
                            return self
                                .start_over(&rel, &format!("{msg}, catching up a resumed copy"));
                        }
                        other => other?,
                    };
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

    /// Send the table back to a fresh copy, because what it has loaded cannot be completed
    /// consistently (`why`): the next copy empties the target table first; the apply
    /// worker starts a new table sync, and `cleanup` drops this one's slot and origin.
    fn start_over(&self, rel: &RelRow, why: &str) -> Result<()> {
        if worker::xact(|| Ok(catalog::target_shared(self.subid, self.relid)?))? {
            // Emptying the target would take the other tables' rows with it.
            let sub = worker::xact(|| Ok(catalog::sync_by_id(self.subid)?))?
                .map(|s| s.subname)
                .unwrap_or_default();
            return Err(Error::user(
                pgrx::PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("{why}; the copy of this table cannot be completed"),
            )
            .hint(format!(
                "Other tables sync into \"{}\" too, so livesync does not empty it by itself: copy it again with SELECT livesync_resync('{sub}', '{}').",
                rel.qualified_target(),
                rel.qualified_target().replace('\'', "''")
            )));
        }
        let why = format!("{why}; the table is copied again");
        warning!("livesync: table \"{}\": {why}", rel.qualified_target());
        worker::xact(|| Ok(catalog::restart_rel_copy(self.subid, self.relid, &why)?))
    }

    /// What the catch-up from `from` applies of this table: everything, unless parts of
    /// the copy were read under later snapshots (`slices::KeyFilter`).
    fn key_filter(&self, from: Lsn) -> Result<KeyFilter> {
        worker::xact(|| {
            let done = catalog::done_ranges(self.subid, self.relid)?;
            match catalog::copy_key(self.subid, self.relid)? {
                Some((column, typid)) if !done.is_empty() => KeyFilter::new(column, typid, &done),
                _ => Ok(KeyFilter::whole(
                    done.iter().map(|d| d.lsn).max().unwrap_or(from),
                )),
            }
        })
    }

    /// Step 5: the slot and origin are no longer needed.
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
