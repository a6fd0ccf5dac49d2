//! The apply worker: one per sync, started by the launcher.
//!
//! It holds the sync's main slot and applies the stream ([`super::stream`]) for every
//! table it owns; refreshes the publication's table list on a timer; starts table-sync
//! workers (at most `livesync.max_sync_workers_per_subscription` at once) and hands tables
//! over with them exactly as PostgreSQL's `process_syncing_tables_for_apply` does: a table
//! whose copy finished (f) gets the apply worker's current position as `catchup_lsn`, and
//! the apply worker waits, applying nothing, until the table-sync worker has caught up to
//! it (s); once the apply worker passes the table's `sync_lsn` the table is ready (r).
//!
//! It also creates missing target tables (`create_tables`), points tables at their targets
//! (`table_map`, a source chunk's hypertable), and handles how a run ends: an error only
//! one table can fix (a missing column or table) holds that table for a catch-up while the
//! others go on; any other error is recorded with its source transaction, counted, and
//! retried after a backoff, or disables the sync (`disable_on_error`).

use super::stream::{self, Batching, Owner, Step, Stream};
use crate::catalog::{self, RelRow, SyncRow};
use crate::error::{Error, Result};
use crate::gucs;
use crate::pgoutput::{Lsn, RelId};
use crate::remote;
use crate::shmem::{self, REGISTRY};
use crate::source::{ConnInfo, Connection};
use crate::state::TableState;
use crate::worker::{self, block_on};
use pgrx::bgworkers::{BackgroundWorkerStatus, DynamicBackgroundWorker};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

static mut ME: (u32, i32) = (0, 0);

#[pg_guard]
unsafe extern "C-unwind" fn unregister(_code: i32, _arg: pg_sys::Datum) {
    let (db, sub) = ME;
    let mut reg = REGISTRY.exclusive();
    if let Some(s) = reg.sync_mut(db, sub) {
        if s.apply_pid == pg_sys::MyProcPid {
            s.apply_pid = 0;
        }
    }
}

/// Entry point (bgw_function_name). The argument packs (database oid << 32 | subid).
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_apply_main(arg: pg_sys::Datum) {
    let packed = arg.value() as i64;
    let (dboid, subid) = ((packed >> 32) as u32, packed as i32);
    worker::attach(dboid);

    // Register, unless another apply worker already runs for this sync.
    {
        let mut reg = REGISTRY.exclusive();
        let Some(slot) = reg.sync_mut(dboid, subid) else {
            return;
        };
        if !slot.enabled || slot.stopping || slot.apply_pid > 0 {
            return;
        }
        // SAFETY: our own pid; ME is only written here, before the exit callback exists.
        unsafe {
            slot.apply_pid = pg_sys::MyProcPid;
            ME = (dboid, subid);
            pg_sys::before_shmem_exit(Some(unregister), pg_sys::Datum::from(0));
        }
    }

    let mut w = ApplyWorker::new(dboid, subid);
    let result = worker::catch(|| w.run());
    w.finish(result);
}

struct TableOwner<'a>(&'a HashMap<RelId, RelRow>);

impl Owner for TableOwner<'_> {
    fn owns(&self, rel: RelId, commit_lsn: Lsn) -> bool {
        self.0
            .get(&rel)
            .is_some_and(|r| r.state.apply_owns(r.sync_lsn.unwrap_or(0), commit_lsn))
    }
}

struct ApplyWorker {
    dboid: u32,
    subid: i32,
    sub: Option<SyncRow>,
    rt: tokio::runtime::Runtime,
    stream: Option<Stream>,
    /// A plain (non-replication) connection for publication refreshes.
    side: Option<Connection>,
    rels: HashMap<RelId, RelRow>,
    all_ready: bool,
    tablesyncs: HashMap<RelId, DynamicBackgroundWorker>,
    tablesync_retry: HashMap<RelId, (u32, Instant)>,
    last_refresh: Instant,
    last_sync_check: Instant,
    last_housekeeping: Instant,
    succeeded: bool,
    /// The "no background worker slot" WARNING was given (once until a start succeeds).
    warned_no_slots: bool,
}

impl ApplyWorker {
    fn new(dboid: u32, subid: i32) -> Self {
        ApplyWorker {
            dboid,
            subid,
            sub: None,
            rt: worker::runtime(),
            stream: None,
            side: None,
            rels: HashMap::new(),
            all_ready: false,
            tablesyncs: HashMap::new(),
            tablesync_retry: HashMap::new(),
            last_refresh: Instant::now(),
            last_sync_check: Instant::now() - Duration::from_secs(3600),
            last_housekeeping: Instant::now(),
            succeeded: false,
            warned_no_slots: false,
        }
    }

    fn sub(&self) -> &SyncRow {
        self.sub.as_ref().expect("loaded at start")
    }

    fn run(&mut self) -> Result<()> {
        let installed = worker::xact(|| Ok(catalog::installed_version()?))?.unwrap_or_default();
        if installed != catalog::LIBRARY_VERSION {
            return Err(Error::VersionMismatch {
                installed,
                library: catalog::LIBRARY_VERSION.into(),
            });
        }
        let Some(sub) = worker::xact(|| Ok(catalog::sync_by_id(self.subid)?))? else {
            return Ok(());
        };
        if !sub.enabled {
            return Ok(());
        }
        worker::set_application_name(&format!("livesync apply worker for \"{}\"", sub.subname));
        self.sub = Some(sub.clone());
        stream::prepare_session()?;
        let start = stream::setup_origin(&catalog::apply_origin_name(self.dboid, self.subid))?;
        if let Some(s) = REGISTRY.exclusive().sync_mut(self.dboid, self.subid) {
            s.applied_lsn = s.applied_lsn.max(start);
        }
        worker::xact(|| Ok(catalog::clear_all_catchups(self.subid)?))?;

        let info = ConnInfo::parse(&sub.source)
            .map_err(|e| Error::from_source("invalid connection string", e))?;
        let appname = format!("livesync_{}", sub.subname);
        let mut conn = block_on(&self.rt, Connection::connect(&info, true, &appname))?
            .map_err(|e| Error::from_source("could not connect to the source", e))?;

        // Wait for the publication (it may be created after livesync_start).
        let mut warned = false;
        while !block_on(
            &self.rt,
            remote::publication_exists(&mut conn, &sub.publication),
        )?? {
            if !warned {
                log!(
                    "livesync: waiting for publication \"{}\" to be created on the source",
                    sub.publication
                );
                warned = true;
            }
            worker::wait_latch(2000)?;
        }
        if !sub.slot_created {
            block_on(&self.rt, remote::create_main_slot(&mut conn, &sub.subname))??;
            worker::xact(|| Ok(catalog::set_slot_created(self.subid)?))?;
        }
        let start = self.check_slot(&mut conn, start)?;
        self.refresh_with(&mut conn)?;
        // Values in binary form where every published type allows it (`crate::binval`),
        // unless `livesync.binary_copy` is off.
        let text_only = REGISTRY
            .share()
            .sync(self.dboid, self.subid)
            .is_some_and(|s| s.text_only);
        let binary = !text_only
            && crate::gucs::BINARY_COPY.get()
            && block_on(
                &self.rt,
                remote::publication_binary_safe(&mut conn, &sub.publication),
            )??;
        let tag = format!("{}_{}_0", self.dboid, self.subid);
        let mut stream = Stream::start(
            &self.rt,
            conn,
            &sub.subname,
            start,
            &sub.publication,
            &tag,
            binary,
        )?;
        stream.subid = Some(self.subid);
        stream.skip_lsn = sub.skip_lsn;
        stream.progress = Some((self.dboid, self.subid));
        stream.applier.add_columns = sub.options.add_columns;
        // The previous run failed: pin the next error on one source transaction.
        stream.careful = REGISTRY
            .share()
            .sync(self.dboid, self.subid)
            .is_some_and(|s| s.failures > 0);
        self.stream = Some(stream);
        self.send_targets();
        self.publish_progress();
        self.main_loop()
    }

    /// The slot must still be the one we have been reading: it exists, is not invalidated,
    /// and is not past our origin (we never confirm beyond it). Otherwise changes may have
    /// been lost, and the sync stops instead of continuing with a gap. Returns where to
    /// start streaming.
    fn check_slot(&mut self, conn: &mut Connection, origin: Lsn) -> Result<Lsn> {
        let slot = self.sub().subname.clone();
        let resync = |why: String| Error::NeedsResync {
            msg: format!("replication slot \"{slot}\" {why}; a full resync is needed"),
        };
        let Some(st) = block_on(&self.rt, remote::slot_state(conn, &slot))?? else {
            return Err(resync(
                "does not exist on the source, so changes may have been lost".into(),
            ));
        };
        if st.wal_status == "lost" {
            return Err(resync(format!(
                "was invalidated on the source because {}, so changes were lost",
                st.invalidation_cause()
            )));
        }
        // A source set up for failover slots after the sync started (PostgreSQL 17+). Not
        // while a walsender still holds the slot: ALTER_REPLICATION_SLOT would wait for it;
        // the next start does it.
        if !st.failover && !st.active && block_on(&self.rt, remote::wants_failover(conn))?? {
            block_on(&self.rt, remote::set_failover(conn, &slot))??;
            log!("livesync: replication slot \"{slot}\" is now a failover slot");
        }
        let flush = st.confirmed_flush;
        if origin == 0 {
            // First run: adopt the slot's starting point as our origin's position.
            self.stream_origin_at(flush)?;
            return Ok(flush);
        }
        if flush > origin {
            return Err(resync(format!(
                "on the source is at {}, past livesync's position {}: it was recreated or advanced outside livesync, so changes may have been lost",
                crate::lsn::format(flush),
                crate::lsn::format(origin)
            )));
        }
        Ok(origin)
    }

    /// Record `lsn` as the origin's position (an empty transaction with an xid).
    fn stream_origin_at(&self, lsn: Lsn) -> Result<()> {
        worker::begin();
        // SAFETY: reads the backend's clock.
        stream::commit_at_origin(lsn, unsafe { pg_sys::GetCurrentTimestamp() });
        Ok(())
    }

    fn main_loop(&mut self) -> Result<()> {
        loop {
            let owner = TableOwner(&self.rels);
            let stream = self.stream.as_mut().expect("started");
            let step = stream.step(&self.rt, &owner, Duration::from_millis(10), Batching::Group)?;
            if step == Step::Committed {
                self.after_commit()?;
            }
            let quiet = matches!(step, Step::Idle | Step::Waiting);
            // A busy stream is never idle: do the idle-time work between target
            // transactions anyway, or refreshes, hand-overs and feedback starve.
            if quiet
                || (!self.stream.as_ref().unwrap().xact_open()
                    && self.last_housekeeping.elapsed() >= Duration::from_millis(200))
            {
                self.housekeeping()?;
            }
            if quiet {
                let stream = self.stream.as_mut().unwrap();
                if !stream.conn.has_buffered_message() {
                    // While tables are being handed over, look at them often.
                    let ms = if self.all_ready { 1000 } else { 50 };
                    worker::wait_latch_or_socket(stream.conn.raw_fd(), ms)?;
                }
            }
        }
    }

    /// After a target commit: the run is healthy, progress is published, tables are
    /// handed over.
    fn after_commit(&mut self) -> Result<()> {
        if let Some(s) = self.stream.as_mut() {
            s.careful = false;
        }
        if !self.succeeded {
            self.mark_healthy()?;
        }
        self.publish_progress();
        if !self.all_ready {
            self.process_syncing_tables()?;
        }
        Ok(())
    }

    /// This run works (it committed, or streamed for a while without error): reset the
    /// launcher's backoff and clear the error an earlier run recorded.
    fn mark_healthy(&mut self) -> Result<()> {
        self.succeeded = true;
        if let Some(s) = REGISTRY.exclusive().sync_mut(self.dboid, self.subid) {
            s.failures = 0;
        }
        worker::xact(|| Ok(catalog::set_sync_error(self.subid, None)?))
    }

    fn publish_progress(&self) {
        let Some(stream) = self.stream.as_ref() else {
            return;
        };
        let mut reg = REGISTRY.exclusive();
        if let Some(s) = reg.sync_mut(self.dboid, self.subid) {
            s.received_lsn = stream.received;
            s.applied_lsn = stream.confirmed();
            s.source_end_lsn = stream.source_end.max(stream.received);
            s.last_msg_ms = shmem::now_ms() - stream.last_msg.elapsed().as_millis() as i64;
            if let Some(t) = stream.last_commit_time {
                s.last_commit_ts = t;
            }
        }
    }

    /// Idle-time work: confirm progress, hand tables over, refresh the publication.
    fn housekeeping(&mut self) -> Result<()> {
        self.last_housekeeping = Instant::now();
        let stream = self.stream.as_mut().unwrap();
        stream.check_alive(&self.rt)?;
        stream.advance_idle()?;
        self.publish_progress();
        self.stream.as_mut().unwrap().feedback(&self.rt, false)?;
        if self.stream.as_ref().unwrap().xact_open() {
            return Ok(());
        }
        if !self.succeeded
            && self.stream.as_ref().unwrap().started.elapsed() >= Duration::from_secs(2)
        {
            self.mark_healthy()?;
        }
        if self.last_refresh.elapsed()
            >= Duration::from_secs(gucs::REFRESH_INTERVAL.get().max(1) as u64)
        {
            self.refresh()?;
        }
        if !self.all_ready && self.last_sync_check.elapsed() >= Duration::from_millis(50) {
            self.process_syncing_tables()?;
        }
        Ok(())
    }

    fn refresh(&mut self) -> Result<()> {
        self.last_refresh = Instant::now();
        let mut side = match self.side.take() {
            Some(c) => c,
            None => {
                let info = ConnInfo::parse(&self.sub().source)
                    .map_err(|e| Error::from_source("invalid connection string", e))?;
                block_on(
                    &self.rt,
                    Connection::connect(
                        &info,
                        false,
                        &format!("livesync_{}_refresh", self.sub().subname),
                    ),
                )?
                .map_err(|e| Error::from_source("could not connect to the source", e))?
            }
        };
        let r = self.refresh_with(&mut side);
        if r.is_ok() {
            self.side = Some(side);
        }
        r
    }

    /// Bring `sync_rel` in line with the publication's table list.
    fn refresh_with(&mut self, conn: &mut Connection) -> Result<()> {
        let sub = self.sub().clone();
        if !block_on(&self.rt, remote::publication_exists(conn, &sub.publication))?? {
            let msg = format!(
                "publication \"{}\" does not exist on the source",
                sub.publication
            );
            warning!("livesync subscription \"{}\": {msg}", sub.subname);
            worker::xact(|| Ok(catalog::set_sync_error(self.subid, Some(&msg))?))?;
            return Ok(());
        }
        let tables = block_on(&self.rt, remote::publication_tables(conn, &sub.publication))??;
        let known = worker::xact(|| Ok(catalog::rels(self.subid)?))?;
        let new_state = if sub.copy_data {
            TableState::Init
        } else {
            TableState::Ready
        };
        let mut changed = false;
        // Leaving tables whose copy is committed on the target: a joining table in the
        // same partition tree (a publish_via_partition_root switch) replaces their rows.
        let settled: Vec<(String, String)> = known
            .iter()
            .filter(|r| {
                !tables.iter().any(|t| t.relid == r.rrelid)
                    && matches!(
                        r.state,
                        TableState::FinishedCopy | TableState::SyncDone | TableState::Ready
                    )
            })
            .map(|r| (r.schemaname.clone(), r.tablename.clone()))
            .collect();
        let map = sub.options.map();
        for t in &tables {
            let (lschema, lname) = t.logical_name();
            let dest = map.destination(lschema, lname);
            let target = (dest.schema.as_str(), dest.table.as_str());
            match known.iter().find(|r| r.rrelid == t.relid) {
                None => {
                    worker::xact(|| {
                        catalog::insert_rel(
                            self.subid,
                            t.relid,
                            (&t.schema, &t.name),
                            target,
                            new_state,
                        )?;
                        // Rows the sync wrote into this very target through another
                        // source table (another chunk of one hypertable) stay.
                        let settled: Vec<(String, String)> = settled
                            .iter()
                            .filter(|(s, n)| (s.as_str(), n.as_str()) != target)
                            .cloned()
                            .collect();
                        if new_state == TableState::Init && !settled.is_empty() {
                            let replaces =
                                catalog::overlapping_targets(target.0, target.1, &settled)?;
                            if !replaces.is_empty() {
                                catalog::set_rel_replaces(self.subid, t.relid, &replaces)?;
                            }
                        }
                        Ok(())
                    })?;
                    changed = true;
                }
                // The table map changed (livesync_alter): changes go to the new target.
                Some(r) if (r.schemaname.as_str(), r.tablename.as_str()) != target => {
                    // A table partly copied into its old target is copied again, whole,
                    // into the new one (the old target keeps what it got).
                    let recopy = matches!(
                        r.state,
                        TableState::DataSync | TableState::FinishedCopy | TableState::SyncDone
                    );
                    worker::xact(|| {
                        catalog::set_rel_target(self.subid, t.relid, target.0, target.1)?;
                        if recopy {
                            catalog::resync_rel(self.subid, t.relid)?;
                        }
                        Ok(())
                    })?;
                    log!(
                        "livesync subscription \"{}\": table \"{}.{}\" now syncs into \"{}.{}\"",
                        sub.subname,
                        t.schema,
                        t.name,
                        target.0,
                        target.1
                    );
                    changed = true;
                }
                Some(_) => {}
            }
        }
        if sub.options.create_tables {
            self.create_missing_tables(conn, &tables)?;
        }
        for r in &known {
            if !tables.iter().any(|t| t.relid == r.rrelid) {
                self.forget_table(conn, r)?;
                changed = true;
            }
        }
        if changed || self.rels.is_empty() {
            self.reload_rels()?;
        }
        Ok(())
    }

    /// `create_tables`: create the target tables that do not exist yet from the source's
    /// definition (of a chunk's hypertable, for a chunk), as hypertables where the map
    /// says so. A table that cannot be created gets the error on its row; others go on.
    fn create_missing_tables(
        &mut self,
        conn: &mut Connection,
        tables: &[remote::PubTable],
    ) -> Result<()> {
        let map = self.sub().options.map();
        let mut done: Vec<(String, String)> = Vec::new();
        for t in tables {
            let (lschema, lname) = t.logical_name();
            let dest = map.destination(lschema, lname);
            let key = (dest.schema.clone(), dest.table.clone());
            if done.contains(&key) {
                continue;
            }
            done.push(key);
            if worker::xact(|| crate::tabledef::exists(&dest.schema, &dest.table))? {
                continue;
            }
            let def = block_on(&self.rt, crate::tabledef::fetch(conn, lschema, lname, None))?;
            let created = def.and_then(|def| {
                worker::xact(|| {
                    crate::tabledef::create(
                        &dest.schema,
                        &dest.table,
                        &def,
                        dest.hypertable.as_ref(),
                    )
                })
            });
            match created {
                Ok(()) => log!(
                    "livesync subscription \"{}\": created table \"{}.{}\"{}",
                    self.sub().subname,
                    dest.schema,
                    dest.table,
                    if dest.hypertable.is_some() {
                        " as a hypertable"
                    } else {
                        ""
                    }
                ),
                Err(e) => {
                    let msg = e.summary();
                    warning!(
                        "livesync subscription \"{}\": could not create table \"{}.{}\": {msg}",
                        self.sub().subname,
                        dest.schema,
                        dest.table
                    );
                    worker::xact(|| {
                        for r in tables.iter().filter(|r| {
                            let (s, n) = r.logical_name();
                            map.destination(s, n).schema == dest.schema
                                && map.destination(s, n).table == dest.table
                        }) {
                            catalog::note_rel_error(
                                self.subid,
                                r.relid,
                                &format!("could not create the target table: {msg}"),
                            )?;
                        }
                        Ok(())
                    })?;
                }
            }
        }
        Ok(())
    }

    /// A table left the publication: stop copying it and forget it.
    fn forget_table(&mut self, conn: &mut Connection, r: &RelRow) -> Result<()> {
        if let Some(h) = self.tablesyncs.remove(&r.rrelid) {
            let _ = h.terminate().wait_for_shutdown();
        }
        worker::xact(|| Ok(catalog::delete_rel(self.subid, r.rrelid)?))?;
        let slot = catalog::tablesync_slot_name(&self.sub().subname, r.rrelid);
        self.drop_slot_when_released(conn, &slot)?;
        stream::drop_origin(&catalog::tablesync_origin_name(
            self.dboid, self.subid, r.rrelid,
        ))?;
        log!(
            "livesync subscription \"{}\": table \"{}.{}\" left the publication",
            self.sub().subname,
            r.srcschema,
            r.srcname
        );
        Ok(())
    }

    /// Drop a table-sync slot once its walsender (whose worker we just stopped) lets go
    /// of it; after 30 s give up with a WARNING (livesync_drop drops it later anyway).
    fn drop_slot_when_released(&mut self, conn: &mut Connection, slot: &str) -> Result<()> {
        let lit = remote::quote_literal(slot);
        let sql = format!(
            "SELECT active, CASE WHEN NOT active THEN pg_catalog.pg_drop_replication_slot(slot_name) END IS NULL \
               FROM pg_catalog.pg_replication_slots WHERE slot_name OPERATOR(pg_catalog.=) {lit}"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let rows = match block_on(&self.rt, conn.simple_query(&sql))? {
                Ok(rows) => rows,
                Err(e) => {
                    warning!(
                        "livesync: could not drop replication slot \"{slot}\" on the source: {e}"
                    );
                    return Ok(());
                }
            };
            if !rows.iter().any(|r| r.get(0) == Some("t")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                warning!("livesync: replication slot \"{slot}\" on the source is still in use; not dropped");
                return Ok(());
            }
            worker::wait_latch(200)?;
        }
    }

    fn reload_rels(&mut self) -> Result<()> {
        let rows = worker::xact(|| Ok(catalog::rels(self.subid)?))?;
        self.all_ready = rows.iter().all(|r| r.state == TableState::Ready);
        self.rels = rows.into_iter().map(|r| (r.rrelid, r)).collect();
        self.send_targets();
        Ok(())
    }

    /// Tell the applier where each table's changes go (`sync_rel`: the table map, a
    /// source chunk's hypertable).
    fn send_targets(&mut self) {
        if let Some(stream) = self.stream.as_mut() {
            for r in self.rels.values() {
                stream
                    .applier
                    .set_target(r.rrelid, &r.schemaname, &r.tablename);
            }
        }
    }

    /// Is a table-sync worker alive for this table? Shared memory knows the ones that
    /// registered (also those started by an earlier apply worker); our handles know the
    /// ones we just started.
    fn tablesync_running(&mut self, relid: RelId) -> bool {
        if REGISTRY
            .share()
            .table_worker(self.dboid, self.subid, relid)
            .is_some()
        {
            return true;
        }
        match self.tablesyncs.get(&relid).map(|h| h.pid()) {
            Some(Ok(_)) | Some(Err(BackgroundWorkerStatus::NotYetStarted)) => true,
            Some(_) => {
                self.tablesyncs.remove(&relid);
                false
            }
            None => false,
        }
    }

    /// The hand-over protocol (see the module header). Called with no transaction open,
    /// right after a commit or when idle, with the position everything is applied to.
    fn process_syncing_tables(&mut self) -> Result<()> {
        self.last_sync_check = Instant::now();
        self.reload_rels()?;
        let current = self.stream.as_ref().map(|s| s.confirmed()).unwrap_or(0);
        let rows: Vec<RelRow> = self.rels.values().cloned().collect();
        let mut changed = false;
        for r in rows {
            match r.state {
                TableState::SyncDone if r.sync_lsn.unwrap_or(0) <= current => {
                    worker::xact(|| {
                        Ok(catalog::set_rel_state(
                            self.subid,
                            r.rrelid,
                            TableState::Ready,
                            None,
                        )?)
                    })?;
                    log!(
                        "livesync subscription \"{}\": table \"{}\" is ready",
                        self.sub().subname,
                        r.qualified_target()
                    );
                    changed = true;
                }
                TableState::FinishedCopy if self.tablesync_running(r.rrelid) => {
                    self.wait_for_catchup(&r, current)?;
                    changed = true;
                }
                s if s.needs_tablesync() && !self.tablesync_running(r.rrelid) => {
                    self.maybe_start_tablesync(&r);
                }
                _ => {}
            }
        }
        if changed {
            self.reload_rels()?;
        }
        Ok(())
    }

    /// Give the table-sync worker our position and wait, applying nothing, until it has
    /// caught up to it (or died, in which case we take the position back).
    fn wait_for_catchup(&mut self, r: &RelRow, current: Lsn) -> Result<()> {
        worker::xact(|| Ok(catalog::set_catchup(self.subid, r.rrelid, Some(current))?))?;
        loop {
            let now = worker::xact(|| Ok(catalog::rel(self.subid, r.rrelid)?))?;
            match now {
                Some(row) if row.state == TableState::FinishedCopy => {}
                _ => return Ok(()),
            }
            if !self.tablesync_running(r.rrelid) {
                worker::xact(|| Ok(catalog::set_catchup(self.subid, r.rrelid, None)?))?;
                return Ok(());
            }
            // Keep the walsender from timing out while we do not read.
            self.stream.as_mut().unwrap().feedback(&self.rt, false)?;
            worker::wait_latch(50)?;
        }
    }

    fn maybe_start_tablesync(&mut self, r: &RelRow) {
        let max = gucs::MAX_SYNC_WORKERS.get().max(1) as usize;
        // Forget handles of workers that exited (their tables are done or will be retried).
        self.tablesyncs
            .retain(|_, h| matches!(h.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted)));
        let running = REGISTRY
            .share()
            .table_workers_of(self.dboid, self.subid)
            .max(self.tablesyncs.len());
        if running >= max {
            return;
        }
        if let Some((_, not_before)) = self.tablesync_retry.get(&r.rrelid) {
            if Instant::now() < *not_before {
                return;
            }
        }
        let name = format!(
            "livesync table sync worker for \"{}\" table \"{}\"",
            self.sub().subname,
            r.qualified_target()
        );
        let extra = format!("{} {} {}", self.dboid, self.subid, r.rrelid);
        match worker::launch(
            &name,
            "livesync table sync worker",
            "livesync_tablesync_main",
            0,
            &extra,
        ) {
            Some(h) => {
                self.warned_no_slots = false;
                self.tablesyncs.insert(r.rrelid, h);
                self.delay_next_tablesync(r.rrelid);
            }
            None => {
                // No worker slot free: retry this table later, growing the delay; say so
                // once until a table-sync worker starts again.
                self.delay_next_tablesync(r.rrelid);
                if !self.warned_no_slots {
                    self.warned_no_slots = true;
                    worker::warn_no_worker_slots("a table sync worker");
                }
            }
        }
    }

    /// The next table-sync worker for `relid` starts no sooner than 1, 2, 4 ... s from now
    /// (a worker that ends without finishing the table is followed by one later on).
    fn delay_next_tablesync(&mut self, relid: RelId) {
        let e = self
            .tablesync_retry
            .entry(relid)
            .or_insert((0, Instant::now()));
        e.0 += 1;
        e.1 = Instant::now() + Duration::from_millis(worker::backoff_ms(e.0) as u64);
    }

    /// The ready table an apply error belongs to, when only that table can fix it: its
    /// target lacks a column the source sends, or is gone.
    fn table_error(&self, e: &Error) -> Option<RelId> {
        use pgrx::PgSqlErrorCode as Code;
        if !matches!(
            e.code(),
            Code::ERRCODE_UNDEFINED_COLUMN | Code::ERRCODE_UNDEFINED_TABLE
        ) {
            return None;
        }
        let ctx = self.stream.as_ref()?.error_context()?;
        let rel = ctx.rel?;
        (matches!(ctx.action, "INSERT" | "UPDATE" | "DELETE")
            && self.rels.get(&rel)?.state == TableState::Ready)
            .then_some(rel)
    }

    /// Hold one table at the last committed position while the others go on (the
    /// transaction that failed is applied again, without it, when the worker restarts).
    /// Its slot is a copy of the main slot, which has not been confirmed past that
    /// position, and its origin starts there: a table-sync worker applies the table's
    /// changes from there, and fails and retries, with the error on the table's row, until
    /// the user fixes the table; then it hands the table back as after a copy.
    fn hold_table(&mut self, relid: RelId, e: &Error) -> Result<()> {
        let stream = self.stream.as_ref().expect("an apply error has a stream");
        let at = stream.committed;
        let ctx = stream
            .describe_error_context()
            .map(|(d, _)| d)
            .unwrap_or_default();
        let sub = self.sub().clone();
        let slot = catalog::tablesync_slot_name(&sub.subname, relid);
        let origin = catalog::tablesync_origin_name(self.dboid, self.subid, relid);
        let mut side = match self.side.take() {
            Some(c) => c,
            None => {
                let info = ConnInfo::parse(&sub.source)
                    .map_err(|e| Error::from_source("invalid connection string", e))?;
                block_on(
                    &self.rt,
                    Connection::connect(&info, false, &format!("livesync_{}", sub.subname)),
                )?
                .map_err(|e| Error::from_source("could not connect to the source", e))?
            }
        };
        block_on(&self.rt, remote::copy_slot(&mut side, &sub.subname, &slot))??;
        self.side = Some(side);
        let msg = format!("{} (CONTEXT: {ctx})", e.summary());
        worker::xact(|| {
            stream::create_origin_at(&origin, at)?;
            catalog::hold_rel(self.subid, relid, at, &msg)?;
            Ok(catalog::count(self.subid, catalog::Counter::ApplyError, 1)?)
        })?;
        let table = self
            .rels
            .get(&relid)
            .map(|r| r.qualified_target())
            .unwrap_or_default();
        e.report(PgLogLevel::LOG);
        log!(
            "livesync subscription \"{}\": table \"{table}\" is held at {} until the error above is fixed; the other tables go on",
            sub.subname,
            crate::lsn::format(at)
        );
        // Start again at once, without this table.
        if let Some(s) = REGISTRY.exclusive().sync_mut(self.dboid, self.subid) {
            s.failures = 0;
            s.not_before_ms = 0;
        }
        Ok(())
    }

    /// Record how the run ended; the launcher restarts us after a backoff.
    fn finish(&mut self, result: Result<()>) {
        if let Some(s) = self.stream.as_mut() {
            s.abort();
        } else {
            worker::abort();
        }
        // Table-sync workers run on: they exit by themselves when the sync stops.
        self.tablesyncs.clear();
        match result {
            Ok(()) | Err(Error::Terminated) => {}
            Err(e @ Error::TextStream { .. }) => {
                // Start again at once, asking for text; nothing was committed past the
                // last whole source transaction.
                e.report(PgLogLevel::LOG);
                if let Some(s) = REGISTRY.exclusive().sync_mut(self.dboid, self.subid) {
                    s.text_only = true;
                }
            }
            Err(e @ Error::VersionMismatch { .. }) => {
                // Look again in a few seconds; the catalog is left as it is.
                e.report(PgLogLevel::LOG);
                if let Some(s) = REGISTRY.exclusive().sync_mut(self.dboid, self.subid) {
                    s.not_before_ms = shmem::now_ms() + 5_000;
                }
            }
            Err(e @ Error::NeedsResync { .. }) => {
                // Continuing would skip changes: stop for good until the user resyncs.
                let msg = e.to_string();
                e.report(PgLogLevel::WARNING);
                let _ = worker::xact(|| {
                    catalog::count(self.subid, catalog::Counter::ApplyError, 1)?;
                    catalog::set_sync_error(self.subid, Some(&msg))?;
                    Ok(catalog::set_enabled(self.subid, false)?)
                });
                if let Some(s) = REGISTRY.exclusive().sync_mut(self.dboid, self.subid) {
                    s.enabled = false;
                }
            }
            Err(e) => {
                if let Some(relid) = self.table_error(&e) {
                    match self.hold_table(relid, &e) {
                        Ok(()) => return,
                        Err(h) => h.report(PgLogLevel::LOG),
                    }
                }
                let name = self
                    .sub
                    .as_ref()
                    .map(|s| s.subname.clone())
                    .unwrap_or_default();
                // The source transaction being applied, as native's error context names
                // it: its finish LSN is what livesync_skip takes.
                let context = self.stream.as_ref().and_then(|s| {
                    s.describe_error_context()
                        .map(|(d, c)| (d, c.action, c.finish_lsn))
                });
                if context.is_none() {
                    // Rows of several source transactions were written together: the
                    // next run commits each on its own, and names the one that fails.
                    log!("livesync apply worker for \"{name}\": the next run applies one source transaction at a time until it commits");
                }
                let mut msg = e.summary();
                e.report(PgLogLevel::LOG);
                if let Some((ctx, _, lsn)) = &context {
                    log!(
                        "livesync: the error above happened while {ctx}; SELECT livesync_skip('{name}', '{}') skips that transaction",
                        crate::lsn::format(*lsn)
                    );
                    msg = format!("{msg} (CONTEXT: {ctx})");
                }
                // The conflicts PostgreSQL 18 counts for a unique violation.
                let exists = match context.as_ref().map(|c| c.1) {
                    _ if e.code() != pgrx::PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION => None,
                    Some("INSERT") => Some(catalog::Counter::InsertExists),
                    Some("UPDATE") => Some(catalog::Counter::UpdateExists),
                    _ => None,
                };
                let disable = self
                    .sub
                    .as_ref()
                    .is_some_and(|s| s.options.disable_on_error)
                    && self
                        .stream
                        .as_ref()
                        .is_some_and(|s| s.context.finish_lsn != 0);
                let _ = worker::xact(|| {
                    catalog::count(self.subid, catalog::Counter::ApplyError, 1)?;
                    if let Some(c) = exists {
                        catalog::count(self.subid, c, 1)?;
                    }
                    catalog::set_sync_error(self.subid, Some(&msg))?;
                    if disable {
                        catalog::set_enabled(self.subid, false)?;
                    }
                    Ok(())
                });
                let mut reg = REGISTRY.exclusive();
                if let Some(s) = reg.sync_mut(self.dboid, self.subid) {
                    if disable {
                        s.enabled = false;
                    } else {
                        s.failures = s.failures.saturating_add(1);
                        s.not_before_ms = shmem::now_ms() + worker::backoff_ms(s.failures);
                    }
                }
                drop(reg);
                if disable {
                    log!("livesync subscription \"{name}\" has been disabled because of an error (disable_on_error)");
                } else {
                    log!("livesync apply worker for \"{name}\" stopped after an error; it will be restarted");
                }
            }
        }
    }
}
