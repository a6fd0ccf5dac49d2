-- livesync 0.2.0 -> 0.3.0 (issue 9, first part): the progress of each table's copy.
--
-- livesync.sync_rel records when the last copy started, the source's estimates of its rows
-- and size, and what it loaded (set by the commit of the copy); while a copy runs, its
-- counts come from shared memory through livesync._copy_progress(). The view
-- livesync.subscription_rel gains the columns API.md names, after its existing ones.
ALTER TABLE livesync.sync_rel
    ADD COLUMN copy_started_at  timestamptz,
    ADD COLUMN approximate_rows bigint,
    ADD COLUMN approximate_size bigint,
    ADD COLUMN rows_copied      bigint,
    ADD COLUMN bytes_copied     bigint;

CREATE FUNCTION livesync."_copy_progress"() RETURNS TABLE (
	"subid" INT,
	"rrelid" oid,
	"rows_copied" bigint,
	"bytes_copied" bigint
)
STRICT VOLATILE
SET search_path TO pg_catalog
LANGUAGE c
AS 'MODULE_PATHNAME', 'copy_progress_wrapper';

CREATE OR REPLACE VIEW livesync.subscription_rel AS
SELECT s.subname, r.schemaname, r.tablename, r.rrelid, r.state, r.lsn,
       r.last_error, r.last_error_time, r.sync_lsn,
       r.srcschema, r.srcname,
       CASE WHEN r.state = 'd' THEN p.rows_copied ELSE r.rows_copied END AS rows_copied,
       r.approximate_rows,
       CASE WHEN r.state = 'd' THEN p.bytes_copied ELSE r.bytes_copied END AS bytes_copied,
       r.approximate_size,
       r.copy_started_at,
       -- now + elapsed * rows to go / rows done, while a copy runs and the source's
       -- estimate is known.
       CASE WHEN r.state = 'd' AND p.rows_copied > 0 AND r.approximate_rows > 0
            THEN now() + (now() - r.copy_started_at)
                 * (greatest(r.approximate_rows - p.rows_copied, 0)::float8 / p.rows_copied)
       END AS copy_eta
  FROM livesync.sync s JOIN livesync.sync_rel r USING (subid)
  LEFT JOIN livesync._copy_progress() p ON p.subid = r.subid AND p.rrelid = r.rrelid;
