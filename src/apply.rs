//! Decoded changes -> rows on the target, through SPI statements and COPY.
//!
//! Speed is designed in (shared/DESIGN.md):
//! - changes are buffered per table in runs of one kind, and each run is written by one
//!   statement (see "Runs" in [`Applier`]): INSERTs by COPY (`copyin::copy_rows`: rows
//!   written to the heap in batches; TimescaleDB's COPY for a hypertable, which routes
//!   them into chunks) where COPY checks what the owner's INSERT would, otherwise (short
//!   runs, an owner COPY cannot serve) as
//!   `INSERT ... SELECT CAST(pg_catalog.unnest($1) AS type), ...`; UPDATEs as
//!   one `UPDATE ... FROM ROWS FROM (unnest ...)` joined by key, with a row updated
//!   several times written once with its newest image; DELETEs as one
//!   `DELETE ... USING ROWS FROM (unnest ...)`;
//! - one prepared plan per (relation, statement, set of columns), kept across
//!   transactions; no SQL text is built per row;
//! - a run of UPDATEs or DELETEs is planned without its length ([`generic_plan`]), so it
//!   finds its rows through the target's key index rather than reading the whole table;
//! - values come as text, exactly as the source printed them, and are converted by the
//!   target's input functions, as COPY and native logical replication do; or, from a
//!   source asked for binary values (`crate::binval`), in their types' binary form, which
//!   an INSERT run's binary COPY loads as it is, and which becomes text everywhere else.
//!
//! Changes that cannot join a run (a changed key, REPLICA IDENTITY FULL without a target
//! key, tables with triggers that fire during apply) are applied one at a time, in order.
//! The initial copy (`worker::tablesync`) feeds its rows through the same buffered insert.
//! The caller (a worker) decides which changes to apply and owns transactions; every
//! method here must run inside a transaction.

use crate::error::{Error, Result};
use crate::pgoutput::{Datum, Lsn, OldKind, RelId, Relation, ReplicaIdentity, TupleData, Xid};
use crate::relmap::{self, Mapping, Target};
use crate::remote::quote_literal;
use bytes::Bytes;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::OwnedPreparedStatement;
use pgrx::PgSqlErrorCode as Code;
use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::rc::Rc;

/// Rows buffered in one run before it is flushed...
const RUN_ROWS: usize = 2000;
/// ... or bytes of values, over every table's run: wide rows must not build arrays near
/// PostgreSQL's 1 GB allocation limit, and the worker's memory stays bounded.
const PENDING_BYTES: usize = 8 << 20;
/// Kept plans of a hypertable's per-chunk-interval statements ([`Applier::group_plan`]:
/// one per interval and statement), per table, before they are all dropped.
const GROUP_PLANS: usize = 64;
/// Runs of INSERTs of at least this many rows are written by COPY where it may stand in for
/// the INSERT (`copyin::run_copy`): its per-row path is cheaper (no array to unnest, rows
/// written to the heap in batches), its start a little dearer.
const COPY_ROWS: usize = 8;
/// ... and into an ordinary or partitioned table in COPYs of at most this many rows. COPY
/// makes a slot per row it buffers (up to 1000), and each slot pins the table's tuple
/// descriptor in the resource owner; past 64 pins (PostgreSQL 15 and 16; 32 from 17) the
/// owner keeps them in a hash keyed by the descriptor, the same key for every one, so each
/// pin and unpin walks all the others: 10 % of the apply worker's CPU on 100-row INSERTs.
/// Measured on 15 (3 000 INSERT transactions of 100 rows, 3 rounds twice): the apply
/// worker used 1.49 and 1.50 CPU seconds in COPYs of 64 rows, 1.57 to 1.61 in COPYs of 32,
/// 1.60 to 1.65 of 128, 1.71 to 1.91 in one COPY per run. A hypertable's run stays one
/// COPY: each of its COPYs is a staging file and a statement.
const COPY_CHUNK_ROWS: usize = 64;

thread_local! {
    /// Relations invalidated since the applier last looked (relcache callback).
    static INVALIDATED: RefCell<Vec<pg_sys::Oid>> = const { RefCell::new(Vec::new()) };
    static CALLBACK_REGISTERED: RefCell<bool> = const { RefCell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn relcache_callback(_arg: pg_sys::Datum, relid: pg_sys::Oid) {
    INVALIDATED.with(|v| v.borrow_mut().push(relid));
}

/// The source transaction a change comes from, for an error's context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    pub xid: Option<Xid>,
    /// Its finish (commit) LSN; 0: outside a source transaction.
    pub finish_lsn: Lsn,
}

/// What a run that failed to flush held: its kind of change, its relation, and its
/// source transaction (None: rows of several, which an error cannot be pinned on).
#[derive(Clone, Copy, Debug)]
pub struct RunContext {
    pub action: &'static str,
    pub rel: RelId,
    pub origin: Option<Origin>,
}

/// Buffered changes of one kind to one source relation, written by one statement.
enum Body {
    /// New rows, column-major; per column, whether its values are in binary form
    /// (pgoutput's `binary` values, loaded by binary COPY where the target column allows
    /// it) rather than text. A column's values are all of one form: a text value joining
    /// binary ones turns them into text.
    Insert {
        cols: Vec<Vec<Option<Bytes>>>,
        binary: Vec<bool>,
    },
    /// Rows to update, by key: the newest image of each row (remote column order) and
    /// how many source UPDATEs it stands for. Every row SETs the same columns.
    Update {
        set: Vec<bool>,
        index: HashMap<Vec<Bytes>, usize>,
        rows: Vec<(Vec<Datum>, u32)>,
    },
    /// The old rows (key images, or whole rows under REPLICA IDENTITY FULL) to delete.
    Delete { rows: Vec<Vec<Datum>> },
}

impl Body {
    fn action(&self) -> &'static str {
        match self {
            Body::Insert { .. } => "INSERT",
            Body::Update { .. } => "UPDATE",
            Body::Delete { .. } => "DELETE",
        }
    }
}

struct Run {
    relid: RelId,
    /// The mapping its changes were buffered under: if the target changed since, they are
    /// applied one at a time under the new one.
    mapping: Rc<Mapping>,
    /// The target table (runs of two source relations into one table keep their order).
    local_oid: pg_sys::Oid,
    body: Body,
    rows: usize,
    /// Bytes of values it holds (counted in `Applier::pending_bytes`).
    bytes: usize,
    /// The source transaction of its changes; None once they come from several.
    origin: Option<Origin>,
}

/// Applies decoded changes, batching them (see the module header and [`Applier::insert`]).
#[derive(Default)]
pub struct Applier {
    remote: HashMap<RelId, Relation>,
    maps: HashMap<RelId, Rc<Mapping>>,
    insert_plans: HashMap<RelId, OwnedPreparedStatement>,
    /// Per relation, per set of SET columns (unchanged TOAST leaves some out) followed by
    /// which key values are NULL (REPLICA IDENTITY FULL only).
    update_plans: HashMap<RelId, HashMap<Vec<bool>, OwnedPreparedStatement>>,
    /// Per relation, per set of NULL key values (REPLICA IDENTITY FULL only).
    delete_plans: HashMap<RelId, HashMap<Vec<bool>, OwnedPreparedStatement>>,
    /// Batched UPDATE (per set of SET columns) and DELETE statements.
    update_run_plans: HashMap<RelId, HashMap<Vec<bool>, OwnedPreparedStatement>>,
    delete_run_plans: HashMap<RelId, OwnedPreparedStatement>,
    /// A hypertable's batched UPDATE and DELETE statements for the groups of one chunk
    /// interval (`Bounds::slot`), per statement text ([`Applier::group_plan`]).
    group_plans: HashMap<RelId, HashMap<String, OwnedPreparedStatement>>,
    /// Buffered changes, at most one run per source relation, in the order they began.
    runs: Vec<Run>,
    /// Bytes of values buffered in `runs`.
    pending_bytes: usize,
    /// The source transaction of the changes being handed in (set by the stream).
    pub current: Origin,
    /// The run whose flush is under way (an error now comes from its rows).
    flushing_run: Option<RunContext>,
    /// Conflicts since [`Applier::take_missing`]: rows to update or delete not found.
    update_missing: u64,
    delete_missing: u64,
    /// `add_columns`: a column the source has and the target table lacks is added.
    pub add_columns: bool,
    /// The target table (schema, name) of each source relation the caller told us about;
    /// others go to the table of the source's schema and name.
    targets: HashMap<RelId, (String, String)>,
}

fn prepare(sql: &str, nargs: usize, argtype: pg_sys::Oid) -> Result<OwnedPreparedStatement> {
    prepare_typed(sql, &vec![argtype; nargs])
}

fn prepare_typed(sql: &str, types: &[pg_sys::Oid]) -> Result<OwnedPreparedStatement> {
    Ok(Spi::connect(|c| {
        c.prepare_mut(sql, &pg_oids(types)).map(|p| p.keep())
    })?)
}

fn pg_oids(types: &[pg_sys::Oid]) -> Vec<pgrx::PgOid> {
    types.iter().map(|t| pgrx::PgOid::from(*t)).collect()
}

/// Execute a run's UPDATE or DELETE (`f`) as the table's owner, with a generic plan
/// ([`generic_plan`]).
fn run_statement<R>(
    m: &Mapping,
    f: impl for<'c> FnOnce(&mut pgrx::spi::SpiClient<'c>) -> Result<R>,
) -> Result<R> {
    generic_plan(|| as_owner(m, || Spi::connect_mut(f)))
}

/// Run `f` with `plan_cache_mode = force_generic_plan` at a GUC level of its own, popped
/// when `f` returns (an ERROR leaves it to AbortTransaction). Planned with a run's keys in
/// hand, the planner knows the run is 2000 rows long and prefers to hash them and read
/// every row of the table, or of every chunk of a hypertable: for a DELETE by key from
/// 300 000 rows in 4 chunks, 200 ms instead of 10. A generic plan costs the run as a few
/// rows, and so probes the key's index when the target has one (its cost grows with the
/// run, not the table), and hashes the run when it has none. A hypertable group's chunk
/// bounds are constants in its text: chunks are still excluded when it is planned.
/// Triggers the statement fires see the setting too; it only chooses among plans.
fn generic_plan<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    // SAFETY: a new GUC level, set inside it and restored below, or by AbortTransaction
    // when an ERROR escapes `f` (as in `as_role`).
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    crate::worker::set_session_guc(
        c"plan_cache_mode",
        c"force_generic_plan",
        pg_sys::GucAction::GUC_ACTION_SAVE,
    );
    let r = f();
    // SAFETY: pairs with the level above.
    unsafe { pg_sys::AtEOXact_GUC(false, level) };
    r
}

/// Argument types of a run's UPDATE (`update_run_sql`): the rows' ordinals, then text[]s.
fn update_run_types(n: usize) -> Vec<pg_sys::Oid> {
    let mut types = vec![pg_sys::TEXTARRAYOID; n];
    types[0] = pg_sys::INT4ARRAYOID;
    types
}

impl Applier {
    pub fn new() -> Self {
        CALLBACK_REGISTERED.with(|r| {
            if !*r.borrow() {
                // SAFETY: registers a static callback; called once per process on the main thread.
                unsafe {
                    pg_sys::CacheRegisterRelcacheCallback(
                        Some(relcache_callback),
                        pg_sys::Datum::from(0),
                    )
                };
                *r.borrow_mut() = true;
            }
        });
        Self::default()
    }

    /// Remember a source relation (from a Relation message); its mapping is rebuilt.
    pub fn relation(&mut self, rel: Relation) -> Result<()> {
        self.flush()?;
        self.forget(rel.id);
        self.remote.insert(rel.id, rel);
        Ok(())
    }

    /// How many rows to update and to delete were not found since the last call.
    pub fn take_missing(&mut self) -> (u64, u64) {
        (
            std::mem::take(&mut self.update_missing),
            std::mem::take(&mut self.delete_missing),
        )
    }

    /// Send the changes of source relation `relid` to target `schema`.`name` from now on
    /// (between transactions: nothing of it may be buffered).
    pub fn set_target(&mut self, relid: RelId, schema: &str, name: &str) {
        let t = (schema.to_string(), name.to_string());
        if self.targets.get(&relid) != Some(&t) {
            debug_assert!(!self.runs.iter().any(|r| r.relid == relid));
            self.targets.insert(relid, t);
            self.forget(relid);
        }
    }

    /// The source relation with its target's schema and name.
    fn targeted(&self, relid: RelId) -> Option<Relation> {
        let mut rel = self.remote.get(&relid)?.clone();
        if let Some((schema, name)) = self.targets.get(&relid) {
            rel.namespace = schema.clone();
            rel.name = name.clone();
        }
        Some(rel)
    }

    /// The target (schema.name) a source relation's changes go to, for messages.
    pub fn relation_name(&self, relid: RelId) -> Option<String> {
        match self.targets.get(&relid) {
            Some((s, n)) => Some(format!("{s}.{n}")),
            None => self
                .remote
                .get(&relid)
                .map(|r| format!("{}.{}", r.namespace, r.name)),
        }
    }

    pub fn knows(&self, relid: RelId) -> bool {
        self.remote.contains_key(&relid)
    }

    /// The position of a source relation's column, by name.
    pub fn column_index(&self, relid: RelId, name: &str) -> Option<usize> {
        self.remote
            .get(&relid)?
            .columns
            .iter()
            .position(|c| c.name == name)
    }

    fn forget(&mut self, relid: RelId) {
        self.maps.remove(&relid);
        self.insert_plans.remove(&relid);
        self.delete_plans.remove(&relid);
        self.update_plans.remove(&relid);
        self.update_run_plans.remove(&relid);
        self.delete_run_plans.remove(&relid);
        self.group_plans.remove(&relid);
    }

    /// Drop mappings and plans of target tables that changed (ALTER TABLE, new chunks...).
    fn process_invalidations(&mut self) {
        let invalid: Vec<pg_sys::Oid> = INVALIDATED.with(|v| std::mem::take(&mut *v.borrow_mut()));
        if invalid.is_empty() {
            return;
        }
        let stale: Vec<RelId> = self
            .maps
            .iter()
            .filter(|(_, m)| {
                invalid
                    .iter()
                    .any(|o| *o == m.local_oid || *o == pg_sys::InvalidOid)
            })
            .map(|(r, _)| *r)
            .collect();
        for r in stale {
            self.forget(r);
        }
    }

    /// The target of a source relation (resolved on first use), with its partition
    /// ancestors locked for the rest of the transaction.
    ///
    /// DDL on a partitioned table (`CREATE TABLE ... PARTITION OF`, `ATTACH`/`DETACH
    /// PARTITION`) locks the parent before its partitions. The executor locks a partition
    /// first and may open the parent only afterwards, to build the partition constraint
    /// it checks rows against. A user adding a partition while the sync writes into the
    /// default partition could then deadlock with it. Locking the ancestors first, root
    /// down, as the DDL does, keeps one lock order: the sync waits for the DDL instead.
    pub fn mapping(&mut self, relid: RelId) -> Result<Rc<Mapping>> {
        let m = self.resolved(relid)?;
        for &a in &m.ancestors {
            // SAFETY: main thread, inside a transaction; held until it ends. Locking an
            // OID that was dropped meanwhile is harmless (nothing else waits on it).
            unsafe { pg_sys::LockRelationOid(a, pg_sys::AccessShareLock as pg_sys::LOCKMODE) };
        }
        Ok(m)
    }

    fn resolved(&mut self, relid: RelId) -> Result<Rc<Mapping>> {
        self.process_invalidations();
        if let Some(m) = self.maps.get(&relid) {
            return Ok(m.clone());
        }
        let rel = self.targeted(relid).ok_or_else(|| {
            Error::user(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!("change for unknown source relation {relid}"),
            )
        })?;
        let m = match relmap::resolve(&rel) {
            Err(e) if self.add_columns && e.code() == Code::ERRCODE_UNDEFINED_COLUMN => {
                add_missing_columns(&rel)?;
                relmap::resolve(&rel)?
            }
            r => r?,
        };
        let m = Rc::new(m);
        self.maps.insert(relid, m.clone());
        Ok(m)
    }

    fn check_width(&self, relid: RelId, t: &TupleData) -> Result<()> {
        let want = self
            .remote
            .get(&relid)
            .map(|r| r.columns.len())
            .unwrap_or(0);
        if t.0.len() != want {
            return Err(Error::user(
                Code::ERRCODE_PROTOCOL_VIOLATION,
                format!(
                    "row of source relation {relid} has {} columns, its description {want}",
                    t.0.len()
                ),
            ));
        }
        Ok(())
    }

    // ---- Runs -----------------------------------------------------------------------
    //
    // Changes are buffered per source relation in a run of one kind (INSERT, UPDATE or
    // DELETE) and written by one statement per run. Within a table, changes keep their
    // source order: a change of another kind first writes the table's run. Across tables
    // they need not: the target transaction commits them together, replica mode fires no
    // foreign-key triggers, and no constraint spans two tables. Except where the order
    // can be seen: a table with triggers that fire during apply (every other run is
    // written before its changes, which are applied one at a time), and two source
    // relations writing into one target table (the chunks of one hypertable, where a row
    // moving between chunks is a DELETE in one and an INSERT in the other).
    //
    // An UPDATE run keeps one image per key: a row updated again in the same run gets the
    // newer image (what the source's row became), so a hot row is written once per run
    // instead of once per source UPDATE, which also keeps it from growing a chain of row
    // versions that every later lookup in the transaction would walk.

    /// Make room for a change of `kind` to `relid`: write what must come before it.
    fn prepare_run(&mut self, relid: RelId, m: &Mapping, kind: &'static str) -> Result<()> {
        let ordered = m.triggers
            || self
                .runs
                .iter()
                .any(|r| r.relid != relid && self.run_has_triggers(r));
        let conflicting: Vec<RelId> = self
            .runs
            .iter()
            .filter(|r| {
                (r.relid == relid && r.body.action() != kind)
                    || (r.relid != relid && (ordered || r.local_oid == m.local_oid))
            })
            .map(|r| r.relid)
            .collect();
        for r in conflicting {
            self.flush_relid(r)?;
        }
        Ok(())
    }

    fn run_has_triggers(&self, r: &Run) -> bool {
        self.maps.get(&r.relid).is_none_or(|m| m.triggers)
    }

    /// The run of `relid` (created empty with `body` if there is none).
    fn run_mut(&mut self, relid: RelId, m: &Rc<Mapping>, body: impl FnOnce() -> Body) -> &mut Run {
        let i = self.run_index(relid, m, body);
        &mut self.runs[i]
    }

    /// [`Applier::run_mut`]'s position in `runs`.
    fn run_index(&mut self, relid: RelId, m: &Rc<Mapping>, body: impl FnOnce() -> Body) -> usize {
        let origin = self.current;
        let i = match self.runs.iter().position(|r| r.relid == relid) {
            Some(i) => i,
            None => {
                self.runs.push(Run {
                    relid,
                    local_oid: m.local_oid,
                    mapping: m.clone(),
                    body: body(),
                    rows: 0,
                    bytes: 0,
                    origin: Some(origin),
                });
                self.runs.len() - 1
            }
        };
        let run = &mut self.runs[i];
        if run.origin != Some(origin) {
            run.origin = None;
        }
        i
    }

    /// After a change was added to the run of `relid`: write it when it is full.
    fn after_push(&mut self, relid: RelId, bytes: usize) -> Result<()> {
        self.pending_bytes += bytes;
        let mut full = false;
        if let Some(r) = self.runs.iter_mut().find(|r| r.relid == relid) {
            r.bytes += bytes;
            full = r.rows >= RUN_ROWS;
        }
        if full {
            self.flush_relid(relid)?;
        }
        if self.pending_bytes >= PENDING_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Write every buffered change. Must be called before commit.
    pub fn flush(&mut self) -> Result<()> {
        while let Some(run) = (!self.runs.is_empty()).then(|| self.runs.remove(0)) {
            self.flush_run(run)?;
        }
        Ok(())
    }

    fn flush_relid(&mut self, relid: RelId) -> Result<()> {
        if let Some(i) = self.runs.iter().position(|r| r.relid == relid) {
            let run = self.runs.remove(i);
            self.flush_run(run)?;
        }
        Ok(())
    }

    /// Forget buffered changes (their transaction was aborted).
    pub fn discard(&mut self) {
        self.runs.clear();
        self.pending_bytes = 0;
    }

    /// What the failing flush held, while one is under way (None: the error comes from
    /// the change being handed in).
    pub fn flushing(&self) -> Option<RunContext> {
        self.flushing_run
    }

    fn flush_run(&mut self, run: Run) -> Result<()> {
        self.pending_bytes = self.pending_bytes.saturating_sub(run.bytes);
        let outer = self.flushing_run.replace(RunContext {
            action: run.body.action(),
            rel: run.relid,
            origin: run.origin,
        });
        // Changes the flush itself buffers (a row moving between hypertable chunks) come
        // from the run's transaction (none, where it holds several).
        let current = std::mem::replace(&mut self.current, run.origin.unwrap_or_default());
        let r = match run.body {
            Body::Insert { cols, binary } => self.flush_inserts(run.relid, cols, binary, run.rows),
            Body::Update { set, rows, .. } => {
                self.flush_updates(run.relid, &run.mapping, set, rows)
            }
            Body::Delete { rows } => self.flush_deletes(run.relid, &run.mapping, rows),
        };
        if r.is_ok() {
            self.flushing_run = outer;
            self.current = current;
        }
        r
    }

    // ---- INSERT ---------------------------------------------------------------------

    pub fn insert(&mut self, relid: RelId, new: &TupleData) -> Result<()> {
        self.check_width(relid, new)?;
        let mut row = Vec::with_capacity(new.0.len());
        for d in &new.0 {
            row.push(match d {
                Datum::Null => (None, false),
                Datum::Text(b) => (Some(b.clone()), false),
                Datum::Binary(b) => (Some(b.clone()), true),
                Datum::UnchangedToast => {
                    return Err(Error::user(
                        Code::ERRCODE_PROTOCOL_VIOLATION,
                        "an inserted row holds an unchanged-TOAST value",
                    ))
                }
            });
        }
        self.push(relid, row)
    }

    /// Buffer one row of text values (in the remote relation's column order).
    pub fn push_row(&mut self, relid: RelId, row: Vec<Option<Bytes>>) -> Result<()> {
        self.push(relid, row.into_iter().map(|v| (v, false)).collect())
    }

    /// Buffer one row: each value with whether it is in binary form (see [`Body::Insert`]).
    fn push(&mut self, relid: RelId, row: Vec<(Option<Bytes>, bool)>) -> Result<()> {
        let m = self.resolved(relid)?;
        self.prepare_run(relid, &m, "INSERT")?;
        let width = row.len();
        let i = self.run_index(relid, &m, || Body::Insert {
            cols: vec![Vec::with_capacity(RUN_ROWS); width],
            binary: vec![true; width],
        });
        let (run, remote) = (&mut self.runs[i], &self.remote);
        let Body::Insert { cols, binary } = &mut run.body else {
            unreachable!("prepare_run wrote the run of another kind")
        };
        let mut bytes = 0;
        for (c, (v, is_binary)) in row.into_iter().enumerate() {
            let v = match v {
                Some(b) if is_binary && !binary[c] => {
                    Some(crate::binval::to_text(type_of(remote, relid, c), &b)?)
                }
                Some(b) if !is_binary && binary[c] => {
                    // A text value in a column of binary ones: the column becomes text.
                    crate::binval::column_to_text(type_of(remote, relid, c), &mut cols[c])?;
                    binary[c] = false;
                    Some(b)
                }
                v => v,
            };
            bytes += v.as_ref().map_or(0, |b| b.len());
            cols[c].push(v);
        }
        run.rows += 1;
        self.after_push(relid, bytes)
    }

    /// Turn the binary values of a change of `relid` into text, in place (see
    /// [`crate::binval::to_text`]): every path but an INSERT run's COPY reads text.
    pub fn text_values(&self, relid: RelId, t: &mut TupleData) -> Result<()> {
        for (c, d) in t.0.iter_mut().enumerate() {
            if let Datum::Binary(b) = d {
                *d = Datum::Text(self.value_text(relid, c, b)?);
            }
        }
        Ok(())
    }

    /// The text of binary value `b` of column `c` of source relation `relid`.
    pub fn value_text(&self, relid: RelId, c: usize, b: &Bytes) -> Result<Bytes> {
        crate::binval::to_text(type_of(&self.remote, relid, c), b)
    }

    fn flush_inserts(
        &mut self,
        relid: RelId,
        mut cols: Vec<Vec<Option<Bytes>>>,
        binary: Vec<bool>,
        rows: usize,
    ) -> Result<()> {
        let m = self.mapping(relid)?;
        // Decided per run: role memberships (the owner's privileges, pg_read_server_files)
        // change without invalidating the table.
        let how = if rows >= COPY_ROWS {
            crate::copyin::run_copy(&m)
        } else {
            crate::copyin::RunCopy::No
        };
        // Binary COPY when every written column came in binary and may be loaded so;
        // otherwise the binary values become text.
        let as_binary = how != crate::copyin::RunCopy::No
            && m.cols
                .iter()
                .zip(&binary)
                .all(|(t, &b)| t.as_ref().is_none_or(|t| t.binary && b));
        if !as_binary {
            for (c, col) in cols.iter_mut().enumerate() {
                if binary[c] && m.cols[c].is_some() {
                    crate::binval::column_to_text(type_of(&self.remote, relid, c), col)?;
                }
            }
        }
        // Once per batch, only for columns whose type modifier limits them. Values still in
        // binary form are of `varchar(n)` or `char(n)` (`Target::binary`), whose binary
        // form is their text.
        for (t, col) in m.cols.iter().zip(&cols) {
            if let Some(t) = t.as_ref().filter(|t| t.limit.is_some()) {
                for v in col.iter().flatten() {
                    check_limit(&m, t, v)?;
                }
            }
        }
        let width = m.cols.iter().flatten().count();
        if how != crate::copyin::RunCopy::No {
            let written: Vec<&[Option<Bytes>]> = m
                .cols
                .iter()
                .zip(&cols)
                .filter(|(t, _)| t.is_some())
                .map(|(_, c)| c.as_slice())
                .collect();
            let chunk = if how == crate::copyin::RunCopy::Table {
                COPY_CHUNK_ROWS
            } else {
                rows
            };
            pgrx::debug1!(
                "livesync: {rows} rows into \"{}\" by {} COPY",
                m.display,
                if as_binary { "binary" } else { "text" }
            );
            return as_owner(&m, || {
                let mut start = 0;
                while start < rows {
                    let end = rows.min(start + chunk);
                    let size: usize = written
                        .iter()
                        .flat_map(|c| c[start..end].iter().flatten())
                        .map(|v| v.len() + 1)
                        .sum();
                    let mut data = bytes::BytesMut::with_capacity(
                        size + (end - start) * (if as_binary { 4 * width + 2 } else { width + 2 }),
                    );
                    if as_binary {
                        crate::copytext::encode_binary_rows(&written, start..end, &mut data);
                    } else {
                        crate::copytext::encode_rows(&written, start..end, &mut data);
                    }
                    crate::copyin::copy_rows(&m, how, as_binary, data.freeze())?;
                    start = end;
                }
                Ok(())
            });
        }
        let plan = match self.insert_plans.entry(relid) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) if width == 0 => {
                e.insert(prepare(&insert_sql(&m), 1, pg_sys::INT4OID)?)
            }
            Entry::Vacant(e) => e.insert(prepare(&insert_sql(&m), width, pg_sys::TEXTARRAYOID)?),
        };
        let plan = &*plan;
        if width == 0 {
            // Nothing to write but the rows themselves (a table without columns).
            return as_owner(&m, || {
                Spi::connect_mut(|c| {
                    c.update(plan, None, &[(rows as i32).into()])?;
                    Ok(())
                })
            });
        }
        as_owner(&m, || {
            Spi::connect_mut(|c| {
                let mut args: Vec<DatumWithOid> = Vec::with_capacity(m.cols.len());
                for (i, t) in m.cols.iter().enumerate() {
                    if t.is_some() {
                        args.push(text_array(&cols[i])?.into());
                    }
                }
                c.update(plan, None, &args)?;
                Ok::<(), Error>(())
            })
        })
    }

    // ---- UPDATE / DELETE ------------------------------------------------------------

    fn require_identity(m: &Mapping) -> Result<()> {
        if m.identity == ReplicaIdentity::Nothing || m.key.is_empty() {
            return Err(Error::user(
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                format!("cannot apply UPDATE or DELETE to \"{}\": the source table has no replica identity", m.display),
            )
            .hint(format!(
                "On the source, add a primary key to {} or set ALTER TABLE ... REPLICA IDENTITY FULL.",
                m.display
            )));
        }
        Ok(())
    }

    /// Apply (or buffer: see "Runs" above) the UPDATE of a row. `old`: the old key (or
    /// whole old row) when the source sent it.
    pub fn update(
        &mut self,
        relid: RelId,
        old: Option<(OldKind, &TupleData)>,
        new: &TupleData,
    ) -> Result<()> {
        self.check_width(relid, new)?;
        if let Some((_, o)) = old {
            self.check_width(relid, o)?;
        }
        let m = self.resolved(relid)?;
        Self::require_identity(&m)?;
        let Some(key) = run_key(&m, old, new, true) else {
            self.prepare_run(relid, &m, "")?;
            let m = self.mapping(relid)?;
            return self.update_now(relid, &m, old, new, 1);
        };
        self.prepare_run(relid, &m, "UPDATE")?;
        let set = set_columns(&m, new);
        let other_set = self.runs.iter().any(|r| {
            r.relid == relid && matches!(&r.body, Body::Update { set: s, .. } if *s != set)
        });
        if other_set {
            self.flush_relid(relid)?;
        }
        // The images share their message's buffer, which holds the old row too.
        let bytes = tuple_bytes(new) + old.map_or(0, |(_, o)| tuple_bytes(o));
        let run = self.run_mut(relid, &m, || Body::Update {
            set,
            index: HashMap::new(),
            rows: Vec::new(),
        });
        let Body::Update { index, rows, .. } = &mut run.body else {
            unreachable!("prepare_run wrote the run of another kind")
        };
        match index.entry(key) {
            Entry::Occupied(e) => {
                // The same row again: its newest image is what the source's row became.
                let (image, n) = &mut rows[*e.get()];
                image.clone_from(&new.0);
                *n += 1;
            }
            Entry::Vacant(e) => {
                e.insert(rows.len());
                rows.push((new.0.clone(), 1));
                run.rows += 1;
            }
        }
        self.after_push(relid, bytes)
    }

    /// The plan of a hypertable group's statement `sql`. Kept when the group's bounds are
    /// a chunk interval's edges (`Bounds::slot`: the same text for every group of that
    /// interval); prepared for this group alone, into `once`, when they are its own values.
    /// Planning the statement for each group (TimescaleDB expanding the hypertable and
    /// leaving out its other chunks) was a seventh of the apply worker's CPU on UPDATEs by
    /// key into a hypertable of 4 chunks. A table's plans are dropped with its mapping
    /// ([`Applier::forget`]: a new chunk, or any change to the table), and all of them past
    /// `GROUP_PLANS` statements; a dropped chunk invalidates the plans that read it
    /// (PostgreSQL's plan cache). A chunk another session makes while the open target
    /// transaction already holds the hypertable's lock may be missed by a kept plan until
    /// that transaction ends; only a row that session wrote there, not one from the
    /// source, could be missed.
    fn group_plan<'a>(
        &'a mut self,
        relid: RelId,
        bounds: &Bounds,
        sql: String,
        types: &[pg_sys::Oid],
        once: &'a mut Option<OwnedPreparedStatement>,
    ) -> Result<&'a OwnedPreparedStatement> {
        if bounds.slot.is_none() {
            return Ok(once.insert(prepare_typed(&sql, types)?));
        }
        let plans = self.group_plans.entry(relid).or_default();
        if plans.len() >= GROUP_PLANS && !plans.contains_key(&sql) {
            plans.clear();
        }
        Ok(match plans.entry(sql) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let plan = prepare_typed(e.key(), types)?;
                e.insert(plan)
            }
        })
    }

    /// Write a run of UPDATEs: one statement joins the new images to the rows by key and
    /// returns which it found. A row not found is missing, or, for a hypertable, may
    /// have to move to another chunk: those go through [`Applier::update_now`].
    fn flush_updates(
        &mut self,
        relid: RelId,
        buffered: &Rc<Mapping>,
        set: Vec<bool>,
        rows: Vec<(Vec<Datum>, u32)>,
    ) -> Result<()> {
        let m = self.mapping(relid)?;
        if !Rc::ptr_eq(&m, buffered) {
            // The target changed meanwhile: one at a time, as they came.
            for (image, n) in rows {
                self.update_now(relid, &m, None, &TupleData(image), n)?;
            }
            return Ok(());
        }
        for (image, _) in &rows {
            for ((t, d), s) in m.cols.iter().zip(image).zip(&set) {
                if let (Some(t), Datum::Text(b), true) = (t, d, *s) {
                    check_limit(&m, t, b)?;
                }
            }
        }
        let guard = guard_dims(&m, &set);
        let column = |i: usize| -> Result<Vec<Option<&str>>> {
            rows.iter()
                .map(|(image, _)| datum_text(&image[i]))
                .collect()
        };
        // The statement's arguments for the rows `which` (their ordinals in the run).
        let args_of = |which: Vec<i32>| -> Result<Vec<DatumWithOid>> {
            let column = |i: usize| -> Result<Vec<Option<&str>>> {
                which
                    .iter()
                    .map(|&r| datum_text(&rows[r as usize].0[i]))
                    .collect()
            };
            let mut args: Vec<DatumWithOid> = Vec::new();
            for i in (0..m.cols.len()).filter(|i| set[*i] && !m.dims.contains(i)) {
                args.push(column(i)?.into());
            }
            for &k in m.key.iter().chain(&guard) {
                args.push(column(k)?.into());
            }
            args.insert(0, which.into());
            Ok(args)
        };
        let mut found = vec![false; rows.len()];
        let joined: Vec<usize> = m.key.iter().chain(&guard).copied().collect();
        if let Some(groups) = run_groups(&m, &joined, column, rows.len())? {
            // A hypertable: one statement per chunk-sized group, planned for its chunks.
            for g in groups {
                let (sql, n) = update_run_sql(&m, &set, std::slice::from_ref(&g.bounds));
                let types = update_run_types(n);
                let args = args_of(g.rows)?;
                let mut once = None;
                let plan = self.group_plan(relid, &g.bounds, sql, &types, &mut once)?;
                run_statement(&m, |c| mark_found(c, plan, &args, &mut found))?;
            }
        } else {
            let plan = match self
                .update_run_plans
                .entry(relid)
                .or_default()
                .entry(set.clone())
            {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let (sql, n) = update_run_sql(&m, &set, &[]);
                    e.insert(prepare_typed(&sql, &update_run_types(n))?)
                }
            };
            let plan = &*plan;
            let args = args_of((0..rows.len() as i32).collect())?;
            run_statement(&m, |c| mark_found(c, plan, &args, &mut found))?;
        }
        for ((image, n), found) in rows.into_iter().zip(found) {
            if found {
                continue;
            }
            if guard.is_empty() {
                self.update_missing += u64::from(n);
                pgrx::debug1!("livesync: row to update in \"{}\" not found", m.display);
            } else {
                self.update_now(relid, &m, None, &TupleData(image), n)?;
            }
        }
        Ok(())
    }

    /// Apply one UPDATE now (`n`: how many source UPDATEs it stands for, counted when
    /// the row is missing).
    fn update_now(
        &mut self,
        relid: RelId,
        m: &Mapping,
        old: Option<(OldKind, &TupleData)>,
        new: &TupleData,
        n: u32,
    ) -> Result<()> {
        if identity_always_changed(m, old, new) {
            // UPDATE cannot set a GENERATED ALWAYS identity column: re-insert the row.
            let (_, old) = old.expect("a change was seen in the old row");
            return self.move_row(relid, m, old, new, n);
        }
        let set = set_columns(m, new);
        let key_source = old.map(|(_, t)| t).unwrap_or(new);
        for ((t, d), s) in m.cols.iter().zip(&new.0).zip(&set) {
            if let (Some(t), Datum::Text(b), true) = (t, d, *s) {
                check_limit(m, t, b)?;
            }
        }
        // Hypertables: UPDATE cannot move a row to another chunk. A dimension column in
        // the key: the old key image tells whether it changed. Otherwise the UPDATE is
        // guarded with "dimension unchanged" and a miss means the row moves.
        if dimension_in_key_changed(m, old, new) {
            return self.move_row(relid, m, key_source, new, n);
        }
        let guard = guard_dims(m, &set);
        let mut set_vals: Vec<Option<&str>> = Vec::new();
        let mut dim_vals: Vec<Option<&str>> = Vec::new();
        for (i, d) in new.0.iter().enumerate() {
            if set[i] && !m.dims.contains(&i) {
                set_vals.push(datum_text(d)?);
            }
            if guard.contains(&i) {
                dim_vals.push(datum_text(d)?);
            }
        }
        let key_vals = m
            .key
            .iter()
            .map(|&k| datum_text(&key_source.0[k]))
            .collect::<Result<Vec<_>>>()?;

        let mut shape = set;
        shape.extend(key_nulls(m, key_source));
        // Looked up by the borrowed mask: no allocation per row once the plan exists.
        let by_set = self.update_plans.entry(relid).or_default();
        if !by_set.contains_key(shape.as_slice()) {
            let (set, nulls) = shape.split_at(m.cols.len());
            let (sql, n) = update_sql(m, set, nulls);
            by_set.insert(shape.clone(), prepare(&sql, n, pg_sys::TEXTOID)?);
        }
        let plan = &by_set[shape.as_slice()];
        let vals: Vec<Option<&str>> = set_vals
            .iter()
            .chain(key_vals.iter())
            .chain(dim_vals.iter())
            .copied()
            .collect();
        let found = as_owner(m, || exec_text(plan, &vals))?;
        if found == 0 && !guard.is_empty() {
            // The row moves to another chunk, which UPDATE cannot do on a hypertable.
            return self.move_row(relid, m, key_source, new, n);
        }
        if found == 0 {
            self.update_missing += u64::from(n);
            pgrx::debug1!("livesync: row to update in \"{}\" not found", m.display);
        }
        Ok(())
    }

    /// Move a row to the hypertable chunk its new version belongs to: delete the old row
    /// (found by its key) and insert the new version. Columns the source did not send
    /// (unchanged TOAST) are read from the old row first.
    fn move_row(
        &mut self,
        relid: RelId,
        m: &Mapping,
        key: &TupleData,
        new: &TupleData,
        n: u32,
    ) -> Result<()> {
        let mut row: Vec<Option<Bytes>> = Vec::with_capacity(new.0.len());
        let missing: Vec<usize> = (0..new.0.len())
            .filter(|&i| matches!(new.0[i], Datum::UnchangedToast))
            .collect();
        let old_values = if missing.is_empty() {
            Vec::new()
        } else {
            self.read_columns(m, key, &missing)?
        };
        for (i, d) in new.0.iter().enumerate() {
            row.push(match d {
                Datum::Null => None,
                Datum::Text(b) => Some(b.clone()),
                Datum::UnchangedToast => {
                    let j = missing.iter().position(|&c| c == i).expect("listed above");
                    old_values[j].clone().map(Bytes::from)
                }
                Datum::Binary(_) => {
                    return Err(Error::user(
                        Code::ERRCODE_PROTOCOL_VIOLATION,
                        "unexpected binary value",
                    ))
                }
            });
        }
        let deleted = self.delete_by_key(relid, m, key)?;
        if deleted == 0 {
            self.update_missing += u64::from(n);
            pgrx::debug1!("livesync: row to update in \"{}\" not found", m.display);
            return Ok(());
        }
        self.push_row(relid, row)?;
        self.flush_relid(relid)
    }

    /// The text values of some columns of the row `key` identifies (a rare path: per-call SQL).
    fn read_columns(
        &self,
        m: &Mapping,
        key: &TupleData,
        cols: &[usize],
    ) -> Result<Vec<Option<String>>> {
        let list: Vec<String> = cols
            .iter()
            .map(|&c| {
                let t = m.cols[c]
                    .as_ref()
                    .expect("unchanged TOAST columns are mapped");
                format!("{}::pg_catalog.text", t.column)
            })
            .collect();
        let sql = format!(
            "SELECT {} FROM {} WHERE {} LIMIT 1",
            list.join(", "),
            m.qualified,
            key_predicate(m, 1, &key_nulls(m, key))
        );
        let vals = m
            .key
            .iter()
            .map(|&k| datum_text(&key.0[k]))
            .collect::<Result<Vec<_>>>()?;
        as_owner(m, || {
            Spi::connect(|c| {
                let args: Vec<DatumWithOid> = vals.iter().map(|v| (*v).into()).collect();
                let table = c.select(&sql, Some(1), &args)?;
                let mut out = Vec::new();
                if let Some(row) = table.into_iter().next() {
                    for i in 1..=cols.len() {
                        out.push(row.get::<String>(i)?);
                    }
                } else {
                    out.resize(cols.len(), None);
                }
                Ok(out)
            })
        })
    }

    /// Apply (or buffer: see "Runs" above) the DELETE of the row `old` identifies.
    pub fn delete(&mut self, relid: RelId, old: &TupleData) -> Result<()> {
        self.check_width(relid, old)?;
        let m = self.resolved(relid)?;
        Self::require_identity(&m)?;
        let Some(key) = run_key(&m, None, old, false) else {
            self.prepare_run(relid, &m, "")?;
            let m = self.mapping(relid)?;
            if self.delete_by_key(relid, &m, old)? == 0 {
                self.delete_missing += 1;
                pgrx::debug1!("livesync: row to delete in \"{}\" not found", m.display);
            }
            return Ok(());
        };
        self.prepare_run(relid, &m, "DELETE")?;
        drop(key);
        let bytes = tuple_bytes(old);
        let run = self.run_mut(relid, &m, || Body::Delete { rows: Vec::new() });
        let Body::Delete { rows } = &mut run.body else {
            unreachable!("prepare_run wrote the run of another kind")
        };
        rows.push(old.0.clone());
        run.rows += 1;
        self.after_push(relid, bytes)
    }

    /// Write a run of DELETEs: one statement for every key; keys it did not find
    /// (also a key deleted twice) are counted as missing.
    fn flush_deletes(
        &mut self,
        relid: RelId,
        buffered: &Rc<Mapping>,
        rows: Vec<Vec<Datum>>,
    ) -> Result<()> {
        let m = self.mapping(relid)?;
        if !Rc::ptr_eq(&m, buffered) {
            // The target changed meanwhile: one at a time, as they came.
            for row in rows {
                if self.delete_by_key(relid, &m, &TupleData(row))? == 0 {
                    self.delete_missing += 1;
                }
            }
            return Ok(());
        }
        let column = |i: usize| -> Result<Vec<Option<&str>>> {
            rows.iter().map(|r| datum_text(&r[i])).collect()
        };
        // The statement's arguments for the rows `which` (their ordinals in the run).
        let args_of = |which: &[i32]| -> Result<Vec<DatumWithOid>> {
            m.key
                .iter()
                .map(|&k| {
                    let vals = which
                        .iter()
                        .map(|&r| datum_text(&rows[r as usize][k]))
                        .collect::<Result<Vec<Option<&str>>>>()?;
                    Ok(vals.into())
                })
                .collect()
        };
        let mut deleted = 0;
        if let Some(groups) = run_groups(&m, &m.key, column, rows.len())? {
            // A hypertable: one statement per chunk-sized group, planned for its chunks.
            let types = vec![pg_sys::TEXTARRAYOID; m.key.len()];
            for g in groups {
                let sql = delete_run_sql(&m, std::slice::from_ref(&g.bounds));
                let args = args_of(&g.rows)?;
                let mut once = None;
                let plan = self.group_plan(relid, &g.bounds, sql, &types, &mut once)?;
                deleted += run_statement(&m, |c| Ok(c.update(plan, None, &args)?.len()))?;
            }
        } else {
            let plan = match self.delete_run_plans.entry(relid) {
                Entry::Occupied(e) => e.into_mut(),
                Entry::Vacant(e) => {
                    let sql = delete_run_sql(&m, &[]);
                    e.insert(prepare(&sql, m.key.len(), pg_sys::TEXTARRAYOID)?)
                }
            };
            let plan = &*plan;
            let args = args_of(&(0..rows.len() as i32).collect::<Vec<_>>())?;
            deleted = run_statement(&m, |c| Ok(c.update(plan, None, &args)?.len()))?;
        }
        if deleted < rows.len() {
            self.delete_missing += (rows.len() - deleted) as u64;
            pgrx::debug1!("livesync: rows to delete in \"{}\" not found", m.display);
        }
        Ok(())
    }

    /// Delete the row `key` identifies; returns how many rows went (0 or 1).
    fn delete_by_key(&mut self, relid: RelId, m: &Mapping, key: &TupleData) -> Result<usize> {
        let nulls = key_nulls(m, key);
        let plan = match self.delete_plans.entry(relid).or_default().entry(nulls) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                let (sql, n) = delete_sql(m, e.key());
                e.insert(prepare(&sql, n, pg_sys::TEXTOID)?)
            }
        };
        let plan = &*plan;
        let vals = m
            .key
            .iter()
            .map(|&k| datum_text(&key.0[k]))
            .collect::<Result<Vec<_>>>()?;
        as_owner(m, || exec_text(plan, &vals))
    }

    /// TRUNCATE the target tables of `relids`. As PostgreSQL's apply worker, never with
    /// CASCADE: the source already listed every table its CASCADE reached, and cascading
    /// here could empty target tables that are not replicated at all. For the same reason
    /// ONLY: the source listed every inheritance child it emptied (`TRUNCATE ONLY parent`
    /// lists none), except for partitioned tables and hypertables, whose rows live in
    /// their partitions or chunks.
    /// `listed`: every relation the source's TRUNCATE named (also those this stream does
    /// not own now).
    pub fn truncate(
        &mut self,
        relids: &[RelId],
        listed: &[RelId],
        restart_identity: bool,
    ) -> Result<()> {
        self.flush()?;
        if relids.is_empty() {
            return Ok(());
        }
        let mut names = Vec::new();
        let mut owners = Vec::new();
        for &r in relids {
            // A target other source tables also write into (the chunks of one hypertable)
            // is emptied only when all of them are: emptying it for one would take the
            // others' rows.
            let sharing: Vec<RelId> = match self.targets.get(&r) {
                Some(t) => self
                    .targets
                    .iter()
                    .filter(|(o, ot)| **o != r && *ot == t && !listed.contains(o))
                    .map(|(o, _)| *o)
                    .collect(),
                None => Vec::new(),
            };
            if !sharing.is_empty() {
                pgrx::warning!(
                    "livesync: TRUNCATE of source table {} not applied: its target \"{}\" also holds the rows of {} other source table(s)",
                    self.remote
                        .get(&r)
                        .map(|x| format!("\"{}.{}\"", x.namespace, x.name))
                        .unwrap_or_else(|| r.to_string()),
                    self.relation_name(r).unwrap_or_default(),
                    sharing.len()
                );
                continue;
            }
            let m = self.mapping(r)?;
            owners.push(m.clone());
            let only = if m.partitioned || m.hypertable {
                ""
            } else {
                "ONLY "
            };
            names.push(format!("{only}{}", m.qualified));
        }
        if names.is_empty() {
            return Ok(());
        }
        let restart = if restart_identity {
            " RESTART IDENTITY"
        } else {
            ""
        };
        let sql = format!("TRUNCATE {}{restart}", names.join(", "));
        // One statement (foreign keys between the tables need that), as the tables' owner.
        // Tables of several owners are truncated as livesync's own role: TRUNCATE runs no
        // user code but ENABLE ALWAYS truncate triggers, and native apply issues them as
        // one command too.
        match owners.first() {
            Some(first) if owners.iter().all(|m| m.owner == first.owner) => {
                as_owner(first, || Ok(Spi::run(&sql)?))
            }
            _ => Ok(Spi::run(&sql)?),
        }
    }
}

/// Did the update change a GENERATED ALWAYS identity column? Knowable only from an old
/// tuple: a key image (K) holds the key columns, a full image (O) every column.
fn identity_always_changed(
    m: &Mapping,
    old: Option<(OldKind, &TupleData)>,
    new: &TupleData,
) -> bool {
    let Some((kind, old)) = old else { return false };
    m.cols.iter().enumerate().any(|(i, t)| {
        t.as_ref().is_some_and(|t| t.always_identity)
            && (kind == OldKind::Full || m.key.contains(&i))
            && old.0.get(i) != new.0.get(i)
    })
}

/// `add_columns`: add to the target table of `rel` every column of `rel` it lacks, with
/// the source's type. Only built-in types: their OIDs mean the same on both sides.
fn add_missing_columns(rel: &Relation) -> Result<()> {
    let qualified = format!(
        "{}.{}",
        relmap::quote_ident(&rel.namespace),
        relmap::quote_ident(&rel.name)
    );
    let existing: Vec<String> = Spi::connect(|c| {
        let mut out = Vec::new();
        for r in c.select(
            "SELECT attname::pg_catalog.text FROM pg_catalog.pg_attribute \
              WHERE attrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass($1) \
                AND attnum OPERATOR(pg_catalog.>) 0 AND NOT attisdropped",
            None,
            &[qualified.as_str().into()],
        )? {
            if let Some(n) = r.get::<String>(1)? {
                out.push(n);
            }
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })?;
    for c in rel.columns.iter().filter(|c| !existing.contains(&c.name)) {
        if c.type_oid == 0 || c.type_oid >= pg_sys::FirstNormalObjectId {
            return Err(Error::user(
                Code::ERRCODE_UNDEFINED_COLUMN,
                format!(
                    "column \"{}\" of relation \"{}.{}\" is missing on the target, and its type is not a built-in one livesync can add",
                    c.name, rel.namespace, rel.name
                ),
            )
            .hint(format!(
                "Add the column on the target yourself: ALTER TABLE {qualified} ADD COLUMN {} <its type>; the sync retries and continues.",
                relmap::quote_ident(&c.name)
            )));
        }
        let type_sql = Spi::get_one_with_args::<String>(
            "SELECT pg_catalog.format_type($1, $2)",
            &[pg_sys::Oid::from(c.type_oid).into(), c.type_mod.into()],
        )?
        .unwrap_or_default();
        crate::tabledef::add_column(&qualified, &c.name, &type_sql)?;
        pgrx::log!(
            "livesync: added column \"{}\" {type_sql} to table \"{}.{}\" (add_columns)",
            c.name,
            rel.namespace,
            rel.name
        );
    }
    Ok(())
}

/// The key by which a change may join a run, or None when it must be applied alone: a
/// table with triggers that fire during apply, rows found by all their columns, an
/// UPDATE of a table with unique columns besides its key (see
/// `Mapping::unique_elsewhere`), a key that changed (or a GENERATED ALWAYS identity
/// column), a key column not written or without an equality operator, a key value not
/// sent as text.
fn run_key(
    m: &Mapping,
    old: Option<(OldKind, &TupleData)>,
    new: &TupleData,
    update: bool,
) -> Option<Vec<Bytes>> {
    if m.triggers
        || m.by_all_columns
        || (update && m.unique_elsewhere)
        || identity_always_changed(m, old, new)
    {
        return None;
    }
    let mut key = Vec::with_capacity(m.key.len());
    for &k in &m.key {
        if m.cols[k].as_ref().is_none_or(|t| t.eq_op.is_none()) {
            return None;
        }
        let v = match new.0.get(k) {
            Some(Datum::Text(b)) => b,
            _ => return None,
        };
        if let Some((_, old)) = old {
            if old.0.get(k) != new.0.get(k) {
                return None;
            }
        }
        key.push(v.clone());
    }
    Some(key)
}

/// The columns an UPDATE sets: mapped and sent (unchanged TOAST keeps the target's
/// value), never a GENERATED ALWAYS identity column.
fn set_columns(m: &Mapping, new: &TupleData) -> Vec<bool> {
    m.cols
        .iter()
        .zip(&new.0)
        .map(|(t, d)| {
            t.as_ref().is_some_and(|t| !t.always_identity) && !matches!(d, Datum::UnchangedToast)
        })
        .collect()
}

/// Run an UPDATE run's statement, marking the ordinals it returns (the rows it found).
fn mark_found<'conn, Q: pgrx::spi::Query<'conn>>(
    c: &mut pgrx::spi::SpiClient<'conn>,
    q: Q,
    args: &[DatumWithOid],
    found: &mut [bool],
) -> Result<()> {
    for row in c.update(q, None, args)? {
        if let Some(n) = row.get::<i32>(1)? {
            found[n as usize] = true;
        }
    }
    Ok(())
}

/// Bytes of the values of a row as received.
fn tuple_bytes(t: &TupleData) -> usize {
    t.0.iter()
        .map(|d| match d {
            Datum::Text(b) | Datum::Binary(b) => b.len(),
            _ => 0,
        })
        .sum()
}

/// One column of buffered values as a text[] argument.
fn text_array(col: &[Option<Bytes>]) -> Result<Vec<Option<&str>>> {
    col.iter()
        .map(|v| v.as_deref().map(text_of).transpose())
        .collect()
}

fn datum_text(d: &Datum) -> Result<Option<&str>> {
    match d {
        Datum::Null => Ok(None),
        Datum::Text(b) => text_of(b).map(Some),
        Datum::UnchangedToast => Err(Error::user(
            Code::ERRCODE_PROTOCOL_VIOLATION,
            "an unchanged-TOAST value was sent where a value is needed to find the row",
        )),
        Datum::Binary(_) => Err(Error::user(
            Code::ERRCODE_PROTOCOL_VIOLATION,
            "unexpected binary value",
        )),
    }
}

/// Run `f` as the owner of `m`'s target table, in a security-restricted context, as
/// PostgreSQL 16's apply worker does (`run_as_owner = false`): triggers, defaults, CHECK
/// constraints and index expressions of the table run with its owner's rights, never with
/// livesync's superuser ones, and cannot change the session (SET ROLE, GUCs: a new GUC
/// level undoes what they set). An ERROR inside is cleaned up by the transaction's abort.
pub fn as_owner<R>(m: &Mapping, f: impl FnOnce() -> Result<R>) -> Result<R> {
    as_role(m.owner, f)
}

/// [`as_owner`] for a role given by its oid.
pub fn as_role<R>(owner: pg_sys::Oid, f: impl FnOnce() -> Result<R>) -> Result<R> {
    let (mut user, mut sec) = (pg_sys::InvalidOid, 0);
    // SAFETY: reads this backend's current user and security context.
    unsafe { pg_sys::GetUserIdAndSecContext(&mut user, &mut sec) };
    if owner == pg_sys::InvalidOid || owner == user {
        return f();
    }
    // SAFETY: switches the current user for the statements `f` runs; restored below, or by
    // AbortTransaction (with the GUC level) when an ERROR escapes `f`.
    let level = unsafe {
        pg_sys::SetUserIdAndSecContext(owner, sec | pg_sys::SECURITY_RESTRICTED_OPERATION as i32);
        pg_sys::NewGUCNestLevel()
    };
    let r = f();
    // SAFETY: pairs with the switch above.
    unsafe {
        pg_sys::AtEOXact_GUC(false, level);
        pg_sys::SetUserIdAndSecContext(user, sec);
    }
    r
}

/// Empty a target table as its owner (`livesync_resync`): its truncate triggers run with
/// the owner's rights, never the caller's. A partitioned table or a hypertable is emptied
/// with its partitions or chunks, any other table without its inheritance children.
pub fn truncate_as_owner(table: pg_sys::Oid) -> Result<()> {
    let (schema, name, owner, kind) = Spi::connect(|c| {
        let row = c
            .select(
                "SELECT n.nspname::pg_catalog.text, c.relname::pg_catalog.text, c.relowner, \
                        c.relkind::pg_catalog.text \
                   FROM pg_catalog.pg_class c \
                   JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                  WHERE c.oid OPERATOR(pg_catalog.=) $1",
                Some(1),
                &[table.into()],
            )?
            .first();
        Ok::<_, pgrx::spi::SpiError>((
            row.get::<String>(1)?.unwrap_or_default(),
            row.get::<String>(2)?.unwrap_or_default(),
            row.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid),
            row.get::<String>(4)?.unwrap_or_default(),
        ))
    })?;
    let whole = kind == "p" || relmap::hypertable_dimensions(&schema, &name)?.is_some();
    let sql = format!(
        "TRUNCATE {}{}.{}",
        if whole { "" } else { "ONLY " },
        relmap::quote_ident(&schema),
        relmap::quote_ident(&name)
    );
    as_role(owner, || Ok(Spi::run(&sql)?))
}

/// May the owner of `m`'s target table read server files (for COPY FROM a staged file)?
pub fn owner_reads_server_files(m: &Mapping) -> bool {
    // SAFETY: catalog lookups on the main thread inside a transaction.
    unsafe {
        pg_sys::superuser_arg(m.owner)
            || pg_sys::has_privs_of_role(
                m.owner,
                pg_sys::Oid::from(pg_sys::ROLE_PG_READ_SERVER_FILES),
            )
    }
}

/// Execute a plan whose parameters are all text; returns rows processed.
fn exec_text(plan: &OwnedPreparedStatement, vals: &[Option<&str>]) -> Result<usize> {
    Spi::connect_mut(|c| {
        let args: Vec<DatumWithOid> = vals.iter().map(|v| (*v).into()).collect();
        Ok(c.update(plan, None, &args)?.len())
    })
}

/// Refuse a value the target column's type modifier cannot hold, naming table and column,
/// before the statement would: PostgreSQL's own error would not say which column.
fn check_limit(m: &Mapping, t: &Target, v: &[u8]) -> Result<()> {
    let Some(limit) = t.limit else {
        return Ok(());
    };
    let v = text_of(v)?;
    if limit.admits(v) {
        return Ok(());
    }
    let (code, msg) = limit.violation(v, &t.display_type);
    Err(Error::user(
        code,
        format!(
            "{msg}, for replication target relation \"{}\" column \"{}\"",
            m.display, t.name
        ),
    )
    .hint(format!(
        "The source sent a value the target column cannot hold: widen the column on the target (ALTER TABLE {} ALTER COLUMN {} TYPE ...); the sync retries and continues.",
        m.qualified, t.column
    )))
}

/// The type of column `c` of source relation `relid` (its Relation message's).
fn type_of(remote: &HashMap<RelId, Relation>, relid: RelId, c: usize) -> u32 {
    remote
        .get(&relid)
        .and_then(|r| r.columns.get(c))
        .map_or(0, |col| col.type_oid)
}

fn text_of(b: &[u8]) -> Result<&str> {
    std::str::from_utf8(b).map_err(|_| {
        Error::user(
            Code::ERRCODE_CHARACTER_NOT_IN_REPERTOIRE,
            "a value from the source is not valid UTF-8",
        )
        .hint("livesync needs the source database to use the UTF8 encoding.")
    })
}

fn cast(expr: &str, type_name: &str) -> String {
    format!("CAST({expr} AS {type_name})")
}

/// `INSERT INTO t (a, b) OVERRIDING SYSTEM VALUE SELECT CAST(pg_catalog.unnest($1::pg_catalog.text[]) AS int4), ...`
///
/// The arrays are unnested side by side in the select list (a ProjectSet node, which
/// hands each row on as it makes it). `ROWS FROM (unnest($1), ...)` in FROM does the same,
/// but a function scan first copies every row into a tuplestore: 14 % slower for 2000 rows
/// of four columns. All arrays have one element per row, so none runs out before another.
/// The casts name types without modifiers; the assignment to the column applies the
/// modifier (and refuses a value too long, where an explicit cast would cut it).
pub fn insert_sql(m: &Mapping) -> String {
    let targets: Vec<_> = m.cols.iter().flatten().collect();
    if targets.is_empty() {
        // No column to write: $1 rows of defaults.
        return format!(
            "INSERT INTO {} SELECT FROM pg_catalog.generate_series(1, $1::pg_catalog.int4)",
            m.qualified
        );
    }
    let cols: Vec<_> = targets.iter().map(|t| t.column.as_str()).collect();
    let exprs: Vec<_> = targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            cast(
                &format!("pg_catalog.unnest(${}::pg_catalog.text[])", i + 1),
                &t.type_name,
            )
        })
        .collect();
    format!(
        "INSERT INTO {} ({}) OVERRIDING SYSTEM VALUE SELECT {}",
        m.qualified,
        cols.join(", "),
        exprs.join(", ")
    )
}

/// Which key values of `key` are NULL, when that changes the statement (rows found by all
/// columns under REPLICA IDENTITY FULL); empty otherwise (key columns are NOT NULL).
fn key_nulls(m: &Mapping, key: &TupleData) -> Vec<bool> {
    if !m.by_all_columns {
        return Vec::new();
    }
    m.key
        .iter()
        .map(|&k| matches!(key.0.get(k), Some(Datum::Null)))
        .collect()
}

/// `column = value` by the equality operator of the column type's default btree operator
/// class, named with its schema (what native apply compares with, and what an index on
/// the column serves); by the printed value for types without one (json, point, ...).
fn equals(t: &Target, param: &str) -> String {
    match &t.eq_op {
        Some(op) => format!("{} {op} {}", t.column, cast(param, &t.type_name)),
        None => format!(
            "{}::pg_catalog.text OPERATOR(pg_catalog.=) {}::pg_catalog.text",
            t.column,
            cast(param, &t.type_name)
        ),
    }
}

/// The WHERE clause that finds a row by its identity, parameters from `$first` on; a key
/// value flagged in `nulls` is matched with IS NULL (its parameter goes unused).
fn key_predicate(m: &Mapping, first: usize, nulls: &[bool]) -> String {
    m.key
        .iter()
        .enumerate()
        .map(|(i, &k)| match &m.cols[k] {
            Some(t) if nulls.get(i).copied().unwrap_or(false) => format!("{} IS NULL", t.column),
            Some(t) => equals(t, &format!("${}", first + i)),
            None => "true".to_string(),
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Dimension columns an UPDATE must guard with "unchanged" (sent, not in the key).
fn guard_dims(m: &Mapping, set: &[bool]) -> Vec<usize> {
    m.dims
        .iter()
        .copied()
        .filter(|d| set.get(*d).copied().unwrap_or(false) && !m.key.contains(d))
        .collect()
}

/// Did an UPDATE change a dimension column that is part of the key (known from the old
/// key image)?
fn dimension_in_key_changed(
    m: &Mapping,
    old: Option<(OldKind, &TupleData)>,
    new: &TupleData,
) -> bool {
    let Some((_, old)) = old else { return false };
    m.dims
        .iter()
        .any(|d| m.key.contains(d) && old.0.get(*d) != new.0.get(*d))
}

/// The row-finding part shared by UPDATE/DELETE: `(with, where)` clauses. When rows are
/// found by all columns (REPLICA IDENTITY FULL, no target key) it picks exactly one
/// matching row, as the source changed one (tableoid + ctid stays unique across
/// hypertable chunks).
fn locate(m: &Mapping, first: usize, extra: &str, nulls: &[bool]) -> (String, String) {
    let pred = format!("{}{extra}", key_predicate(m, first, nulls));
    if m.by_all_columns {
        (
            format!(
                "WITH r AS (SELECT tableoid AS toid, ctid AS tid FROM {} WHERE {pred} LIMIT 1) ",
                m.qualified
            ),
            "t.tableoid OPERATOR(pg_catalog.=) r.toid AND t.ctid OPERATOR(pg_catalog.=) r.tid"
                .to_string(),
        )
    } else {
        (String::new(), pred)
    }
}

/// UPDATE by key. Parameters: the SET values, then the key, then the values of the
/// guarded dimension columns (hypertables), which must be unchanged. Dimension columns are
/// never SET: a change there is a move (see [`Applier::update`]).
pub fn update_sql(m: &Mapping, set: &[bool], nulls: &[bool]) -> (String, usize) {
    let guard = guard_dims(m, set);
    let mut n = 0;
    let assignments: Vec<_> = m
        .cols
        .iter()
        .enumerate()
        .zip(set)
        .filter(|((i, _), s)| **s && !m.dims.contains(i))
        .map(|((_, t), _)| {
            n += 1;
            let t = t.as_ref().expect("set only for mapped columns");
            format!("{} = {}", t.column, cast(&format!("${n}"), &t.type_name))
        })
        .collect();
    let mut total = n + m.key.len();
    let mut extra = String::new();
    for d in guard {
        total += 1;
        let t = m.cols[d].as_ref().expect("dimensions are mapped");
        extra += &format!(" AND {}", equals(t, &format!("${total}")));
    }
    // Nothing left to SET: a no-op assignment still finds (and counts) the row.
    let assignments = if assignments.is_empty() {
        let t = m
            .key
            .iter()
            .chain(m.dims.iter())
            .find_map(|&i| m.cols[i].as_ref());
        match t {
            Some(t) => format!("{0} = {0}", t.column),
            None => "ctid = ctid".to_string(),
        }
    } else {
        assignments.join(", ")
    };
    let (with, pred) = locate(m, n + 1, &extra, nulls);
    let sql = if m.by_all_columns {
        format!(
            "{with}UPDATE {q} t SET {assignments} FROM r WHERE {pred}",
            q = m.qualified
        )
    } else {
        format!("UPDATE {} SET {assignments} WHERE {pred}", m.qualified)
    };
    (sql, total)
}

/// A run into a hypertable, split by its open (time) dimension into chunk-sized groups:
/// each group's rows (their ordinals in the run) and its [`Bounds`] in that column.
/// Written as constants into the group's statement, the bounds let TimescaleDB leave out
/// every chunk the group cannot touch when it plans the statement: a
/// prepared (generic) plan of the run's join probes every chunk for every row, which on a
/// hypertable of hundreds of chunks costs a millisecond a row. The groups follow the
/// chunk interval from the epoch, as TimescaleDB aligns its chunks (where they are not
/// aligned, a group overlaps two chunks). None for a plain table, a run not joined on the
/// time column (a DELETE whose key image lacks it), a column type other than the built-in
/// integer and time types, or values without bounds.
fn run_groups<'a>(
    m: &Mapping,
    joined: &[usize],
    column: impl Fn(usize) -> Result<Vec<Option<&'a str>>>,
    n: usize,
) -> Result<Option<Vec<Group>>> {
    let Some((d, interval)) = m.open_dim else {
        return Ok(None);
    };
    let Some(t) = m.cols[d].as_ref().filter(|_| joined.contains(&d)) else {
        return Ok(None);
    };
    let kind = match t.type_name.rsplit('.').next().map(|s| s.trim_matches('"')) {
        Some("int2") if t.type_name.contains("pg_catalog") => DimKind::Int2,
        Some("int4") if t.type_name.contains("pg_catalog") => DimKind::Int4,
        Some("int8") if t.type_name.contains("pg_catalog") => DimKind::Int8,
        Some("date") if t.type_name.contains("pg_catalog") => DimKind::Date,
        Some("timestamp") if t.type_name.contains("pg_catalog") => DimKind::Timestamp,
        Some("timestamptz") if t.type_name.contains("pg_catalog") => DimKind::TimestampTz,
        _ => return Ok(None),
    };
    let vals = column(d)?;
    // The source prints these types the same way every time (ISO dates, see
    // `prepare_session` and the replication connection's DateStyle): read here, without
    // a query. Anything else (infinity, BC dates, NULL) goes through the server below.
    if let Some(groups) = groups_of(&vals, kind, interval, d) {
        return Ok(Some(groups));
    }
    let internal = match kind {
        DimKind::Int2 | DimKind::Int4 | DimKind::Int8 => "u.v::pg_catalog.numeric",
        _ => "EXTRACT(epoch FROM u.v) OPERATOR(pg_catalog.*) 1000000",
    };
    let sql = format!(
        "SELECT pg_catalog.array_agg((u.i OPERATOR(pg_catalog.-) 1)::pg_catalog.int4 ORDER BY u.i), \
                pg_catalog.quote_literal(pg_catalog.min(u.v)::pg_catalog.text), \
                pg_catalog.quote_literal(pg_catalog.max(u.v)::pg_catalog.text) \
           FROM (SELECT {} AS v, w.i FROM pg_catalog.unnest($1::pg_catalog.text[]) \
                 WITH ORDINALITY AS w(x, i)) AS u \
          GROUP BY pg_catalog.floor(({internal}) OPERATOR(pg_catalog./) {interval})",
        cast("w.x", &t.type_name)
    );
    let groups = as_owner(m, || {
        Spi::connect(|c| {
            let mut groups = Vec::new();
            for row in c.select(&sql, None, &[vals.into()])? {
                let (Some(rows), Some(lo), Some(hi)) = (
                    row.get::<Vec<i32>>(1)?,
                    row.get::<String>(2)?,
                    row.get::<String>(3)?,
                ) else {
                    return Ok::<_, Error>(None);
                };
                groups.push(Group {
                    rows,
                    bounds: Bounds {
                        col: d,
                        lo,
                        hi,
                        slot: None,
                    },
                });
            }
            Ok(Some(groups))
        })
    })?;
    // Every row in exactly one group, or the run goes as one statement.
    Ok(groups.filter(|g| g.iter().map(|g| g.rows.len()).sum::<usize>() == n))
}

/// The built-in types of a hypertable's time column that [`groups_of`] reads.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum DimKind {
    Int2,
    Int4,
    Int8,
    Date,
    Timestamp,
    TimestampTz,
}

impl DimKind {
    /// The values an integer type holds (None: a date or time type).
    fn int_range(self) -> Option<(i64, i64)> {
        match self {
            DimKind::Int2 => Some((i16::MIN.into(), i16::MAX.into())),
            DimKind::Int4 => Some((i32::MIN.into(), i32::MAX.into())),
            DimKind::Int8 => Some((i64::MIN, i64::MAX)),
            _ => None,
        }
    }
}

/// [`run_groups`] without a query: each value's position on the dimension (the integer,
/// or microseconds since the Unix epoch, as TimescaleDB counts), grouped by
/// `floor(position / interval)`; each group's bounds are its interval's edges, or where
/// the column's type cannot hold them ([`dim_literal`]) its lowest and highest value as
/// the source printed them. None when a value is NULL or not in the one format the
/// source prints (so the caller asks the server).
fn groups_of(
    vals: &[Option<&str>],
    kind: DimKind,
    interval: i64,
    col: usize,
) -> Option<Vec<Group>> {
    if interval <= 0 {
        return None;
    }
    /// A group's rows, and its lowest and highest position with the row holding it.
    struct Acc {
        rows: Vec<i32>,
        lo: (i64, usize),
        hi: (i64, usize),
    }
    let mut groups: std::collections::BTreeMap<i64, Acc> = Default::default();
    for (r, v) in vals.iter().enumerate() {
        let pos = dim_position(v.as_deref()?, kind)?;
        let g = groups.entry(pos.div_euclid(interval)).or_insert(Acc {
            rows: Vec::new(),
            lo: (pos, r),
            hi: (pos, r),
        });
        g.rows.push(r as i32);
        if pos < g.lo.0 {
            g.lo = (pos, r);
        }
        if pos > g.hi.0 {
            g.hi = (pos, r);
        }
    }
    Some(
        groups
            .into_iter()
            .map(|(k, g)| {
                // The edges of the chunk interval, where they can be written in the type;
                // the group's own lowest and highest value otherwise.
                let edges = k.checked_mul(interval).and_then(|lo| {
                    let hi = lo.checked_add(interval)?;
                    Some((dim_literal(lo, kind)?, dim_literal(hi, kind)?))
                });
                let bounds = match edges {
                    Some((lo, hi)) => Bounds {
                        col,
                        lo: quote_literal(&lo),
                        hi: quote_literal(&hi),
                        slot: Some(k),
                    },
                    None => Bounds {
                        col,
                        // Digits, '-', ':', '.', '+' and a space only (dim_position checked).
                        lo: quote_literal(vals[g.lo.1].unwrap_or_default()),
                        hi: quote_literal(vals[g.hi.1].unwrap_or_default()),
                        slot: None,
                    },
                };
                Group {
                    rows: g.rows,
                    bounds,
                }
            })
            .collect(),
    )
}

/// A position on a dimension ([`dim_position`]) written as a value of the column's type,
/// as the source would print it: the integer, or the date or time (in UTC for
/// `timestamptz`, with its offset) of a proleptic Gregorian year 1 to 9999. None for an
/// integer its type cannot hold, a date that is not a whole day, or a year outside that
/// range.
fn dim_literal(pos: i64, kind: DimKind) -> Option<String> {
    // An interval's edge may lie beyond what the column's type holds (the last interval
    // of an int4 column ends past 2^31 - 1): not written, the group keeps its own values.
    if let Some((min, max)) = kind.int_range() {
        return (min..=max).contains(&pos).then(|| pos.to_string());
    }
    const DAY: i64 = 86_400_000_000;
    let (days, us) = (pos.div_euclid(DAY), pos.rem_euclid(DAY));
    // H. Hinnant's civil_from_days, the inverse of the days_from_civil in dim_position.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    if !(1..=9999).contains(&y) {
        return None;
    }
    let date = format!("{y:04}-{m:02}-{d:02}");
    let secs = us / 1_000_000;
    let time = format!(
        "{:02}:{:02}:{:02}.{:06}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        us % 1_000_000
    );
    match kind {
        DimKind::Date => (us == 0).then_some(date),
        DimKind::Timestamp => Some(format!("{date} {time}")),
        _ => Some(format!("{date} {time}+00")),
    }
}

/// A value of a time column as the source prints it with DateStyle ISO, as a position on
/// the dimension: the integer itself, or microseconds since 1970-01-01 00:00 UTC (a
/// `timestamp` counted as if in UTC, as TimescaleDB does). None for anything else.
fn dim_position(s: &str, kind: DimKind) -> Option<i64> {
    fn digits(s: &str) -> Option<i64> {
        (!s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    }
    if kind.int_range().is_some() {
        return s.parse::<i64>().ok();
    }
    // Byte offsets below are character boundaries only in ASCII text.
    if !s.is_ascii() {
        return None;
    }
    // YYYY-MM-DD (a year of four digits or more; BC dates end in " BC": not read).
    let (date, rest) = match s.find(' ') {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    let mut d = date.splitn(3, '-');
    let (y, mo, da) = (d.next()?, d.next()?, d.next()?);
    if y.len() < 4 || mo.len() != 2 || da.len() != 2 {
        return None;
    }
    let (y, mo, da) = (digits(y)?, digits(mo)?, digits(da)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let day_us = days.checked_mul(86_400_000_000)?;
    if kind == DimKind::Date {
        return rest.is_empty().then_some(day_us);
    }
    // HH:MM:SS[.ffffff], then for timestamptz an offset +HH[:MM[:SS]] or -HH[:MM[:SS]].
    if rest.len() < 8 {
        return None;
    }
    let (time, zone) = match kind {
        DimKind::TimestampTz => {
            let i = rest[8..].find(['+', '-'])? + 8;
            (&rest[..i], Some(&rest[i..]))
        }
        _ => (rest, None),
    };
    let (hms, frac) = match time.split_once('.') {
        Some((a, f)) if (1..=6).contains(&f.len()) => {
            (a, digits(f)? * 10i64.pow(6 - f.len() as u32))
        }
        Some(_) => return None,
        None => (time, 0),
    };
    let mut t = hms.splitn(3, ':');
    let (h, mi, se) = (digits(t.next()?)?, digits(t.next()?)?, digits(t.next()?)?);
    if hms.len() != 8 || h > 24 || mi > 59 || se > 60 {
        return None;
    }
    let mut us = day_us.checked_add(((h * 60 + mi) * 60 + se) * 1_000_000 + frac)?;
    if let Some(z) = zone {
        let sign = if z.starts_with('-') { -1 } else { 1 };
        let mut parts = z[1..].split(':');
        let zh = parts.next().filter(|p| p.len() == 2).and_then(digits)?;
        let zm = match parts.next() {
            Some(p) if p.len() == 2 => digits(p)?,
            Some(_) => return None,
            None => 0,
        };
        let zs = match parts.next() {
            Some(p) if p.len() == 2 => digits(p)?,
            Some(_) => return None,
            None => 0,
        };
        if parts.next().is_some() || zm > 59 || zs > 59 {
            return None;
        }
        us = us.checked_sub(sign * ((zh * 60 + zm) * 60 + zs) * 1_000_000)?;
    }
    Some(us)
}

/// Rows of a run into a hypertable that one statement writes (see [`run_groups`]).
struct Group {
    rows: Vec<i32>,
    bounds: Bounds,
}

/// `t.column = CAST(u.param AS type)` by the column type's btree equality (run keys
/// always have one, see [`run_key`]).
fn equals_joined(t: &Target, param: &str) -> String {
    let op = t.eq_op.as_deref().unwrap_or("OPERATOR(pg_catalog.=)");
    format!("t.{} {op} {}", t.column, cast(param, &t.type_name))
}

/// The batched UPDATE of a run: `$1` the rows' ordinals, then a text[] per SET column
/// (dimension columns excluded), per key column and per guarded dimension column.
/// Returns the ordinals of the rows it found.
///
/// `UPDATE t SET a = CAST(u.s1 AS ...) FROM ROWS FROM (unnest($1::int4[]), unnest($2::text[]), ...)
/// AS u(n, s1, k1) WHERE t.id = CAST(u.k1 AS ...) RETURNING u.n`
pub fn update_run_sql(m: &Mapping, set: &[bool], bounds: &[Bounds]) -> (String, usize) {
    let guard = guard_dims(m, set);
    let mut aliases = vec!["n".to_string()];
    let assignments: Vec<String> = (0..m.cols.len())
        .filter(|i| set[*i] && !m.dims.contains(i))
        .map(|i| {
            let t = m.cols[i].as_ref().expect("set only for mapped columns");
            aliases.push(format!("s{}", aliases.len()));
            format!(
                "{} = {}",
                t.column,
                cast(&format!("u.{}", aliases.last().unwrap()), &t.type_name)
            )
        })
        .collect();
    let mut pred = Vec::new();
    for &k in m.key.iter().chain(&guard) {
        let t = m.cols[k]
            .as_ref()
            .expect("run keys and dimensions are mapped");
        aliases.push(format!("k{}", aliases.len()));
        pred.push(equals_joined(t, &format!("u.{}", aliases.last().unwrap())));
    }
    let nparams = aliases.len();
    pred.extend(bounds_pred(m, bounds));
    // Nothing left to SET: a no-op assignment still finds (and counts) the row.
    let assignments = if assignments.is_empty() {
        let t = m.cols[m.key[0]].as_ref().expect("run keys are mapped");
        format!("{0} = t.{0}", t.column)
    } else {
        assignments.join(", ")
    };
    let params: Vec<String> = (1..=nparams)
        .map(|i| {
            let ty = if i == 1 { "int4" } else { "text" };
            format!("pg_catalog.unnest(${i}::pg_catalog.{ty}[])")
        })
        .collect();
    let sql = format!(
        "UPDATE {} AS t SET {assignments} FROM ROWS FROM ({}) AS u({}) WHERE {} RETURNING u.n",
        m.qualified,
        params.join(", "),
        aliases.join(", "),
        pred.join(" AND ")
    );
    (sql, nparams)
}

/// Where a group of a run lies in one of its hypertable's dimension columns, as quoted SQL
/// literals: the chunk interval it falls in (`slot`: `lo` inclusive, `hi` exclusive), or,
/// where that interval's edges cannot be written in the column's type, its lowest and
/// highest value (both inclusive).
pub struct Bounds {
    col: usize,
    lo: String,
    hi: String,
    /// The interval's number (`floor(position / interval)`), when `lo` and `hi` are its
    /// edges: the statement's text is then the same for every group of that interval, and
    /// its plan is kept ([`Applier::group_plan`]).
    slot: Option<i64>,
}

/// `t.dim >= CAST('lo' AS type) AND t.dim < CAST('hi' AS type)` (`<=` without a slot)
/// for each of `bounds`: constants from the parser on, so TimescaleDB plans the run's
/// statement for the chunks they overlap only (parameters, even of a statement planned once, are not: the cast from text is
/// stable, not immutable).
fn bounds_pred(m: &Mapping, bounds: &[Bounds]) -> Vec<String> {
    bounds
        .iter()
        .map(|b| {
            let t = m.cols[b.col]
                .as_ref()
                .expect("bounded dimensions are mapped");
            // The built-in types of `run_groups` have pg_catalog's comparison operators.
            let below = if b.slot.is_some() { "<" } else { "<=" };
            format!(
                "t.{0} OPERATOR(pg_catalog.>=) {1} AND t.{0} OPERATOR(pg_catalog.{below}) {2}",
                t.column,
                cast(&b.lo, &t.type_name),
                cast(&b.hi, &t.type_name)
            )
        })
        .collect()
}

/// The batched DELETE of a run: a text[] per key column (`bounds`: see [`bounds_pred`]).
pub fn delete_run_sql(m: &Mapping, bounds: &[Bounds]) -> String {
    let mut aliases = Vec::new();
    let mut pred = Vec::new();
    for &k in &m.key {
        let t = m.cols[k].as_ref().expect("run keys are mapped");
        aliases.push(format!("k{}", aliases.len() + 1));
        pred.push(equals_joined(t, &format!("u.{}", aliases.last().unwrap())));
    }
    pred.extend(bounds_pred(m, bounds));
    let params: Vec<String> = (1..=aliases.len())
        .map(|i| format!("pg_catalog.unnest(${i}::pg_catalog.text[])"))
        .collect();
    format!(
        "DELETE FROM {} AS t USING ROWS FROM ({}) AS u({}) WHERE {}",
        m.qualified,
        params.join(", "),
        aliases.join(", "),
        pred.join(" AND ")
    )
}

pub fn delete_sql(m: &Mapping, nulls: &[bool]) -> (String, usize) {
    let (with, pred) = locate(m, 1, "", nulls);
    let sql = if m.by_all_columns {
        format!("{with}DELETE FROM {} t USING r WHERE {pred}", m.qualified)
    } else {
        format!("DELETE FROM {} WHERE {pred}", m.qualified)
    };
    (sql, m.key.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relmap::Limit;

    const EQ: &str = "OPERATOR(\"pg_catalog\".=)";

    #[test]
    fn dimension_positions_of_iso_values() {
        use DimKind::*;
        let day = 86_400_000_000i64;
        assert_eq!(dim_position("1970-01-01", Date), Some(0));
        assert_eq!(dim_position("2000-01-01", Date), Some(10_957 * day));
        assert_eq!(dim_position("1969-12-31", Date), Some(-day));
        assert_eq!(
            dim_position("2024-02-29 12:00:00", Timestamp),
            Some(19_782 * day + day / 2)
        );
        assert_eq!(
            dim_position("1970-01-01 00:00:00.5", Timestamp),
            Some(500_000)
        );
        assert_eq!(
            dim_position("1970-01-01 00:00:00.000001+00", TimestampTz),
            Some(1)
        );
        // The same instant printed in three zones.
        let utc = dim_position("2024-01-01 00:00:00+00", TimestampTz).unwrap();
        assert_eq!(
            dim_position("2024-01-01 05:30:00+05:30", TimestampTz),
            Some(utc)
        );
        assert_eq!(
            dim_position("2023-12-31 21:00:00-03", TimestampTz),
            Some(utc)
        );
        // Local mean time before 1900 has offsets with seconds.
        assert_eq!(
            dim_position("1901-01-01 00:00:00+01:02:03", TimestampTz),
            dim_position("1901-01-01 00:00:00+00", TimestampTz).map(|u| u - 3_723_000_000)
        );
        assert_eq!(dim_position("12345-01-01", Date).map(|u| u > 0), Some(true));
        assert_eq!(dim_position("-42", Int8), Some(-42));
        // Not read here (the server is asked): infinity, BC, other formats, garbage.
        for s in [
            "infinity",
            "-infinity",
            "0044-03-15 BC",
            "2024-1-1",
            "01/02/2024",
            "2024-01-01T00:00:00",
            "2024-01-01 00:00",
            "2024-13-01",
            "2024-01-01 00:00:00.1234567+00",
            "2024-01-01 00:00:00+5",
            "'; DROP TABLE x; --",
            "2024-01-01 00:00:0é+00",
        ] {
            for kind in [Date, Timestamp, TimestampTz] {
                assert_eq!(dim_position(s, kind), None, "{s} as {kind:?}");
            }
        }
        assert_eq!(dim_position("2024-01-01 00:00:00", TimestampTz), None);
        assert_eq!(dim_position("2024-01-01 00:00:00+00", Timestamp), None);
        assert_eq!(dim_position("2024-01-01 00:00:00", Date), None);
        assert_eq!(dim_position("1.5", Int8), None);
    }

    #[test]
    fn dimension_positions_are_written_back() {
        use DimKind::*;
        for (text, kind) in [
            ("2024-02-29 13:45:07.000123", Timestamp),
            ("1970-01-01 00:00:00.000000", Timestamp),
            ("1969-12-31 23:59:59.999999+00", TimestampTz),
            ("0001-01-01 00:00:00.000000+00", TimestampTz),
            ("9999-12-31 23:59:59.999999+00", TimestampTz),
            ("2000-03-01", Date),
            ("1900-02-28", Date),
            ("-42", Int2),
        ] {
            let pos = dim_position(text, kind).unwrap();
            assert_eq!(dim_literal(pos, kind).as_deref(), Some(text), "{text}");
        }
        // Before year 1, after 9999, a date that is not a whole day: not written.
        let first = dim_position("0001-01-01", Date).unwrap();
        assert_eq!(dim_literal(first - 1, Timestamp), None);
        let last = dim_position("9999-12-31 23:59:59.999999", Timestamp).unwrap();
        assert_eq!(dim_literal(last + 1, Timestamp), None);
        assert_eq!(dim_literal(first + 1, Date), None);
        // Integers their type cannot hold.
        assert_eq!(dim_literal(i64::from(i32::MAX) + 1, Int4), None);
        assert_eq!(dim_literal(i64::from(i16::MIN) - 1, Int2), None);
        assert_eq!(
            dim_literal(i64::from(i32::MAX) + 1, Int8).as_deref(),
            Some("2147483648")
        );
    }

    #[test]
    fn groups_by_chunk_interval_with_their_bounds() {
        let vals = [
            Some("2024-01-02 23:00:00+00"),
            Some("2024-01-01 10:00:00+00"),
            Some("2024-01-02 01:00:00+01"), // 00:00 UTC: the second day
            Some("2024-01-01 09:00:00+00"),
        ];
        let g = groups_of(&vals, DimKind::TimestampTz, 86_400_000_000, 3).unwrap();
        assert_eq!(g.len(), 2);
        assert_eq!(g[0].rows, vec![1, 3]);
        // The day each group is in: the same statement text for every group of that day.
        assert_eq!(
            (
                g[0].bounds.lo.as_str(),
                g[0].bounds.hi.as_str(),
                g[0].bounds.slot
            ),
            (
                "'2024-01-01 00:00:00.000000+00'",
                "'2024-01-02 00:00:00.000000+00'",
                Some(19723)
            )
        );
        assert_eq!(g[1].rows, vec![0, 2]);
        assert_eq!(
            (g[1].bounds.lo.as_str(), g[1].bounds.hi.as_str()),
            (
                "'2024-01-02 00:00:00.000000+00'",
                "'2024-01-03 00:00:00.000000+00'"
            )
        );
        // An interval whose edges a date cannot hold (12 hours): the group's own values.
        let days = [Some("2024-01-02"), Some("2024-01-02")];
        let d = groups_of(&days, DimKind::Date, 43_200_000_000, 3).unwrap();
        assert_eq!(
            (
                d[0].bounds.lo.as_str(),
                d[0].bounds.hi.as_str(),
                d[0].bounds.slot
            ),
            ("'2024-01-02'", "'2024-01-02'", None)
        );
        assert_eq!(g[1].bounds.col, 3);
        // Integer dimensions, negative values included.
        let g = groups_of(
            &[Some("-1"), Some("10"), Some("0"), Some("19")],
            DimKind::Int4,
            10,
            0,
        )
        .unwrap();
        assert_eq!(
            g.iter().map(|g| g.rows.clone()).collect::<Vec<_>>(),
            vec![vec![0], vec![2], vec![1, 3]]
        );
        // A NULL or a value not read here: the server decides.
        assert!(groups_of(&[Some("1"), None], DimKind::Int8, 10, 0).is_none());
        assert!(groups_of(&[Some("infinity")], DimKind::TimestampTz, 10, 0).is_none());
        // The last interval of an int4 column ends past its maximum, the first of an int2
        // column begins below its minimum: those groups keep their own values.
        let g = groups_of(
            &[Some("2147000123"), Some("5")],
            DimKind::Int4,
            1_000_000,
            0,
        )
        .unwrap();
        assert_eq!(
            (
                g[0].bounds.lo.as_str(),
                g[0].bounds.hi.as_str(),
                g[0].bounds.slot
            ),
            ("'0'", "'1000000'", Some(0))
        );
        assert_eq!(
            (
                g[1].bounds.lo.as_str(),
                g[1].bounds.hi.as_str(),
                g[1].bounds.slot
            ),
            ("'2147000123'", "'2147000123'", None)
        );
        let g = groups_of(&[Some("-32768")], DimKind::Int2, 10_000, 0).unwrap();
        assert_eq!(
            (g[0].bounds.lo.as_str(), g[0].bounds.slot),
            ("'-32768'", None)
        );
    }

    fn target(name: &str, ty: &str) -> Target {
        Target {
            name: name.into(),
            column: format!("\"{name}\""),
            type_name: format!("\"pg_catalog\".\"{ty}\""),
            display_type: ty.into(),
            eq_op: Some(EQ.into()),
            limit: None,
            always_identity: false,
            type_oid: 0,
            binary: false,
        }
    }

    fn mapping(identity: ReplicaIdentity) -> Mapping {
        Mapping {
            local_oid: pg_sys::Oid::from(1u32),
            qualified: "\"public\".\"t\"".into(),
            display: "public.t".into(),
            cols: vec![Some(target("id", "int4")), None, Some(target("v", "text"))],
            key: vec![0],
            identity,
            dims: vec![],
            hypertable: false,
            open_dim: None,
            ancestors: vec![],
            partitioned: false,
            by_all_columns: false,
            owner: pg_sys::InvalidOid,
            triggers: false,
            unique_elsewhere: false,
        }
    }

    fn text(v: &str) -> Datum {
        Datum::Text(Bytes::from(v.to_string()))
    }

    #[test]
    fn run_statements() {
        let m = mapping(ReplicaIdentity::Default);
        let (sql, n) = update_run_sql(&m, &[true, false, true], &[]);
        assert_eq!(
            sql,
            format!(
                "UPDATE \"public\".\"t\" AS t SET \"id\" = CAST(u.s1 AS \"pg_catalog\".\"int4\"), \
                 \"v\" = CAST(u.s2 AS \"pg_catalog\".\"text\") \
                 FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int4[]), \
                 pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[]), \
                 pg_catalog.unnest($4::pg_catalog.text[])) AS u(n, s1, s2, k3) \
                 WHERE t.\"id\" {EQ} CAST(u.k3 AS \"pg_catalog\".\"int4\") RETURNING u.n"
            )
        );
        assert_eq!(n, 4);
        // Nothing to SET: a no-op assignment still finds the row.
        let (sql, n) = update_run_sql(&m, &[false, false, false], &[]);
        assert!(sql.contains("SET \"id\" = t.\"id\" FROM"), "{sql}");
        assert_eq!(n, 2);
        // A hypertable's dimension is never SET, and guards the row (a miss is a move).
        let mut h = mapping(ReplicaIdentity::Default);
        h.cols[1] = Some(target("ts", "timestamptz"));
        h.dims = vec![1];
        let (sql, n) = update_run_sql(&h, &[true, true, true], &[]);
        assert!(!sql.contains("\"ts\" = CAST"), "{sql}");
        assert!(
            sql.contains(&format!(
                "AND t.\"ts\" {EQ} CAST(u.k4 AS \"pg_catalog\".\"timestamptz\")"
            )),
            "{sql}"
        );
        assert_eq!(n, 5);
        // Planned for one run of a hypertable: its dimension's bounds come last.
        let bounds = || Bounds {
            col: 1,
            lo: "'2024-01-01 00:00:00+00'".into(),
            hi: "'2024-01-02 00:00:00+00'".into(),
            slot: None,
        };
        let (sql, n) = update_run_sql(&h, &[true, true, true], &[bounds()]);
        let between = "AND t.\"ts\" OPERATOR(pg_catalog.>=) CAST('2024-01-01 00:00:00+00' AS \"pg_catalog\".\"timestamptz\") \
                       AND t.\"ts\" OPERATOR(pg_catalog.<=) CAST('2024-01-02 00:00:00+00' AS \"pg_catalog\".\"timestamptz\")";
        assert!(sql.ends_with(&format!("{between} RETURNING u.n")), "{sql}");
        assert_eq!(n, 5);
        h.key = vec![0, 1];
        let sql = delete_run_sql(&h, &[bounds()]);
        assert!(sql.ends_with(between), "{sql}");
        // A chunk interval's edges: its end is not in it.
        let slot = Bounds {
            slot: Some(19723),
            ..bounds()
        };
        let sql = delete_run_sql(&h, &[slot]);
        assert!(
            sql.ends_with(&between.replace("pg_catalog.<=", "pg_catalog.<")),
            "{sql}"
        );
        assert_eq!(
            delete_run_sql(&m, &[]),
            format!(
                "DELETE FROM \"public\".\"t\" AS t USING ROWS FROM (pg_catalog.unnest($1::pg_catalog.text[])) \
                 AS u(k1) WHERE t.\"id\" {EQ} CAST(u.k1 AS \"pg_catalog\".\"int4\")"
            )
        );
    }

    #[test]
    fn which_changes_join_a_run() {
        let m = mapping(ReplicaIdentity::Default);
        let new = TupleData(vec![text("1"), text("x"), text("a")]);
        assert_eq!(run_key(&m, None, &new, true), Some(vec![Bytes::from("1")]));
        // The key changed: applied alone.
        let old = TupleData(vec![text("2"), Datum::Null, Datum::Null]);
        assert_eq!(run_key(&m, Some((OldKind::Key, &old)), &new, true), None);
        // A full old image with the same key joins.
        let same = TupleData(vec![text("1"), text("y"), text("b")]);
        assert!(run_key(&m, Some((OldKind::Full, &same)), &new, true).is_some());
        // Triggers that fire during apply, rows found by all columns, a NULL key: alone.
        let mut t = mapping(ReplicaIdentity::Default);
        t.triggers = true;
        assert_eq!(run_key(&t, None, &new, true), None);
        let mut f = mapping(ReplicaIdentity::Full);
        f.by_all_columns = true;
        assert_eq!(run_key(&f, None, &new, true), None);
        let null_key = TupleData(vec![Datum::Null, text("x"), text("a")]);
        assert_eq!(run_key(&m, None, &null_key, true), None);
        // A key column without an equality operator cannot be joined on.
        let mut j = mapping(ReplicaIdentity::Default);
        j.cols[0].as_mut().unwrap().eq_op = None;
        assert_eq!(run_key(&j, None, &new, true), None);
        // Unique columns besides the key: UPDATEs one at a time, DELETEs still in runs.
        let mut u = mapping(ReplicaIdentity::Default);
        u.unique_elsewhere = true;
        assert_eq!(run_key(&u, None, &new, true), None);
        assert!(run_key(&u, None, &new, false).is_some());
    }

    #[test]
    fn insert_statement() {
        assert_eq!(
            insert_sql(&mapping(ReplicaIdentity::Default)),
            "INSERT INTO \"public\".\"t\" (\"id\", \"v\") OVERRIDING SYSTEM VALUE SELECT \
             CAST(pg_catalog.unnest($1::pg_catalog.text[]) AS \"pg_catalog\".\"int4\"), \
             CAST(pg_catalog.unnest($2::pg_catalog.text[]) AS \"pg_catalog\".\"text\")"
        );
    }

    #[test]
    fn update_and_delete_statements() {
        let m = mapping(ReplicaIdentity::Default);
        let (sql, n) = update_sql(&m, &[true, false, true], &[]);
        assert_eq!(
            sql,
            format!(
                "UPDATE \"public\".\"t\" SET \"id\" = CAST($1 AS \"pg_catalog\".\"int4\"), \
                 \"v\" = CAST($2 AS \"pg_catalog\".\"text\") \
                 WHERE \"id\" {EQ} CAST($3 AS \"pg_catalog\".\"int4\")"
            )
        );
        assert_eq!(n, 3);
        let (sql, n) = update_sql(&m, &[false, false, true], &[]);
        assert!(sql.contains(&format!(
            "SET \"v\" = CAST($1 AS \"pg_catalog\".\"text\") WHERE \"id\" {EQ} CAST($2 AS \"pg_catalog\".\"int4\")"
        )));
        assert_eq!(n, 2);
        assert_eq!(
            delete_sql(&m, &[]).0,
            format!("DELETE FROM \"public\".\"t\" WHERE \"id\" {EQ} CAST($1 AS \"pg_catalog\".\"int4\")")
        );
        // FULL without a target key: every column, by equality (an index can serve it),
        // NULLs by IS NULL, a type without equality by its text, exactly one row.
        let mut full = mapping(ReplicaIdentity::Full);
        full.by_all_columns = true;
        full.key = vec![0, 2];
        full.cols[2].as_mut().unwrap().eq_op = None;
        let (sql, n) = delete_sql(&full, &[false, false]);
        assert!(
            sql.contains(&format!(
                "WHERE \"id\" {EQ} CAST($1 AS \"pg_catalog\".\"int4\") AND \"v\"::pg_catalog.text \
             OPERATOR(pg_catalog.=) CAST($2 AS \"pg_catalog\".\"text\")::pg_catalog.text LIMIT 1"
            )),
            "{sql}"
        );
        assert_eq!(n, 2);
        let (sql, _) = delete_sql(&full, &[true, false]);
        assert!(sql.contains("WHERE \"id\" IS NULL AND"), "{sql}");
    }

    #[test]
    fn value_limits_name_the_column() {
        let mut m = mapping(ReplicaIdentity::Default);
        m.cols[2].as_mut().unwrap().limit = Some(Limit::Chars(3));
        m.cols[2].as_mut().unwrap().display_type = "character varying(3)".into();
        let v = m.cols[2].as_ref().unwrap();
        assert!(check_limit(&m, v, b"abc").is_ok());
        let e = check_limit(&m, v, b"abcd").unwrap_err().to_string();
        assert_eq!(
            e,
            "value too long for type character varying(3), for replication target relation \"public.t\" column \"v\""
        );
    }

    #[test]
    fn hypertable_updates_guard_dimensions_and_move_rows() {
        let mut m = mapping(ReplicaIdentity::Default);
        m.cols[1] = Some(target("ts", "timestamptz"));
        m.dims = vec![1];
        // ts not in the key: guarded by a single "unchanged" predicate, never SET.
        let (sql, n) = update_sql(&m, &[true, true, true], &[]);
        assert_eq!(
            sql,
            format!(
                "UPDATE \"public\".\"t\" SET \"id\" = CAST($1 AS \"pg_catalog\".\"int4\"), \
                 \"v\" = CAST($2 AS \"pg_catalog\".\"text\") \
                 WHERE \"id\" {EQ} CAST($3 AS \"pg_catalog\".\"int4\") \
                 AND \"ts\" {EQ} CAST($4 AS \"pg_catalog\".\"timestamptz\")"
            )
        );
        assert_eq!(n, 4);
        // ts in the key: no guard (a change is seen in the old key image instead).
        m.key = vec![0, 1];
        let (sql, n) = update_sql(&m, &[true, true, true], &[]);
        // Exactly one predicate on the dimension (two trip a TimescaleDB planner bug with
        // generic plans: "variable not found in subplan target list").
        assert_eq!(sql.matches("\"ts\" OPERATOR").count(), 1, "{sql}");
        assert!(!sql.contains("SET \"ts\""), "{sql}");
        assert_eq!(n, 4);
        assert!(guard_dims(&m, &[true, true, true]).is_empty());
    }
}
