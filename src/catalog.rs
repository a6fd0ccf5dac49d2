//! The catalog: the only code that reads or writes the `livesync.*` tables.
//!
//! `livesync.sync` holds one row per sync (its source connection string, publication,
//! whether it is enabled, its options, the transaction to skip, its error and conflict
//! counters); `livesync.sync_rel` one row per published table with its state
//! (see [`crate::state`]) and the column its copy is sliced on; `livesync.copy_range` the
//! slices of each table's copy and the parts of them that are loaded, with the snapshot
//! each was read under (see [`crate::slices`]). Every function here runs inside the caller's transaction, so a
//! state change commits together with whatever data the caller wrote.

use crate::lsn;
use crate::state::TableState;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiResult;

#[derive(Debug, Clone)]
pub struct SyncRow {
    pub subid: i32,
    pub subname: String,
    pub source: String,
    pub publication: String,
    pub enabled: bool,
    pub copy_data: bool,
    pub slot_created: bool,
    pub options: SyncOptions,
    /// `livesync_skip`: the finish LSN of the one source transaction to skip.
    pub skip_lsn: Option<u64>,
}

/// What `livesync_start` / `livesync_alter` set beyond source and publication (API.md).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncOptions {
    /// The table map, as JSON text (`crate::tablemap`).
    pub table_map: String,
    pub create_tables: bool,
    pub add_columns: bool,
    pub disable_on_error: bool,
}

impl SyncOptions {
    /// The parsed table map (it was checked when it was stored).
    pub fn map(&self) -> crate::tablemap::TableMap {
        crate::tablemap::TableMap::parse(&self.table_map).unwrap_or_default()
    }
}

/// The counters of `livesync.subscription` a worker adds to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    ApplyError,
    CopyError,
    InsertExists,
    UpdateExists,
    UpdateMissing,
    DeleteMissing,
}

impl Counter {
    fn column(self) -> &'static str {
        match self {
            Counter::ApplyError => "apply_error_count",
            Counter::CopyError => "copy_error_count",
            Counter::InsertExists => "insert_exists",
            Counter::UpdateExists => "update_exists",
            Counter::UpdateMissing => "update_missing",
            Counter::DeleteMissing => "delete_missing",
        }
    }
}

/// Add `n` to one of the sync's counters.
pub fn count(subid: i32, counter: Counter, n: u64) -> SpiResult<()> {
    if n == 0 {
        return Ok(());
    }
    let col = counter.column();
    run(
        &format!(
            "UPDATE livesync.sync SET {col} = {col} OPERATOR(pg_catalog.+) $2 WHERE subid OPERATOR(pg_catalog.=) $1"
        ),
        &[subid.into(), (n as i64).into()],
    )
    .map(drop)
}

#[derive(Debug, Clone)]
pub struct RelRow {
    pub rrelid: u32,
    pub srcschema: String,
    pub srcname: String,
    pub schemaname: String,
    pub tablename: String,
    pub state: TableState,
    /// The source LSN at which the copy became consistent.
    pub lsn: Option<u64>,
    /// The position up to which the table-sync worker applied changes (state s).
    pub sync_lsn: Option<u64>,
    /// The apply worker's position the table-sync worker must reach (state f).
    pub catchup_lsn: Option<u64>,
}

impl RelRow {
    pub fn qualified_target(&self) -> String {
        format!("{}.{}", self.schemaname, self.tablename)
    }
}

/// The options are read through the row's JSON form, so that a catalog of an older version
/// (before `ALTER EXTENSION livesync UPDATE`) still reads, with default options: DROP
/// EXTENSION must work then too.
const SYNC_COLS: &str =
    "subid, subname::pg_catalog.text, source, publication, enabled, copy_data, slot_created, \
     pg_catalog.jsonb_extract_path(pg_catalog.to_jsonb(s), 'table_map')::pg_catalog.text, \
     pg_catalog.jsonb_extract_path_text(pg_catalog.to_jsonb(s), 'create_tables')::pg_catalog.bool, \
     pg_catalog.jsonb_extract_path_text(pg_catalog.to_jsonb(s), 'add_columns')::pg_catalog.bool, \
     pg_catalog.jsonb_extract_path_text(pg_catalog.to_jsonb(s), 'disable_on_error')::pg_catalog.bool, \
     pg_catalog.jsonb_extract_path_text(pg_catalog.to_jsonb(s), 'skip_lsn')";
const REL_COLS: &str = "rrelid, srcschema::pg_catalog.text, srcname::pg_catalog.text, schemaname::pg_catalog.text, \
     tablename::pg_catalog.text, state::pg_catalog.text, lsn::pg_catalog.text, sync_lsn::pg_catalog.text, catchup_lsn::pg_catalog.text";

fn sync_query(where_clause: &str, args: &[DatumWithOid]) -> SpiResult<Vec<SyncRow>> {
    Spi::connect(|client| {
        let sql =
            format!("SELECT {SYNC_COLS} FROM livesync.sync s WHERE {where_clause} ORDER BY subid");
        let mut out = Vec::new();
        for row in client.select(&sql, None, args)? {
            out.push(SyncRow {
                subid: row.get(1)?.unwrap_or_default(),
                subname: row.get(2)?.unwrap_or_default(),
                source: row.get(3)?.unwrap_or_default(),
                publication: row.get(4)?.unwrap_or_default(),
                enabled: row.get(5)?.unwrap_or_default(),
                copy_data: row.get(6)?.unwrap_or_default(),
                slot_created: row.get(7)?.unwrap_or_default(),
                options: SyncOptions {
                    table_map: row.get(8)?.unwrap_or_else(|| "[]".into()),
                    create_tables: row.get(9)?.unwrap_or_default(),
                    add_columns: row.get(10)?.unwrap_or_default(),
                    disable_on_error: row.get(11)?.unwrap_or_default(),
                },
                skip_lsn: opt_lsn(row.get(12)?),
            });
        }
        Ok(out)
    })
}

pub fn sync_by_name(name: &str) -> SpiResult<Option<SyncRow>> {
    Ok(
        sync_query("subname OPERATOR(pg_catalog.=) $1", &[name.into()])?
            .into_iter()
            .next(),
    )
}

pub fn sync_by_id(subid: i32) -> SpiResult<Option<SyncRow>> {
    Ok(
        sync_query("subid OPERATOR(pg_catalog.=) $1", &[subid.into()])?
            .into_iter()
            .next(),
    )
}

pub fn all_syncs() -> SpiResult<Vec<SyncRow>> {
    sync_query("true", &[])
}

fn run(sql: &str, args: &[DatumWithOid]) -> SpiResult<usize> {
    Spi::connect_mut(|client| Ok(client.update(sql, None, args)?.len()))
}

pub fn insert_sync(
    name: &str,
    source: &str,
    publication: &str,
    copy_data: bool,
    slot_created: bool,
    options: &SyncOptions,
) -> SpiResult<i32> {
    Spi::connect_mut(|client| {
        let row = client
            .update(
                "INSERT INTO livesync.sync (subname, source, publication, copy_data, slot_created, \
                                            table_map, create_tables, add_columns, disable_on_error) \
                 VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.jsonb, $7, $8, $9) RETURNING subid",
                None,
                &[
                    name.into(),
                    source.into(),
                    publication.into(),
                    copy_data.into(),
                    slot_created.into(),
                    options.table_map.as_str().into(),
                    options.create_tables.into(),
                    options.add_columns.into(),
                    options.disable_on_error.into(),
                ],
            )?
            .first()
            .get_one::<i32>()?;
        Ok(row.unwrap_or_default())
    })
}

pub fn set_enabled(subid: i32, enabled: bool) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync SET enabled = $2 WHERE subid OPERATOR(pg_catalog.=) $1",
        &[subid.into(), enabled.into()],
    )
    .map(drop)
}

pub fn set_source(subid: i32, source: &str) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync SET source = $2 WHERE subid OPERATOR(pg_catalog.=) $1",
        &[subid.into(), source.into()],
    )
    .map(drop)
}

pub fn set_options(subid: i32, o: &SyncOptions) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync SET table_map = $2::pg_catalog.jsonb, create_tables = $3, \
                add_columns = $4, disable_on_error = $5 WHERE subid OPERATOR(pg_catalog.=) $1",
        &[
            subid.into(),
            o.table_map.as_str().into(),
            o.create_tables.into(),
            o.add_columns.into(),
            o.disable_on_error.into(),
        ],
    )
    .map(drop)
}

/// Set (or with `None`, clear) the transaction `livesync_skip` skips. Clearing names the
/// LSN it clears, so that a newer `livesync_skip` is kept.
pub fn set_skip_lsn(subid: i32, lsn: Option<u64>) -> SpiResult<()> {
    match lsn {
        Some(l) => run(
            "UPDATE livesync.sync SET skip_lsn = $2::pg_catalog.pg_lsn WHERE subid OPERATOR(pg_catalog.=) $1",
            &[subid.into(), crate::lsn::format(l).as_str().into()],
        ),
        None => run(
            "UPDATE livesync.sync SET skip_lsn = NULL WHERE subid OPERATOR(pg_catalog.=) $1",
            &[subid.into()],
        ),
    }
    .map(drop)
}

pub fn clear_skip_lsn(subid: i32, lsn: u64) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync SET skip_lsn = NULL WHERE subid OPERATOR(pg_catalog.=) $1 \
            AND skip_lsn OPERATOR(pg_catalog.=) $2::pg_catalog.pg_lsn",
        &[subid.into(), crate::lsn::format(lsn).as_str().into()],
    )
    .map(drop)
}

/// Point a table at another target (the table map changed).
pub fn set_rel_target(subid: i32, relid: u32, schema: &str, name: &str) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync_rel SET schemaname = $3, tablename = $4 \
          WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[subid.into(), oid(relid), schema.into(), name.into()],
    )
    .map(drop)
}

pub fn set_slot_created(subid: i32) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync SET slot_created = true WHERE subid OPERATOR(pg_catalog.=) $1",
        &[subid.into()],
    )
    .map(drop)
}

pub fn delete_sync(subid: i32) -> SpiResult<()> {
    // (Absent from a catalog older than 0.4.0, which DROP EXTENSION may meet.)
    if Spi::get_one::<bool>("SELECT pg_catalog.to_regclass('livesync.copy_range') IS NOT NULL")?
        .unwrap_or(false)
    {
        run(
            "DELETE FROM livesync.copy_range WHERE subid OPERATOR(pg_catalog.=) $1",
            &[subid.into()],
        )?;
    }
    run(
        "DELETE FROM livesync.sync_rel WHERE subid OPERATOR(pg_catalog.=) $1",
        &[subid.into()],
    )?;
    run(
        "DELETE FROM livesync.sync WHERE subid OPERATOR(pg_catalog.=) $1",
        &[subid.into()],
    )
    .map(drop)
}

/// Record (or with `None`, clear) the sync's last error.
pub fn set_sync_error(subid: i32, error: Option<&str>) -> SpiResult<()> {
    match error {
        Some(e) => run(
            "UPDATE livesync.sync SET last_error = $2, last_error_time = pg_catalog.now() WHERE subid OPERATOR(pg_catalog.=) $1",
            &[subid.into(), e.into()],
        ),
        None => run(
            "UPDATE livesync.sync SET last_error = NULL, last_error_time = NULL \
             WHERE subid OPERATOR(pg_catalog.=) $1 AND last_error IS NOT NULL",
            &[subid.into()],
        ),
    }
    .map(drop)
}

fn opt_lsn(s: Option<String>) -> Option<u64> {
    s.and_then(|s| lsn::parse(&s))
}

fn rel_query(where_clause: &str, args: &[DatumWithOid]) -> SpiResult<Vec<RelRow>> {
    Spi::connect(|client| {
        let sql = format!(
            "SELECT {REL_COLS} FROM livesync.sync_rel WHERE {where_clause} ORDER BY added_at, rrelid"
        );
        let mut out = Vec::new();
        for row in client.select(&sql, None, args)? {
            let state: String = row.get(6)?.unwrap_or_default();
            out.push(RelRow {
                rrelid: row
                    .get::<pg_sys::Oid>(1)?
                    .map(|o| o.to_u32())
                    .unwrap_or_default(),
                srcschema: row.get(2)?.unwrap_or_default(),
                srcname: row.get(3)?.unwrap_or_default(),
                schemaname: row.get(4)?.unwrap_or_default(),
                tablename: row.get(5)?.unwrap_or_default(),
                state: state
                    .chars()
                    .next()
                    .and_then(TableState::from_char)
                    .unwrap_or(TableState::Init),
                lsn: opt_lsn(row.get(7)?),
                sync_lsn: opt_lsn(row.get(8)?),
                catchup_lsn: opt_lsn(row.get(9)?),
            });
        }
        Ok(out)
    })
}

fn oid(relid: u32) -> DatumWithOid<'static> {
    pg_sys::Oid::from(relid).into()
}

pub fn rels(subid: i32) -> SpiResult<Vec<RelRow>> {
    rel_query("subid OPERATOR(pg_catalog.=) $1", &[subid.into()])
}

pub fn rel(subid: i32, relid: u32) -> SpiResult<Option<RelRow>> {
    Ok(rel_query(
        "subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[subid.into(), oid(relid)],
    )?
    .into_iter()
    .next())
}

/// Add a published table (`source` schema and name) synced into `target`.
pub fn insert_rel(
    subid: i32,
    relid: u32,
    source: (&str, &str),
    target: (&str, &str),
    state: TableState,
) -> SpiResult<()> {
    run(
        "INSERT INTO livesync.sync_rel (subid, rrelid, srcschema, srcname, schemaname, tablename, state) \
         VALUES ($1, $2, $3, $4, $5, $6, $7::pg_catalog.\"char\") ON CONFLICT DO NOTHING",
        &[
            subid.into(),
            oid(relid),
            source.0.into(),
            source.1.into(),
            target.0.into(),
            target.1.into(),
            state.as_char().to_string().into(),
        ],
    )
    .map(drop)
}

/// The tables of a sync that sync into the target table `target_oid` (several, when
/// the source's chunks or a map send several tables there).
pub fn rels_into(subid: i32, target_oid: pg_sys::Oid) -> SpiResult<Vec<RelRow>> {
    rel_query(
        "subid OPERATOR(pg_catalog.=) $1 AND pg_catalog.to_regclass(pg_catalog.quote_ident(schemaname) \
           OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(tablename)) \
           OPERATOR(pg_catalog.=) $2::pg_catalog.regclass",
        &[subid.into(), target_oid.into()],
    )
}

/// The other syncs of this database with tables that sync into the target table
/// `target_oid`.
pub fn other_syncs_into(subid: i32, target_oid: pg_sys::Oid) -> SpiResult<Vec<String>> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(
            "SELECT DISTINCT s.subname::pg_catalog.text FROM livesync.sync_rel r \
               JOIN livesync.sync s ON s.subid OPERATOR(pg_catalog.=) r.subid \
              WHERE r.subid OPERATOR(pg_catalog.<>) $1 \
                AND pg_catalog.to_regclass(pg_catalog.quote_ident(r.schemaname) \
                    OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(r.tablename)) \
                    OPERATOR(pg_catalog.=) $2::pg_catalog.regclass",
            None,
            &[subid.into(), target_oid.into()],
        )? {
            if let Some(n) = row.get::<String>(1)? {
                out.push(n);
            }
        }
        Ok(out)
    })
}

/// Does another table (of any sync in this database) sync into the same target table?
pub fn target_shared(subid: i32, relid: u32) -> SpiResult<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM livesync.sync_rel a JOIN livesync.sync_rel b \
                 ON a.schemaname OPERATOR(pg_catalog.=) b.schemaname \
                AND a.tablename OPERATOR(pg_catalog.=) b.tablename \
                AND NOT (a.subid OPERATOR(pg_catalog.=) b.subid AND a.rrelid OPERATOR(pg_catalog.=) b.rrelid) \
              WHERE a.subid OPERATOR(pg_catalog.=) $1 AND a.rrelid OPERATOR(pg_catalog.=) $2)",
        &[subid.into(), oid(relid)],
    )?
    .unwrap_or(false))
}

/// Of the target tables of `leaving` tables (target schema, name), those whose rows the
/// copy of a joining table (target `schema`.`name`) brings again, because the two are in
/// one partition tree on the target: a leaving partition under the joining table, or the
/// joining table itself when it is a partition of a leaving one. This is what a
/// `publish_via_partition_root` switch does: the root replaces its leaves in the
/// publication, or the leaves their root, and the rows are already on the target.
pub fn overlapping_targets(
    schema: &str,
    name: &str,
    leaving: &[(String, String)],
) -> SpiResult<Vec<u32>> {
    let mut out: Vec<u32> = Vec::new();
    Spi::connect(|client| {
        for (us, un) in leaving {
            let rows = client.select(
                "WITH t AS (SELECT c.oid FROM pg_catalog.pg_class c \
                              JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                             WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2), \
                      u AS (SELECT c.oid FROM pg_catalog.pg_class c \
                              JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
                             WHERE n.nspname OPERATOR(pg_catalog.=) $3 AND c.relname OPERATOR(pg_catalog.=) $4) \
                 SELECT u.oid::pg_catalog.int8 FROM t, u \
                  WHERE u.oid OPERATOR(pg_catalog.=) ANY (SELECT relid FROM pg_catalog.pg_partition_tree(t.oid)) \
                 UNION \
                 SELECT t.oid::pg_catalog.int8 FROM t, u \
                  WHERE t.oid OPERATOR(pg_catalog.=) ANY (SELECT relid FROM pg_catalog.pg_partition_tree(u.oid))",
                None,
                &[
                    schema.into(),
                    name.into(),
                    us.as_str().into(),
                    un.as_str().into(),
                ],
            )?;
            for row in rows {
                if let Some(o) = row.get::<i64>(1)? {
                    if !out.contains(&(o as u32)) {
                        out.push(o as u32);
                    }
                }
            }
        }
        SpiResult::Ok(())
    })?;
    Ok(out)
}

/// Record the target tables a table's copy must empty first (see [`overlapping_targets`]).
pub fn set_rel_replaces(subid: i32, relid: u32, targets: &[u32]) -> SpiResult<()> {
    let list = format!(
        "{{{}}}",
        targets
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    run(
        "UPDATE livesync.sync_rel SET replaces = $3::pg_catalog.text::pg_catalog.oid[] WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[subid.into(), oid(relid), list.into()],
    )
    .map(drop)
}

/// The target tables (as SQL names) a table's copy empties first, those that still exist.
pub fn rel_replaces(subid: i32, relid: u32) -> SpiResult<Vec<String>> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(
            "SELECT c.oid::pg_catalog.regclass::pg_catalog.text FROM livesync.sync_rel r \
               CROSS JOIN LATERAL pg_catalog.unnest(r.replaces) AS u(oid) \
               JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) u.oid \
              WHERE r.subid OPERATOR(pg_catalog.=) $1 AND r.rrelid OPERATOR(pg_catalog.=) $2",
            None,
            &[subid.into(), oid(relid)],
        )? {
            if let Some(t) = row.get::<String>(1)? {
                out.push(t);
            }
        }
        Ok(out)
    })
}

pub fn delete_rel(subid: i32, relid: u32) -> SpiResult<()> {
    clear_slices(subid, relid)?;
    run(
        "DELETE FROM livesync.sync_rel WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[subid.into(), oid(relid)],
    )
    .map(drop)
}

/// Move a table to `state`; `lsn` (when given) becomes the copy's consistent LSN.
/// Send a copied table (state f, or d with parts loaded) back to a fresh copy, because
/// what its catch-up needs is gone (its table-sync slot was dropped or invalidated): state i, and the next copy empties
/// the target table first, in its own transaction (see [`rel_replaces`]), so that no row is
/// doubled. `why` is shown as the table's last error.
pub fn restart_rel_copy(subid: i32, relid: u32, why: &str) -> SpiResult<()> {
    debug_assert!(TableState::FinishedCopy.can_become(TableState::Init));
    run(
        "UPDATE livesync.sync_rel r SET state = 'i', lsn = NULL, sync_lsn = NULL, catchup_lsn = NULL, \
           replaces = (SELECT pg_catalog.array_agg(DISTINCT o) FROM pg_catalog.unnest( \
               pg_catalog.array_append(r.replaces, pg_catalog.to_regclass( \
                 pg_catalog.quote_ident(r.schemaname) OPERATOR(pg_catalog.||) '.' \
                 OPERATOR(pg_catalog.||) pg_catalog.quote_ident(r.tablename))::pg_catalog.oid)) AS u(o) \
               WHERE o IS NOT NULL), \
           last_error = $3, last_error_time = pg_catalog.now() \
         WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2 AND (state OPERATOR(pg_catalog.=) 'd' OR state OPERATOR(pg_catalog.=) 'f')",
        &[subid.into(), oid(relid), why.into()],
    )?;
    clear_slices(subid, relid)
}

/// `livesync_resync`: the table is copied again from scratch (its target was emptied by
/// the caller, in the same transaction).
pub fn resync_rel(subid: i32, relid: u32) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync_rel SET state = 'i', lsn = NULL, sync_lsn = NULL, catchup_lsn = NULL, \
                replaces = NULL, last_error = NULL, last_error_time = NULL, copy_started_at = NULL, \
                rows_copied = NULL, bytes_copied = NULL, copy_key = NULL, copy_key_type = NULL \
          WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[subid.into(), oid(relid)],
    )?;
    clear_slices(subid, relid)
}

/// An apply error that only this table can fix (its target lacks a column, or the table
/// itself) holds the table at `lsn` while the others go on: state f, as after a copy that
/// became consistent at `lsn`, so that a table-sync worker applies its changes from there
/// once the error is fixed, and hands it back as after any copy.
pub fn hold_rel(subid: i32, relid: u32, lsn: u64, why: &str) -> SpiResult<()> {
    debug_assert!(TableState::Ready.can_become(TableState::FinishedCopy));
    run(
        "UPDATE livesync.sync_rel SET state = 'f', lsn = $3::pg_catalog.pg_lsn, sync_lsn = NULL, \
                catchup_lsn = NULL, last_error = $4, last_error_time = pg_catalog.now() \
          WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2 \
            AND state OPERATOR(pg_catalog.=) 'r'",
        &[
            subid.into(),
            oid(relid),
            crate::lsn::format(lsn).as_str().into(),
            why.into(),
        ],
    )?;
    clear_slices(subid, relid)
}

pub fn set_rel_state(
    subid: i32,
    relid: u32,
    state: TableState,
    copy_lsn: Option<u64>,
) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync_rel SET state = $3::pg_catalog.\"char\", \
           lsn = COALESCE($4::pg_catalog.pg_lsn, lsn), catchup_lsn = NULL, \
           last_error = NULL, last_error_time = NULL \
         WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[
            subid.into(),
            oid(relid),
            state.as_char().to_string().into(),
            copy_lsn.map(lsn::format).into(),
        ],
    )
    .map(drop)
}

/// A copy starts: when, and the source's estimates of what it will copy. Its counts so far
/// are in shared memory until [`set_copy_done`].
pub fn set_copy_started(
    subid: i32,
    relid: u32,
    approximate_rows: Option<i64>,
    approximate_size: Option<i64>,
) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync_rel SET copy_started_at = pg_catalog.clock_timestamp(), \
           approximate_rows = $3, approximate_size = $4, rows_copied = NULL, bytes_copied = NULL \
         WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[
            subid.into(),
            oid(relid),
            approximate_rows.into(),
            approximate_size.into(),
        ],
    )
    .map(drop)
}

/// What a copy loaded, recorded by the transaction that commits it.
pub fn set_copy_done(subid: i32, relid: u32, rows: u64, bytes: u64) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync_rel SET rows_copied = $3, bytes_copied = $4 \
         WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[
            subid.into(),
            oid(relid),
            (rows as i64).into(),
            (bytes as i64).into(),
        ],
    )
    .map(drop)
}

/// f -> s, but only while the apply worker still waits at `catchup` (it may have given up
/// and moved on, in which case the table-sync worker must wait for a new position).
pub fn set_rel_syncdone(subid: i32, relid: u32, sync_lsn: u64, catchup: u64) -> SpiResult<bool> {
    Ok(run(
        "UPDATE livesync.sync_rel SET state = 's', sync_lsn = $3::pg_catalog.pg_lsn, catchup_lsn = NULL \
         WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2 AND state OPERATOR(pg_catalog.=) 'f' AND catchup_lsn OPERATOR(pg_catalog.=) $4::pg_catalog.pg_lsn",
        &[
            subid.into(),
            oid(relid),
            lsn::format(sync_lsn).into(),
            lsn::format(catchup).into(),
        ],
    )? == 1)
}

pub fn set_catchup(subid: i32, relid: u32, catchup: Option<u64>) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync_rel SET catchup_lsn = $3::pg_catalog.pg_lsn WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[subid.into(), oid(relid), catchup.map(lsn::format).into()],
    )
    .map(drop)
}

pub fn clear_all_catchups(subid: i32) -> SpiResult<()> {
    run(
        "UPDATE livesync.sync_rel SET catchup_lsn = NULL WHERE subid OPERATOR(pg_catalog.=) $1 AND catchup_lsn IS NOT NULL",
        &[subid.into()],
    )
    .map(drop)
}

/// Record a table's error unless it is the one already recorded; count it when new (an
/// error met again at every refresh is one error).
pub fn note_rel_error(subid: i32, relid: u32, error: &str) -> SpiResult<()> {
    let changed = run(
        "UPDATE livesync.sync_rel SET last_error = $3, last_error_time = pg_catalog.now() \
         WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2 \
           AND last_error IS DISTINCT FROM $3",
        &[subid.into(), oid(relid), error.into()],
    )?;
    count(subid, Counter::CopyError, changed as u64)
}

/// Record a table's error (a failed copy or catch-up), and count it.
pub fn set_rel_error(subid: i32, relid: u32, error: &str) -> SpiResult<()> {
    count(subid, Counter::CopyError, 1)?;
    run(
        "UPDATE livesync.sync_rel SET last_error = $3, last_error_time = pg_catalog.now() \
         WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[subid.into(), oid(relid), error.into()],
    )
    .map(drop)
}

/// The version of the extension's SQL objects installed in this database (None: not
/// installed). Workers run only when it is this library's version: between installing a
/// new library and `ALTER EXTENSION livesync UPDATE` they wait.
pub fn installed_version() -> SpiResult<Option<String>> {
    Spi::get_one::<String>(
        "SELECT extversion::pg_catalog.text FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'livesync'",
    )
}

/// This library's version.
pub const LIBRARY_VERSION: &str = env!("CARGO_PKG_VERSION");

/// (subid, subname, enabled) of every sync: columns every version of the catalog has, for
/// the launcher's probe at server start (before an `ALTER EXTENSION ... UPDATE`).
pub fn sync_states() -> SpiResult<Vec<(i32, String, bool)>> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(
            "SELECT subid, subname::pg_catalog.text, enabled FROM livesync.sync ORDER BY subid",
            None,
            &[],
        )? {
            out.push((
                row.get(1)?.unwrap_or_default(),
                row.get(2)?.unwrap_or_default(),
                row.get(3)?.unwrap_or_default(),
            ));
        }
        Ok(out)
    })
}

/// Is the extension installed in the current database?
pub fn extension_installed() -> SpiResult<bool> {
    Ok(Spi::get_one::<bool>(
        "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'livesync')",
    )?
    .unwrap_or(false))
}

/// Names of the replication origins livesync uses (origins are cluster-wide, so the
/// database oid is part of the name).
pub fn apply_origin_name(dboid: u32, subid: i32) -> String {
    format!("livesync_{dboid}_{subid}")
}

pub fn tablesync_origin_name(dboid: u32, subid: i32, relid: u32) -> String {
    format!("livesync_{dboid}_{subid}_{relid}")
}

/// Slot names on the source all start with the sync's name (API contract).
pub fn tablesync_slot_name(subname: &str, relid: u32) -> String {
    format!("{subname}_sync_{relid}")
}

/// One slice of a table's copy still to load: keys in [lo, hi) of the source table's
/// leading key column (None: unbounded).
#[derive(Debug, Clone, PartialEq)]
pub struct PendingSlice {
    pub sliceno: i32,
    pub lo: Option<String>,
    pub hi: Option<String>,
}

/// A part of a table's copy that is loaded: keys in [lo, hi), read under the source
/// snapshot taken at `lsn`.
#[derive(Debug, Clone, PartialEq)]
pub struct DoneRange {
    pub lo: Option<String>,
    pub hi: Option<String>,
    pub lsn: u64,
}

/// Forget a table's slices (its copy starts over, or it left the sync).
pub fn clear_slices(subid: i32, relid: u32) -> SpiResult<()> {
    run(
        "DELETE FROM livesync.copy_range WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[subid.into(), oid(relid)],
    )
    .map(drop)
}

/// Record a new copy's slices, split at `bounds` (ascending): slice i covers
/// [bounds[i-1], bounds[i]), the first and last unbounded below and above.
/// `key` is the column (and its type) the slices are ranges of, None for a table copied
/// as one slice.
pub fn plan_slices(
    subid: i32,
    relid: u32,
    bounds: &[String],
    key: Option<(&str, u32)>,
) -> SpiResult<()> {
    clear_slices(subid, relid)?;
    run(
        "UPDATE livesync.sync_rel SET copy_key = $3, copy_key_type = $4 \
          WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[
            subid.into(),
            oid(relid),
            key.map(|k| k.0.to_owned()).into(),
            key.map(|k| pg_sys::Oid::from(k.1)).into(),
        ],
    )?;
    for i in 0..=bounds.len() {
        let lo = i.checked_sub(1).map(|j| bounds[j].clone());
        let hi = bounds.get(i).cloned();
        run(
            "INSERT INTO livesync.copy_range (subid, rrelid, sliceno, lo, hi) VALUES ($1, $2, $3, $4, $5)",
            &[subid.into(), oid(relid), (i as i32).into(), lo.into(), hi.into()],
        )?;
    }
    Ok(())
}

/// Does the table have a plan of slices (a copy under way or done)?
pub fn has_slices(subid: i32, relid: u32) -> SpiResult<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT 1 FROM livesync.copy_range WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2)",
        &[subid.into(), oid(relid)],
    )?
    .unwrap_or(false))
}

/// The slices (or the rest of them) still to load, in order.
pub fn pending_slices(subid: i32, relid: u32) -> SpiResult<Vec<PendingSlice>> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(
            "SELECT sliceno, lo, hi FROM livesync.copy_range \
              WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2 AND lsn IS NULL \
              ORDER BY sliceno",
            None,
            &[subid.into(), oid(relid)],
        )? {
            out.push(PendingSlice {
                sliceno: row.get(1)?.unwrap_or_default(),
                lo: row.get(2)?,
                hi: row.get(3)?,
            });
        }
        Ok(out)
    })
}

/// Every loaded part of a table's copy.
pub fn done_ranges(subid: i32, relid: u32) -> SpiResult<Vec<DoneRange>> {
    Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(
            "SELECT lo, hi, lsn::pg_catalog.text FROM livesync.copy_range \
              WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2 AND lsn IS NOT NULL",
            None,
            &[subid.into(), oid(relid)],
        )? {
            let l: Option<String> = row.get(3)?;
            out.push(DoneRange {
                lo: row.get(1)?,
                hi: row.get(2)?,
                lsn: l.as_deref().and_then(lsn::parse).unwrap_or(0),
            });
        }
        Ok(out)
    })
}

/// A loader commits keys [lo, cut) of a slice (cut None: the slice's end) that it read
/// under the snapshot at `lsn`: `rows` rows, `bytes` bytes of COPY data. Returns false if
/// the slice's pending part no longer starts at `lo` (someone else loaded it: the caller
/// must roll back).
#[allow(clippy::too_many_arguments)]
pub fn commit_slice_part(
    subid: i32,
    relid: u32,
    sliceno: i32,
    lo: Option<&str>,
    cut: Option<&str>,
    lsn: u64,
    rows: u64,
    bytes: u64,
) -> SpiResult<bool> {
    let args = |extra: Vec<DatumWithOid<'static>>| {
        let mut a: Vec<DatumWithOid<'static>> = vec![
            subid.into(),
            oid(relid),
            sliceno.into(),
            lo.map(str::to_owned).into(),
        ];
        a.extend(extra);
        a
    };
    let matched = match cut {
        // The slice's last part: its pending row becomes that part.
        None => run(
            "UPDATE livesync.copy_range SET lsn = $5::pg_catalog.pg_lsn, rows = $6, bytes = $7, \
                    done_at = pg_catalog.clock_timestamp() \
              WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2 \
                AND sliceno OPERATOR(pg_catalog.=) $3 AND lsn IS NULL AND (lo OPERATOR(pg_catalog.=) $4 OR (lo IS NULL AND $4 IS NULL))",
            &args(vec![
                lsn::format(lsn).into(),
                (rows as i64).into(),
                (bytes as i64).into(),
            ]),
        )?,
        // A part: the pending row now starts at the cut, and the part gets a row of its own.
        Some(cut) => {
            let n = run(
                "UPDATE livesync.copy_range SET lo = $5 \
                  WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2 \
                    AND sliceno OPERATOR(pg_catalog.=) $3 AND lsn IS NULL AND (lo OPERATOR(pg_catalog.=) $4 OR (lo IS NULL AND $4 IS NULL))",
                &args(vec![cut.to_owned().into()]),
            )?;
            if n == 1 {
                run(
                    "INSERT INTO livesync.copy_range (subid, rrelid, sliceno, lo, hi, lsn, rows, bytes, done_at) \
                     VALUES ($1, $2, $3, $4, $5, $6::pg_catalog.pg_lsn, $7, $8, pg_catalog.clock_timestamp())",
                    &args(vec![
                        cut.to_owned().into(),
                        lsn::format(lsn).into(),
                        (rows as i64).into(),
                        (bytes as i64).into(),
                    ]),
                )?;
            }
            n
        }
    };
    Ok(matched == 1)
}

/// Rows and bytes of every loaded part of a table's copy.
pub fn copy_totals(subid: i32, relid: u32) -> SpiResult<(u64, u64)> {
    let (r, b) = Spi::get_two_with_args::<i64, i64>(
        "SELECT pg_catalog.sum(rows)::pg_catalog.int8, pg_catalog.sum(bytes)::pg_catalog.int8 FROM livesync.copy_range \
          WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2 AND lsn IS NOT NULL",
        &[subid.into(), oid(relid)],
    )?;
    Ok((r.unwrap_or(0) as u64, b.unwrap_or(0) as u64))
}

/// The column (and its type) a table's copy was sliced on.
pub fn copy_key(subid: i32, relid: u32) -> SpiResult<Option<(String, u32)>> {
    let (k, t) = Spi::get_two_with_args::<String, pg_sys::Oid>(
        "SELECT copy_key::pg_catalog.text, copy_key_type FROM livesync.sync_rel \
          WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2",
        &[subid.into(), oid(relid)],
    )?;
    Ok(k.zip(t).map(|(k, t)| (k, t.to_u32())))
}

/// The consistent LSN of a table's copy in progress (state d), its row locked against
/// changes until the transaction ends; None when no copy is in progress.
pub fn copy_plan_lsn(subid: i32, relid: u32) -> SpiResult<Option<u64>> {
    Spi::connect_mut(|client| {
        let mut rows = client.update(
            "SELECT lsn::pg_catalog.text FROM livesync.sync_rel \
              WHERE subid OPERATOR(pg_catalog.=) $1 AND rrelid OPERATOR(pg_catalog.=) $2 \
                AND state OPERATOR(pg_catalog.=) 'd' FOR SHARE",
            None,
            &[subid.into(), oid(relid)],
        )?;
        match rows.next() {
            Some(row) => Ok(row.get::<String>(1)?.as_deref().and_then(lsn::parse)),
            None => Ok(None),
        }
    })
}

/// A sync and one of its tables, as a worker of that table loads them at its start.
pub fn sync_and_rel(subid: i32, relid: u32) -> SpiResult<Option<(SyncRow, RelRow)>> {
    let Some(sub) = sync_by_id(subid)? else {
        return Ok(None);
    };
    Ok(rel(subid, relid)?.map(|r| (sub, r)))
}
