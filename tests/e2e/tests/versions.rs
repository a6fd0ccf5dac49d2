//! What newer PostgreSQL servers send and do, against the majors this run was given
//! (`LIVESYNC_E2E_PG` for the target, `LIVESYNC_E2E_SOURCE_PG` for the source; `make test`
//! runs this binary with every supported pair, see the Makefile).
//!
//! A test of a feature that older sources do not have checks, on such a source, that the
//! feature is indeed absent there, and stops: the same test proves the behaviour in the runs
//! whose source has it.

use std::thread::sleep;
use std::time::Duration;

use livesync_e2e::*;

/// On a source older than a feature: the setting that feature brings does not exist there.
/// (The tests of such features check this, and stop.)
fn assert_no_such_setting(sc: &Cluster, setting: &str) {
    let e = sc
        .client("postgres")
        .batch_execute(&format!("SHOW {setting}"))
        .unwrap_err();
    assert_eq!(sqlstate(&e).as_deref(), Some("42704"), "{}", err_text(&e));
}

fn server_major(db: &Db) -> u32 {
    let n: String = db.query_one("SHOW server_version_num");
    n.parse::<u32>().unwrap() / 10_000
}

#[test]
fn servers_run_the_requested_majors_with_timescaledb_and_livesync() {
    let src = Db::fresh(source(), "ver_src");
    let tgt = Db::fresh(target(), "ver_tgt");
    assert_eq!(server_major(&src), source_install().major);
    assert_eq!(server_major(&tgt), target_install().major);
    let exts: Vec<String> = tgt
        .client()
        .query(
            "SELECT extname FROM pg_extension WHERE extname IN ('timescaledb', 'livesync') \
             ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(exts, ["livesync", "timescaledb"]);

    // The core of the product on this pair: a hypertable filled by the copy, then by changes.
    src.exec(
        "CREATE TABLE m (ts timestamptz NOT NULL, dev int NOT NULL, v float8, \
                         PRIMARY KEY (dev, ts)); \
         INSERT INTO m SELECT '2026-01-01'::timestamptz + g * interval '1 hour', g % 5, g \
           FROM generate_series(1, 2000) g; \
         CREATE PUBLICATION p FOR TABLE m",
    );
    tgt.exec(
        "CREATE TABLE m (ts timestamptz NOT NULL, dev int NOT NULL, v float8, \
                         PRIMARY KEY (dev, ts)); \
         SELECT create_hypertable('m', 'ts', chunk_time_interval => interval '7 days')",
    );
    let sub = "versions";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_for_sync_state(&tgt, sub, 'r');
    src.exec(
        "INSERT INTO m SELECT '2026-06-01'::timestamptz + g * interval '1 hour', g % 5, -g \
           FROM generate_series(1, 500) g; \
         UPDATE m SET v = v * 10 WHERE dev = 1; DELETE FROM m WHERE dev = 2",
    );
    assert_synced(&src, &tgt, sub, &["m"]);
    assert!(
        chunk_count(&tgt, "m") > 10,
        "rows must land in hypertable chunks"
    );
    assert_eq!(
        count_only(&tgt, "m"),
        0,
        "no row may stay in the hypertable's root"
    );
}

/// PostgreSQL 18 publishes stored generated columns when asked to
/// (`publish_generated_columns = stored`): their values are copied and streamed into a
/// plain target column. (A target column that is generated itself computes its own value:
/// `changes::generated_and_identity_columns_on_the_target`.)
#[test]
fn published_generated_columns_are_copied_and_streamed() {
    let src = Db::fresh(source(), "gencol_src");
    let tgt = Db::fresh(target(), "gencol_tgt");
    src.exec(
        "CREATE TABLE g (id int PRIMARY KEY, a int, \
                         twice int GENERATED ALWAYS AS (a * 2) STORED, \
                         hidden int GENERATED ALWAYS AS (a * 3) STORED)",
    );
    if source_install().major < 18 {
        // Older sources never publish generated columns: the option does not exist there.
        let e = src
            .client()
            .batch_execute(
                "CREATE PUBLICATION p FOR TABLE g WITH (publish_generated_columns = stored)",
            )
            .unwrap_err();
        assert_eq!(sqlstate(&e).as_deref(), Some("42601"), "{}", err_text(&e));
        return;
    }
    src.exec(
        "INSERT INTO g (id, a) SELECT g, g FROM generate_series(1, 300) g; \
         CREATE PUBLICATION p FOR TABLE g (id, a, twice); \
         CREATE TABLE g2 (LIKE g INCLUDING GENERATED INCLUDING CONSTRAINTS); \
         ALTER TABLE g2 ADD PRIMARY KEY (id); \
         INSERT INTO g2 (id, a) SELECT g, g FROM generate_series(1, 50) g; \
         CREATE PUBLICATION p2 FOR TABLE g2 WITH (publish_generated_columns = stored)",
    );
    // The target's columns are plain: they take what the source computed.
    tgt.exec(
        "CREATE TABLE g (id int PRIMARY KEY, a int, twice int, hidden int); \
         CREATE TABLE g2 (id int PRIMARY KEY, a int, twice int, hidden int)",
    );
    let _g = start_sync(&tgt, &src.uri(), "p", "gencols");
    let _g2 = start_sync(&tgt, &src.uri(), "p2", "gencols2");
    wait_for_sync_state(&tgt, "gencols", 'r');
    wait_for_sync_state(&tgt, "gencols2", 'r');
    src.exec(
        "INSERT INTO g (id, a) SELECT g, g FROM generate_series(301, 400) g; \
         UPDATE g SET a = a + 1000 WHERE id % 7 = 0; DELETE FROM g WHERE id % 11 = 0; \
         INSERT INTO g2 (id, a) SELECT g, g FROM generate_series(51, 80) g; \
         UPDATE g2 SET a = -a WHERE id % 3 = 0",
    );
    wait_caught_up(&src, &tgt, "gencols");
    wait_caught_up(&src, &tgt, "gencols2");
    // A column list that names `twice` publishes it, and only it.
    let q = |db: &Db, sql: &str| -> i64 { db.query_one(sql) };
    assert_eq!(
        q(
            &tgt,
            "SELECT count(*) FROM g WHERE twice IS DISTINCT FROM a * 2"
        ),
        0,
        "the published generated column must carry the source's values"
    );
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM g WHERE hidden IS NOT NULL"),
        0
    );
    assert_eq!(
        q(&tgt, "SELECT count(*) FROM g"),
        q(&src, "SELECT count(*) FROM g")
    );
    // publish_generated_columns = stored publishes every stored generated column.
    assert_tables_equal(&src, &tgt, "g2");
}

fn slot_failover(sc: &Cluster, slot: &str) -> Option<bool> {
    sc.client("postgres")
        .query(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .unwrap()
        .first()
        .map(|r| r.get(0))
}

/// On a PostgreSQL 17+ source set up for failover slots (`synchronized_standby_slots` names
/// a standby's physical slot), livesync's main slot is a failover slot: created so, or made
/// so when the sync's worker next starts. The source then sends livesync only what that
/// standby has confirmed, so a promoted standby has every change livesync has applied.
#[test]
fn main_slot_is_a_failover_slot_when_the_source_is_set_up_for_it() {
    let sc = Cluster::new_private(Kind::Source, "failover_src");
    let src = Db::fresh(&sc, "fo_src");
    let tgt = Db::fresh(target(), "fo_tgt");
    if sc.major() < 17 {
        // Failover slots are PostgreSQL 17's: older sources have no such setting.
        assert_no_such_setting(&sc, "synchronized_standby_slots");
        return;
    }
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g; \
         CREATE PUBLICATION p FOR TABLE t",
    );
    tgt.exec("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let after =
        |n: i64| -> i64 { tgt.query_one(&format!("SELECT count(*) FROM t WHERE id > {n}")) };

    // Not set up for failover: an ordinary slot.
    let _g = start_sync(&tgt, &src.uri(), "p", "fo_before");
    wait_caught_up(&src, &tgt, "fo_before");
    assert_eq!(slot_failover(&sc, "fo_before"), Some(false));

    // A standby's slot, listed in synchronized_standby_slots.
    sc.exec(
        "postgres",
        "SELECT pg_create_physical_replication_slot('standby1', true)",
    );
    sc.exec(
        "postgres",
        "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'",
    );
    sc.exec("postgres", "SELECT pg_reload_conf()");

    // A sync started now gets failover slots, for its stream and for its table copies
    // (held here while the copy waits for a lock on the target table).
    src.exec(
        "CREATE TABLE t2 (id int PRIMARY KEY); INSERT INTO t2 SELECT generate_series(1, 10); \
         CREATE PUBLICATION p2 FOR TABLE t2",
    );
    tgt.exec("CREATE TABLE t2 (id int PRIMARY KEY)");
    let mut locker = tgt.client();
    locker
        .batch_execute("BEGIN; LOCK TABLE t2 IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    let _g2 = start_sync(&tgt, &src.uri(), "p2", "fo_after");
    let copy_slot = || -> Option<(String, bool)> {
        sc.client("postgres")
            .query(
                "SELECT slot_name, failover FROM pg_replication_slots \
                 WHERE slot_name LIKE 'fo\\_after\\_sync\\_%'",
                &[],
            )
            .unwrap()
            .first()
            .map(|r| (r.get(0), r.get(1)))
    };
    wait_until(SYNC_TIMEOUT, "the table copy's slot", || {
        copy_slot().is_some()
    });
    let (name, failover) = copy_slot().unwrap();
    assert!(
        failover,
        "the table copy's slot {name} is not a failover slot"
    );
    assert_eq!(slot_failover(&sc, "fo_after"), Some(true));
    locker.batch_execute("COMMIT").unwrap();
    // ... and the older sync's slot becomes one when its worker starts again.
    livesync_stop(&tgt, "fo_before");
    wait_until(SYNC_TIMEOUT, "the slot to be released", || {
        slot_active_pid(&sc, "fo_before").is_none()
    });
    try_livesync_start(&tgt, &src.uri(), "p", Some("fo_before"), None).unwrap();
    wait_until(SYNC_TIMEOUT, "fo_before to be a failover slot", || {
        slot_failover(&sc, "fo_before") == Some(true)
    });

    // The source holds changes back until the standby has them ...
    src.exec("INSERT INTO t SELECT g, 'after' FROM generate_series(101, 110) g");
    sleep(Duration::from_secs(3));
    assert_eq!(
        after(100),
        0,
        "changes reached livesync before the standby in synchronized_standby_slots had them"
    );
    // ... and sends them once it has.
    sc.exec(
        "postgres",
        "SELECT pg_replication_slot_advance('standby1', pg_current_wal_lsn())",
    );
    wait_until(SYNC_TIMEOUT, "the changes to arrive", || after(100) == 10);
}

/// A failover, end to end (PostgreSQL 17+): livesync syncs from a primary whose standby
/// synchronizes failover slots; the primary dies at once; the standby is promoted and the
/// sync is pointed at it. The target then holds nothing the promoted standby lacks (the
/// primary sent livesync only what the standby had), and it follows what comes next.
#[test]
fn the_sync_follows_a_failover_to_a_promoted_standby() {
    let primary = Cluster::new_private(Kind::Source, "fo_primary");
    if primary.major() < 17 {
        // Slot synchronization to standbys is PostgreSQL 17's.
        assert_no_such_setting(&primary, "sync_replication_slots");
        return;
    }
    let standby = Cluster::new_standby(
        &primary,
        "fo_standby",
        "standby1",
        &["sync_replication_slots = on", "hot_standby_feedback = on"],
    );
    primary.exec(
        "postgres",
        "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'",
    );
    primary.exec("postgres", "SELECT pg_reload_conf()");
    let src = Db::fresh(&primary, "fo_src");
    let tgt = Db::fresh(target(), "fo_tgt");
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'a' FROM generate_series(1, 1000) g; \
         CREATE PUBLICATION p FOR TABLE t",
    );
    tgt.exec("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let sub = "failover";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_caught_up(&src, &tgt, sub);
    assert_eq!(slot_failover(&primary, sub), Some(true));
    wait_until(
        SYNC_TIMEOUT,
        "the standby to hold a synchronized, persistent copy of the slot",
        || {
            standby
                .client("postgres")
                .query(
                    "SELECT synced AND NOT temporary FROM pg_replication_slots \
                     WHERE slot_name = $1",
                    &[&sub],
                )
                .unwrap()
                .first()
                .map(|r| r.get::<_, bool>(0))
                == Some(true)
        },
    );

    // Changes flow; the primary dies while they do.
    let w = BackgroundWriter::spawn(&src, "primary writer", |c, i| {
        c.execute("INSERT INTO t VALUES (1001 + $1::int, 'b')", &[&(i as i32)])
            .map(|_| ())
    });
    let n = || -> i64 { tgt.query_one("SELECT count(*) FROM t") };
    wait_until(SYNC_TIMEOUT, "changes to reach the target", || n() > 1200);
    primary.stop(StopMode::Immediate);
    drop(w);
    standby.promote();

    // The sync, pointed at the promoted standby, continues there.
    let new_src = standby.db(&src.name);
    tgt.client()
        .execute(
            "SELECT livesync_alter($1, source => $2)",
            &[&sub, &new_src.uri()],
        )
        .unwrap();
    new_src.exec(
        "INSERT INTO t SELECT g, 'c' FROM generate_series(100001, 101000) g; \
         UPDATE t SET v = 'u' WHERE id % 10 = 0",
    );
    wait_caught_up(&new_src, &tgt, sub);
    assert_tables_equal(&new_src, &tgt, "t");
}

/// A slot that PostgreSQL 18 invalidated because it stayed idle too long
/// (`idle_replication_slot_timeout`): the sync stops, names the cause and asks for a
/// resync, and writes nothing after the gap.
#[test]
fn a_slot_invalidated_for_idleness_is_reported_with_its_cause() {
    let sc = Cluster::new_private(Kind::Source, "idle_timeout_src");
    let src = Db::fresh(&sc, "idle_src");
    let tgt = Db::fresh(target(), "idle_tgt");
    if sc.major() < 18 {
        // Idle-timeout invalidation is PostgreSQL 18's: older sources have no such setting.
        assert_no_such_setting(&sc, "idle_replication_slot_timeout");
        return;
    }
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100); \
         CREATE PUBLICATION p FOR TABLE t",
    );
    tgt.exec("CREATE TABLE t (id int PRIMARY KEY)");
    let sub = "idle_timeout";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_caught_up(&src, &tgt, sub);
    livesync_stop(&tgt, sub);
    wait_until(SYNC_TIMEOUT, "the slot to be released", || {
        slot_active_pid(&sc, sub).is_none()
    });
    sc.exec(
        "postgres",
        "ALTER SYSTEM SET idle_replication_slot_timeout = '1s'",
    );
    sc.exec("postgres", "SELECT pg_reload_conf()");
    src.exec("INSERT INTO t SELECT generate_series(101, 110)");
    wait_until(
        SYNC_TIMEOUT,
        "the checkpointer to invalidate the idle slot",
        || {
            sleep(Duration::from_millis(500));
            sc.exec("postgres", "CHECKPOINT");
            let reason: Option<String> = sc.query_one(
                "postgres",
                &format!(
                "SELECT invalidation_reason FROM pg_replication_slots WHERE slot_name = '{sub}'"
            ),
            );
            reason.as_deref() == Some("idle_timeout")
        },
    );
    let text = match try_livesync_start(&tgt, &src.uri(), "p", Some(sub), None) {
        Err(e) => err_text(&e),
        Ok(()) => wait_for_last_error(&tgt, sub, SYNC_TIMEOUT, "report the lost slot", |e| {
            e.contains("invalidated")
        }),
    };
    assert!(
        text.contains(sub)
            && text.contains("idle_replication_slot_timeout")
            && text.contains("resync"),
        "the error must name the slot, the cause and the way out: {text}"
    );
}

/// A hot standby as the source: PostgreSQL 16+ decodes on standbys, so livesync can read
/// from a replica and spare the primary. (15 cannot: `livesync_start` says so.)
#[test]
fn a_hot_standby_is_a_source_from_postgresql_16() {
    let primary = Cluster::new_private(Kind::Source, "sb_primary");
    let standby = Cluster::new_standby(
        &primary,
        "sb_standby",
        "sb_phys",
        &["hot_standby_feedback = on"],
    );
    let src = Db::fresh(&primary, "sb_src");
    let tgt = Db::fresh(target(), "sb_tgt");
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'a' FROM generate_series(1, 2000) g; \
         CREATE PUBLICATION p FOR TABLE t",
    );
    tgt.exec("CREATE TABLE t (id int PRIMARY KEY, v text)");
    let replayed = |lsn: &str| -> bool {
        standby
            .client("postgres")
            .query_one(
                "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
                &[&lsn],
            )
            .unwrap()
            .get(0)
    };
    let lsn = current_lsn(&src);
    wait_until(SYNC_TIMEOUT, "the standby to replay the setup", || {
        replayed(&lsn)
    });
    let replica = standby.db(&src.name);
    // A slot on a standby waits for the primary's next running-transactions record: ask
    // the primary for them while livesync starts (as PostgreSQL's own tests do).
    let nudge = BackgroundWriter::spawn(&src, "standby snapshots", |c, _| {
        std::thread::sleep(Duration::from_millis(200));
        c.batch_execute("SELECT pg_log_standby_snapshot()")
    });
    let sub = "from_standby";
    if primary.major() < 16 {
        let e = try_livesync_start(&tgt, &replica.uri(), "p", Some(sub), None).unwrap_err();
        let text = err_text(&e);
        assert!(
            text.contains("recovery"),
            "a PostgreSQL 15 standby cannot decode: the error must say why: {text}"
        );
        return;
    }
    let _g = start_sync(&tgt, &replica.uri(), "p", sub);
    wait_for_sync_state(&tgt, sub, 'r');
    src.exec(
        "INSERT INTO t SELECT g, 'b' FROM generate_series(2001, 3000) g; \
         UPDATE t SET v = 'u' WHERE id % 7 = 0; DELETE FROM t WHERE id % 11 = 0",
    );
    // Changes apply in commit order: once the last one is there, all are.
    src.exec("INSERT INTO t VALUES (1000000, 'last')");
    wait_until(SYNC_TIMEOUT, "the changes to reach the target", || {
        tgt.query_one::<i64>("SELECT count(*) FROM t WHERE id = 1000000") == 1
    });
    assert_tables_equal(&src, &tgt, "t");
    drop(nudge);
}
