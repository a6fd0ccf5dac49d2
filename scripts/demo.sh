#!/usr/bin/env bash
# The body of `make demo`: a source and a target cluster on this machine, sample time-series
# data, and livesync keeping a TimescaleDB hypertable on the target in sync with the source.
#
#   scripts/demo.sh          start (or reuse) both clusters and run the demo; re-runnable
#   scripts/demo.sh stop     stop both clusters
#   scripts/demo.sh clean    stop both clusters and delete their data
#
# Assumes scripts/setup.sh ran and livesync is installed (`cargo pgrx install`), as the
# Makefile arranges. The servers run as the `postgres` OS user when this runs as root.
#
# PG=17 or PG=18 runs both servers on that major, in the chroot scripts/pgchroot.sh made
# (this machine has only PostgreSQL 15); paths below are as the servers see them, and
# $ROOT$path is the same file here.
set -euo pipefail

PG=${PG:-15}
PG_BIN=/usr/lib/postgresql/$PG/bin
ROOT=
# 15 is this machine's; 17 and 18 are the chroots' (the Makefile and the tests agree).
if [ "$PG" != 15 ]; then
  ROOT=${LIVESYNC_SETUP_DIR:-/var/tmp/livesync-setup}/pg$PG/root
  [ -x "$ROOT$PG_BIN/postgres" ] || { echo "demo: PostgreSQL $PG is not set up: PG=$PG make demo" >&2; exit 1; }
fi
if [ "$PG" = 15 ]; then DEMO_DIR=${LIVESYNC_DEMO_DIR:-/tmp/livesync-demo}
else DEMO_DIR=${LIVESYNC_DEMO_DIR:-/tmp/livesync-demo-pg$PG}; fi
SRC_PORT=${LIVESYNC_DEMO_SOURCE_PORT:-54321}
TGT_PORT=${LIVESYNC_DEMO_TARGET_PORT:-54322}
DB=demo
SUB=livesync

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

# A server program, as the postgres OS user; a client program. (In the chroot when there.)
as_pg() {
  local prog=$PG_BIN/$1; shift
  if [ -n "$ROOT" ]; then
    chroot --userspec="$(chroot "$ROOT" id -u postgres):$(chroot "$ROOT" id -g postgres)" "$ROOT" "$prog" "$@"
  elif [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$prog" "$@"; else "$prog" "$@"; fi
}
client() {
  local prog=$PG_BIN/$1; shift
  if [ -n "$ROOT" ]; then chroot "$ROOT" "$prog" "$@"; else "$prog" "$@"; fi
}
psql_at() { # port db args...
  local port=$1 db=$2; shift 2
  client psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}
src() { psql_at "$SRC_PORT" "$DB" "$@"; }
tgt() { psql_at "$TGT_PORT" "$DB" "$@"; }
src_val() { psql_at "$SRC_PORT" "$DB" -At -c "$1"; }
tgt_val() { psql_at "$TGT_PORT" "$DB" -At -c "$1"; }

running() { as_pg pg_ctl status -D "$DEMO_DIR/$1/data" >/dev/null 2>&1; }

stop_cluster() {
  if running "$1"; then
    as_pg pg_ctl stop -D "$DEMO_DIR/$1/data" -m fast -w >/dev/null
    echo "stopped $1"
  fi
}

# ensure_cluster NAME PORT KIND: create once, start if not running.
ensure_cluster() {
  local name=$1 port=$2 kind=$3 dir=$DEMO_DIR/$1
  if [ ! -f "$ROOT$dir/data/PG_VERSION" ]; then
    rm -rf "$ROOT$dir"
    mkdir -p "$ROOT$dir"
    if [ -n "$ROOT" ]; then chroot "$ROOT" chown postgres: "$DEMO_DIR" "$dir";
    elif [ "$(id -u)" = 0 ]; then chown postgres: "$DEMO_DIR" "$dir"; fi
    as_pg initdb -D "$dir/data" --auth=trust -E UTF8 --locale=C -U postgres \
      --no-instructions >/dev/null
    {
      echo "# --- livesync demo ---"
      echo "port = $port"
      echo "listen_addresses = '127.0.0.1'"
      echo "unix_socket_directories = '$dir'"
      echo "wal_level = logical"
      echo "max_replication_slots = 20"
      echo "max_wal_senders = 20"
      echo "timezone = 'UTC'"
      if [ "$kind" = target ]; then
        echo "shared_preload_libraries = 'timescaledb,livesync'"
        echo "max_worker_processes = 32"
        echo "timescaledb.telemetry_level = off"
      fi
    } >>"$ROOT$dir/data/postgresql.conf"
  fi
  # A target that runs an older livesync library than the one installed since: restart it
  # (the library is preloaded, so only a restart loads the new one).
  local so=$ROOT/usr/lib/postgresql/$PG/lib/livesync.so
  if running "$name" && [ "$kind" = target ] && [ "$so" -nt "$ROOT$dir/data/postmaster.pid" ]; then
    as_pg pg_ctl stop -D "$dir/data" -m fast -w >/dev/null
    echo "$name: restarting it for the livesync library installed since it started"
  fi
  if running "$name"; then
    echo "$name: already running on port $port (reused)"
  else
    if ! as_pg pg_ctl start -D "$dir/data" -l "$dir/server.log" -w -t 60 >/dev/null; then
      tail -20 "$ROOT$dir/server.log" >&2
      die "could not start the $name cluster (log: $ROOT$dir/server.log)"
    fi
    echo "$name: started on port $port (log: $ROOT$dir/server.log)"
  fi
}

case "${1:-start}" in
  stop)
    stop_cluster target
    stop_cluster source
    exit 0
    ;;
  clean)
    stop_cluster target
    stop_cluster source
    rm -rf "$ROOT$DEMO_DIR"
    echo "removed $ROOT$DEMO_DIR"
    exit 0
    ;;
  start | "") ;;
  *) die "usage: $0 [start|stop|clean]" ;;
esac

[ -x "$ROOT$PG_BIN/initdb" ] || die "PostgreSQL $PG not found in $ROOT$PG_BIN (run PG=$PG make demo)"
libdir=$ROOT$(client pg_config --pkglibdir)
[ -f "$libdir/timescaledb.so" ] || die "TimescaleDB is not installed (run PG=$PG make setup)"
[ -f "$libdir/livesync.so" ] || die "livesync is not installed for PostgreSQL $PG: PG=$PG make install"

mkdir -p "$ROOT$DEMO_DIR"
chmod 755 "$ROOT$DEMO_DIR"
say "Clusters (PostgreSQL $PG): source on 127.0.0.1:$SRC_PORT, target on 127.0.0.1:$TGT_PORT ($ROOT$DEMO_DIR)"
ensure_cluster source "$SRC_PORT" source
ensure_cluster target "$TGT_PORT" target

say "Resetting the demo databases (re-runnable)"
if [ "$(psql_at "$TGT_PORT" postgres -At -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" = 1 ]; then
  # Drop the earlier run's syncs first (DROP EXTENSION drops them and their slots on the
  # source, whatever livesync version the earlier run installed).
  tgt -c "DROP EXTENSION IF EXISTS livesync" ||
    echo "(could not drop the earlier syncs; continuing)"
  psql_at "$TGT_PORT" postgres -c "DROP DATABASE $DB WITH (FORCE)"
fi
# Any slot left behind by an earlier run would keep WAL forever.
psql_at "$SRC_PORT" postgres -At -c "
  SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
   WHERE slot_name LIKE '$SUB%' AND active_pid IS NOT NULL" >/dev/null
sleep 0.5
psql_at "$SRC_PORT" postgres -At -c "
  SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
   WHERE slot_name LIKE '$SUB%' AND NOT active" >/dev/null
psql_at "$SRC_PORT" postgres -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)"
psql_at "$SRC_PORT" postgres -c "CREATE DATABASE $DB"
psql_at "$TGT_PORT" postgres -c "CREATE DATABASE $DB"

say "Source: sample time-series data and publication 'analytics'"
src <<'SQL'
CREATE TABLE devices (id int PRIMARY KEY, name text NOT NULL, site text);
CREATE TABLE metrics (
    ts     timestamptz NOT NULL,
    device int NOT NULL,
    value  double precision,
    PRIMARY KEY (device, ts)
);
INSERT INTO devices SELECT g, 'sensor-' || g, CASE WHEN g % 2 = 0 THEN 'north' ELSE 'south' END
  FROM generate_series(1, 50) g;
-- 100,000 readings: 50 devices every 5 minutes over ~7 days
INSERT INTO metrics
SELECT date_trunc('hour', now()) - interval '7 days' + (g / 50) * interval '5 minutes',
       g % 50 + 1,
       round((20 + 10 * sin(g / 500.0) + random())::numeric, 3)
  FROM generate_series(0, 99999) g;
CREATE PUBLICATION analytics FOR TABLE metrics, devices;
ANALYZE metrics, devices;   -- so that the copy progress knows how many rows to expect
SQL
src -c "SELECT (SELECT count(*) FROM metrics) AS metrics_rows, (SELECT count(*) FROM devices) AS devices_rows"

say "Target: TimescaleDB and livesync only; livesync creates the tables (mapped to schema 'analytics', metrics as a hypertable)"
tgt -c "SET client_min_messages = warning; CREATE EXTENSION IF NOT EXISTS timescaledb"
tgt -c "CREATE EXTENSION livesync"
MAP='[{"source": {"schema": "public"}, "target": {"schema": "analytics"}},
      {"source": {"schema": "public", "table": "metrics"}, "target": {"schema": "analytics", "table": "metrics"},
       "hypertable": {"time_column": "ts", "chunk_interval": "1 day"}}]'
START="SELECT livesync_start(source => 'postgres://postgres@127.0.0.1:$SRC_PORT/$DB', publication => 'analytics',
                      subscription => '$SUB', create_tables => true, table_map => '$MAP')"
echo "$START;"
tgt -c "$START"

say "Initial copy: livesync.subscription_rel (i queued, d copying, f copied, s catching up, r ready)"
deadline=$((SECONDS + 180))
last=""
while :; do
  states=$(tgt_val "SELECT coalesce(string_agg(format('%s.%s=%s (%s of ~%s rows)', schemaname, tablename, state,
                                                     coalesce(rows_copied, 0), coalesce(approximate_rows::text, '?')),
                                              ' ' ORDER BY tablename), '(none yet)')
                     FROM livesync.subscription_rel WHERE subname = '$SUB'")
  [ "$states" != "$last" ] && printf '  %5ss  %s\n' "$SECONDS" "$states" && last=$states
  notready=$(tgt_val "SELECT count(*) FILTER (WHERE state <> 'r') + (count(*) = 0)::int
                        FROM livesync.subscription_rel WHERE subname = '$SUB'")
  [ "$notready" = 0 ] && break
  if [ $SECONDS -ge $deadline ]; then
    tgt -c "SELECT * FROM livesync.subscription"
    die "tables not ready after 180 s (target log: $ROOT$DEMO_DIR/target/server.log)"
  fi
  sleep 1
done
tgt -c "SELECT srcschema || '.' || srcname AS source_table, schemaname || '.' || tablename AS target_table,
               state, rows_copied, approximate_rows, bytes_copied, copy_started_at
          FROM livesync.subscription_rel WHERE subname = '$SUB' ORDER BY 1"
tgt -c "SELECT hypertable_schema, hypertable_name, num_chunks FROM timescaledb_information.hypertables"

# wait_synced: until applied_lsn has reached the source's current WAL position.
wait_synced() {
  local lsn deadline=$((SECONDS + 60))
  lsn=$(src_val "SELECT pg_current_wal_lsn()")
  until [ "$(tgt_val "SELECT applied_lsn >= '$lsn' FROM livesync.subscription WHERE subname = '$SUB'")" = t ]; do
    [ $SECONDS -ge $deadline ] && die "target did not catch up to $lsn within 60 s"
    sleep 0.2
  done
}
compare() {
  for t in metrics devices; do
    local q="SELECT count(*) || ' rows, md5 ' || md5(coalesce(string_agg(x::text, E'\n' ORDER BY x::text), '')) FROM"
    printf '  %-18s source: %s\n  %-18s target: %s\n' "public.$t" "$(src_val "$q public.$t x")" \
      "analytics.$t" "$(tgt_val "$q analytics.$t x")"
  done
}
wait_synced
compare
tgt -c "SELECT (SELECT count(*) FROM ONLY analytics.metrics) AS rows_in_root,
               (SELECT count(*) FROM show_chunks('analytics.metrics')) AS chunks,
               (SELECT count(*) FROM analytics.metrics) AS rows_in_chunks"

say "Live changes on the source"
src -e <<'SQL'
INSERT INTO devices VALUES (51, 'sensor-51', 'east');
INSERT INTO metrics SELECT now() + g * interval '1 minute', 51, 42.0 + g FROM generate_series(1, 10) g;
-- a reading far in the future: the target gets a new chunk for it
INSERT INTO metrics VALUES (now() + interval '30 days', 1, 99.9);
UPDATE metrics SET value = -1 WHERE device = 2 AND ts = (SELECT max(ts) FROM metrics WHERE device = 2 AND ts < now());
DELETE FROM metrics WHERE device = 3 AND ts < (SELECT min(ts) + interval '1 hour' FROM metrics WHERE device = 3);
UPDATE devices SET name = 'sensor-2 (recalibrated)' WHERE id = 2;
SQL
t0=$SECONDS
wait_synced
echo "  target caught up in about $((SECONDS - t0)) s"
tgt -c "SELECT * FROM analytics.metrics WHERE device = 51 ORDER BY ts LIMIT 5"
tgt -c "SELECT * FROM analytics.devices WHERE id IN (2, 51) ORDER BY id"
compare
tgt -c "SELECT (SELECT count(*) FROM ONLY analytics.metrics) AS rows_in_root,
               (SELECT count(*) FROM show_chunks('analytics.metrics')) AS chunks"
say "Lag and health, as a monitoring system scrapes them"
tgt -c "SELECT subname, enabled, lag_bytes, lag_seconds, last_commit_time, last_error,
               apply_error_count, copy_error_count, tables, tables_ready
          FROM livesync.subscription"

say "Done. The sync keeps running."
cat <<EOF
Connect:
  source:  psql -h 127.0.0.1 -p $SRC_PORT -U postgres $DB
  target:  psql -h 127.0.0.1 -p $TGT_PORT -U postgres $DB
Try on the source:  INSERT INTO metrics VALUES (now(), 7, 1.5);
Watch the target:   SELECT * FROM livesync.subscription_rel;  SELECT * FROM livesync.subscription;
                    SELECT count(*) FROM ONLY analytics.metrics;  -- always 0: rows live in chunks
Pause / resume:     SELECT livesync_stop('$SUB');  SELECT livesync_start(source => 'postgres://postgres@127.0.0.1:$SRC_PORT/$DB', publication => 'analytics', subscription => '$SUB');
Copy one again:     SELECT livesync_resync('$SUB', 'analytics.devices');
Stop the clusters:  PG=$PG make demo-stop      (delete everything: PG=$PG scripts/demo.sh clean)
EOF
