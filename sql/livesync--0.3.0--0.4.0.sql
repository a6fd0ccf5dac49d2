-- livesync 0.3.0 -> 0.4.0 (issue 9): the initial copy in slices, loaded in parallel and
-- committed as it goes.
--
-- livesync.copy_range records each table's slices and the parts of them that are loaded
-- (with the LSN of the snapshot they were read under); livesync.sync_rel records the
-- column the slices are ranges of. livesync._copy_progress() sums per table and counts
-- its loaders; livesync.subscription_rel adds the committed parts to the live counts and
-- gains slices_done, slices_total and copy_workers at its end.
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
REVOKE ALL ON livesync.copy_range FROM PUBLIC;

ALTER TABLE livesync.sync_rel
    ADD COLUMN copy_key      name,
    ADD COLUMN copy_key_type oid;

DROP VIEW _ts_live_sync.subscription_rel;
DROP VIEW livesync.subscription_rel;
DROP FUNCTION livesync."_copy_progress"();

CREATE FUNCTION livesync."_copy_progress"() RETURNS TABLE (
	"subid" INT,
	"rrelid" oid,
	"rows_copied" bigint,
	"bytes_copied" bigint,
	"loaders" INT
)
STRICT VOLATILE
SET search_path TO pg_catalog
LANGUAGE c
AS 'MODULE_PATHNAME', 'copy_progress_wrapper';

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
       c.slices_done, c.slices_total, coalesce(p.loaders, 0) AS copy_workers
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

GRANT SELECT ON livesync.subscription_rel, _ts_live_sync.subscription_rel TO PUBLIC;
