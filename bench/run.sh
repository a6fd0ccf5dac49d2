#!/usr/bin/env bash
# livesync benchmark: livesync versus PostgreSQL's native logical replication, in one run.
#
#   bench/run.sh                    # default sizes: 1100 MB initial copy, 200000-txn backlog
#   BENCH_QUICK=1 bench/run.sh      # smoke test: 50 MB, 20000 txns
#
# Environment:
#   BENCH_COPY_MB   heap size of the source table `big` (pg_relation_size), default 1100
#   BENCH_WORKERS   livesync.max_copy_workers_per_table values to copy with, default "1 2 4"
#   BENCH_TXNS      single-row INSERT transactions in the apply backlog, default 200000
#   BENCH_QUICK=1   BENCH_COPY_MB=50, BENCH_TXNS=20000 (unless set explicitly)
#   BENCH_DIR       where clusters live, default /tmp/livesync-bench (wiped at start)
#   BENCH_PORT      source port, default 55432; the target uses BENCH_PORT+1
#   BENCH_TIMEOUT   seconds any single measurement may take before it is a failure, default 1800
#   BENCH_KEEP=1    leave the clusters running at the end (stop them with pg_ctl -D ... stop)
#   PG_BIN          PostgreSQL 15 binaries, default /usr/lib/postgresql/15/bin
#
# What it does (same source, same table definitions, same row counts on both sides):
#   SOURCE cluster (wal_level=logical) and TARGET cluster (timescaledb,livesync preloaded).
#   1. Initial copy of table `big` (publication p_big):
#        native   CREATE SUBSCRIPTION ... WITH (copy_data = true)     -> plain table
#        pipe     psql -c 'COPY big TO STDOUT' | psql -c 'COPY big FROM STDIN' -> plain, hypertable
#        ls_plain livesync_start(..., 'p_big', 'bench_copy')          -> plain table
#        ls_hyper livesync_start(..., 'p_big', 'bench_copy_ht')       -> hypertable (1 day chunks)
#      livesync once per livesync.max_copy_workers_per_table in BENCH_WORKERS; timed from
#      CREATE/livesync_start to the table's state 'r' (polled every 100 ms), the pipe to its end.
#   2. Apply of a backlog: the three consumers of publication p_ev are created, caught up and
#      stopped (ALTER SUBSCRIPTION ... DISABLE / livesync_stop); pgbench then writes BENCH_TXNS
#      single-row INSERT transactions into `ev` on the source, so every slot holds the same
#      backlog; each consumer is then enabled/started alone and timed until the target table
#      has all rows (count(*) polled every 200 ms).
#   Every target table is checked against the source (count, sum(id), a checksum column).
#   Results: $BENCH_DIR/results.txt (also printed). Server logs: $BENCH_DIR/{source,target}.log
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR=${BENCH_DIR:-/tmp/livesync-bench}
SRC_PORT=${BENCH_PORT:-55432}
TGT_PORT=$((SRC_PORT + 1))
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  BENCH_COPY_MB=${BENCH_COPY_MB:-50}
  BENCH_TXNS=${BENCH_TXNS:-20000}
else
  BENCH_COPY_MB=${BENCH_COPY_MB:-1100}
  BENCH_TXNS=${BENCH_TXNS:-200000}
fi
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1800}
PGBENCH_CLIENTS=4
SRC_CONN="host=127.0.0.1 port=$SRC_PORT dbname=bench user=postgres"
RESULTS=$BENCH_DIR/results.txt
RUN_START=$(date +%s)

log() { printf '\033[1m[bench %s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
# psql PORT DB [args...]: quiet, unaligned, stop on error
q() {
  local port=$1 db=$2; shift 2
  PGOPTIONS= "$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" "$@"
}
src() { q "$SRC_PORT" bench "$@"; }
tgt() { local db=$1; shift; q "$TGT_PORT" "$db" "$@"; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
div() { awk -v a="$1" -v b="$2" -v f="${3:-%.1f}" 'BEGIN { if (b > 0) printf f, a / b; else print "n/a" }'; }

stop_cluster() {  # datadir
  local d=$1
  if [ -f "$d/postmaster.pid" ]; then
    as_pg "$PG_BIN/pg_ctl" -D "$d" -m fast -w -t 60 stop >/dev/null 2>&1 \
      || as_pg "$PG_BIN/pg_ctl" -D "$d" -m immediate -w stop >/dev/null 2>&1 || true
  fi
}

SAMPLER_PID=
cleanup() {
  local rc=$?
  if [ -n "$SAMPLER_PID" ]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi
  if [ "${BENCH_KEEP:-0}" = 1 ]; then
    log "BENCH_KEEP=1: clusters left running (source port $SRC_PORT, target port $TGT_PORT, $BENCH_DIR)"
  else
    stop_cluster "$BENCH_DIR/target"
    stop_cluster "$BENCH_DIR/source"
    rm -rf "$BENCH_DIR/source" "$BENCH_DIR/target"
  fi
  if [ $rc -ne 0 ]; then
    log "exit status $rc; logs: $BENCH_DIR/source.log $BENCH_DIR/target.log"
  fi
}

# ------------------------------------------------------------------------------------------
# Clusters
# ------------------------------------------------------------------------------------------
for p in "$SRC_PORT" "$TGT_PORT"; do
  if (exec 3<>/dev/tcp/127.0.0.1/"$p") 2>/dev/null && [ ! -f "$BENCH_DIR/source/postmaster.pid" ] \
     && [ ! -f "$BENCH_DIR/target/postmaster.pid" ]; then
    die "port $p on 127.0.0.1 is in use by something else; set BENCH_PORT"
  fi
done
# Leftovers of an earlier run (BENCH_KEEP=1 or a crash): stop and remove.
stop_cluster "$BENCH_DIR/target"
stop_cluster "$BENCH_DIR/source"
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"
chmod 755 "$BENCH_DIR"
[ "$(id -u)" = 0 ] && chown postgres: "$BENCH_DIR"
trap cleanup EXIT

COMMON_CONF="
listen_addresses = '127.0.0.1'
unix_socket_directories = '$BENCH_DIR'
max_connections = 100
shared_buffers = 1GB
max_wal_size = 8GB
checkpoint_timeout = 30min
fsync = on
synchronous_commit = on
lc_messages = 'C'
timezone = 'UTC'
log_timezone = 'UTC'
log_line_prefix = '%m [%p] %b %q%u@%d '
log_checkpoints = on
"
SRC_CONF="
port = $SRC_PORT
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
"
TGT_CONF="
port = $TGT_PORT
shared_preload_libraries = 'timescaledb,livesync'
max_worker_processes = 32
timescaledb.telemetry_level = off
"

init_cluster() {  # name extra-conf
  local name=$1 conf=$2 d=$BENCH_DIR/$1
  as_pg "$PG_BIN/initdb" -D "$d" --auth=trust -E UTF8 --locale=C -U postgres --no-instructions \
    >"$BENCH_DIR/initdb-$name.log" 2>&1 || { cat "$BENCH_DIR/initdb-$name.log"; die "initdb $name"; }
  printf '\n# --- livesync bench ---\n%s\n%s\n' "$COMMON_CONF" "$conf" | as_pg tee -a "$d/postgresql.conf" >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$d" -l "$BENCH_DIR/$name.log" -w -t 120 start >/dev/null \
    || { tail -30 "$BENCH_DIR/$name.log"; die "start $name"; }
}
log "starting clusters in $BENCH_DIR (source :$SRC_PORT, target :$TGT_PORT)"
touch "$BENCH_DIR/source.log" "$BENCH_DIR/target.log"
[ "$(id -u)" = 0 ] && chown postgres: "$BENCH_DIR/source.log" "$BENCH_DIR/target.log"
LS_SO=$("$PG_BIN/pg_config" --pkglibdir)/livesync.so
ls_so_id() { stat -c '%s bytes, modified %y' "$LS_SO" | sed 's/\.[0-9]* / /'; }
LS_BUILD=$(ls_so_id)
LS_MD5=$(md5sum "$LS_SO" | cut -c1-12)
if readelf -S "$LS_SO" 2>/dev/null | grep -q '\.debug_info'; then LS_BUILD="$LS_BUILD, md5 $LS_MD5, has .debug_info (debug build?)"
else LS_BUILD="$LS_BUILD, md5 $LS_MD5, no debug info (release build)"; fi
init_cluster source "$SRC_CONF"
init_cluster target "$TGT_CONF"
TGT_POSTMASTER=$(head -1 "$BENCH_DIR/target/postmaster.pid")

# Poll helper, installed in every target database: runs a boolean query every `every` seconds,
# committing between polls (no snapshot held), until true; ERROR after `timeout_s`.
WAIT_PROC="
CREATE PROCEDURE bench_wait(cond text, every float8, timeout_s float8)
LANGUAGE plpgsql AS \$\$
DECLARE ok boolean; t0 timestamptz := clock_timestamp();
BEGIN
  LOOP
    EXECUTE cond INTO ok;
    EXIT WHEN ok;
    IF clock_timestamp() - t0 > make_interval(secs => timeout_s) THEN
      RAISE EXCEPTION 'bench_wait: timed out after % s waiting for: %', timeout_s, cond;
    END IF;
    COMMIT;
    PERFORM pg_sleep(every);
  END LOOP;
END \$\$;"

q "$SRC_PORT" postgres -c "CREATE DATABASE bench"
# Pre-create the three target databases.
for db in native ls_plain ls_hyper; do
  tgt postgres -c "CREATE DATABASE $db"
  tgt "$db" -c "$WAIT_PROC"
done
tgt ls_plain -c "CREATE EXTENSION livesync"
tgt ls_hyper -c "CREATE EXTENSION timescaledb" -c "CREATE EXTENSION livesync" 2>&1 | grep -v '^WARNING\|^HINT\|^$' >&2 || true
tgt ls_hyper -Atc "SELECT 1 FROM pg_extension WHERE extname = 'livesync'" | grep -q 1 || die "CREATE EXTENSION livesync in ls_hyper"

# bench_wait DB COND EVERY  (uses BENCH_TIMEOUT)
bench_wait() { tgt "$1" -c "CALL bench_wait(\$q\$$2\$q\$, $3, $BENCH_TIMEOUT)"; }

# RSS sampler: every 0.5 s, the anonymous/shared RSS of every replication-related child of the
# target postmaster (livesync workers and native logical replication workers).
start_sampler() {  # outfile
  local out=$1
  (
    while :; do
      for p in $(pgrep -P "$TGT_POSTMASTER"); do
        cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || continue
        case "$cmd" in
          *livesync*|*"logical replication"*)
            a=$(awk '/^RssAnon/ {print $2}' "/proc/$p/status" 2>/dev/null)
            s=$(awk '/^RssShmem/ {print $2}' "/proc/$p/status" 2>/dev/null)
            [ -n "$a" ] && printf '%s\t%s\t%s\t%s\t%s\n' "$(date +%s.%N)" "$p" "$a" "$s" "$cmd"
            ;;
        esac
      done
      sleep 0.25
    done
  ) >"$out" 2>/dev/null &
  SAMPLER_PID=$!
}
stop_sampler() { kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true; SAMPLER_PID=; }
# max_rss FILE PATTERN -> "maxAnonMB/firstAnonMB/lastAnonMB" over the processes matching PATTERN
rss_summary() {
  awk -F'\t' -v pat="$2" '$5 ~ pat { if (n == 0) first = $3; last = $3; if ($3 > m) m = $3; n++ }
    END { if (n) printf "%.0f/%.0f/%.0f", first/1024, m/1024, last/1024; else printf "-" }' "$1"
}

livesync_failure() {  # db subname
  log "livesync state in $1:"
  tgt "$1" -c "SELECT * FROM livesync.subscription" -c "SELECT * FROM livesync.subscription_rel" >&2 || true
  log "target log, ERROR/FATAL/PANIC/WARNING lines:"
  grep -E 'ERROR|FATAL|PANIC|WARNING|terminated' "$BENCH_DIR/target.log" | tail -40 >&2 || true
}

# ------------------------------------------------------------------------------------------
# Source data
# ------------------------------------------------------------------------------------------
log "creating source table big (~${BENCH_COPY_MB} MB)"
src -c "CREATE TABLE big (id bigint PRIMARY KEY, ts timestamptz NOT NULL, device int,
                          value double precision, payload text)"
FILL="INSERT INTO big SELECT i, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second',
        (i %% 1000)::int, (i %% 100003) / 7.0, md5(i::text) || md5((i * 7)::text)
      FROM generate_series(%s, %s) i"
src -c "$(printf "$FILL" 1 100000)"
per_row=$(src -c "SELECT pg_relation_size('big') / 100000.0")
BIG_ROWS=$(awk -v mb="$BENCH_COPY_MB" -v r="$per_row" 'BEGIN { printf "%d", mb * 1048576 / r }')
[ "$BIG_ROWS" -gt 100000 ] && src -c "$(printf "$FILL" 100001 "$BIG_ROWS")"
src -c "VACUUM (FREEZE, ANALYZE) big" -c "CHECKPOINT"
BIG_HEAP=$(src -c "SELECT pg_relation_size('big')")
BIG_TOTAL=$(src -c "SELECT pg_total_relation_size('big')")
BIG_HEAP_MB=$(div "$BIG_HEAP" 1048576)
BIG_TOTAL_MB=$(div "$BIG_TOTAL" 1048576)
log "big: $BIG_ROWS rows, heap $BIG_HEAP_MB MB, total (with PK index) $BIG_TOTAL_MB MB"
src -c "CREATE PUBLICATION p_big FOR TABLE big"
CHECK_BIG="SELECT count(*) || '/' || coalesce(sum(id), 0) || '/' || coalesce(sum(hashtext(payload)::bigint), 0)
              || '/' || coalesce(sum(device), 0) || '/' || coalesce(sum(extract(epoch FROM ts))::bigint, 0) FROM big"
SRC_BIG_CHECK=$(src -c "$CHECK_BIG")
src -c "SELECT count(*) FROM big" >/dev/null   # warm the source's cache for every run alike

BIG_DDL_PLAIN="CREATE TABLE big (id bigint PRIMARY KEY, ts timestamptz NOT NULL, device int,
                                 value double precision, payload text)"
BIG_DDL_HYPER="CREATE TABLE big (id bigint, ts timestamptz NOT NULL, device int,
                                 value double precision, payload text, PRIMARY KEY (id, ts));
               SELECT create_hypertable('big', 'ts', chunk_time_interval => interval '1 day');"

declare -A COPY_S COPY_RSS APPLY_S APPLY_RSS STATUS

check_big() {  # db label
  local got; got=$(tgt "$1" -c "$CHECK_BIG")
  if [ "$got" = "$SRC_BIG_CHECK" ]; then STATUS[copy_$2]=ok
  else STATUS[copy_$2]="MISMATCH target=$got source=$SRC_BIG_CHECK"; log "copy $2: ${STATUS[copy_$2]}"; fi
}

# ------------------------------------------------------------------------------------------
# 1. Initial copy
# ------------------------------------------------------------------------------------------
log "copy 1/3: native subscription -> plain table"
tgt native -c "$BIG_DDL_PLAIN"
tgt native -c "CHECKPOINT"; src -c "CHECKPOINT"
start_sampler "$BENCH_DIR/rss-copy-native.tsv"
t0=$(now)
tgt native -c "CREATE SUBSCRIPTION bench_copy_native CONNECTION '$SRC_CONN' PUBLICATION p_big WITH (copy_data = true)"
bench_wait native "SELECT coalesce(bool_and(srsubstate = 'r'), false) FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = 'bench_copy_native'" 0.1
t1=$(now)
stop_sampler
COPY_S[native]=$(elapsed "$t0" "$t1")
COPY_RSS[native]=$(rss_summary "$BENCH_DIR/rss-copy-native.tsv" "logical replication")
check_big native native
tgt native -c "DROP SUBSCRIPTION bench_copy_native"
log "copy native: ${COPY_S[native]} s"

livesync_copy() {  # db label subname ddl workers [binary_copy]
  local db=$1 label=$2 sub=$3 ddl=$4 workers=$5 binary=${6:-on}
  log "copy: livesync -> $label ($workers worker(s) per table, binary_copy $binary)"
  tgt postgres -c "ALTER SYSTEM SET livesync.max_copy_workers_per_table = $workers" \
               -c "ALTER SYSTEM SET livesync.binary_copy = $binary" -c "SELECT pg_reload_conf()" >/dev/null
  tgt "$db" -c "DROP TABLE IF EXISTS big" >/dev/null
  tgt "$db" -c "$ddl" >/dev/null
  tgt "$db" -c "CHECKPOINT"; src -c "CHECKPOINT"
  start_sampler "$BENCH_DIR/rss-copy-$label.tsv"
  t0=$(now)
  tgt "$db" -c "SELECT livesync_start(source => '$SRC_CONN', publication => 'p_big', subscription => '$sub')" >/dev/null
  if ! bench_wait "$db" "SELECT coalesce(bool_and(state = 'r'), false) FROM livesync.subscription_rel WHERE subname = '$sub'" 0.1; then
    stop_sampler; livesync_failure "$db"; die "livesync copy ($label) did not reach state r"
  fi
  t1=$(now)
  stop_sampler
  COPY_S[$label]=$(elapsed "$t0" "$t1")
  COPY_RSS[$label]=$(rss_summary "$BENCH_DIR/rss-copy-$label.tsv" "livesync")
  check_big "$db" "$label"
  tgt "$db" -c "SELECT livesync_drop('$sub')" >/dev/null
  log "copy $label: ${COPY_S[$label]} s"
}

pipe_copy() {  # db label ddl
  local db=$1 label=$2 ddl=$3
  log "copy: psql COPY | psql COPY -> $label"
  tgt "$db" -c "DROP TABLE IF EXISTS big" >/dev/null
  tgt "$db" -c "$ddl" >/dev/null
  tgt "$db" -c "CHECKPOINT"; src -c "CHECKPOINT"
  t0=$(now)
  src -c "COPY big TO STDOUT" | tgt "$db" -c "COPY big FROM STDIN"
  t1=$(now)
  COPY_S[$label]=$(elapsed "$t0" "$t1")
  COPY_RSS[$label]=-
  check_big "$db" "$label"
  log "copy $label: ${COPY_S[$label]} s"
}
# Where a copy's time goes, measured with psql alone: reading the source (COPY TO, into
# /dev/null), the load in text and in binary format, and a hypertable loaded without its
# secondary index, which is built afterwards (as pg_restore does).
declare -A PART_S
timed() {  # label command...
  local label=$1; shift
  local t0; t0=$(now)
  "$@"
  PART_S[$label]=$(elapsed "$t0" "$(now)")
  log "time: $label ${PART_S[$label]} s"
}
read_text() { src -c "COPY big TO STDOUT" >/dev/null; }
read_binary() { src -c "COPY big TO STDOUT (FORMAT binary)" >/dev/null; }
pipe_binary() { src -c "COPY big TO STDOUT (FORMAT binary)" | tgt ls_plain -c "COPY big FROM STDIN (FORMAT binary)"; }
pipe_hyper_noindex() { src -c "COPY big TO STDOUT" | tgt ls_hyper -c "COPY big FROM STDIN"; }
index_after() { tgt ls_hyper -c "CREATE INDEX big_ts_idx ON big (ts DESC)"; }
timed read_text read_text
timed read_binary read_binary
tgt ls_plain -c "DROP TABLE IF EXISTS big" -c "$BIG_DDL_PLAIN" -c "CHECKPOINT"
timed pipe_binary_plain pipe_binary
check_big ls_plain pipe_binary_plain
tgt ls_hyper -c "DROP TABLE IF EXISTS big" >/dev/null
tgt ls_hyper -c "CREATE TABLE big (id bigint, ts timestamptz NOT NULL, device int,
                                   value double precision, payload text, PRIMARY KEY (id, ts));
                 SELECT create_hypertable('big', 'ts', chunk_time_interval => interval '1 day', create_default_indexes => false)" >/dev/null
tgt ls_hyper -c "CHECKPOINT"
timed pipe_hyper_noindex pipe_hyper_noindex
timed index_after index_after
check_big ls_hyper pipe_hyper_noindex

BENCH_WORKERS=${BENCH_WORKERS:-1 2 4}
pipe_copy ls_plain pipe_plain "$BIG_DDL_PLAIN"
pipe_copy ls_hyper pipe_hyper "$BIG_DDL_HYPER"
COPY_KEYS="native pipe_plain pipe_hyper"
for w in $BENCH_WORKERS; do
  livesync_copy ls_plain "livesync_plain_$w" bench_copy "$BIG_DDL_PLAIN" "$w"
  livesync_copy ls_hyper "livesync_hyper_$w" bench_copy_ht "$BIG_DDL_HYPER" "$w"
  COPY_KEYS="$COPY_KEYS livesync_plain_$w livesync_hyper_$w"
done
# The same with the text format (livesync.binary_copy = off), with the default 2 workers.
livesync_copy ls_plain livesync_plain_text bench_copy "$BIG_DDL_PLAIN" 2 off
livesync_copy ls_hyper livesync_hyper_text bench_copy_ht "$BIG_DDL_HYPER" 2 off
COPY_KEYS="$COPY_KEYS livesync_plain_text livesync_hyper_text"
tgt postgres -c "ALTER SYSTEM RESET livesync.max_copy_workers_per_table" \
             -c "ALTER SYSTEM RESET livesync.binary_copy" -c "SELECT pg_reload_conf()" >/dev/null
HYPER_CHUNKS=$(tgt ls_hyper -c "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'big'")
HYPER_ROOT_ROWS=$(tgt ls_hyper -c "SELECT count(*) FROM ONLY big")
[ "$(src -c "SELECT count(*) FROM pg_replication_slots")" = 0 ] || log "WARNING: slots left on the source after the copy runs: $(src -c "SELECT string_agg(slot_name, ',') FROM pg_replication_slots")"

# ------------------------------------------------------------------------------------------
# 2. Apply of a backlog
# ------------------------------------------------------------------------------------------
log "apply: setting up publication p_ev and three stopped consumers"
src -c "CREATE TABLE ev (id bigserial PRIMARY KEY, ts timestamptz NOT NULL, device int, value double precision)" \
    -c "CREATE PUBLICATION p_ev FOR TABLE ev"
EV_DDL_PLAIN="CREATE TABLE ev (id bigint PRIMARY KEY, ts timestamptz NOT NULL, device int, value double precision)"
EV_DDL_HYPER="CREATE TABLE ev (id bigint, ts timestamptz NOT NULL, device int, value double precision, PRIMARY KEY (id, ts));
              SELECT create_hypertable('ev', 'ts', chunk_time_interval => interval '1 day');"
tgt native -c "$EV_DDL_PLAIN"
tgt ls_plain -c "$EV_DDL_PLAIN"
tgt ls_hyper -c "$EV_DDL_HYPER" >/dev/null

tgt native -c "CREATE SUBSCRIPTION bench_ev_native CONNECTION '$SRC_CONN' PUBLICATION p_ev WITH (copy_data = false)"
tgt native -c "ALTER SUBSCRIPTION bench_ev_native DISABLE"
NATIVE_DISABLED_AT=$(tgt native -c "SELECT now()")
for x in "ls_plain bench_ev_plain" "ls_hyper bench_ev_ht"; do
  set -- $x
  tgt "$1" -c "SELECT livesync_start(source => '$SRC_CONN', publication => 'p_ev', subscription => '$2', copy_data => false)" >/dev/null
  bench_wait "$1" "SELECT coalesce(bool_and(state = 'r'), false) AND count(*) = 1 FROM livesync.subscription_rel WHERE subname = '$2'" 0.1 \
    || { livesync_failure "$1"; die "livesync $2 did not become ready"; }
  tgt "$1" -c "SELECT livesync_stop('$2')" >/dev/null
done
# All three slots exist and no walsender holds them.
for i in $(seq 1 300); do
  [ "$(src -c "SELECT count(*) FILTER (WHERE NOT active) || '/' || count(*) FROM pg_replication_slots WHERE slot_name IN ('bench_ev_native', 'bench_ev_plain', 'bench_ev_ht')")" = "3/3" ] && break
  [ "$i" = 300 ] && die "slots not all present and inactive: $(src -c "SELECT string_agg(slot_name || ':' || active, ',') FROM pg_replication_slots")"
  sleep 0.2
done

log "apply: writing the backlog: $BENCH_TXNS single-row INSERT transactions (pgbench, $PGBENCH_CLIENTS clients)"
cat >"$BENCH_DIR/ev.sql" <<'EOF'
\set d random(1, 1000)
INSERT INTO ev (ts, device, value) VALUES (now(), :d, random());
EOF
per_client=$(( (BENCH_TXNS + PGBENCH_CLIENTS - 1) / PGBENCH_CLIENTS ))
BENCH_TXNS=$(( per_client * PGBENCH_CLIENTS ))
lsn0=$(src -c "SELECT pg_current_wal_lsn()")
tb0=$(now)
PGOPTIONS='-c synchronous_commit=off' "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$SRC_PORT" -U postgres \
  -c "$PGBENCH_CLIENTS" -j 2 -t "$per_client" -f "$BENCH_DIR/ev.sql" bench >"$BENCH_DIR/pgbench.log" 2>&1 \
  || { cat "$BENCH_DIR/pgbench.log"; die "pgbench"; }
tb1=$(now)
BACKLOG_WAL=$(src -c "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '$lsn0')")
BACKLOG_S=$(elapsed "$tb0" "$tb1")
CHECK_EV="SELECT count(*) || '/' || coalesce(sum(id), 0) || '/' || coalesce(sum(device), 0) || '/' || coalesce(sum(extract(epoch FROM ts) * 1000000)::numeric, 0) FROM ev"
SRC_EV_CHECK=$(src -c "$CHECK_EV")
[ "$(src -c "SELECT count(*) FROM ev")" = "$BENCH_TXNS" ] || die "source ev has $(src -c "SELECT count(*) FROM ev") rows, expected $BENCH_TXNS"
log "backlog: $BENCH_TXNS txns in $BACKLOG_S s, $(div "$BACKLOG_WAL" 1048576) MB of WAL"

check_ev() {  # db label
  local got; got=$(tgt "$1" -c "$CHECK_EV")
  if [ "$got" = "$SRC_EV_CHECK" ]; then STATUS[apply_$2]=ok
  else STATUS[apply_$2]="MISMATCH target=$got source=$SRC_EV_CHECK"; log "apply $2: ${STATUS[apply_$2]}"; fi
}

# PG15's launcher starts no worker within wal_retrieve_retry_interval (5 s) of its last start:
# let that pass so the native timing does not include this wait.
ws=$(tgt native -c "SELECT greatest(0, 6 - extract(epoch FROM now() - '$NATIVE_DISABLED_AT'::timestamptz))")
log "apply 1/3: native (ALTER SUBSCRIPTION ENABLE), after sleeping $ws s for the launcher's retry interval"
sleep "$ws"
tgt native -c "CHECKPOINT"
start_sampler "$BENCH_DIR/rss-apply-native.tsv"
t0=$(now)
tgt native -c "ALTER SUBSCRIPTION bench_ev_native ENABLE"
bench_wait native "SELECT count(*) >= $BENCH_TXNS FROM ev" 0.2
t1=$(now)
stop_sampler
APPLY_S[native]=$(elapsed "$t0" "$t1")
APPLY_RSS[native]=$(rss_summary "$BENCH_DIR/rss-apply-native.tsv" "logical replication")
check_ev native native
tgt native -c "DROP SUBSCRIPTION bench_ev_native"
log "apply native: ${APPLY_S[native]} s"

livesync_apply() {  # db label subname
  local db=$1 label=$2 sub=$3
  log "apply: livesync -> $label (livesync_start resumes the stopped sync)"
  tgt "$db" -c "CHECKPOINT"
  start_sampler "$BENCH_DIR/rss-apply-$label.tsv"
  t0=$(now)
  tgt "$db" -c "SELECT livesync_start(source => '$SRC_CONN', publication => 'p_ev', subscription => '$sub', copy_data => false)" >/dev/null
  if ! bench_wait "$db" "SELECT count(*) >= $BENCH_TXNS FROM ev" 0.2; then
    stop_sampler; livesync_failure "$db"; die "livesync apply ($label) did not catch up"
  fi
  t1=$(now)
  stop_sampler
  APPLY_S[$label]=$(elapsed "$t0" "$t1")
  APPLY_RSS[$label]=$(rss_summary "$BENCH_DIR/rss-apply-$label.tsv" "livesync apply")
  check_ev "$db" "$label"
  tgt "$db" -c "SELECT livesync_drop('$sub')" >/dev/null
  log "apply $label: ${APPLY_S[$label]} s"
}
livesync_apply ls_plain livesync_plain bench_ev_plain
livesync_apply ls_hyper livesync_hyper bench_ev_ht

# ------------------------------------------------------------------------------------------
# 3. Report
# ------------------------------------------------------------------------------------------
[ "$(md5sum "$LS_SO" | cut -c1-12)" = "$LS_MD5" ] || LS_BUILD="$LS_BUILD; WARNING: the file was replaced during the run (now $(ls_so_id)): the target ran the one loaded at its start"
# Known, expected lines: the Apache-licensed TimescaleDB's job error, native workers ended by DISABLE/DROP.
BENIGN='not supported under the current "apache" license|terminating logical replication worker due to administrator command'
grep -E ' (ERROR|FATAL|PANIC|WARNING): ' "$BENCH_DIR/target.log" | grep -vE "$BENIGN" >"$BENCH_DIR/target-errors.txt" || true
TARGET_ERRORS=$(wc -l <"$BENCH_DIR/target-errors.txt")
TOTAL_S=$(( $(date +%s) - RUN_START ))
{
  echo "livesync benchmark — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), run took ${TOTAL_S} s"
  echo
  echo "machine:  $(nproc) CPU cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), $(free -g | awk '/^Mem/ {print $2}') GB RAM, $(uname -r)"
  echo "postgres: $(src -c 'SHOW server_version' | cut -d' ' -f1); timescaledb $(tgt ls_hyper -c "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"); livesync $(tgt ls_plain -c "SELECT extversion FROM pg_extension WHERE extname = 'livesync'")"
  echo "livesync.so: $LS_SO ($LS_BUILD)"
  echo "both:     shared_buffers=1GB max_wal_size=8GB checkpoint_timeout=30min fsync=on synchronous_commit=on, on 127.0.0.1 (TCP)"
  echo "source:   wal_level=logical max_replication_slots=20 max_wal_senders=20"
  echo "target:   shared_preload_libraries='timescaledb,livesync' max_worker_processes=32 wal_level=replica (default)"
  echo "          livesync GUCs: $(tgt ls_plain -c "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings WHERE name LIKE 'livesync.%'")"
  echo
  echo "1. INITIAL COPY of big: $BIG_ROWS rows, heap $BIG_HEAP_MB MB (pg_relation_size), $BIG_TOTAL_MB MB with PK index"
  echo "   timed from CREATE SUBSCRIPTION / livesync_start to state 'r'; MB/s = source heap MB / s"
  printf '   %-38s %9s %9s %12s %9s  %-22s %s\n' "" "seconds" "MB/s" "rows/s" "ratio**" "worker RssAnon MB*" "check"
  for k in $COPY_KEYS; do
    case $k in
      native) n="native subscription -> plain"; base=native;;
      pipe_plain) n="psql COPY pipe -> plain table"; base=native;;
      pipe_hyper) n="psql COPY pipe -> hypertable"; base=pipe_hyper;;
      livesync_plain_text) n="livesync -> plain, 2 workers, text"; base=native;;
      livesync_hyper_text) n="livesync -> hypertable, 2 workers, text"; base=pipe_hyper;;
      livesync_plain_*) n="livesync -> plain, ${k##*_} worker(s)"; base=native;;
      livesync_hyper_*) n="livesync -> hypertable, ${k##*_} worker(s)"; base=pipe_hyper;;
    esac
    printf '   %-38s %9s %9s %12s %9s  %-22s %s\n' "$n" "${COPY_S[$k]}" "$(div "$BIG_HEAP_MB" "${COPY_S[$k]}")" \
      "$(div "$BIG_ROWS" "${COPY_S[$k]}" %.0f)" "$(div "${COPY_S[$k]}" "${COPY_S[$base]}" %.2f)" "${COPY_RSS[$k]}" "${STATUS[copy_$k]}"
  done
  echo "   ** time / time of native tablesync (plain rows) or of the psql COPY pipe into the same hypertable"
  echo "   where the time goes (psql alone, same tables):"
  echo "     source COPY TO /dev/null: text ${PART_S[read_text]} s, binary ${PART_S[read_binary]} s"
  echo "     pipe -> plain: text ${COPY_S[pipe_plain]} s, binary ${PART_S[pipe_binary_plain]} s"
  echo "     pipe -> hypertable: with its ts index ${COPY_S[pipe_hyper]} s; without it ${PART_S[pipe_hyper_noindex]} s + CREATE INDEX afterwards ${PART_S[index_after]} s"
  echo "   hypertable: $HYPER_CHUNKS chunks, $HYPER_ROOT_ROWS rows in the root table (must be 0)"
  echo
  echo "2. APPLY OF A BACKLOG: $BENCH_TXNS single-row INSERT transactions into ev, $(div "$BACKLOG_WAL" 1048576) MB of WAL"
  echo "   (written by pgbench -c $PGBENCH_CLIENTS in $BACKLOG_S s while every consumer was stopped),"
  echo "   timed from ALTER SUBSCRIPTION ENABLE / livesync_start until count(*) on the target = $BENCH_TXNS"
  printf '   %-34s %9s %12s  %-22s %s\n' "" "seconds" "rows/s" "worker RssAnon MB*" "check"
  for k in native livesync_plain livesync_hyper; do
    case $k in native) n="native subscription -> plain";; livesync_plain) n="livesync -> plain table";; livesync_hyper) n="livesync -> hypertable (1 day)";; esac
    printf '   %-34s %9s %12s  %-22s %s\n' "$n" "${APPLY_S[$k]}" "$(div "$BENCH_TXNS" "${APPLY_S[$k]}" %.0f)" \
      "${APPLY_RSS[$k]}" "${STATUS[apply_$k]}"
  done
  echo
  echo "   * first/max/last RssAnon (private memory, MB) of the worker processes sampled every 0.25 s"
  echo "     (copy: all livesync / logical replication workers; apply: the apply worker)"
  echo
  echo "livesync's own log lines about the copies:"
  grep livesync "$BENCH_DIR/target.log" | grep -E 'copied|caught up|is ready' | sed 's/^/   /'
  echo
  echo "target server log: $TARGET_ERRORS unexpected WARNING/ERROR/FATAL/PANIC lines (ignored as expected: $BENIGN)"
  head -30 "$BENCH_DIR/target-errors.txt" | sed 's/^/   /'
} | tee "$RESULTS"
fail=0
for k in "${!STATUS[@]}"; do [ "${STATUS[$k]}" = ok ] || fail=1; done
[ $fail = 0 ] || die "a correctness check failed (see above)"
