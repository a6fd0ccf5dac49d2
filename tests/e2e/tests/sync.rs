//! livesync end to end on this binary's shared source and target clusters: initial copy,
//! streaming, hypertables, publication changes, stop/resume, copy_data, several syncs, drop.
//!
//! Every test works in databases of its own and uses sync names no other test of this binary
//! uses (slots are global on the shared source). Only `hypertable_target_*` uses the default
//! name `livesync`.

use std::collections::BTreeMap;
use std::thread::sleep;
use std::time::Duration;

use livesync_e2e::*;

/// Creates the same DDL on source and target.
fn ddl_both(src: &Db, tgt: &Db, ddl: &str) {
    src.exec(ddl);
    tgt.exec(ddl);
}

const WIDE_DDL: &str =
    "CREATE TABLE wide (id bigint PRIMARY KEY, ts timestamptz, n numeric(12,3), \
     j jsonb, arr int[], b bytea, note text, flag boolean, d date, f real)";

const WIDE_FILL: &str = r#"INSERT INTO wide
    SELECT g, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 second 7 ms', g / 7.0,
           jsonb_build_object('k', g, 's', E'tab\there\nnewline "quoted"'),
           ARRAY[g::int, NULL, -g::int], decode(md5(g::text), 'hex'),
           CASE WHEN g % 5 = 0 THEN NULL ELSE E'quote '' backslash \\ unicode é ✓ ' || g END,
           g % 2 = 0, date '2000-01-01' + g::int, g / 3.0
    FROM generate_series(1, 2000) g"#;

#[test]
fn initial_copy_under_concurrent_writes() {
    let src = Db::fresh(source(), "copy_src");
    let tgt = Db::fresh(target(), "copy_tgt");
    let ddl = format!(
        "{}; {}; {}; {WIDE_DDL}",
        kv_table_ddl("a"),
        kv_table_ddl("b"),
        kv_table_ddl("c")
    );
    ddl_both(&src, &tgt, &ddl);
    src.exec(&kv_fill_sql("a", 20_000));
    src.exec(&kv_fill_sql("b", 5_000));
    src.exec(&kv_fill_sql("c", 3_000));
    src.exec(WIDE_FILL);
    src.exec("CREATE PUBLICATION analytics FOR TABLE a, b, c, wide");

    let wa = BackgroundWriter::kv(&src, "a", 20_001);
    let wb = BackgroundWriter::kv(&src, "b", 5_001);
    sleep(Duration::from_millis(300));

    let sub = "copy_writes";
    // key=value form of the connection string
    let _g = start_sync(&tgt, &src.conninfo(), "analytics", sub);
    let wc = BackgroundWriter::kv(&src, "c", 3_001);
    src.exec("UPDATE wide SET note = note || ' changed', j = j || '{\"x\": 1}' WHERE id % 10 = 1");
    src.exec("DELETE FROM wide WHERE id % 10 = 2");
    wait_for_tables(
        &tgt,
        sub,
        &["public.a", "public.b", "public.c", "public.wide"],
        'r',
    );
    sleep(Duration::from_secs(1)); // keep writing after every table is ready
    let stats = [wa.stop(), wb.stop(), wc.stop()];
    eprintln!("[e2e] writers: {stats:?}");
    src.exec(
        "INSERT INTO wide SELECT id + 5000, ts, n, j, arr, b, note, flag, d, f FROM wide WHERE id < 100",
    );

    assert_synced(&src, &tgt, sub, &["a", "b", "c", "wide"]);
    for t in ["a", "b", "c", "wide"] {
        assert_no_duplicates(&tgt, t, "id");
    }

    let info = sub_info(&tgt, sub).expect("row in livesync.subscription");
    assert!(info.enabled, "{info:?}");
    assert_eq!(info.publication, "analytics");
    assert!(info.pid.is_some(), "no apply worker pid: {info:?}");
    assert!(
        info.received_lsn.is_some() && info.applied_lsn.is_some(),
        "{info:?}"
    );
    assert!(info.lag_bytes.is_some(), "{info:?}");
}

fn state_rank(c: char) -> usize {
    "idfsr"
        .find(c)
        .unwrap_or_else(|| panic!("state '{c}' is not one of i d f s r"))
}

#[test]
fn state_progression_and_views() {
    let src = Db::fresh(source(), "state_src");
    let tgt = Db::fresh(target(), "state_tgt");
    ddl_both(
        &src,
        &tgt,
        &format!("{}; {}", kv_table_ddl("big"), kv_table_ddl("small")),
    );
    src.exec(&kv_fill_sql("big", 100_000));
    src.exec(&kv_fill_sql("small", 100));
    src.exec(&format!(
        "{}; {}",
        kv_table_ddl("unpublished"),
        kv_fill_sql("unpublished", 10)
    ));
    src.exec("CREATE PUBLICATION analytics FOR TABLE big, small");

    let sub = "state_views";
    // A password in the connection string (trust auth ignores it) must never be shown.
    let secret = "s3cret_pw_zz";
    let _g = start_sync(
        &tgt,
        &source().uri_as("postgres", Some(secret), &src.name),
        "analytics",
        sub,
    );

    // Poll quickly and record every state seen per table.
    let mut seen: BTreeMap<String, Vec<char>> = BTreeMap::new();
    wait_until(
        SYNC_TIMEOUT,
        "every table to reach 'r' (recording states)",
        || {
            let Ok(rels) = try_sub_rels(&tgt, sub) else {
                return false;
            };
            for r in &rels {
                let v = seen.entry(r.qualified()).or_default();
                if v.last() != Some(&r.state) {
                    v.push(r.state);
                }
            }
            rels.len() == 2 && rels.iter().all(|r| r.state == 'r')
        },
    );
    eprintln!("[e2e] states seen: {seen:?}");
    for (t, states) in &seen {
        let ranks: Vec<usize> = states.iter().map(|c| state_rank(*c)).collect();
        assert!(
            ranks.windows(2).all(|w| w[0] < w[1]),
            "{t}: states went backwards: {states:?}"
        );
        assert_eq!(states.last(), Some(&'r'), "{t}: {states:?}");
    }

    // Rows: the source oids, an LSN once ready.
    let rels = sub_rels(&tgt, sub);
    for r in &rels {
        let oid: u32 = src.query_one(&format!("SELECT '{}'::regclass::oid", r.qualified()));
        assert_eq!(r.rrelid, oid, "rrelid of {}", r.qualified());
        assert!(r.lsn.is_some(), "lsn of a ready table is NULL: {r:?}");
    }
    assert_eq!(
        rels.iter().map(|r| r.qualified()).collect::<Vec<_>>(),
        vec!["public.big".to_string(), "public.small".to_string()]
    );

    // Column names and types, in order, of both views.
    let cols = |view: &str| -> Vec<(String, String)> {
        tgt.client()
            .query(
                "SELECT attname::text, format_type(atttypid, atttypmod) FROM pg_attribute \
                 WHERE attrelid = $1::text::regclass AND attnum > 0 AND NOT attisdropped \
                 ORDER BY attnum LIMIT 6",
                &[&view],
            )
            .unwrap_or_else(|e| panic!("columns of {view}: {}", err_text(&e)))
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    };
    let expected: Vec<(String, String)> = [
        ("subname", "name"),
        ("schemaname", "name"),
        ("tablename", "name"),
        ("rrelid", "oid"),
        ("state", "\"char\""),
        ("lsn", "pg_lsn"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(cols("livesync.subscription_rel"), expected);
    assert_eq!(cols("_ts_live_sync.subscription_rel"), expected);

    // The compatibility view shows the same rows (first six columns).
    let rows = |view: &str| -> Vec<String> {
        tgt.client()
            .query(
                format!(
                    "SELECT (subname, schemaname, tablename, rrelid, state, lsn)::text FROM {view} \
                     WHERE subname = $1 ORDER BY 1"
                )
                .as_str(),
                &[&sub],
            )
            .unwrap_or_else(|e| panic!("rows of {view}: {}", err_text(&e)))
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    assert_eq!(
        rows("livesync.subscription_rel"),
        rows("_ts_live_sync.subscription_rel")
    );
    let verbatim: i64 =
        tgt.query_one("SELECT count(*) FROM (SELECT * FROM _ts_live_sync.subscription_rel) s");
    assert!(verbatim >= 2);

    // livesync.subscription: required columns, worker, LSNs, no password.
    let sub_cols: Vec<String> = tgt
        .client()
        .query(
            "SELECT attname::text FROM pg_attribute WHERE attrelid = 'livesync.subscription'::regclass \
             AND attnum > 0 AND NOT attisdropped",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for c in [
        "subname",
        "enabled",
        "publication",
        "pid",
        "received_lsn",
        "applied_lsn",
        "lag_bytes",
        "last_error",
        "last_error_time",
    ] {
        assert!(
            sub_cols.iter().any(|x| x == c),
            "livesync.subscription lacks column {c}: {sub_cols:?}"
        );
    }
    let info = sub_info(&tgt, sub).expect("subscription row");
    let pid = info.pid.expect("apply worker pid");
    let backend_type: String = tgt
        .client()
        .query_one(
            "SELECT backend_type FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap_or_else(|e| {
            panic!("pid {pid} of livesync.subscription not in pg_stat_activity: {e}")
        })
        .get(0);
    assert!(
        backend_type.contains("livesync"),
        "backend_type of the apply worker: {backend_type}"
    );
    let whole: String =
        tgt.query_one("SELECT string_agg(s::text, ' ') FROM livesync.subscription s");
    assert!(
        !whole.contains(secret),
        "livesync.subscription shows the password: {whole}"
    );
    let whole_rel: String = tgt.query_one(
        "SELECT coalesce(string_agg(s::text, ' '), '') FROM livesync.subscription_rel s",
    );
    assert!(!whole_rel.contains(secret));

    // Streaming, then applied_lsn advancing on WAL that holds nothing published.
    src.exec("INSERT INTO small SELECT g, g, 'live' FROM generate_series(101, 150) g");
    assert_synced(&src, &tgt, sub, &["big", "small"]);
    src.exec("INSERT INTO unpublished SELECT g, g, 'x' FROM generate_series(11, 5000) g");
    wait_caught_up(&src, &tgt, sub);
    let lag: String = tgt.query_one(&format!(
        "SELECT lag_bytes::text FROM livesync.subscription WHERE subname = '{sub}'"
    ));
    assert!(!lag.starts_with('-'), "negative lag_bytes {lag}");
    let received_ge_applied: bool = tgt.query_one(&format!(
        "SELECT received_lsn >= applied_lsn FROM livesync.subscription WHERE subname = '{sub}'"
    ));
    assert!(received_ge_applied, "{:?}", sub_info(&tgt, sub));
}

#[test]
fn hypertable_target_rows_land_in_chunks() {
    let src = Db::fresh(source(), "ht_src");
    let tgt = Db::fresh(target(), "ht_tgt");
    src.exec(
        "CREATE TABLE devices (id int PRIMARY KEY, name text NOT NULL); \
         CREATE TABLE metrics (ts timestamptz NOT NULL, device int NOT NULL, value double precision, \
                               PRIMARY KEY (device, ts)); \
         INSERT INTO devices SELECT g, 'device ' || g FROM generate_series(1, 20) g; \
         INSERT INTO metrics SELECT '2024-01-01 00:00:00+00'::timestamptz + (g / 20) * interval '1 minute', \
                g % 20 + 1, g * 0.25 FROM generate_series(0, 39999) g; \
         CREATE PUBLICATION analytics FOR TABLE metrics, devices",
    );
    // The user's way: schema from pg_dump, then hypertables.
    copy_schema(&src, &tgt, &[]);
    tgt.exec(
        "SET client_min_messages = warning; \
         SELECT create_hypertable('metrics', 'ts', chunk_time_interval => interval '6 hours')",
    );

    // Default subscription name 'livesync'.
    try_livesync_start(&tgt, &src.uri(), "analytics", None, None)
        .unwrap_or_else(|e| panic!("livesync_start with the default name: {}", err_text(&e)));
    let sub = "livesync";
    let _g = SyncGuard::new(&tgt, sub);
    wait_for_tables(&tgt, sub, &["public.devices", "public.metrics"], 'r');
    assert_synced(&src, &tgt, sub, &["metrics", "devices"]);
    assert_eq!(
        count_only(&tgt, "metrics"),
        0,
        "copied rows landed in the hypertable's root"
    );
    let chunks_before = chunk_count(&tgt, "metrics");
    assert!(chunks_before >= 4, "only {chunks_before} chunks");

    // Live changes, including a new time range (new chunks).
    src.exec(
        "INSERT INTO metrics SELECT '2024-03-01 00:00:00+00'::timestamptz + g * interval '10 minutes', \
                g % 20 + 1, -g FROM generate_series(0, 999) g; \
         UPDATE metrics SET value = value * 2 WHERE device = 3 AND ts < '2024-01-01 06:00:00+00'; \
         DELETE FROM metrics WHERE device = 4 AND ts < '2024-01-01 12:00:00+00'; \
         INSERT INTO devices VALUES (21, 'new device'); \
         UPDATE devices SET name = name || ' (renamed)' WHERE id = 2; \
         DELETE FROM devices WHERE id = 20",
    );
    assert_synced(&src, &tgt, sub, &["metrics", "devices"]);
    assert_no_duplicates(&tgt, "metrics", "device, ts");
    assert_eq!(
        count_only(&tgt, "metrics"),
        0,
        "live changes landed in the hypertable's root"
    );
    let chunks_after = chunk_count(&tgt, "metrics");
    assert!(
        chunks_after > chunks_before,
        "no new chunk for the new time range ({chunks_after})"
    );
    // Every row sits in the chunk whose range holds its time.
    let misplaced: i64 = tgt.query_one(
        "SELECT count(*) FROM metrics m JOIN timescaledb_information.chunks c \
           ON m.tableoid = format('%I.%I', c.chunk_schema, c.chunk_name)::regclass \
         WHERE m.ts < c.range_start OR m.ts >= c.range_end",
    );
    assert_eq!(misplaced, 0);

    // Default-argument stop and drop.
    tgt.exec("SELECT livesync_stop()");
    assert_eq!(
        sub_info(&tgt, sub).map(|i| i.pid),
        Some(None),
        "livesync_stop() left a worker"
    );
    tgt.exec("SELECT livesync_drop()");
    assert!(sub_info(&tgt, sub).is_none());
    assert_eq!(slots_on_source(source(), "livesync"), Vec::<String>::new());
}

#[test]
fn publication_created_after_start() {
    let src = Db::fresh(source(), "latepub_src");
    let tgt = Db::fresh(target(), "latepub_tgt");
    ddl_both(&src, &tgt, &kv_table_ddl("t"));
    src.exec(&kv_fill_sql("t", 3_000));

    let sub = "late_pub";
    let _g = start_sync(&tgt, &src.uri(), "late", sub);
    sleep(Duration::from_secs(2));
    let info = sub_info(&tgt, sub).expect("a sync waiting for its publication is listed");
    assert!(info.enabled, "{info:?}");
    assert_eq!(info.publication, "late");
    assert!(
        sub_rels(&tgt, sub).is_empty(),
        "tables listed before the publication exists"
    );

    let w = BackgroundWriter::kv(&src, "t", 3_001);
    src.exec("CREATE PUBLICATION late FOR TABLE t");
    wait_for_tables(&tgt, sub, &["public.t"], 'r');
    w.stop();
    assert_synced(&src, &tgt, sub, &["t"]);
    src.exec("INSERT INTO t SELECT g, g, 'after' FROM generate_series(900001, 900100) g");
    assert_synced(&src, &tgt, sub, &["t"]);
    assert_no_duplicates(&tgt, "t", "id");
}

#[test]
fn alter_publication_add_and_drop_table() {
    let src = Db::fresh(source(), "alter_src");
    let tgt = Db::fresh(target(), "alter_tgt");
    ddl_both(
        &src,
        &tgt,
        &format!(
            "{}; {}; {}",
            kv_table_ddl("t1"),
            kv_table_ddl("t2"),
            kv_table_ddl("t3")
        ),
    );
    src.exec(&format!(
        "{}; {}; {}",
        kv_fill_sql("t1", 1000),
        kv_fill_sql("t2", 2000),
        kv_fill_sql("t3", 500)
    ));
    src.exec("CREATE PUBLICATION analytics FOR TABLE t1");

    let sub = "alter_pub";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.t1"], 'r');
    assert_synced(&src, &tgt, sub, &["t1"]);

    // ADD TABLE while t2 is being written to: picked up without a restart.
    let w = BackgroundWriter::kv(&src, "t2", 2_001);
    let pid_before = sub_info(&tgt, sub).and_then(|i| i.pid);
    src.exec("ALTER PUBLICATION analytics ADD TABLE t2, t3");
    wait_for_tables(&tgt, sub, &["public.t1", "public.t2", "public.t3"], 'r');
    w.stop();
    assert_synced(&src, &tgt, sub, &["t1", "t2", "t3"]);
    assert_no_duplicates(&tgt, "t2", "id");

    // DROP TABLE: leaves the list; later changes to it are not applied.
    src.exec("ALTER PUBLICATION analytics DROP TABLE t1");
    wait_for_tables(&tgt, sub, &["public.t2", "public.t3"], 'r');
    let t1_before = table_checksum(&mut tgt.client(), "t1");
    src.exec(
        "INSERT INTO t1 SELECT g, g, 'not published' FROM generate_series(5001, 5100) g; \
              UPDATE t1 SET v = -1 WHERE id < 10; \
              INSERT INTO t2 SELECT g, g, 'published' FROM generate_series(900001, 900100) g",
    );
    assert_synced(&src, &tgt, sub, &["t2", "t3"]);
    assert_eq!(
        table_checksum(&mut tgt.client(), "t1"),
        t1_before,
        "changes to a dropped table were applied"
    );
    let pid_after = sub_info(&tgt, sub).and_then(|i| i.pid);
    eprintln!(
        "[e2e] apply worker pid before/after publication changes: {pid_before:?} {pid_after:?}"
    );
}

#[test]
fn for_all_tables_publication_picks_up_created_table() {
    let src = Db::fresh(source(), "alltab_src");
    let tgt = Db::fresh(target(), "alltab_tgt");
    ddl_both(&src, &tgt, &kv_table_ddl("t1"));
    tgt.exec(&kv_table_ddl("t2"));
    src.exec(&kv_fill_sql("t1", 500));
    src.exec("CREATE PUBLICATION everything FOR ALL TABLES");

    let sub = "all_tables";
    let _g = start_sync(&tgt, &src.uri(), "everything", sub);
    wait_for_tables(&tgt, sub, &["public.t1"], 'r');
    src.exec(&format!(
        "{}; {}",
        kv_table_ddl("t2"),
        kv_fill_sql("t2", 700)
    ));
    wait_for_tables(&tgt, sub, &["public.t1", "public.t2"], 'r');
    src.exec("INSERT INTO t2 SELECT g, g, 'live' FROM generate_series(701, 800) g");
    assert_synced(&src, &tgt, sub, &["t1", "t2"]);
}

#[test]
fn stop_and_resume_loses_nothing() {
    let src = Db::fresh(source(), "stop_src");
    let tgt = Db::fresh(target(), "stop_tgt");
    ddl_both(&src, &tgt, &kv_table_ddl("t"));
    src.exec(&kv_fill_sql("t", 5_000));
    src.exec("CREATE PUBLICATION analytics FOR TABLE t");

    let sub = "stop_resume";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.t"], 'r');
    let w = BackgroundWriter::kv(&src, "t", 5_001);
    sleep(Duration::from_secs(1));

    livesync_stop(&tgt, sub);
    // Returns once the workers have exited.
    let info = sub_info(&tgt, sub).expect("a stopped sync keeps its row");
    assert!(!info.enabled, "{info:?}");
    assert_eq!(info.pid, None, "{info:?}");
    assert_eq!(
        livesync_backends(&tgt),
        vec![],
        "livesync processes still running after livesync_stop"
    );
    assert!(
        slots_on_source(source(), sub).contains(&sub.to_string()),
        "the main slot must be kept"
    );

    let frozen = table_checksum(&mut tgt.client(), "t");
    sleep(Duration::from_secs(2)); // writes keep going on the source
    let stats = w.stop();
    src.exec(
        "DELETE FROM t WHERE id % 7 = 0; UPDATE t SET payload = 'while stopped' WHERE id % 11 = 0",
    );
    sleep(Duration::from_secs(1));
    assert_eq!(
        table_checksum(&mut tgt.client(), "t"),
        frozen,
        "a stopped sync applied changes"
    );
    assert_eq!(sub_info(&tgt, sub).and_then(|i| i.pid), None);

    // Same arguments: resumes.
    try_livesync_start(&tgt, &src.uri(), "analytics", Some(sub), None)
        .unwrap_or_else(|e| panic!("resume: {}", err_text(&e)));
    assert_synced(&src, &tgt, sub, &["t"]);
    assert_no_duplicates(&tgt, "t", "id");
    let info = sub_info(&tgt, sub).unwrap();
    assert!(info.enabled && info.pid.is_some(), "{info:?}");
    eprintln!("[e2e] writer while stopping: {stats:?}");
}

#[test]
fn copy_data_false_streams_only_new_changes() {
    let src = Db::fresh(source(), "nocopy_src");
    let tgt = Db::fresh(target(), "nocopy_tgt");
    ddl_both(&src, &tgt, &kv_table_ddl("t"));
    src.exec(&kv_fill_sql("t", 1_000));
    src.exec("CREATE PUBLICATION analytics FOR TABLE t");

    let sub = "no_copy";
    let _g = start_sync_opts(&tgt, &src.uri(), "analytics", sub, Some(false));
    wait_for_tables(&tgt, sub, &["public.t"], 'r');
    wait_until(SYNC_TIMEOUT, "the main slot on the source", || {
        slots_on_source(source(), sub).contains(&sub.to_string())
    });
    wait_caught_up(&src, &tgt, sub);
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*) FROM t"),
        0,
        "copy_data => false copied data"
    );

    src.exec(
        "INSERT INTO t SELECT g, g, 'new' FROM generate_series(1001, 1010) g; \
              UPDATE t SET payload = 'updated' WHERE id = 1005; DELETE FROM t WHERE id = 1010",
    );
    wait_caught_up(&src, &tgt, sub);
    let new_rows = "(SELECT * FROM t WHERE id > 1000)";
    assert_eq!(
        table_checksum(&mut src.client(), new_rows),
        table_checksum(&mut tgt.client(), "t"),
        "target must hold exactly the rows written after the start"
    );
    assert_eq!(tgt.query_one::<i64>("SELECT count(*) FROM t"), 9);
}

#[test]
fn two_syncs_in_one_target_database_from_two_sources() {
    let src1 = Db::fresh(source(), "two_src1");
    let src2 = Db::fresh(source(), "two_src2");
    let tgt = Db::fresh(target(), "two_tgt");
    src1.exec(&format!(
        "{}; {}",
        kv_table_ddl("a"),
        kv_fill_sql("a", 2_000)
    ));
    src2.exec(&format!(
        "{}; {}",
        kv_table_ddl("b"),
        kv_fill_sql("b", 3_000)
    ));
    src1.exec("CREATE PUBLICATION p1 FOR TABLE a");
    src2.exec("CREATE PUBLICATION p2 FOR TABLE b");
    tgt.exec(&format!("{}; {}", kv_table_ddl("a"), kv_table_ddl("b")));

    let (sa, sb) = ("two_a", "two_b");
    let _ga = start_sync(&tgt, &src1.uri(), "p1", sa);
    let _gb = start_sync(&tgt, &src2.conninfo(), "p2", sb);
    let w1 = BackgroundWriter::kv(&src1, "a", 2_001);
    let w2 = BackgroundWriter::kv(&src2, "b", 3_001);
    wait_for_tables(&tgt, sa, &["public.a"], 'r');
    wait_for_tables(&tgt, sb, &["public.b"], 'r');
    sleep(Duration::from_millis(500));
    w1.stop();
    w2.stop();
    assert_synced(&src1, &tgt, sa, &["a"]);
    assert_synced(&src2, &tgt, sb, &["b"]);

    let (ia, ib) = (sub_info(&tgt, sa).unwrap(), sub_info(&tgt, sb).unwrap());
    assert!(
        ia.pid.is_some() && ib.pid.is_some() && ia.pid != ib.pid,
        "{ia:?} {ib:?}"
    );
    assert!(slots_on_source(source(), sa).contains(&sa.to_string()));
    assert!(slots_on_source(source(), sb).contains(&sb.to_string()));

    // Dropping one leaves the other running.
    livesync_drop(&tgt, sa);
    assert!(slots_on_source(source(), sa).is_empty());
    src2.exec("INSERT INTO b SELECT g, g, 'still' FROM generate_series(900001, 900050) g");
    assert_synced(&src2, &tgt, sb, &["b"]);
}

#[test]
fn drop_removes_slots_and_state_but_keeps_data() {
    let src = Db::fresh(source(), "drop_src");
    let tgt = Db::fresh(target(), "drop_tgt");
    ddl_both(
        &src,
        &tgt,
        &format!("{}; {}", kv_table_ddl("t"), kv_table_ddl("u")),
    );
    src.exec(&format!(
        "{}; {}",
        kv_fill_sql("t", 3_000),
        kv_fill_sql("u", 100)
    ));
    src.exec("CREATE PUBLICATION analytics FOR TABLE t, u");

    let sub = "drop_me";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    assert_synced(&src, &tgt, sub, &["t", "u"]);
    assert!(slots_on_source(source(), sub).contains(&sub.to_string()));

    livesync_drop(&tgt, sub);
    assert_eq!(
        slots_on_source(source(), sub),
        Vec::<String>::new(),
        "slots left after livesync_drop"
    );
    assert!(
        sub_info(&tgt, sub).is_none(),
        "livesync.subscription row left"
    );
    assert!(
        sub_rels(&tgt, sub).is_empty(),
        "livesync.subscription_rel rows left"
    );
    assert_eq!(livesync_backends(&tgt), vec![], "livesync processes left");
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*) FROM t"),
        3_000,
        "data must stay"
    );
    sleep(Duration::from_secs(2));
    assert_eq!(
        slots_on_source(source(), sub),
        Vec::<String>::new(),
        "a slot came back after drop"
    );

    // The name can be used again.
    tgt.exec("TRUNCATE t, u");
    let _g2 = start_sync(&tgt, &src.uri(), "analytics", sub);
    assert_synced(&src, &tgt, sub, &["t", "u"]);
}

#[test]
fn drop_during_initial_copy_leaves_no_slot() {
    let src = Db::fresh(source(), "dropcopy_src");
    let tgt = Db::fresh(target(), "dropcopy_tgt");
    let mut ddl = Vec::new();
    for t in ["t1", "t2", "t3", "t4"] {
        ddl.push(kv_table_ddl(t));
    }
    ddl_both(&src, &tgt, &ddl.join(";"));
    for t in ["t1", "t2", "t3", "t4"] {
        src.exec(&kv_fill_sql(t, 200_000));
    }
    src.exec("CREATE PUBLICATION analytics FOR TABLE t1, t2, t3, t4");

    let sub = "drop_copy";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    // Drop as soon as copying has begun (or after 3 s, whatever comes first).
    let t0 = std::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        let copying = try_sub_rels(&tgt, sub)
            .map(|r| r.iter().any(|x| x.state == 'd' || x.state == 'f'))
            .unwrap_or(false);
        if copying || slots_on_source(source(), sub).len() > 1 {
            break;
        }
        sleep(Duration::from_millis(20));
    }
    eprintln!(
        "[e2e] dropping while: {:?}, slots {:?}",
        sub_rels(&tgt, sub),
        slots_on_source(source(), sub)
    );
    livesync_drop(&tgt, sub);
    assert_eq!(
        slots_on_source(source(), sub),
        Vec::<String>::new(),
        "slots left after a drop during the copy"
    );
    assert!(sub_info(&tgt, sub).is_none());
    assert!(sub_rels(&tgt, sub).is_empty());
    sleep(Duration::from_secs(3));
    assert_eq!(
        slots_on_source(source(), sub),
        Vec::<String>::new(),
        "a slot came back after drop"
    );
    assert_eq!(livesync_backends(&tgt), vec![]);
}

#[test]
fn timeouts_set_for_the_source_role_do_not_cut_the_sync() {
    // Managed sources often set statement_timeout and idle timeouts for roles. A copy may
    // take hours and a walsender idles between commands: livesync's connections override
    // them (as startup parameters, which take precedence over ALTER ROLE settings).
    let src = Db::fresh(source(), "srctimeout_src");
    let tgt = Db::fresh(target(), "srctimeout_tgt");
    ddl_both(&src, &tgt, &kv_table_ddl("t"));
    src.exec(&kv_fill_sql("t", 200_000));
    src.exec("CREATE PUBLICATION p FOR TABLE t");
    source().exec(
        "postgres",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'impatient') THEN \
         CREATE ROLE impatient LOGIN REPLICATION; END IF; END $$; \
         ALTER ROLE impatient SET statement_timeout = '1ms'; \
         ALTER ROLE impatient SET lock_timeout = '1ms'; \
         ALTER ROLE impatient SET idle_in_transaction_session_timeout = '1s'; \
         ALTER ROLE impatient SET idle_session_timeout = '1s'",
    );
    src.exec("GRANT SELECT ON t TO impatient");
    // The role's setting is in force for its ordinary sessions.
    let mut cfg = src.config();
    cfg.user("impatient").options("");
    let mut c = cfg.connect(postgres::NoTls).expect("connect as impatient");
    let slow = c.batch_execute("SELECT pg_sleep(0.2)");
    assert_eq!(
        slow.as_ref().err().and_then(sqlstate).as_deref(),
        Some("57014"),
        "the role's statement_timeout should cancel a slow query: {slow:?}"
    );

    let sub = "srctimeout";
    let _g = start_sync(
        &tgt,
        &source().uri_as("impatient", None, &src.name),
        "p",
        sub,
    );
    wait_for_tables(&tgt, sub, &["public.t"], 'r');
    src.exec("UPDATE t SET v = v + 1 WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0");
    sleep(Duration::from_secs(2)); // longer than the idle timeouts
    src.exec("INSERT INTO t SELECT g, g, 'late' FROM generate_series(200001, 200100) g");
    assert_synced(&src, &tgt, sub, &["t"]);
    assert_eq!(sub_info(&tgt, sub).unwrap().last_error, None);
}

#[test]
fn drop_extension_that_fails_changes_nothing() {
    // DROP EXTENSION livesync refused by PostgreSQL (a user view depends on the extension)
    // must leave the sync as it was: slot kept on the source, changes still applied. Then,
    // with the view gone, it drops the extension and the slot.
    let src = Db::fresh(source(), "dropextfail_src");
    let tgt = Db::fresh(target(), "dropextfail_tgt");
    ddl_both(&src, &tgt, &kv_table_ddl("t"));
    src.exec(&kv_fill_sql("t", 500));
    src.exec("CREATE PUBLICATION p FOR TABLE t");
    let sub = "dropextfail";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_for_tables(&tgt, sub, &["public.t"], 'r');
    tgt.exec("CREATE VIEW my_sync_status AS SELECT subname, lag_bytes FROM livesync.subscription");

    let err = tgt
        .client()
        .batch_execute("DROP EXTENSION livesync")
        .expect_err("DROP EXTENSION with a dependent view must fail");
    assert_eq!(
        sqlstate(&err).as_deref(),
        Some("2BP01"),
        "{}",
        err_text(&err)
    );
    assert_eq!(slots_on_source(source(), sub), vec![sub.to_string()]);
    src.exec("UPDATE t SET v = v + 1 WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0");
    assert_synced(&src, &tgt, sub, &["t"]);

    tgt.exec("DROP VIEW my_sync_status; DROP EXTENSION livesync");
    assert_eq!(slots_on_source(source(), sub), Vec::<String>::new());
    wait_until(
        Duration::from_secs(10),
        "livesync workers to exit after DROP EXTENSION",
        || livesync_backends(&tgt).is_empty(),
    );
}

#[test]
fn drop_extension_drops_every_sync_and_slot() {
    let src = Db::fresh(source(), "dropext_src");
    let tgt = Db::fresh(target(), "dropext_tgt");
    ddl_both(
        &src,
        &tgt,
        &format!("{}; {}", kv_table_ddl("t1"), kv_table_ddl("t2")),
    );
    src.exec(&format!(
        "{}; {}",
        kv_fill_sql("t1", 1_000),
        kv_fill_sql("t2", 1_000)
    ));
    src.exec("CREATE PUBLICATION p1 FOR TABLE t1; CREATE PUBLICATION p2 FOR TABLE t2");

    let _ga = start_sync(&tgt, &src.uri(), "p1", "dropext_a");
    let _gb = start_sync(&tgt, &src.uri(), "p2", "dropext_b");
    wait_for_tables(&tgt, "dropext_a", &["public.t1"], 'r');
    wait_for_tables(&tgt, "dropext_b", &["public.t2"], 'r');
    // a stopped sync's slot must go too
    livesync_stop(&tgt, "dropext_b");
    assert!(!slots_on_source(source(), "dropext_").is_empty());

    tgt.exec("DROP EXTENSION livesync");
    assert_eq!(
        slots_on_source(source(), "dropext_"),
        Vec::<String>::new(),
        "slots left after DROP EXTENSION"
    );
    let gone: bool = tgt.query_one("SELECT to_regclass('livesync.subscription') IS NULL");
    assert!(
        gone,
        "livesync.subscription still exists after DROP EXTENSION"
    );
    wait_until(
        Duration::from_secs(10),
        "livesync workers to exit after DROP EXTENSION",
        || livesync_backends(&tgt).is_empty(),
    );
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*) FROM t1"),
        1_000,
        "data must stay"
    );

    // And it can come back, empty.
    tgt.exec("CREATE EXTENSION livesync");
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*) FROM livesync.subscription"),
        0
    );
    sleep(Duration::from_secs(2));
    assert_eq!(slots_on_source(source(), "dropext_"), Vec::<String>::new());
}

#[test]
fn unchanged_toast_and_replica_identity_full() {
    let src = Db::fresh(source(), "toast_src");
    let tgt = Db::fresh(target(), "toast_tgt");
    ddl_both(
        &src,
        &tgt,
        "CREATE TABLE doc (id int PRIMARY KEY, big text, small int); \
         CREATE TABLE nokey (a int, b text); ALTER TABLE nokey REPLICA IDENTITY FULL",
    );
    // ~22 kB of incompressible text per row: stored out of line (TOAST).
    let fill = |from: i32, to: i32| {
        format!(
            "INSERT INTO doc SELECT g, (SELECT string_agg(md5(random()::text || g || x), '') \
             FROM generate_series(1, 700) x), g FROM generate_series({from}, {to}) g"
        )
    };
    src.exec(&fill(1, 20));
    src.exec("INSERT INTO nokey SELECT g % 50, 'row ' || (g % 50) FROM generate_series(1, 200) g");
    src.exec("CREATE PUBLICATION analytics FOR TABLE doc, nokey");

    let sub = "toast_full";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.doc", "public.nokey"], 'r');
    src.exec(&fill(21, 40));
    // Updates that leave the TOASTed column unchanged.
    src.exec("UPDATE doc SET small = small + 1000");
    src.exec("UPDATE doc SET big = big || 'x' WHERE id % 3 = 0");
    src.exec("DELETE FROM doc WHERE id % 4 = 0");
    // REPLICA IDENTITY FULL, duplicate rows included.
    src.exec("UPDATE nokey SET b = b || ' changed' WHERE a < 10");
    src.exec("DELETE FROM nokey WHERE a >= 40");
    src.exec("INSERT INTO nokey VALUES (NULL, NULL), (1, NULL)");
    src.exec("UPDATE nokey SET b = 'was null' WHERE a = 1 AND b IS NULL");
    assert_synced(&src, &tgt, sub, &["doc", "nokey"]);
}

#[test]
fn stop_of_an_idle_sync_is_prompt() {
    // Issue 2: SIGTERM makes a worker exit within a second even while the source is
    // silent. livesync_stop returns once the workers exited; the bound below is loose
    // (5 s) so machine load cannot make it flaky, yet a worker that only noticed SIGTERM
    // at its next message (keepalives come every wal_sender_timeout/2 = 30 s) would fail.
    let src = Db::fresh(source(), "idle_src");
    let tgt = Db::fresh(target(), "idle_tgt");
    ddl_both(&src, &tgt, &kv_table_ddl("t"));
    src.exec(&kv_fill_sql("t", 100));
    src.exec("CREATE PUBLICATION analytics FOR TABLE t");
    let sub = "idle_stop";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.t"], 'r');
    sleep(Duration::from_secs(3)); // the source is silent now
    let t0 = std::time::Instant::now();
    livesync_stop(&tgt, sub);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "livesync_stop of an idle sync took {took:?}"
    );
    assert_eq!(sub_info(&tgt, sub).and_then(|i| i.pid), None);
}

#[test]
fn large_transactions_are_streamed_and_aborts_leave_no_trace() {
    // logical_decoding_work_mem = 64kB on this source database, so these transactions
    // reach livesync as streamed chunks (proto 2, streaming 'on') before they commit.
    let src = Db::fresh(source(), "stream_src");
    src.stream_large_transactions();
    let tgt = Db::fresh(target(), "stream_tgt");
    ddl_both(&src, &tgt, &kv_table_ddl("t"));
    src.exec("CREATE PUBLICATION analytics FOR TABLE t");
    let sub = "streamed";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.t"], 'r');

    // A big committed transaction with a rolled-back subtransaction in the middle.
    src.exec(
        "BEGIN; \
         INSERT INTO t (id, v, payload) SELECT g, g, md5(g::text) FROM generate_series(1, 30000) g; \
         SAVEPOINT s1; \
         INSERT INTO t (id, v, payload) SELECT g, g, 'rolled back' FROM generate_series(100001, 130000) g; \
         UPDATE t SET payload = 'rolled back too' WHERE id <= 1000; \
         ROLLBACK TO SAVEPOINT s1; \
         SAVEPOINT s2; \
         UPDATE t SET payload = 'kept' WHERE id % 10 = 0; \
         RELEASE SAVEPOINT s2; \
         DELETE FROM t WHERE id % 7 = 0; \
         COMMIT",
    );
    // A big transaction that aborts: nothing of it may appear.
    src.exec(
        "BEGIN; INSERT INTO t (id, v, payload) SELECT g, g, 'aborted' FROM generate_series(200001, 240000) g; ROLLBACK",
    );
    src.exec("INSERT INTO t (id, v, payload) VALUES (999999, 0, 'after')");
    assert_synced(&src, &tgt, sub, &["t"]);
    assert_eq!(
        tgt.query_one::<i64>(
            "SELECT count(*) FROM t WHERE payload IN ('rolled back', 'rolled back too', 'aborted') OR id > 100000 AND id < 999999"
        ),
        0
    );
    let streamed: i64 = source().query_one(
        "postgres",
        &format!("SELECT coalesce(sum(stream_txns), 0)::int8 FROM pg_stat_replication_slots WHERE slot_name = '{sub}'"),
    );
    assert!(
        streamed >= 1,
        "no transaction was streamed to the slot, so spooling was not exercised"
    );
}
