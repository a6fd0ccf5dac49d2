-- livesync 0.1.0 -> 0.2.0 (issue 7)
--
-- The SQL API runs with search_path pinned, so that a function or operator a user planted in
-- another schema of the database (for example by ALTER DATABASE ... SET search_path) is never
-- called by livesync's own statements.
ALTER FUNCTION livesync_start(text, text, text, boolean) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION livesync_stop(text) SET search_path TO pg_catalog, pg_temp;
ALTER FUNCTION livesync_drop(text, boolean) SET search_path TO pg_catalog, pg_temp;

-- Change a sync's connection string (credential rotation) without a re-copy.
CREATE FUNCTION livesync_alter(
	"subscription" TEXT,
	"source" TEXT DEFAULT NULL,
	"table_map" jsonb DEFAULT NULL,
	"create_tables" bool DEFAULT NULL,
	"add_columns" bool DEFAULT NULL,
	"disable_on_error" bool DEFAULT NULL
) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'livesync_alter_wrapper';
REVOKE EXECUTE ON FUNCTION livesync_alter(text, text, jsonb, boolean, boolean, boolean) FROM PUBLIC;
