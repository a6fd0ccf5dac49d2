//! Smoke tests of the harness itself: they need TimescaleDB but not livesync, so they pass
//! with `LIVESYNC_E2E_PRELOAD=timescaledb` before the extension is installed.

use std::time::{Duration, Instant};

use livesync_e2e::*;

#[test]
fn smoke_source_and_target_with_hypertable() {
    let t0 = Instant::now();
    let src = Db::fresh(source(), "smoke_src");
    let tgt = Db::fresh_without_livesync(target(), "smoke_tgt");
    eprintln!(
        "[e2e] both shared clusters up after {:.1}s",
        t0.elapsed().as_secs_f64()
    );

    assert_eq!(src.query_one::<String>("SHOW wal_level"), "logical");
    assert_eq!(tgt.query_one::<String>("SHOW wal_level"), "logical");
    let preload: String = tgt.query_one("SHOW shared_preload_libraries");
    assert_eq!(preload, target_preload());
    let slots: String = src.query_one("SHOW max_replication_slots");
    assert_eq!(slots, "40");

    let ddl = "CREATE TABLE metrics (ts timestamptz NOT NULL, device int NOT NULL, \
               value double precision, PRIMARY KEY (device, ts))";
    src.exec(ddl);
    copy_schema(&src, &tgt, &["public.metrics"]);
    tgt.exec(
        "SET client_min_messages = warning; \
         SELECT create_hypertable('metrics', 'ts', chunk_time_interval => interval '1 day')",
    );
    let fill = "INSERT INTO metrics SELECT '2024-01-01'::timestamptz + g * interval '1 minute', \
                g % 10, g * 0.5 FROM generate_series(1, 5000) g";
    src.exec(fill);
    tgt.exec(fill);
    assert_eq!(
        count_only(&tgt, "metrics"),
        0,
        "rows in the hypertable's root"
    );
    assert!(chunk_count(&tgt, "metrics") >= 3, "expected chunks");
    assert_tables_equal(&src, &tgt, "metrics");
    assert_no_duplicates(&tgt, "metrics", "device, ts");

    // The checksum sees a difference in one value and in multiplicity.
    tgt.exec("UPDATE metrics SET value = value + 1 WHERE device = 3 AND ts = (SELECT min(ts) FROM metrics WHERE device = 3)");
    let (a, b) = (
        table_checksum(&mut src.client(), "metrics"),
        table_checksum(&mut tgt.client(), "metrics"),
    );
    assert_eq!(a.0, b.0);
    assert_ne!(a.1, b.1);

    // Both conninfo forms reach the source over TCP.
    for ci in [src.uri(), src.conninfo()] {
        let mut c = postgres::Client::connect(&ci, postgres::NoTls).expect(&ci);
        let one: i32 = c.query_one("SELECT 1", &[]).unwrap().get(0);
        assert_eq!(one, 1);
    }

    // The background writer writes.
    src.exec(&kv_table_ddl("kv"));
    src.exec(&kv_fill_sql("kv", 1000));
    let w = BackgroundWriter::kv(&src, "kv", 1001);
    std::thread::sleep(Duration::from_millis(500));
    let stats = w.stop();
    eprintln!("[e2e] writer: {stats:?}");
    assert!(stats.inserts > 0 && stats.updates > 0);
    assert_no_duplicates(&src, "kv", "id");

    assert!(slots_on_source(source(), "nonexistent_prefix").is_empty());
    eprintln!(
        "[e2e] smoke test body took {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn smoke_private_cluster_restart_and_kill() {
    let t0 = Instant::now();
    let c = Cluster::new_private(Kind::Source, "smoke_private");
    let db = Db::fresh(&c, "p");
    db.exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 100)");

    c.restart(StopMode::Immediate);
    assert_eq!(db.query_one::<i64>("SELECT count(*) FROM t"), 100);

    db.exec("INSERT INTO t VALUES (101)");
    c.restart(StopMode::Fast);
    assert_eq!(db.query_one::<i64>("SELECT count(*) FROM t"), 101);

    // kill -9 of a backend: the postmaster restarts everything by itself.
    let mut victim = db.client();
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    kill9(pid);
    c.wait_ready(Duration::from_secs(30));
    assert_eq!(db.query_one::<i64>("SELECT count(*) FROM t"), 101);

    // kill -9 of the postmaster, then start again.
    c.kill9_postmaster();
    assert!(!c.is_running());
    c.start();
    assert_eq!(db.query_one::<i64>("SELECT count(*) FROM t"), 101);
    eprintln!(
        "[e2e] private cluster test took {:.1}s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn wait_until_times_out_with_a_clear_message() {
    let _ = source();
    let r = std::panic::catch_unwind(|| {
        wait_until(
            Duration::from_millis(300),
            "something that never happens",
            || false,
        )
    });
    let e = r.expect_err("must panic");
    let msg = e.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("something that never happens"), "{msg}");
    assert!(msg.contains("server.log"), "log tails missing: {msg}");
}
