//! livesync: keep this (target) database in sync with a PostgreSQL source through logical
//! replication, applying every change through SPI statements and COPY, which the server
//! (and TimescaleDB) route, so that rows land in TimescaleDB hypertable chunks.
//!
//! How bytes from the source become rows here:
//!
//! ```text
//!  source walsender --CopyBoth--> source::Connection      (our replication client)
//!        --XLogData bytes-->      pgoutput::Decoder        (bytes -> Message)
//!        --Message-->             worker::apply            (transactions, batching, progress)
//!        --Insert/Update/...-->   apply::Applier           (runs: prepared SPI plans, COPY for INSERTs)
//!        --rows-->                the target table / hypertable chunks
//! ```
//!
//! The initial copy of each table runs in `worker::tablesync` (COPY OUT under the snapshot
//! of a fresh slot, loaded through the same `apply::Applier`), and hands the table over to
//! the apply worker through the states of [`state::TableState`].
//!
//! This file owns the module list, `_PG_init` (GUCs, shared memory, the launcher, the
//! DROP EXTENSION hook) and the extension's SQL objects.

use pgrx::prelude::*;

::pgrx::pg_module_magic!();

pub mod api;
pub mod apply;
pub mod binval;
pub mod catalog;
pub mod copyin;
pub mod copytext;
pub mod error;
pub mod gucs;
pub mod lsn;
pub mod pgoutput;
pub mod pgver;
pub mod relmap;
pub mod remote;
pub mod sequences;
pub mod shmem;
pub mod slices;
pub mod source;
pub mod state;
pub mod tabledef;
pub mod tablemap;
pub mod worker;

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    // SAFETY: a plain read of a backend-global flag set by the postmaster while it loads
    // shared_preload_libraries.
    if !unsafe { pg_sys::process_shared_preload_libraries_in_progress } {
        // Loaded by CREATE EXTENSION or a function call only: no shared memory and no
        // launcher; livesync_start says so with a hint.
        return;
    }
    shmem::init();
    worker::launcher::register();
    api::install_utility_hook();
}

extension_sql!(
    r#"
CREATE SCHEMA livesync;
CREATE SCHEMA _ts_live_sync;

-- One row per sync. "source" may hold a password: only superusers may read this table.
CREATE TABLE livesync.sync (
    subid           serial PRIMARY KEY,
    subname         name NOT NULL UNIQUE,
    source          text NOT NULL,
    publication     text NOT NULL,
    enabled         boolean NOT NULL DEFAULT true,
    copy_data       boolean NOT NULL DEFAULT true,
    slot_created    boolean NOT NULL DEFAULT false,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    last_error_time timestamptz,
    -- Options (livesync_start / livesync_alter; API.md).
    table_map        jsonb NOT NULL DEFAULT '[]',
    create_tables    boolean NOT NULL DEFAULT false,
    add_columns      boolean NOT NULL DEFAULT false,
    disable_on_error boolean NOT NULL DEFAULT false,
    -- livesync_skip: the finish LSN of the one source transaction to skip.
    skip_lsn         pg_lsn,
    -- Errors and the conflicts PostgreSQL 18 counts (pg_stat_subscription_stats).
    apply_error_count bigint NOT NULL DEFAULT 0,
    copy_error_count  bigint NOT NULL DEFAULT 0,
    insert_exists     bigint NOT NULL DEFAULT 0,
    update_exists     bigint NOT NULL DEFAULT 0,
    update_missing    bigint NOT NULL DEFAULT 0,
    delete_missing    bigint NOT NULL DEFAULT 0
);

-- One row per published table of each sync; state as in livesync's src/state.rs.
CREATE TABLE livesync.sync_rel (
    subid           int NOT NULL,
    rrelid          oid NOT NULL,
    srcschema       name NOT NULL,
    srcname         name NOT NULL,
    schemaname      name NOT NULL,
    tablename       name NOT NULL,
    state           "char" NOT NULL DEFAULT 'i' CHECK (state IN ('i', 'd', 'f', 's', 'r')),
    lsn             pg_lsn,
    sync_lsn        pg_lsn,
    catchup_lsn     pg_lsn,
    last_error      text,
    last_error_time timestamptz,
    -- Target tables this table's copy empties first, in its own transaction: they hold
    -- rows the sync wrote through a partition or partition root that left the publication
    -- as this table joined it (a publish_via_partition_root switch); the copy brings them
    -- again.
    replaces        oid[],
    added_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- The last copy: when it started, the source's estimates of what it copies, and what
    -- it loaded (set when it commits; while it runs, shared memory has the counts).
    copy_started_at  timestamptz,
    approximate_rows bigint,
    approximate_size bigint,
    rows_copied      bigint,
    bytes_copied     bigint,
    -- The source column (and its type) the last copy was sliced on (livesync.copy_range).
    copy_key         name,
    copy_key_type    oid,
    PRIMARY KEY (subid, rrelid)
);

-- The slices of each table's copy (see src/worker/tablesync.rs): ranges [lo, hi) of the
-- source table's leading key column (NULL: unbounded; a table without a usable key has one
-- slice). A row with lsn NULL is a slice's part still to load; every other row is a part
-- a loader committed together with its rows, read under the source snapshot taken at lsn.
CREATE TABLE livesync.copy_range (
    subid    int NOT NULL,
    rrelid   oid NOT NULL,
    sliceno  int NOT NULL,
    lo       text,
    hi       text,
    lsn      pg_lsn,
    rows     bigint NOT NULL DEFAULT 0,
    bytes    bigint NOT NULL DEFAULT 0,
    done_at  timestamptz
);
CREATE INDEX ON livesync.copy_range (subid, rrelid, sliceno);

REVOKE ALL ON livesync.sync, livesync.sync_rel, livesync.copy_range FROM PUBLIC;
"#,
    name = "bootstrap",
    bootstrap
);

extension_sql!(
    r#"
-- SQL wrappers that give the SQL API its argument types (regclass, pg_lsn).
CREATE FUNCTION livesync_resync(subscription text, target_table regclass) RETURNS void
    LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
    AS $$ SELECT livesync._resync($1, $2::pg_catalog.oid) $$;
CREATE FUNCTION livesync_skip(subscription text, lsn pg_lsn) RETURNS void
    LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
    AS $$ SELECT livesync._skip($1, $2::pg_catalog.text) $$;

REVOKE EXECUTE ON FUNCTION livesync_start(text, text, text, boolean, jsonb, boolean, boolean, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION livesync_resync(text, regclass) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION livesync._resync(text, oid) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION livesync_skip(text, pg_lsn) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION livesync._skip(text, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION livesync_sync_sequences(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION livesync_stop(text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION livesync_drop(text, boolean) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION livesync_alter(text, text, jsonb, boolean, boolean, boolean) FROM PUBLIC;

-- The views are built with pg_catalog's functions and operators only: an operator or
-- function planted in another schema (public) never becomes part of them, however well
-- its argument types match. (The script's search_path is restored when it ends.)
SET search_path = pg_catalog, pg_temp;

CREATE VIEW livesync.subscription_rel AS
SELECT s.subname, r.schemaname, r.tablename, r.rrelid, r.state, r.lsn,
       r.last_error, r.last_error_time, r.sync_lsn,
       r.srcschema, r.srcname,
       CASE WHEN r.state = 'd' THEN c.rows + coalesce(p.rows_copied, 0)
            ELSE r.rows_copied END AS rows_copied,
       r.approximate_rows,
       CASE WHEN r.state = 'd' THEN c.bytes + coalesce(p.bytes_copied, 0)
            ELSE r.bytes_copied END AS bytes_copied,
       r.approximate_size,
       r.copy_started_at,
       -- now + elapsed * rows to go / rows done, while a copy runs and the source's
       -- estimate is known.
       CASE WHEN r.state = 'd' AND c.rows + coalesce(p.rows_copied, 0) > 0
                 AND r.approximate_rows > 0
            THEN now() + (now() - r.copy_started_at)
                 * (greatest(r.approximate_rows - c.rows - coalesce(p.rows_copied, 0), 0)::float8
                    / (c.rows + coalesce(p.rows_copied, 0)))
       END AS copy_eta,
       c.slices_done, c.slices_total, coalesce(p.loaders, 0) AS copy_workers,
       -- The original Livesync's names for the same facts.
       s.publication AS pubname, r.schemaname AS target_schema, r.tablename AS target_table
  FROM livesync.sync s JOIN livesync.sync_rel r USING (subid)
  LEFT JOIN LATERAL (
       SELECT coalesce(sum(x.rows) FILTER (WHERE x.lsn IS NOT NULL), 0)::bigint AS rows,
              coalesce(sum(x.bytes) FILTER (WHERE x.lsn IS NOT NULL), 0)::bigint AS bytes,
              (count(DISTINCT x.sliceno) - count(*) FILTER (WHERE x.lsn IS NULL))::int AS slices_done,
              count(DISTINCT x.sliceno)::int AS slices_total
         FROM livesync.copy_range x
        WHERE x.subid = r.subid AND x.rrelid = r.rrelid) c ON true
  LEFT JOIN livesync._copy_progress() p ON p.subid = r.subid AND p.rrelid = r.rrelid;

CREATE VIEW _ts_live_sync.subscription_rel AS
SELECT subname, schemaname, tablename, rrelid, state, lsn FROM livesync.subscription_rel;

CREATE VIEW livesync.subscription AS
SELECT s.subname, s.enabled, s.publication, st.pid,
       st.received_lsn::pg_lsn AS received_lsn,
       st.applied_lsn::pg_lsn AS applied_lsn,
       greatest(st.source_end_lsn::pg_lsn - st.applied_lsn::pg_lsn, 0)::bigint AS lag_bytes,
       -- The sync's own error, else the latest error of one of its tables: a sync with a
       -- table stuck in a failing copy or apply does not look healthy.
       coalesce(s.last_error, t.last_error) AS last_error,
       CASE WHEN s.last_error IS NOT NULL THEN s.last_error_time ELSE t.last_error_time END AS last_error_time,
       st.last_msg_time,
       livesync._redact(s.source) AS source, s.copy_data, s.subid,
       -- Seconds since the source committed the last transaction applied here; 0 when
       -- nothing is left to apply.
       CASE WHEN st.source_end_lsn::pg_lsn <= st.applied_lsn::pg_lsn THEN 0::float8
            ELSE extract(epoch FROM pg_catalog.now() - st.last_commit_time)::float8
       END AS lag_seconds,
       st.last_commit_time,
       s.apply_error_count, s.copy_error_count,
       s.insert_exists, s.update_exists, s.update_missing, s.delete_missing,
       s.skip_lsn, s.disable_on_error, s.create_tables, s.add_columns, s.table_map,
       coalesce(t.tables, 0) AS tables, coalesce(t.tables_ready, 0) AS tables_ready,
       coalesce(t.tables_failing, 0) AS tables_failing
  FROM livesync.sync s
  LEFT JOIN livesync._status() st USING (subid)
  LEFT JOIN LATERAL (
       SELECT count(*)::int AS tables,
              count(*) FILTER (WHERE r.state = 'r')::int AS tables_ready,
              count(*) FILTER (WHERE r.last_error IS NOT NULL)::int AS tables_failing,
              (array_agg('table "' || r.schemaname || '.' || r.tablename || '": ' || r.last_error
                         ORDER BY r.last_error_time DESC) FILTER (WHERE r.last_error IS NOT NULL))[1] AS last_error,
              max(r.last_error_time) AS last_error_time
         FROM livesync.sync_rel r WHERE r.subid = s.subid) t ON true;

GRANT USAGE ON SCHEMA livesync, _ts_live_sync TO PUBLIC;
GRANT SELECT ON livesync.subscription_rel, _ts_live_sync.subscription_rel, livesync.subscription TO PUBLIC;
"#,
    name = "views",
    finalize
);

#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'livesync'"]
    }
}
