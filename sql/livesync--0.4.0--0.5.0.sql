-- livesync 0.4.0 -> 0.5.0 (issue 10): operate it like Timescale's Livesync, and further.
--
-- livesync.sync gains the sync's options (table_map, create_tables, add_columns,
-- disable_on_error), the transaction livesync_skip skips (skip_lsn), and error and conflict
-- counters. livesync_start takes the options; livesync_resync, livesync_skip and
-- livesync_sync_sequences are new. livesync._status() reports the source commit time of
-- the last applied transaction, from which livesync.subscription computes lag_seconds;
-- livesync.subscription also shows a failing table's error and counts its tables, and
-- livesync.subscription_rel gains pubname, target_schema and target_table at its end.
ALTER TABLE livesync.sync
    ADD COLUMN table_map        jsonb NOT NULL DEFAULT '[]',
    ADD COLUMN create_tables    boolean NOT NULL DEFAULT false,
    ADD COLUMN add_columns      boolean NOT NULL DEFAULT false,
    ADD COLUMN disable_on_error boolean NOT NULL DEFAULT false,
    ADD COLUMN skip_lsn         pg_lsn,
    ADD COLUMN apply_error_count bigint NOT NULL DEFAULT 0,
    ADD COLUMN copy_error_count  bigint NOT NULL DEFAULT 0,
    ADD COLUMN insert_exists     bigint NOT NULL DEFAULT 0,
    ADD COLUMN update_exists     bigint NOT NULL DEFAULT 0,
    ADD COLUMN update_missing    bigint NOT NULL DEFAULT 0,
    ADD COLUMN delete_missing    bigint NOT NULL DEFAULT 0;

DROP VIEW _ts_live_sync.subscription_rel;
DROP VIEW livesync.subscription_rel;
DROP VIEW livesync.subscription;
DROP FUNCTION livesync."_status"();
DROP FUNCTION livesync_start(text, text, text, boolean);

CREATE  FUNCTION "livesync_start"(
	"source" TEXT, /* Option < & str > */
	"publication" TEXT, /* Option < & str > */
	"subscription" TEXT DEFAULT 'livesync', /* Option < & str > */
	"copy_data" bool DEFAULT true, /* Option < bool > */
	"table_map" jsonb DEFAULT NULL, /* Option < pgrx :: JsonB > */
	"create_tables" bool DEFAULT false, /* Option < bool > */
	"add_columns" bool DEFAULT false, /* Option < bool > */
	"disable_on_error" bool DEFAULT false /* Option < bool > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'livesync_start_wrapper';

CREATE  FUNCTION "livesync_sync_sequences"(
	"subscription" TEXT DEFAULT 'livesync' /* Option < & str > */
) RETURNS INT /* i32 */
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'livesync_sync_sequences_wrapper';

CREATE  FUNCTION livesync."_skip"(
	"subscription" TEXT, /* Option < & str > */
	"lsn" TEXT /* Option < & str > */
) RETURNS void
VOLATILE PARALLEL UNSAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'skip_fn_wrapper';

CREATE  FUNCTION livesync."_status"() RETURNS TABLE (
	"subid" INT,  /* i32 */
	"pid" INT,  /* Option < i32 > */
	"received_lsn" TEXT,  /* Option < String > */
	"applied_lsn" TEXT,  /* Option < String > */
	"source_end_lsn" TEXT,  /* Option < String > */
	"last_msg_time" timestamp with time zone,  /* Option < pgrx :: datum :: TimestampWithTimeZone > */
	"last_commit_time" timestamp with time zone  /* Option < pgrx :: datum :: TimestampWithTimeZone > */
)
STRICT VOLATILE SECURITY DEFINER 
SET search_path TO pg_catalog
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'status_wrapper';

CREATE  FUNCTION livesync."_resync"(
	"subscription" TEXT, /* Option < & str > */
	"target_table" oid /* Option < pg_sys :: Oid > */
) RETURNS void
VOLATILE PARALLEL UNSAFE 
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'resync_fn_wrapper';

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

GRANT SELECT ON livesync.subscription_rel, _ts_live_sync.subscription_rel, livesync.subscription TO PUBLIC;
