#!/usr/bin/env bash
# livesync benchmark: livesync versus PostgreSQL's native logical replication, in one run.
#
#   bench/run.sh                    # everything, default sizes (about 35 minutes)
#   BENCH_QUICK=1 bench/run.sh      # smoke test: small sizes, one round
#   BENCH_SECTIONS=apply bench/run.sh
#
# Environment:
#   BENCH_SECTIONS  which parts to run, default "copy apply sustain"
#   BENCH_COPY_MB   heap size of the source table `big` (pg_relation_size), default 1100
#   BENCH_WORKERS   livesync.max_copy_workers_per_table values to copy with, default "1 2 4"
#   BENCH_WORKLOADS apply backlogs, default "insert1 insert100 update delete tpcb"
#   BENCH_ROWS      rows of the insert1/insert100/update workloads (delete: half), default 300000
#   BENCH_TPCB_TXNS TPC-B transactions of the tpcb backlog, default 100000 (scale BENCH_TPCB_SCALE, 10)
#   BENCH_ROUNDS    rounds of each apply workload (the median is reported), default 5: on a
#                   2-core machine one round of a drain varies by 10-20 %
#   BENCH_RATES     TPC-B rates (transactions/s) the sustained-load part climbs, default
#                   "500 1000 1500 2000 2500 3000 4000 5000 6000 8000 10000"
#   BENCH_SUSTAIN_S seconds at each rate, default 20
#   BENCH_QUICK=1   BENCH_COPY_MB=50, BENCH_ROWS=30000, BENCH_TPCB_TXNS=10000, BENCH_ROUNDS=1,
#                   BENCH_SUSTAIN_S=10 (unless set explicitly)
#   BENCH_DIR       where clusters live, default /tmp/livesync-bench (wiped at start)
#   BENCH_PORT      source port, default 55432; the target uses BENCH_PORT+1
#   BENCH_TIMEOUT   seconds any single measurement may take before it is a failure, default 1800
#   BENCH_KEEP=1    leave the clusters running at the end (stop them with pg_ctl -D ... stop)
#   BENCH_TARGET_CONF  extra postgresql.conf lines for the target (e.g. "livesync.binary_copy = off")
#   PG_BIN          PostgreSQL 15 binaries, default /usr/lib/postgresql/15/bin
#
# What it does (same source, same table definitions, same rows on both sides):
#   SOURCE cluster (wal_level=logical) and TARGET cluster (timescaledb,livesync preloaded),
#   both on PostgreSQL's defaults but for memory and checkpoint spacing (COMMON_CONF).
#   1. copy: initial copy of table `big` (publication p_big):
#        native   CREATE SUBSCRIPTION ... WITH (copy_data = true)     -> plain table
#        pipe     psql -c 'COPY big TO STDOUT' | psql -c 'COPY big FROM STDIN' -> plain, hypertable
#        ls_plain livesync_start(..., 'p_big', 'bench_copy')          -> plain table
#        ls_hyper livesync_start(..., 'p_big', 'bench_copy_ht')       -> hypertable (1 day chunks)
#      livesync once per livesync.max_copy_workers_per_table in BENCH_WORKERS; timed from
#      CREATE/livesync_start to the table's state 'r' (polled every 100 ms), the pipe to its end.
#   2. apply: backlogs of five workloads (single-row INSERTs, 100-row INSERTs, UPDATEs and
#      DELETEs by key, pgbench TPC-B). The consumers of the workload's publication (native
#      into a plain table; livesync into a plain table and into a hypertable of 1-day chunks
#      whose one index is its key (id, ts), as the plain table's is (id), none on time alone)
#      are created without copy over identical rows, caught up and stopped; pgbench writes
#      the backlog (synchronous_commit=off) and a marker row; each consumer is then started alone and
#      timed until the marker is on its target (by the target's clock, in the session that starts
#      it, polling every 20 ms); its tables are compared with the source's.
#      Medians of BENCH_ROUNDS rounds; ratio = livesync time / native time. A fourth
#      consumer, recvlogical, is pg_recvlogical writing the stream to /dev/null until the
#      marker's position: the source's own limit (BENCH_CONSUMERS picks the consumers).
#   3. sustain: pgbench TPC-B at each rate of BENCH_RATES for BENCH_SUSTAIN_S seconds with one
#      consumer following live; apply lag (source WAL position minus the target's origin)
#      sampled every 0.25 s; the highest rate whose lag stays bounded, per consumer.
#   Results: $BENCH_DIR/results.txt (also printed). Server logs: $BENCH_DIR/{source,target}.log
set -euo pipefail

PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
BENCH_DIR=${BENCH_DIR:-/tmp/livesync-bench}
SRC_PORT=${BENCH_PORT:-55432}
TGT_PORT=$((SRC_PORT + 1))
if [ "${BENCH_QUICK:-0}" = 1 ]; then
  BENCH_COPY_MB=${BENCH_COPY_MB:-50}
  BENCH_ROWS=${BENCH_ROWS:-30000}
  BENCH_TPCB_TXNS=${BENCH_TPCB_TXNS:-10000}
  BENCH_ROUNDS=${BENCH_ROUNDS:-1}
  BENCH_SUSTAIN_S=${BENCH_SUSTAIN_S:-10}
fi
BENCH_SECTIONS=${BENCH_SECTIONS:-copy apply sustain}
BENCH_COPY_MB=${BENCH_COPY_MB:-1100}
BENCH_WORKLOADS=${BENCH_WORKLOADS:-insert1 insert100 update delete tpcb}
BENCH_ROWS=${BENCH_ROWS:-300000}
BENCH_TPCB_TXNS=${BENCH_TPCB_TXNS:-100000}
BENCH_TPCB_SCALE=${BENCH_TPCB_SCALE:-10}
BENCH_ROUNDS=${BENCH_ROUNDS:-5}
BENCH_RATES=${BENCH_RATES:-500 1000 1500 2000 2500 3000 4000 5000 6000 8000 10000}
BENCH_SUSTAIN_S=${BENCH_SUSTAIN_S:-20}
want() { case " $BENCH_SECTIONS " in *" $1 "*) return 0;; *) return 1;; esac; }
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
  if declare -F perf_stop >/dev/null; then perf_stop || true; fi
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
${BENCH_TARGET_CONF:-}
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

# RSS sampler: every 0.25 s, the anonymous/shared RSS of every replication-related child of
# the target postmaster (livesync workers and native logical replication workers). It forks
# nothing but its sleep (bash builtins read /proc): an apply that keeps both cores busy would
# otherwise share them with the sampler's own processes and be timed slower for it.
start_sampler() {  # outfile
  local out=$1
  (
    kids=/proc/$TGT_POSTMASTER/task/$TGT_POSTMASTER/children
    while :; do
      pids=(); read -r -a pids <"$kids" 2>/dev/null || true   # no newline at its end: status 1
      for p in "${pids[@]}"; do
        cmd=; read -r -d '' cmd <"/proc/$p/cmdline" 2>/dev/null || true
        case "$cmd" in
          *livesync*|*"logical replication"*)
            a=; s=
            while read -r k v _; do
              case $k in RssAnon:) a=$v ;; RssShmem:) s=$v ;; esac
            done <"/proc/$p/status" 2>/dev/null || true
            [ -n "$a" ] && printf '%s\t%s\t%s\t%s\t%s\n' "$EPOCHREALTIME" "$p" "$a" "$s" "$cmd"
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

declare -A COPY_S COPY_RSS STATUS PART_S
if want copy; then
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

fi

# ------------------------------------------------------------------------------------------
# 2. Apply of a backlog, per workload
# ------------------------------------------------------------------------------------------
# Every consumer of a workload's publication is created (no initial copy: source and targets
# hold the same rows already), caught up and stopped; pgbench then writes the backlog on the
# source, followed by a marker row; each consumer is started alone and timed until the
# marker's row is on its target (changes apply in source order, so everything before it is
# there too). Then its tables are compared with the source's. Medians over BENCH_ROUNDS.
declare -A APPLY_T APPLY_WS APPLY_AP APPLY_RSS APPLY_DESC APPLY_N APPLY_CONSUMERS_OF
APPLY_CONSUMERS=()
src -c "CREATE TABLE bench_marker (id int PRIMARY KEY)"
for db in native ls_plain ls_hyper; do tgt "$db" -c "CREATE TABLE bench_marker (id int PRIMARY KEY)"; done
MARK=0

EV_SRC="CREATE TABLE ev (id bigserial PRIMARY KEY, ts timestamptz NOT NULL, device int, value double precision)"
EV_PLAIN="CREATE TABLE ev (id bigint PRIMARY KEY, ts timestamptz NOT NULL, device int, value double precision)"
# The hypertable has one index, as the plain table: its key (id, ts), which must hold the
# time column. create_hypertable's default index on ts would be a second index to keep up,
# and the ratio to the plain table is to measure the routing into chunks, not that index
# (with it, the UPDATE backlog took 1.19 times the plain table's time, without it 1.01, in
# two 2-round runs a few minutes apart).
EV_HYPER="CREATE TABLE ev (id bigint, ts timestamptz NOT NULL, device int, value double precision, PRIMARY KEY (id, ts));
          SELECT create_hypertable('ev', 'ts', chunk_time_interval => interval '1 day', create_default_indexes => false);"
EV_FILL="INSERT INTO ev SELECT i, timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second', i % 1000, 0
           FROM generate_series(1, $BENCH_ROWS) i"
CHECK_EV="SELECT count(*) || '/' || coalesce(sum(id), 0) || '/' || coalesce(sum(device), 0) || '/'
            || coalesce(sum(hashtext(value::text)::bigint), 0) || '/' || coalesce(sum(extract(epoch FROM ts) * 1000000)::numeric, 0) FROM ev"
CHECK_TPCB="SELECT (SELECT count(*) || '/' || sum(abalance) || '/' || sum(hashtext(aid || ':' || abalance)::bigint) FROM pgbench_accounts)
            || '|' || (SELECT sum(bbalance) || '/' || sum(hashtext(bid || ':' || bbalance)::bigint) FROM pgbench_branches)
            || '|' || (SELECT sum(tbalance) || '/' || sum(hashtext(tid || ':' || tbalance)::bigint) FROM pgbench_tellers)
            || '|' || (SELECT count(*) || '/' || coalesce(sum(delta), 0) || '/' || coalesce(sum(hashtext(tid || ':' || bid || ':' || aid || ':' || delta || ':' || mtime)::bigint), 0) FROM pgbench_history)"

# workload_setup W: fresh tables and publication p_W on the source and on every target
# database, with the same rows; sets WL_CONSUMERS, WL_CHECK, WL_TXNS, WL_SCRIPT, WL_DESC.
workload_setup() {
  local w=$1 db p
  src -c "DROP PUBLICATION IF EXISTS p_$w" -c "DROP TABLE IF EXISTS ev" -c "DROP SEQUENCE IF EXISTS ev_del" >/dev/null
  for db in native ls_plain ls_hyper; do tgt "$db" -c "DROP TABLE IF EXISTS ev" >/dev/null; done
  WL_CONSUMERS=${BENCH_CONSUMERS:-native ls_plain ls_hyper recvlogical}; WL_CHECK=$CHECK_EV; WL_SCRIPT=$BENCH_DIR/$w.sql
  case $w in
    tpcb)
      WL_CONSUMERS=${BENCH_CONSUMERS:-native ls_plain recvlogical}; WL_CONSUMERS=${WL_CONSUMERS/ls_hyper/}; WL_CHECK=$CHECK_TPCB; WL_TXNS=$BENCH_TPCB_TXNS
      WL_CHANGES=$((WL_TXNS * 4))
      WL_DESC="$WL_TXNS pgbench TPC-B transactions (scale $BENCH_TPCB_SCALE: 3 UPDATEs and 1 INSERT each)"
      for p in "$SRC_PORT bench" "$TGT_PORT native" "$TGT_PORT ls_plain"; do
        set -- $p
        "$PG_BIN/pgbench" -i -q -s "$BENCH_TPCB_SCALE" -h 127.0.0.1 -p "$1" -U postgres "$2" >"$BENCH_DIR/pgbench-init.log" 2>&1 \
          || { cat "$BENCH_DIR/pgbench-init.log"; die "pgbench -i on $2"; }
      done
      src -c "CREATE PUBLICATION p_$w FOR TABLE pgbench_accounts, pgbench_branches, pgbench_tellers, pgbench_history, bench_marker"
      WL_SCRIPT=
      return ;;
  esac
  src -c "$EV_SRC"
  tgt native -c "$EV_PLAIN"; tgt ls_plain -c "$EV_PLAIN"; tgt ls_hyper -c "$EV_HYPER" >/dev/null
  case $w in
    insert1)
      WL_TXNS=$BENCH_ROWS; WL_CHANGES=$WL_TXNS; WL_DESC="$WL_TXNS single-row INSERT transactions"
      printf '%s\n' '\set d random(1, 1000)' 'INSERT INTO ev (ts, device, value) VALUES (now(), :d, random());' >"$WL_SCRIPT" ;;
    insert100)
      WL_TXNS=$((BENCH_ROWS / 100)); WL_CHANGES=$((WL_TXNS * 100)); WL_DESC="$WL_TXNS INSERT transactions of 100 rows"
      printf '%s\n' 'INSERT INTO ev (ts, device, value) SELECT now(), (random() * 1000)::int, random() FROM generate_series(1, 100);' >"$WL_SCRIPT" ;;
    update|delete)
      src -c "$EV_FILL" -c "SELECT setval('ev_id_seq', $BENCH_ROWS)" -c "VACUUM ANALYZE ev" >/dev/null
      for db in native ls_plain ls_hyper; do tgt "$db" -c "$EV_FILL" -c "VACUUM ANALYZE ev" >/dev/null; done
      if [ "$w" = update ]; then
        WL_TXNS=$BENCH_ROWS; WL_CHANGES=$WL_TXNS; WL_DESC="$WL_TXNS UPDATE transactions by primary key (random keys of $BENCH_ROWS rows)"
        printf '%s\n' "\\set id random(1, $BENCH_ROWS)" '\set d random(1, 1000)' \
          'UPDATE ev SET value = value + 1, device = :d WHERE id = :id;' >"$WL_SCRIPT"
      else
        WL_TXNS=$((BENCH_ROWS / 2)); WL_CHANGES=$WL_TXNS; WL_DESC="$WL_TXNS DELETE transactions by primary key (of $BENCH_ROWS rows)"
        src -c "CREATE SEQUENCE ev_del"
        printf '%s\n' "DELETE FROM ev WHERE id = (SELECT nextval('ev_del'));" >"$WL_SCRIPT"
      fi ;;
    *) die "unknown workload $w" ;;
  esac
  src -c "CREATE PUBLICATION p_$w FOR TABLE ev, bench_marker"
}

consumer_db() { case $1 in native) echo native;; ls_plain) echo ls_plain;; ls_hyper) echo ls_hyper;; esac; }
consumer_sub() { echo "b_${2}_${1}"; }   # consumer workload

# Create every consumer of workload W, caught up, then stopped.
consumers_create() {
  local w=$1 c sub
  for c in $WL_CONSUMERS; do
    sub=$(consumer_sub "$c" "$w")
    if [ "$c" = recvlogical ]; then
      "$PG_BIN/pg_recvlogical" -h 127.0.0.1 -p "$SRC_PORT" -U postgres -d bench -S "$sub" --create-slot -P pgoutput
    elif [ "$c" = native ]; then
      tgt native -c "CREATE SUBSCRIPTION $sub CONNECTION '$SRC_CONN' PUBLICATION p_$w WITH (copy_data = false)"
      bench_wait native "SELECT count(*) > 0 FROM pg_stat_subscription WHERE subname = '$sub' AND pid IS NOT NULL" 0.1
      tgt native -c "ALTER SUBSCRIPTION $sub DISABLE"
      NATIVE_DISABLED_AT=$(tgt native -c "SELECT now()")
    else
      tgt "$c" -c "SELECT livesync_start(source => '$SRC_CONN', publication => 'p_$w', subscription => '$sub', copy_data => false)" >/dev/null
      bench_wait "$c" "SELECT coalesce(bool_and(state = 'r'), false) AND count(*) > 1 FROM livesync.subscription_rel WHERE subname = '$sub'" 0.1 \
        || { livesync_failure "$c"; die "livesync $sub did not become ready"; }
      tgt "$c" -c "SELECT livesync_stop('$sub')" >/dev/null
    fi
  done
  local n; n=$(echo $WL_CONSUMERS | wc -w)
  for i in $(seq 1 300); do
    [ "$(src -c "SELECT count(*) FILTER (WHERE NOT active) FROM pg_replication_slots WHERE slot_name LIKE 'b\_${w}\_%'")" = "$n" ] && return
    sleep 0.2
  done
  die "slots of $w not all present and inactive: $(src -c "SELECT string_agg(slot_name || ':' || active, ',') FROM pg_replication_slots")"
}

# Drain one consumer's backlog: start it, wait for marker $MARK, check, drop.
consumer_drain() {  # consumer workload round
  local c=$1 w=$2 r=$3 db sub secs got
  db=$(consumer_db "$c"); sub=$(consumer_sub "$c" "$w")
  if [ "$c" = recvlogical ]; then recvlogical_drain "$w" "$r"; return; fi
  tgt "$db" -c "CHECKPOINT"
  local start_sql pat
  if [ "$c" = native ]; then
    # PG15's launcher starts no worker within wal_retrieve_retry_interval (5 s) of its last
    # start: let that pass so the timing does not include the wait.
    sleep "$(tgt native -c "SELECT greatest(0, 6 - extract(epoch FROM now() - '$NATIVE_DISABLED_AT'::timestamptz))")"
    start_sql="ALTER SUBSCRIPTION $sub ENABLE"; pat="logical replication"
  else
    start_sql="SELECT livesync_start(source => '$SRC_CONN', publication => 'p_$w', subscription => '$sub', copy_data => false)"
    pat="livesync apply"
  fi
  start_sampler "$BENCH_DIR/rss-$w-$c-$r.tsv"
  local perf_job; perf_start "$([ "$c" = native ] && echo "logical replication.*worker for" || echo "$pat")" "$w-$c-$r" & perf_job=$!
  # Timed by the target's clock, in one session: from just before the start command to the
  # first poll (every 20 ms) that sees the marker. psql's own start-up and exit (30 to 40 ms
  # on this machine) are not the apply's, for either consumer.
  secs=$(tgt "$db" -c "SELECT set_config('bench.t0', clock_timestamp()::text, false)" -c "$start_sql" \
    -c "CALL bench_wait(\$q\$SELECT EXISTS (SELECT FROM bench_marker WHERE id = $MARK)\$q\$, 0.02, $BENCH_TIMEOUT)" \
    -c "SELECT round(extract(epoch FROM clock_timestamp() - current_setting('bench.t0')::timestamptz), 3)" | tail -1) \
    || { kill "$perf_job" 2>/dev/null || true; stop_sampler; [ "$c" = native ] || livesync_failure "$db"; die "$c ($sub) did not catch up"; }
  wait "$perf_job" || true
  # CPU seconds of the walsender and of the apply worker, both started for this drain.
  local ws ap; ws=$(src -c "SELECT active_pid FROM pg_replication_slots WHERE active AND slot_name LIKE 'b\_${w}\_%' LIMIT 1")
  if [ "$c" = native ]; then ap=$(pgrep -f "logical replication.*worker" | head -1); else ap=$(pgrep -f "livesync apply" | head -1); fi
  local ws_cpu; ws_cpu=$(cpu_s "$ws")
  APPLY_WS[$w,$c]="${APPLY_WS[$w,$c]:-} $ws_cpu"; APPLY_AP[$w,$c]="${APPLY_AP[$w,$c]:-} $(cpu_s "$ap")"
  local ws_note; ws_note="walsender $ws_cpu CPU s, $(ctx_switches "$ws")"
  stop_sampler
  perf_stop
  APPLY_T[$w,$c]="${APPLY_T[$w,$c]:-} $(printf '%.2f' "$secs")"
  local rss; rss=$(rss_summary "$BENCH_DIR/rss-$w-$c-$r.tsv" "$pat" | cut -d/ -f2)
  [ -n "${APPLY_RSS[$w,$c]:-}" ] && [ "${APPLY_RSS[$w,$c]}" != - ] && [ "$rss" != - ] && [ "${APPLY_RSS[$w,$c]}" -gt "$rss" ] && rss=${APPLY_RSS[$w,$c]}
  APPLY_RSS[$w,$c]=$rss
  got=$(tgt "$db" -c "$WL_CHECK")
  if [ "$got" = "$WL_SRC_CHECK" ]; then STATUS[apply_${w}_$c]=${STATUS[apply_${w}_$c]:-ok}
  else STATUS[apply_${w}_$c]="MISMATCH round $r: target=$got source=$WL_SRC_CHECK"; log "apply $w $c: ${STATUS[apply_${w}_$c]}"; fi
  if [ "$c" = native ]; then tgt native -c "DROP SUBSCRIPTION $sub" >/dev/null
  else tgt "$db" -c "SELECT livesync_drop('$sub')" >/dev/null; fi
  # Vacuumed now (untimed), so that autovacuum of what this consumer updated or deleted
  # does not run during the next consumer's drain.
  tgt "$db" -c "VACUUM" >/dev/null
  log "apply $w round $r: $c $secs s ($ws_note)"
}

# The source's limit: pg_recvlogical reads the same pgoutput stream (text, protocol 1) and
# writes it to /dev/null, until it reaches the marker's position. No target is involved, so
# this is how fast the walsender can send the backlog to a consumer that does nothing.
recvlogical_drain() {  # workload round
  local w=$1 r=$2 sub t0 t1 pid ws x cpu=n/a
  sub=$(consumer_sub recvlogical "$w")
  t0=$(now)
  "$PG_BIN/pg_recvlogical" -h 127.0.0.1 -p "$SRC_PORT" -U postgres -d bench -S "$sub" --start --endpos "$MARK_LSN" \
    -o proto_version=1 -o "publication_names=p_$w" -F 0 -f /dev/null &
  pid=$!
  perf_start "pg_recvlogical" "$w-recvlogical-$r"
  ws=
  while kill -0 "$pid" 2>/dev/null; do
    [ -n "$ws" ] || ws=$(src -c "SELECT active_pid FROM pg_replication_slots WHERE slot_name = '$sub' AND active")
    [ -n "$ws" ] && { x=$(cpu_s "$ws"); [ "$x" = n/a ] || cpu=$x; }
    sleep 0.05
  done
  wait "$pid" || die "pg_recvlogical ($w)"
  t1=$(now)
  perf_stop
  APPLY_T[$w,recvlogical]="${APPLY_T[$w,recvlogical]:-} $(elapsed "$t0" "$t1")"
  APPLY_WS[$w,recvlogical]="${APPLY_WS[$w,recvlogical]:-} $cpu"
  APPLY_RSS[$w,recvlogical]=-; STATUS[apply_${w}_recvlogical]=-
  src -c "SELECT pg_drop_replication_slot('$sub')" >/dev/null
  log "apply $w round $r: recvlogical $(elapsed "$t0" "$t1") s"
}

# BENCH_PERF=1: `perf record -g` the apply worker and the walsender of each drain
# (BENCH_PERF_G replaces `-g` for the apply worker: "--call-graph dwarf,16384" follows
# livesync's Rust frames, which have no frame pointers in a release build)
# ($BENCH_DIR/perf-<workload>-<consumer>-<round>-{apply,walsender}.data).
# perf_start runs in the background, while the drain it records starts; it leaves the pids
# of its perf processes in $BENCH_DIR/perf.pids for perf_stop.
perf_start() {  # process title pattern, tag
  [ "${BENCH_PERF:-0}" = 1 ] || return 0
  local p ws
  # Under set -e: pgrep finds nothing until the drain's processes have started.
  for i in $(seq 1 100); do p=$(pgrep -f "$1" | head -1 || true); [ -n "$p" ] && break; sleep 0.02; done
  for i in $(seq 1 100); do ws=$(pgrep -f "walsender.*127.0.0.1" | head -1 || true); [ -n "$ws" ] && break; sleep 0.02; done
  [ -n "$p" ] && { perf record -F 2000 ${BENCH_PERF_G:--g} -p "$p" -o "$BENCH_DIR/perf-$2-apply.data" >/dev/null 2>&1 & echo $! >>"$BENCH_DIR/perf.pids"; }
  [ -n "$ws" ] && { perf record -F 2000 -g -p "$ws" -o "$BENCH_DIR/perf-$2-walsender.data" >/dev/null 2>&1 & echo $! >>"$BENCH_DIR/perf.pids"; }
  return 0
}
perf_stop() {
  [ -s "$BENCH_DIR/perf.pids" ] || return 0
  local pids; pids=$(cat "$BENCH_DIR/perf.pids"); rm -f "$BENCH_DIR/perf.pids"
  kill -INT $pids 2>/dev/null || true
  # Not children of this shell: wait for them to write their files.
  for p in $pids; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
}

# cpu_s PID: user + system CPU seconds a process has used (n/a if it is gone).
cpu_s() { [ -n "$1" ] && [ -r "/proc/$1/stat" ] && awk -v t="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / t }' "/proc/$1/stat" || echo n/a; }

# ctx_switches PID: how often a process blocked (voluntary context switches) and was
# preempted (involuntary ones) so far.
ctx_switches() { [ -n "$1" ] && [ -r "/proc/$1/status" ] && awk '/^voluntary_ctxt/ { v = $2 } /^nonvoluntary_ctxt/ { n = $2 } END { printf "blocked %d, preempted %d", v, n }' "/proc/$1/status" || echo "switches n/a"; }

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.2f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

if want apply; then
  for w in $BENCH_WORKLOADS; do
    for r in $(seq 1 "$BENCH_ROUNDS"); do
      workload_setup "$w"
      APPLY_DESC[$w]=$WL_DESC
      APPLY_CONSUMERS_OF[$w]=$WL_CONSUMERS
      APPLY_N[$w]=$WL_CHANGES
      consumers_create "$w"
      log "apply $w round $r: writing the backlog: $WL_DESC (pgbench, $PGBENCH_CLIENTS clients)"
      per_client=$(( (WL_TXNS + PGBENCH_CLIENTS - 1) / PGBENCH_CLIENTS ))
      if [ -n "$WL_SCRIPT" ]; then script=(-f "$WL_SCRIPT"); else script=(-b tpcb-like); fi
      PGOPTIONS='-c synchronous_commit=off' "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$SRC_PORT" -U postgres \
        -c "$PGBENCH_CLIENTS" -j 2 -t "$per_client" "${script[@]}" bench >"$BENCH_DIR/pgbench.log" 2>&1 \
        || { cat "$BENCH_DIR/pgbench.log"; die "pgbench ($w)"; }
      # Vacuumed now, so that autovacuum of the backlog's table does not run during
      # whichever consumer drains first.
      src -c "VACUUM" >/dev/null
      MARK=$((MARK + 1))
      MARK_LSN=$(src -c "SELECT pg_current_wal_insert_lsn()")
      src -c "INSERT INTO bench_marker VALUES ($MARK)"
      WL_SRC_CHECK=$(src -c "$WL_CHECK")
      for c in $WL_CONSUMERS; do consumer_drain "$c" "$w" "$r"; done
    done
  done
fi

# ------------------------------------------------------------------------------------------
# 3. Sustained load
# ------------------------------------------------------------------------------------------
# pgbench TPC-B at fixed rates (-R), BENCH_SUSTAIN_S seconds each, one consumer at a time
# following it live. Lag = the source's current WAL position minus the position the target
# committed (its replication origin), sampled every 0.25 s. A rate is kept up with when
# pgbench reached 95 % of it and, in every 5 s window of the run's second half, the lag came
# back under 1 MB ("returns to near zero between bursts"). Climbs until a rate is not.
declare -A SUS_RES SUS_MAX
# lag_sampler CONSUMER SUB OUT: origin of the consumer's subscription on the target.
lag_sampler() {
  local c=$1 sub=$2 out=$3 db origin_q
  db=$(consumer_db "$c")
  if [ "$c" = native ]; then
    origin_q="SELECT remote_lsn FROM pg_replication_origin_status WHERE external_id = 'pg_' || (SELECT oid FROM pg_subscription WHERE subname = '$sub')"
  else
    origin_q="SELECT remote_lsn FROM pg_replication_origin_status WHERE external_id = 'livesync_' || (SELECT oid FROM pg_database WHERE datname = current_database()) || '_' || (SELECT subid FROM livesync.sync WHERE subname = '$sub')"
  fi
  (
    while :; do
      # The target's position first: the source's, read after it, is never behind it.
      o=$(tgt "$db" -c "$origin_q") || o=
      s=$(src -c "SELECT pg_current_wal_lsn()") || s=
      [ -n "$s" ] && [ -n "$o" ] && [ "$o" != 0/0 ] && printf '%s\t%s\n' "$(date +%s.%N)" "$(src -c "SELECT pg_wal_lsn_diff('$s', '$o')::bigint")"
      sleep 0.25
    done
  ) >"$out" 2>/dev/null &
  LAG_PID=$!
}
sustain_consumer() {  # consumer
  local c=$1 db sub rate out tps ok p50 p99 drain t0
  db=$(consumer_db "$c"); sub=$(consumer_sub "$c" sustain)
  workload_setup tpcb
  src -c "DROP PUBLICATION IF EXISTS p_sustain" -c "ALTER PUBLICATION p_tpcb RENAME TO p_sustain"
  if [ "$c" = native ]; then
    tgt native -c "CREATE SUBSCRIPTION $sub CONNECTION '$SRC_CONN' PUBLICATION p_sustain WITH (copy_data = false)"
    bench_wait native "SELECT count(*) > 0 FROM pg_stat_subscription WHERE subname = '$sub' AND latest_end_lsn IS NOT NULL" 0.1
  else
    tgt "$db" -c "SELECT livesync_start(source => '$SRC_CONN', publication => 'p_sustain', subscription => '$sub', copy_data => false)" >/dev/null
    bench_wait "$db" "SELECT coalesce(bool_and(state = 'r'), false) AND count(*) > 1 FROM livesync.subscription_rel WHERE subname = '$sub'" 0.1
  fi
  SUS_MAX[$c]=0
  start_sampler "$BENCH_DIR/rss-sustain-$c.tsv"
  for rate in $BENCH_RATES; do
    out=$BENCH_DIR/lag-$c-$rate.tsv
    lag_sampler "$c" "$sub" "$out"
    t0=$(now)
    PGOPTIONS='-c synchronous_commit=off' "$PG_BIN/pgbench" -n -h 127.0.0.1 -p "$SRC_PORT" -U postgres -c 8 -j 2 -R "$rate" \
      -T "$BENCH_SUSTAIN_S" -b tpcb-like bench >"$BENCH_DIR/pgbench-R$rate.log" 2>&1 || { cat "$BENCH_DIR/pgbench-R$rate.log"; die "pgbench -R $rate"; }
    # Drain: until the lag is under 1 MB again.
    local d0; d0=$(now)
    for i in $(seq 1 1200); do
      l=$(tail -1 "$out" | cut -f2); [ -n "$l" ] && [ "$l" -lt 1048576 ] && break; sleep 0.25
    done
    drain=$(elapsed "$d0" "$(now)")
    kill "$LAG_PID" 2>/dev/null; wait "$LAG_PID" 2>/dev/null || true
    tps=$(awk '/^tps = / { printf "%.0f", $3 }' "$BENCH_DIR/pgbench-R$rate.log")
    # Samples taken while pgbench ran: p50/p99 over all, and the bounded test on the 2nd half.
    awk -F'\t' -v t0="$t0" -v dur="$BENCH_SUSTAIN_S" '$1 - t0 <= dur { print $2 }' "$out" | sort -n >"$out.sorted"
    n=$(wc -l <"$out.sorted")
    pct() { [ "$n" -gt 0 ] && sed -n "$(( (n * $1 + 99) / 100 ))p" "$out.sorted" | awk '{ printf "%.0f", $1 / 1024 }' || echo -; }
    p50=$(pct 50); p99=$(pct 99)
    # Bounded: in every 5 s window of the run's second half the lag came under 1 MB.
    ok=$(awk -F'\t' -v t0="$t0" -v dur="$BENCH_SUSTAIN_S" '
      $1 - t0 <= dur && $1 - t0 >= dur / 2 { w = int(($1 - t0 - dur / 2) / 5); seen[w] = 1; if ($2 < 1048576) low[w] = 1 }
      END { ok = 0; for (k in seen) { ok = 1 } for (k in seen) if (!(k in low)) ok = 0; print ok }' "$out")
    [ "$tps" -ge $((rate * 95 / 100)) ] || ok=0
    SUS_RES[$c,$rate]="$(printf '%6s %9s %9s %9s %6s' "$tps" "$p50" "$p99" "$drain" "$([ "$ok" = 1 ] && echo yes || echo no)")"
    log "sustain $c -R $rate: tps $tps, lag p50 ${p50} kB p99 ${p99} kB, drained in ${drain} s, kept up: $ok"
    [ "$ok" = 1 ] || break
    SUS_MAX[$c]=$rate
  done
  stop_sampler
  SUS_RSS[$c]=$(rss_summary "$BENCH_DIR/rss-sustain-$c.tsv" "$([ "$c" = native ] && echo "logical replication" || echo "livesync apply")" | cut -d/ -f2)
  WL_SRC_CHECK=$(src -c "$CHECK_TPCB")
  bench_wait "$db" "SELECT ($CHECK_TPCB) = '$WL_SRC_CHECK'" 0.2 >/dev/null 2>&1 || true
  got=$(tgt "$db" -c "$CHECK_TPCB")
  if [ "$got" = "$WL_SRC_CHECK" ]; then STATUS[sustain_$c]=ok; else STATUS[sustain_$c]="MISMATCH target=$got source=$WL_SRC_CHECK"; fi
  if [ "$c" = native ]; then tgt native -c "DROP SUBSCRIPTION $sub" >/dev/null
  else tgt "$db" -c "SELECT livesync_drop('$sub')" >/dev/null; fi
}
declare -A SUS_RSS
if want sustain; then
  for c in native ls_plain; do sustain_consumer "$c"; done
fi

# ------------------------------------------------------------------------------------------
# 4. Report
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
  echo "both:     shared_buffers=1GB max_wal_size=8GB checkpoint_timeout=30min fsync=on synchronous_commit=on (pgbench: off), on 127.0.0.1 (TCP)"
  echo "source:   wal_level=logical max_replication_slots=20 max_wal_senders=20"
  echo "target:   shared_preload_libraries='timescaledb,livesync' max_worker_processes=32 wal_level=replica (default)"
  echo "          livesync GUCs: $(tgt ls_plain -c "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings WHERE name LIKE 'livesync.%'")"
  echo
  if want copy; then
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
  fi
  if want apply; then
    echo "2. APPLY OF A BACKLOG, per workload: seconds from ALTER SUBSCRIPTION ENABLE / livesync_start"
    echo "   until the marker written after the backlog is on the target (target's clock, same session,"
    echo "   polled every 20 ms); median of $BENCH_ROUNDS round(s)"
    echo "   (every round's time in brackets); ratio = livesync / native (hypertable: / livesync plain)"
    printf '   %-10s %-10s %9s %10s %7s  %-24s %9s %9s %9s  %s\n' "workload" "consumer" "seconds" "changes/s" "ratio" "rounds" "wsnd CPU" "apply CPU" "peak MB*" "check"
    for w in $BENCH_WORKLOADS; do
      echo "   $w: ${APPLY_DESC[$w]}"
      for c in ${APPLY_CONSUMERS_OF[$w]}; do
        med=$(echo "${APPLY_T[$w,$c]:-}" | median)
        case $c in native) ratio=-;; ls_plain|recvlogical) ratio=$(div "$med" "$(echo "${APPLY_T[$w,native]:-}" | median)" %.2f);;
          ls_hyper) ratio=$(div "$med" "$(echo "${APPLY_T[$w,ls_plain]:-}" | median)" %.2f);; esac
        printf '   %-10s %-10s %9s %10s %7s  %-24s %9s %9s %9s  %s\n' "" "$c" "$med" "$(div "${APPLY_N[$w]}" "$med" %.0f)" "$ratio" \
          "[$(echo ${APPLY_T[$w,$c]:-} | tr ' ' ',')]" "$(echo "${APPLY_WS[$w,$c]:-}" | median)" "$(echo "${APPLY_AP[$w,$c]:-}" | median)" \
          "${APPLY_RSS[$w,$c]}" "${STATUS[apply_${w}_$c]}"
      done
      if [ -n "${APPLY_WS[$w,ls_plain]:-}" ] && [ -n "${APPLY_T[$w,native]:-}" ]; then
        echo "              floor: livesync's walsender CPU / native's seconds = $(div "$(echo "${APPLY_WS[$w,ls_plain]}" | median)" "$(echo "${APPLY_T[$w,native]}" | median)" %.2f)"
      fi
    done
    echo "   changes/s: row changes of the backlog / seconds; peak MB: the apply worker's peak RssAnon;"
    echo "   wsnd CPU / apply CPU: CPU seconds (median) of the source's walsender and of the apply worker"
    echo "   during the drain: a walsender CPU near the drain's seconds means the source was the limit"
    echo "   floor: no consumer of one pgoutput stream finishes before its walsender has sent it, so"
    echo "   livesync's ratio cannot go below its walsender's CPU seconds / native's seconds"
    echo "   recvlogical: pg_recvlogical reading the backlog into /dev/null (no target involved): how fast"
    echo "   the source sends it to a consumer that does nothing; ratio = / native"
    echo
  fi
  if want sustain; then
    echo "3. SUSTAINED LOAD: pgbench TPC-B -R rate for $BENCH_SUSTAIN_S s, one consumer following live;"
    echo "   lag = source WAL position - target origin position, every 0.25 s; kept up = pgbench reached 95 %"
    echo "   of the rate and the lag came under 1 MB in every 5 s window of the run's second half"
    printf '   %-10s %7s %6s %9s %9s %9s %6s\n' "consumer" "rate" "tps" "p50 kB" "p99 kB" "drain s" "kept"
    for c in native ls_plain; do
      for rate in $BENCH_RATES; do
        [ -n "${SUS_RES[$c,$rate]:-}" ] && printf '   %-10s %7s %s\n' "$c" "$rate" "${SUS_RES[$c,$rate]}"
      done
      echo "   $c: highest rate kept up with: ${SUS_MAX[$c]} tps; peak RssAnon ${SUS_RSS[$c]} MB; tables equal afterwards: ${STATUS[sustain_$c]}"
    done
    echo
  fi
  echo "   * first/max/last RssAnon (private memory, MB) of the worker processes sampled every 0.25 s"
  echo "     (copy: all livesync / logical replication workers; apply: the apply worker)"
  echo
  if want copy; then
    echo "livesync's own log lines about the copies:"
    grep livesync "$BENCH_DIR/target.log" | grep -E 'copied|caught up|is ready' | sed 's/^/   /' || true
    echo
  fi
  echo "target server log: $TARGET_ERRORS unexpected WARNING/ERROR/FATAL/PANIC lines (ignored as expected: $BENIGN)"
  head -30 "$BENCH_DIR/target-errors.txt" | sed 's/^/   /'
} | tee "$RESULTS"
fail=0
for k in "${!STATUS[@]}"; do case ${STATUS[$k]} in ok|-) ;; *) fail=1;; esac; done
[ $fail = 0 ] || die "a correctness check failed (see above)"
