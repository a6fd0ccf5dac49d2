//! Issue 7: trust livesync on a user's defaults. No silent divergence, no privilege
//! escalation, nothing irreversible that a ROLLBACK cannot undo, prompt stops.
//!
//! Every test here runs on PostgreSQL's default `logical_decoding_work_mem` (64MB): large
//! transactions arrive whole, at their commit, unless a test says otherwise. Each test
//! failed on the main branch before the fix it covers (the item number of the issue is in
//! the test's comment).

use std::thread::sleep;
use std::time::{Duration, Instant};

use livesync_e2e::*;

fn both(src: &Db, tgt: &Db, ddl: &str) {
    src.exec(ddl);
    tgt.exec(ddl);
}

fn count(db: &Db, sql: &str) -> i64 {
    db.query_one(&format!("SELECT count(*)::int8 FROM {sql}"))
}

/// Make the initial copy of `table` on `tgt` pause once for `secs`, at the end of its COPY,
/// before the copy commits (an ENABLE ALWAYS statement trigger that sleeps once).
fn pause_copy_once(tgt: &Db, table: &str, secs: u32) {
    tgt.exec(&format!(
        "CREATE TABLE public.copy_pause (x int); INSERT INTO public.copy_pause VALUES (1);
         CREATE FUNCTION public.pause_once() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF EXISTS (SELECT FROM public.copy_pause) THEN
             DELETE FROM public.copy_pause;
             PERFORM pg_catalog.pg_sleep({secs});
           END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER pause AFTER INSERT ON {table} FOR EACH STATEMENT EXECUTE FUNCTION public.pause_once();
         ALTER TABLE {table} ENABLE ALWAYS TRIGGER pause;"
    ));
}

/// Waits until a table-sync worker of `tgt`'s server sleeps in [`pause_copy_once`].
fn wait_copy_paused(tgt: &Db) {
    wait_until(SYNC_TIMEOUT, "the copy to pause", || {
        tgt.query_one::<i64>(
            "SELECT count(*)::int8 FROM pg_stat_activity \
              WHERE backend_type = 'livesync table sync worker' AND wait_event = 'PgSleep'",
        ) > 0
    });
}

/// Fresh source and target databases `<prefix>_src`/`<prefix>_tgt`, both with a table
/// `t (id int PRIMARY KEY)`, and a publication `p` of it on the source.
fn t_pair(prefix: &str) -> (Db<'static>, Db<'static>) {
    let src = Db::fresh(source(), &format!("{prefix}_src"));
    let tgt = Db::fresh(target(), &format!("{prefix}_tgt"));
    both(&src, &tgt, "CREATE TABLE t (id int PRIMARY KEY)");
    src.exec("CREATE PUBLICATION p FOR TABLE t");
    (src, tgt)
}

/// The pid of the sync's apply worker (waits for it).
fn apply_pid(tgt: &Db, sub: &str) -> i32 {
    let mut pid = None;
    wait_until(SYNC_TIMEOUT, "the apply worker to run", || {
        pid = sub_info(tgt, sub).and_then(|i| i.pid);
        pid.is_some()
    });
    pid.unwrap()
}

// ---- 1. A table-sync worker's catch-up over a large transaction that was not streamed ----

/// The copy of `big` pauses (a trigger sleeps once, at the end of its COPY, before the copy
/// commits); meanwhile the source commits one transaction of 200 000 rows into `big`, which
/// the default logical_decoding_work_mem sends whole, at commit. The table-sync worker must
/// apply it in its catch-up (it takes far longer than one read round) without ever stopping
/// inside it: the table became stuck in state f before.
#[test]
fn catch_up_applies_a_large_unstreamed_transaction_whole() {
    let src = Db::fresh(source(), "bigcu_src");
    let tgt = Db::fresh(target(), "bigcu_tgt");
    both(
        &src,
        &tgt,
        "CREATE TABLE big (id int PRIMARY KEY, v text); CREATE TABLE other (id int PRIMARY KEY)",
    );
    src.exec("INSERT INTO big SELECT g, 'v' || g FROM generate_series(1, 10) g");
    src.exec("CREATE PUBLICATION p FOR TABLE big, other");
    pause_copy_once(&tgt, "big", 8);
    tgt.exec(
        "-- Row work on the target, so that applying the transaction takes seconds.
         CREATE FUNCTION public.per_row() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           NEW.v := pg_catalog.md5(NEW.v);
           RETURN NEW;
         END $$;
         CREATE TRIGGER per_row BEFORE INSERT ON big FOR EACH ROW EXECUTE FUNCTION public.per_row();
         ALTER TABLE big ENABLE ALWAYS TRIGGER per_row;",
    );
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("bigcu"));
    wait_copy_paused(&tgt);
    src.exec("INSERT INTO big SELECT g, repeat('x', 20) || g FROM generate_series(11, 200010) g");
    src.exec("INSERT INTO other VALUES (1)");
    wait_caught_up(&src, &tgt, g.name());
    // Once decoded (the slots' statistics lag a little):
    let streamed: i64 = src.query_one(&format!(
        "SELECT coalesce(sum(stream_txns), 0)::int8 FROM pg_stat_replication_slots \
          WHERE slot_name LIKE '{}%'",
        g.name()
    ));
    assert_eq!(
        streamed, 0,
        "the large transaction was streamed: this test needs it whole"
    );
    assert_tables_equal(&src, &tgt, "other");
    // The target's trigger rewrote v: compare ids, and v through the same function.
    let (mut sc, mut tc) = (src.client(), tgt.client());
    let q = "SELECT count(*)::int8, sum(id)::int8 FROM big";
    let (a, b) = (sc.query_one(q, &[]).unwrap(), tc.query_one(q, &[]).unwrap());
    assert_eq!(
        (a.get::<_, i64>(0), a.get::<_, i64>(1)),
        (b.get::<_, i64>(0), b.get::<_, i64>(1))
    );
    let q = "SELECT md5(string_agg(md5(v), ',' ORDER BY id)) FROM big";
    let want: String = sc.query_one(q, &[]).unwrap().get(0);
    let q = "SELECT md5(string_agg(v, ',' ORDER BY id)) FROM big";
    let got: String = tc.query_one(q, &[]).unwrap().get(0);
    assert_eq!(want, got);
}

// ---- 2. An error at COMMIT never advances the origin ---------------------------------------

/// A deferred constraint trigger (ENABLE ALWAYS) refuses the apply worker's COMMIT while a
/// flag is set. The worker records the error and retries; once the flag is cleared, every
/// row arrives. Before, the transaction that recorded the error carried the failed batch's
/// position into the replication origin, and the rows were skipped for good.
#[test]
fn changes_refused_at_commit_arrive_once_the_cause_is_fixed() {
    let src = Db::fresh(source(), "cerr_src");
    let tgt = Db::fresh(target(), "cerr_tgt");
    both(&src, &tgt, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    src.exec("CREATE PUBLICATION p FOR TABLE t");
    tgt.exec(
        "CREATE TABLE public.refuse (on_ boolean NOT NULL); INSERT INTO public.refuse VALUES (false);
         CREATE FUNCTION public.refuse_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF (SELECT on_ FROM public.refuse) THEN RAISE EXCEPTION 'refused at commit'; END IF;
           RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON t DEFERRABLE INITIALLY DEFERRED
           FOR EACH ROW EXECUTE FUNCTION public.refuse_at_commit();
         ALTER TABLE t ENABLE ALWAYS TRIGGER at_commit;",
    );
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("cerr"));
    wait_caught_up(&src, &tgt, g.name());
    tgt.exec("UPDATE public.refuse SET on_ = true");
    src.exec("INSERT INTO t VALUES (1, 'a'), (2, 'b')");
    src.exec("INSERT INTO t VALUES (3, 'c')");
    wait_for_last_error(&tgt, g.name(), SYNC_TIMEOUT, "name the commit error", |e| {
        e.contains("refused at commit")
    });
    // Let the worker fail and record the error a few times.
    sleep(Duration::from_secs(4));
    assert_eq!(count(&tgt, "t"), 0);
    tgt.exec("UPDATE public.refuse SET on_ = false");
    wait_applied(&src, &tgt, g.name(), SYNC_TIMEOUT);
    wait_until(SYNC_TIMEOUT, "the three rows", || count(&tgt, "t") == 3);
    assert_tables_equal(&src, &tgt, "t");
}

// ---- 3. Wide rows: batches bounded by bytes ------------------------------------------------

/// 2 400 rows of 300 kB in one source transaction (streamed: it is over 64MB) arrive, and
/// the apply worker's private memory stays bounded. Before, a 2 000-row batch built arrays
/// of 600 MB.
#[test]
fn wide_rows_arrive_with_bounded_memory() {
    let src = Db::fresh(source(), "wide_src");
    let tgt = Db::fresh(target(), "wide_tgt");
    both(
        &src,
        &tgt,
        "CREATE TABLE w (id int PRIMARY KEY, payload text)",
    );
    src.exec("CREATE PUBLICATION p FOR TABLE w");
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("wide"));
    wait_caught_up(&src, &tgt, g.name());
    let pid = apply_pid(&tgt, g.name());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut peak_kb = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    for l in s.lines() {
                        if let Some(v) = l.strip_prefix("RssAnon:") {
                            let kb: u64 =
                                v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                            peak_kb = peak_kb.max(kb);
                        }
                    }
                }
                sleep(Duration::from_millis(50));
            }
            peak_kb
        })
    };
    // md5 repeated: 300 000 bytes per value, which TOAST compresses on both sides.
    src.exec("INSERT INTO w SELECT g, repeat(md5(g::text), 9375) FROM generate_series(1, 2400) g");
    wait_applied(&src, &tgt, g.name(), Duration::from_secs(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let peak_mb = sampler.join().unwrap() / 1024;
    eprintln!("apply worker peak private memory (RssAnon) while applying 720 MB: {peak_mb} MB");
    assert_tables_equal(&src, &tgt, "w");
    assert_eq!(
        tgt.query_one::<i64>("SELECT min(length(payload))::int8 FROM w"),
        300_000
    );
    assert!(
        peak_mb < 200,
        "the apply worker used {peak_mb} MB of private memory for 300 kB rows"
    );
    assert_eq!(
        sub_info(&tgt, g.name()).unwrap().pid,
        Some(pid),
        "the apply worker restarted"
    );
}

// ---- 5. TRUNCATE ONLY ------------------------------------------------------------------

/// `TRUNCATE ONLY parent` on the source empties the parent only; an inheritance child on
/// the target keeps its rows (the target used to truncate the children too).
#[test]
fn truncate_only_parent_keeps_inheritance_children() {
    let src = Db::fresh(source(), "tronly_src");
    let tgt = Db::fresh(target(), "tronly_tgt");
    both(
        &src,
        &tgt,
        "CREATE TABLE parent (id int PRIMARY KEY, v text);
         CREATE TABLE child (extra int) INHERITS (parent);
         ALTER TABLE child ADD PRIMARY KEY (id);",
    );
    src.exec(
        "INSERT INTO parent VALUES (1, 'p1'), (2, 'p2');
         INSERT INTO child VALUES (10, 'c10', 1), (11, 'c11', 2);
         CREATE PUBLICATION p FOR TABLE parent",
    );
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("tronly"));
    wait_caught_up(&src, &tgt, g.name());
    assert_eq!(count(&tgt, "ONLY child"), 2);
    src.exec("TRUNCATE ONLY parent");
    src.exec("INSERT INTO child VALUES (12, 'c12', 3)");
    wait_applied(&src, &tgt, g.name(), SYNC_TIMEOUT);
    assert_eq!(count(&tgt, "ONLY parent"), 0);
    assert_eq!(
        count(&tgt, "ONLY child"),
        3,
        "the child lost rows the source kept"
    );
    // A plain TRUNCATE of the parent lists the child too, and empties both.
    src.exec("TRUNCATE parent");
    wait_applied(&src, &tgt, g.name(), SYNC_TIMEOUT);
    assert_eq!(count(&tgt, "parent"), 0);
}

// ---- 6. REPLICA IDENTITY FULL through an index -------------------------------------------

/// With REPLICA IDENTITY FULL, UPDATE and DELETE find the row through the target's primary
/// key, or else with a predicate an index serves: no sequential scan per change (it used
/// to compare every column's text, which no index can serve).
#[test]
fn replica_identity_full_finds_rows_through_an_index() {
    let src = Db::fresh(source(), "fullidx_src");
    let tgt = Db::fresh(target(), "fullidx_tgt");
    src.exec(
        "CREATE TABLE a (id int NOT NULL, v text); ALTER TABLE a REPLICA IDENTITY FULL;
         CREATE TABLE b (id int NOT NULL, v text); ALTER TABLE b REPLICA IDENTITY FULL;
         INSERT INTO a SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'a' || g END FROM generate_series(1, 20000) g;
         INSERT INTO b SELECT g, CASE WHEN g % 3 = 0 THEN NULL ELSE 'b' || g END FROM generate_series(1, 20000) g;
         CREATE PUBLICATION p FOR TABLE a, b",
    );
    tgt.exec(
        "CREATE TABLE a (id int PRIMARY KEY, v text);
         CREATE TABLE b (id int NOT NULL, v text); CREATE INDEX ON b (id);",
    );
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("fullidx"));
    wait_caught_up(&src, &tgt, g.name());
    tgt.exec("ANALYZE a; ANALYZE b");
    let scans = |t: &str| -> (i64, i64) {
        tgt.exec("SELECT pg_stat_clear_snapshot()");
        let mut c = tgt.client();
        let r = c
            .query_one(
                "SELECT coalesce(seq_scan, 0)::int8, coalesce(idx_scan, 0)::int8 \
                   FROM pg_stat_user_tables WHERE relname = $1",
                &[&t],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    let (a_seq, a_idx) = scans("a");
    let (b_seq, b_idx) = scans("b");
    for i in 0..200 {
        let id = 1 + i * 97;
        src.exec(&format!("UPDATE a SET v = 'u{i}' WHERE id = {id}"));
        src.exec(&format!("UPDATE b SET v = 'u{i}' WHERE id = {id}"));
    }
    src.exec("DELETE FROM a WHERE id % 1000 = 3; DELETE FROM b WHERE id % 1000 = 3");
    wait_applied(&src, &tgt, g.name(), SYNC_TIMEOUT);
    // Statistics reach the view within a second or so.
    wait_until(Duration::from_secs(10), "index scans to be counted", || {
        scans("a").1 - a_idx >= 200 && scans("b").1 - b_idx >= 200
    });
    let (a_seq2, _) = scans("a");
    let (b_seq2, _) = scans("b");
    assert_eq!(a_seq2 - a_seq, 0, "UPDATE/DELETE on a scanned the table");
    assert_eq!(b_seq2 - b_seq, 0, "UPDATE/DELETE on b scanned the table");
    // (Comparing the tables scans them: last.)
    assert_tables_equal(&src, &tgt, "a");
    assert_tables_equal(&src, &tgt, "b");
}

// ---- 7. No silent truncation ------------------------------------------------------------

/// A value too long for the target's `varchar(n)` is an error naming table and column; no
/// cut value ever lands. Once the user widens the column, the row arrives whole.
#[test]
fn a_value_too_long_for_the_target_is_an_error_naming_the_column() {
    let src = Db::fresh(source(), "toolong_src");
    let tgt = Db::fresh(target(), "toolong_tgt");
    src.exec("CREATE TABLE vt (id int PRIMARY KEY, s varchar(10), c char(6), b bit(4))");
    tgt.exec("CREATE TABLE vt (id int PRIMARY KEY, s varchar(5), c char(6), b bit(4))");
    src.exec("CREATE PUBLICATION p FOR TABLE vt");
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("toolong"));
    wait_caught_up(&src, &tgt, g.name());
    src.exec("INSERT INTO vt VALUES (1, 'abc', 'ab', B'1010')");
    src.exec("INSERT INTO vt VALUES (2, 'abcdefgh', 'ab', B'1010')");
    let e = wait_for_last_error(&tgt, g.name(), SYNC_TIMEOUT, "refuse the long value", |e| {
        e.contains("value too long")
    });
    assert!(
        e.contains("character varying(5)") && e.contains("public.vt") && e.contains("\"s\""),
        "{e}"
    );
    assert_eq!(count(&tgt, "vt WHERE id = 2"), 0, "a cut value landed");
    tgt.exec("ALTER TABLE vt ALTER COLUMN s TYPE varchar(10)");
    src.exec("UPDATE vt SET c = 'abcdef' WHERE id = 1");
    wait_applied(&src, &tgt, g.name(), Duration::from_secs(120));
    assert_tables_equal(&src, &tgt, "vt");
}

// ---- 8. A database owner plants functions and operators --------------------------------

/// A non-superuser who owns the target database plants `public.unnest(text[])`,
/// `public.now()` and an `=` operator that make their caller's role a superuser, and puts
/// `public` first in the database's search_path. The sync copies and applies normally and
/// never runs them: its sessions pin search_path, and its SQL names pg_catalog's objects.
#[test]
fn planted_functions_in_the_target_database_never_run_as_superuser() {
    let src = Db::fresh(source(), "plant_src");
    let tgt = Db::fresh(target(), "plant_tgt");
    let owner = unique_name("dbowner");
    target().exec("postgres", &format!("CREATE ROLE {owner} LOGIN"));
    target().exec(
        "postgres",
        &format!("ALTER DATABASE {} OWNER TO {owner}", tgt.name),
    );
    both(
        &src,
        &tgt,
        "CREATE TABLE t (id int PRIMARY KEY, v text, n int)",
    );
    tgt.exec(&format!("ALTER TABLE t OWNER TO {owner}"));
    src.exec("INSERT INTO t SELECT g, 'v' || g, g FROM generate_series(1, 100) g");
    src.exec("CREATE PUBLICATION p FOR TABLE t");
    let mut evil = postgres::Config::new();
    evil.host("127.0.0.1")
        .port(target().port())
        .user(&owner)
        .dbname(&tgt.name);
    let mut evil = evil.connect(postgres::NoTls).unwrap();
    let escalate = format!("ALTER ROLE {owner} SUPERUSER;");
    evil.batch_execute(&format!(
        "CREATE FUNCTION public.unnest(text[]) RETURNS SETOF text LANGUAGE sql AS
           $$ {escalate} SELECT pg_catalog.unnest($1) $$;
         CREATE FUNCTION public.now() RETURNS timestamptz LANGUAGE sql AS
           $$ {escalate} SELECT pg_catalog.now() $$;
         CREATE FUNCTION public.evil_eq(int, int) RETURNS boolean LANGUAGE sql AS
           $$ {escalate} SELECT $1 OPERATOR(pg_catalog.=) $2 $$;
         CREATE OPERATOR public.= (LEFTARG = int, RIGHTARG = int, FUNCTION = public.evil_eq);
         CREATE FUNCTION public.evil_texteq(text, text) RETURNS boolean LANGUAGE sql AS
           $$ {escalate} SELECT $1 OPERATOR(pg_catalog.=) $2 $$;
         CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.evil_texteq);
         ALTER DATABASE {} SET search_path = public, pg_catalog;",
        tgt.name
    ))
    .unwrap();
    drop(evil);
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("plant"));
    wait_for_sync_state(&tgt, g.name(), 'r');
    src.exec("INSERT INTO t SELECT g, 'w' || g, g FROM generate_series(101, 300) g");
    src.exec("UPDATE t SET v = 'x' WHERE id <= 50; DELETE FROM t WHERE id > 280");
    wait_applied(&src, &tgt, g.name(), SYNC_TIMEOUT);
    // Ask as a session with a clean search_path (ours would run the planted `=`).
    let super_now: bool = target().query_one(
        "postgres",
        &format!("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname OPERATOR(pg_catalog.=) '{owner}'"),
    );
    assert!(
        !super_now,
        "the database owner became a superuser through the sync"
    );
    let mut c = tgt.client();
    c.batch_execute("SET search_path = pg_catalog").unwrap();
    let n: i64 = c
        .query_one("SELECT count(*)::int8 FROM public.t", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 280);
    livesync_drop(&tgt, g.name());
}

// ---- 10. Extension-owned tables are never copied -----------------------------------------

/// A `FOR ALL TABLES` publication on a database that runs livesync and TimescaleDB lists
/// their catalogs; none is synced or listed, only the user's table.
#[test]
fn extension_catalogs_of_the_source_are_never_synced() {
    // The middle database runs livesync itself (a sync with a connection string) and
    // TimescaleDB, and is the source of the next sync.
    let first = Db::fresh(source(), "extcat_src");
    first.exec("CREATE TABLE t0 (id int PRIMARY KEY); CREATE PUBLICATION p0 FOR TABLE t0");
    let middle = Db::fresh(target(), "extcat_mid");
    middle.exec("CREATE TABLE t0 (id int PRIMARY KEY)");
    let g0 = start_sync(&middle, &first.uri(), "p0", &unique_name("extcat0"));
    middle.exec(
        "CREATE TABLE u (id int PRIMARY KEY, v text); INSERT INTO u VALUES (1, 'one');
         CREATE PUBLICATION pall FOR ALL TABLES",
    );
    let last = Db::fresh(target(), "extcat_last");
    last.exec("CREATE TABLE u (id int PRIMARY KEY, v text); CREATE TABLE t0 (id int PRIMARY KEY)");
    let g = start_sync(&last, &middle.uri(), "pall", &unique_name("extcat"));
    wait_for_tables(&last, g.name(), &["public.t0", "public.u"], 'r');
    assert_tables_equal(&middle, &last, "u");
    assert_eq!(
        count(&last, "pg_catalog.pg_namespace WHERE nspname = 'livesync'"),
        1
    );
    assert_eq!(
        count(&last, "livesync.sync"),
        1,
        "livesync's catalog of the source arrived"
    );
    drop(g);
    drop(g0);
}

// ---- 11. Nothing irreversible in a transaction that rolls back ---------------------------

/// `BEGIN; SELECT livesync_start(...); ROLLBACK;` leaves no slot on the source, and
/// `BEGIN; SELECT livesync_drop(...); ROLLBACK;` keeps the sync and its slot.
#[test]
fn rolled_back_start_and_drop_change_nothing_on_the_source() {
    let (src, tgt) = t_pair("rb");
    let name = unique_name("rb");
    let mut c = tgt.client();
    let mut tx = c.transaction().unwrap();
    tx.execute(
        "SELECT livesync_start(source => $1, publication => 'p', subscription => $2)",
        &[&src.uri(), &name],
    )
    .unwrap();
    tx.rollback().unwrap();
    assert!(
        slots_on_source(source(), &name).is_empty(),
        "a rolled-back start left a slot"
    );
    assert!(sub_info(&tgt, &name).is_none());

    let g = start_sync(&tgt, &src.uri(), "p", &name);
    assert_eq!(slots_on_source(source(), &name), vec![name.clone()]);
    wait_caught_up(&src, &tgt, g.name());
    let mut tx = c.transaction().unwrap();
    tx.execute("SELECT livesync_drop($1)", &[&name]).unwrap();
    tx.rollback().unwrap();
    assert_eq!(
        slots_on_source(source(), &name),
        vec![name.clone()],
        "a rolled-back drop dropped the slot"
    );
    src.exec("INSERT INTO t VALUES (1), (2)");
    assert_synced(&src, &tgt, g.name(), &["t"]);
    // A drop that commits does drop it.
    livesync_drop(&tgt, &name);
    assert!(slots_on_source(source(), &name).is_empty());
}

/// The slot is created at commit; when that fails (the source has no free slot), the
/// commit fails with the reason and a hint, and the sync does not exist.
#[test]
fn a_slot_that_cannot_be_created_at_commit_fails_the_start() {
    let sc = Cluster::new_private_with(
        ClusterSpec::new(Kind::Source, "oneslot").conf("max_replication_slots = 1"),
    );
    let src = Db::fresh(&sc, "oneslot_src");
    let tgt = Db::fresh(target(), "oneslot_tgt");
    both(&src, &tgt, "CREATE TABLE t (id int PRIMARY KEY)");
    src.exec("CREATE PUBLICATION p FOR TABLE t");
    src.exec("SELECT pg_create_logical_replication_slot('taken', 'pgoutput')");
    let e = try_livesync_start(&tgt, &src.uri(), "p", Some("oneslot"), None)
        .expect_err("a start without a free slot succeeded");
    assert_eq!(sqlstate(&e).as_deref(), Some("53400"), "{}", err_text(&e));
    assert!(
        err_text(&e).contains("max_replication_slots"),
        "{}",
        err_text(&e)
    );
    assert!(
        sub_info(&tgt, "oneslot").is_none(),
        "the failed start left a sync"
    );
}

// ---- 12. DROP DATABASE of a database with syncs ------------------------------------------

/// Refused, `WITH (FORCE)` too, while the database holds a sync, stopped ones included:
/// its slot would stay on the source forever.
#[test]
fn drop_database_with_syncs_is_refused() {
    let (src, tgt) = t_pair("dropdb");
    let name = unique_name("dropdb");
    let g = start_sync(&tgt, &src.uri(), "p", &name);
    wait_for_sync_state(&tgt, &name, 'r');
    livesync_stop(&tgt, &name);
    for force in ["", " WITH (FORCE)"] {
        let e = target()
            .client("postgres")
            .batch_execute(&format!("DROP DATABASE {}{force}", tgt.name))
            .expect_err("DROP DATABASE of a database with a sync succeeded");
        assert_eq!(sqlstate(&e).as_deref(), Some("55006"), "{}", err_text(&e));
        assert!(err_text(&e).contains("livesync_drop"), "{}", err_text(&e));
    }
    assert_eq!(slots_on_source(source(), &name), vec![name.clone()]);
    livesync_drop(&tgt, &name);
    drop(g);
    target().exec(
        "postgres",
        &format!("DROP DATABASE {} WITH (FORCE)", tgt.name),
    );
    assert!(slots_on_source(source(), &name).is_empty());
}

// ---- 13. Slot names are matched exactly --------------------------------------------------

/// Dropping the sync `x` never touches the slots of the sync `x_sync_eu`; a name that ends
/// like a table-sync slot (`x_sync_123`) is refused.
#[test]
fn dropping_a_sync_never_drops_another_syncs_slots() {
    let (src, tgt) = t_pair("slotname");
    let x = unique_name("sn");
    let eu = format!("{x}_sync_eu");
    let tgt2 = Db::fresh(target(), "slotname_tgt2");
    tgt2.exec("CREATE TABLE t (id int PRIMARY KEY)");
    let gx = start_sync(&tgt, &src.uri(), "p", &x);
    let geu = start_sync(&tgt2, &src.uri(), "p", &eu);
    wait_caught_up(&src, &tgt, &x);
    wait_caught_up(&src, &tgt2, &eu);
    livesync_drop(&tgt, &x);
    drop(gx);
    assert_eq!(slots_on_source(source(), &eu), vec![eu.clone()]);
    src.exec("INSERT INTO t VALUES (1)");
    assert_synced(&src, &tgt2, &eu, &["t"]);
    let e = try_livesync_start(&tgt, &src.uri(), "p", Some(&format!("{x}_sync_123")), None)
        .expect_err("a name like a table-sync slot was accepted");
    assert_eq!(sqlstate(&e).as_deref(), Some("42602"), "{}", err_text(&e));
    drop(geu);
}

// ---- 14. Stopping is prompt --------------------------------------------------------------

/// An apply worker waiting for a user's lock stops at once on `livesync_stop` (SIGTERM
/// used to set a flag that a lock wait never looks at, and livesync_stop gave up after
/// 60 s), and the changes arrive once the sync runs again.
#[test]
fn stop_interrupts_a_worker_waiting_on_a_lock() {
    let (src, tgt) = t_pair("lockstop");
    let name = unique_name("lockstop");
    let g = start_sync(&tgt, &src.uri(), "p", &name);
    wait_caught_up(&src, &tgt, &name);
    let pid = apply_pid(&tgt, &name);
    let mut holder = tgt.client();
    let mut tx = holder.transaction().unwrap();
    tx.batch_execute("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    src.exec("INSERT INTO t VALUES (1)");
    wait_until(
        SYNC_TIMEOUT,
        "the apply worker to wait for the lock",
        || {
            tgt.query_one::<i64>(&format!(
            "SELECT count(*)::int8 FROM pg_stat_activity WHERE pid = {pid} AND wait_event_type = 'Lock'"
        )) == 1
        },
    );
    let t0 = Instant::now();
    livesync_stop(&tgt, &name);
    eprintln!("livesync_stop returned after {:?}", t0.elapsed());
    assert_eq!(
        tgt.query_one::<i64>(&format!(
            "SELECT count(*)::int8 FROM pg_stat_activity WHERE pid = {pid}"
        )),
        0
    );
    tx.rollback().unwrap();
    tgt.exec(&format!(
        "SELECT livesync_start(source => '{}', publication => 'p', subscription => '{name}')",
        src.uri()
    ));
    assert_synced(&src, &tgt, &name, &["t"]);
    drop(g);
}

// ---- 18. libpq's own connection semantics ------------------------------------------------

/// Inside the target server, a connection string means what libpq makes of it there: no
/// user given is the OS user that runs the server (it was "no user name given"), and
/// `service=` reads the server's service file. An option livesync cannot honour is an
/// ERROR, never ignored.
#[test]
fn source_connection_strings_mean_what_libpq_makes_of_them() {
    let services = run_dir().join(format!("pg_service_{}.conf", std::process::id()));
    std::fs::write(
        &services,
        format!(
            "[e2e_source]\nhost=127.0.0.1\nport={}\nuser=postgres\n",
            source().port()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&services, std::fs::Permissions::from_mode(0o644)).unwrap();
    let tc = Cluster::new_private_with(
        ClusterSpec::new(Kind::Target, "libpq_tgt")
            .env("PGSERVICEFILE", services.to_str().unwrap()),
    );
    let src = Db::fresh(source(), "libpq_src");
    let tgt = Db::fresh(&tc, "libpq_tgt");
    both(
        &src,
        &tgt,
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY)",
    );
    src.exec("INSERT INTO t VALUES (1); INSERT INTO u VALUES (2)");
    src.exec("CREATE PUBLICATION pt FOR TABLE t; CREATE PUBLICATION pu FOR TABLE u");
    // No user: the OS user of the target server ("postgres", a superuser of the source).
    let by_socket = format!(
        "host={} port={} dbname={}",
        source().sockdir().display(),
        source().port(),
        src.name
    );
    let a = start_sync(&tgt, &by_socket, "pt", &unique_name("nouser"));
    let b = start_sync(
        &tgt,
        &format!("service=e2e_source dbname={}", src.name),
        "pu",
        &unique_name("svc"),
    );
    src.exec("INSERT INTO t VALUES (3); INSERT INTO u VALUES (4)");
    assert_synced(&src, &tgt, a.name(), &["t"]);
    assert_synced(&src, &tgt, b.name(), &["u"]);
    for (conninfo, what) in [
        ("service=no_such_service".to_string(), "service"),
        (
            format!("{} channel_binding=require sslmode=disable", src.conninfo()),
            "channel_binding",
        ),
        (
            format!("{} ssl_max_protocol_version=TLSv1.1", src.conninfo()),
            "TLSv1.1",
        ),
    ] {
        let e = try_livesync_start(&tgt, &conninfo, "pt", Some("bad_conninfo"), None)
            .expect_err(&format!("{conninfo} was accepted"));
        assert!(err_text(&e).contains(what), "{conninfo}: {}", err_text(&e));
        assert!(err_text(&e).contains("HINT"), "{}", err_text(&e));
    }
    assert!(slots_on_source(source(), "bad_conninfo").is_empty());
}

// ---- 19. Rotating credentials without a re-copy ------------------------------------------

/// `livesync_alter(subscription, source => ...)` changes a running sync's connection string:
/// its workers reconnect with it at once, nothing is copied again, changes keep flowing.
#[test]
fn livesync_alter_changes_the_connection_string_without_a_recopy() {
    let src = Db::fresh(source(), "rot_src");
    let tgt = Db::fresh(target(), "rot_tgt");
    both(&src, &tgt, "CREATE TABLE t (id int PRIMARY KEY)");
    let (old_role, new_role) = (unique_name("rot_old"), unique_name("rot_new"));
    for r in [&old_role, &new_role] {
        source().exec(
            "postgres",
            &format!("CREATE ROLE {r} LOGIN REPLICATION PASSWORD 'pw'"),
        );
        src.exec(&format!("GRANT SELECT ON t TO {r}"));
    }
    src.exec("INSERT INTO t VALUES (1); CREATE PUBLICATION p FOR TABLE t");
    let g = start_sync(
        &tgt,
        &source().uri_as(&old_role, Some("pw"), &src.name),
        "p",
        &unique_name("rot"),
    );
    wait_caught_up(&src, &tgt, g.name());
    let lsn_before = sub_rels(&tgt, g.name())[0].lsn.clone();
    let walsender_user = || -> Option<String> {
        source()
            .client("postgres")
            .query(
                "SELECT usename::text FROM pg_stat_replication WHERE application_name = $1",
                &[&format!("livesync_{}", g.name())],
            )
            .unwrap()
            .first()
            .map(|r| r.get(0))
    };
    assert_eq!(walsender_user().as_deref(), Some(old_role.as_str()));
    // A malformed table map is refused, not stored.
    let e = tgt
        .client()
        .execute(
            "SELECT livesync_alter($1, table_map => '{}'::jsonb)",
            &[&g.name()],
        )
        .expect_err("a table_map that is not an array was accepted");
    assert_eq!(sqlstate(&e).as_deref(), Some("22023"), "{}", err_text(&e));
    // A string that cannot connect changes nothing.
    let e = tgt
        .client()
        .execute(
            "SELECT livesync_alter($1, source => $2)",
            &[
                &g.name(),
                &source().uri_as("no_such_role", Some("pw"), &src.name),
            ],
        )
        .expect_err("a source that cannot connect was accepted");
    assert!(err_text(&e).contains("HINT"), "{}", err_text(&e));
    // Nor does one that reaches a server without the sync's slot (the target server).
    let e = tgt
        .client()
        .execute(
            "SELECT livesync_alter($1, source => $2)",
            &[&g.name(), &target().uri("postgres")],
        )
        .expect_err("a server without the slot was accepted");
    assert_eq!(sqlstate(&e).as_deref(), Some("42704"), "{}", err_text(&e));
    assert_eq!(walsender_user().as_deref(), Some(old_role.as_str()));
    tgt.client()
        .execute(
            "SELECT livesync_alter($1, source => $2)",
            &[
                &g.name(),
                &source().uri_as(&new_role, Some("pw"), &src.name),
            ],
        )
        .unwrap();
    wait_until(
        SYNC_TIMEOUT,
        "the apply worker to reconnect as the new role",
        || walsender_user().as_deref() == Some(new_role.as_str()),
    );
    src.exec("INSERT INTO t VALUES (2)");
    assert_synced(&src, &tgt, g.name(), &["t"]);
    assert_eq!(
        sub_rels(&tgt, g.name())[0].lsn,
        lsn_before,
        "the table was copied again"
    );
    let shown: String = tgt.query_one(&format!(
        "SELECT source FROM livesync.subscription WHERE subname = '{}'",
        g.name()
    ));
    assert!(
        shown.contains(&new_role) && !shown.contains("pw"),
        "{shown}"
    );
}

// ---- 9. User code on a table runs as the table's owner -----------------------------------

/// Triggers (ENABLE ALWAYS) and defaults of a replicated table run as the table's owner,
/// in the copy and in the apply, never as livesync's superuser: the owner's trigger cannot
/// make its owner a superuser. A hypertable owned by a non-superuser is copied into chunks
/// as that owner.
#[test]
fn user_code_on_a_table_runs_as_its_owner() {
    let src = Db::fresh(source(), "owner_src");
    let tgt = Db::fresh(target(), "owner_tgt");
    let owner = unique_name("tabowner");
    target().exec("postgres", &format!("CREATE ROLE {owner} LOGIN"));
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         CREATE TABLE h (ts timestamptz NOT NULL, id int NOT NULL, v text, PRIMARY KEY (id, ts));
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 50) g;
         INSERT INTO h SELECT '2024-01-01'::timestamptz + g * interval '1 day', g, 'h' FROM generate_series(1, 60) g;
         CREATE PUBLICATION p FOR TABLE t, h",
    );
    tgt.exec(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, v text, who text DEFAULT current_user);
         CREATE TABLE h (ts timestamptz NOT NULL, id int NOT NULL, v text, PRIMARY KEY (id, ts));
         SELECT create_hypertable('h', 'ts', chunk_time_interval => interval '7 days');
         CREATE TABLE public.audit_log (usr text, escalated boolean);
         CREATE FUNCTION public.audit() RETURNS trigger LANGUAGE plpgsql AS $$
         DECLARE ok boolean := true;
         BEGIN
           BEGIN
             EXECUTE 'ALTER ROLE {owner} SUPERUSER';
           EXCEPTION WHEN insufficient_privilege THEN ok := false;
           END;
           INSERT INTO public.audit_log VALUES (current_user, ok);
           RETURN NEW;
         END $$;
         CREATE TRIGGER audit BEFORE INSERT OR UPDATE ON t FOR EACH ROW EXECUTE FUNCTION public.audit();
         ALTER TABLE t ENABLE ALWAYS TRIGGER audit;
         ALTER TABLE t OWNER TO {owner}; ALTER TABLE h OWNER TO {owner};
         ALTER TABLE public.audit_log OWNER TO {owner};"
    ));
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("owner"));
    wait_caught_up(&src, &tgt, g.name());
    src.exec("INSERT INTO t VALUES (51, 'new'); UPDATE t SET v = 'upd' WHERE id = 1");
    src.exec("INSERT INTO h VALUES ('2025-06-01', 100, 'late')");
    wait_applied(&src, &tgt, g.name(), SYNC_TIMEOUT);
    let rolsuper: bool = target().query_one(
        "postgres",
        &format!("SELECT rolsuper FROM pg_roles WHERE rolname = '{owner}'"),
    );
    assert!(
        !rolsuper,
        "a table owner's trigger made its owner a superuser"
    );
    assert_eq!(
        count(
            &tgt,
            &format!("public.audit_log WHERE usr <> '{owner}' OR escalated")
        ),
        0,
        "the trigger ran as another role, or escalated"
    );
    assert_eq!(count(&tgt, "public.audit_log"), 52);
    assert_eq!(count(&tgt, &format!("t WHERE who <> '{owner}'")), 0);
    assert_eq!(count(&tgt, "t"), 51);
    assert_eq!(count(&tgt, "ONLY h"), 0, "rows in the hypertable's root");
    assert_eq!(count(&tgt, "h"), 61);
    assert!(chunk_count(&tgt, "h") > 5);
}

// ---- 4. A lost table-sync slot sends the table back to a fresh copy ----------------------

/// The table-sync slot is dropped while the copy is under way (as `max_slot_wal_keep_size`
/// invalidation would take it): the changes between the copy and the hand-off are gone, so
/// the table is emptied and copied again, and ends up exactly as on the source. It used to
/// stay in state f forever. The target has no primary key, so a doubled row would show.
#[test]
fn a_lost_table_sync_slot_sends_the_table_back_to_a_fresh_copy() {
    let src = Db::fresh(source(), "lostts_src");
    let tgt = Db::fresh(target(), "lostts_tgt");
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g;
         CREATE PUBLICATION p FOR TABLE t",
    );
    tgt.exec("CREATE TABLE t (id int, v text)");
    pause_copy_once(&tgt, "t", 5);
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("lostts"));
    wait_copy_paused(&tgt);
    src.exec("INSERT INTO t SELECT g, 'late' FROM generate_series(1001, 1100) g");
    src.exec("UPDATE t SET v = 'changed' WHERE id <= 10");
    let slot = format!("{}_sync_", g.name());
    let dropped: i64 = src.query_one(&format!(
        "SELECT count(pg_drop_replication_slot(slot_name))::int8 FROM pg_replication_slots \
          WHERE starts_with(slot_name::text, '{slot}')"
    ));
    assert_eq!(dropped, 1, "the table-sync slot was not there to drop");
    assert_synced(&src, &tgt, g.name(), &["t"]);
    assert_eq!(count(&tgt, "t"), 1100);
}

// ---- 15. The spool honours temp_file_limit and temp_tablespaces --------------------------

/// A streamed source transaction is spooled where PostgreSQL puts the session's temporary
/// files (`temp_tablespaces`) and within `temp_file_limit`: over the limit is a clear error
/// (it used to fill the data directory), and nothing is lost once the limit is raised.
#[test]
fn the_spool_honours_temp_file_limit_and_temp_tablespaces() {
    let src = Db::fresh(source(), "spoollim_src");
    src.stream_large_transactions();
    let tgt = Db::fresh(target(), "spoollim_tgt");
    both(&src, &tgt, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    src.exec("CREATE PUBLICATION p FOR TABLE t");
    target().exec(
        "postgres",
        &format!("ALTER DATABASE {} SET temp_file_limit = '1MB'", tgt.name),
    );
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("spoollim"));
    wait_caught_up(&src, &tgt, g.name());
    // About 7 MB, streamed in chunks before it commits.
    src.exec("INSERT INTO t SELECT g, repeat('x', 100) FROM generate_series(1, 50000) g");
    let e = wait_for_last_error(&tgt, g.name(), SYNC_TIMEOUT, "name temp_file_limit", |e| {
        e.contains("temp_file_limit")
    });
    assert!(e.contains("1024kB") && e.contains("HINT"), "{e}");
    assert_eq!(count(&tgt, "t"), 0);

    // A temporary tablespace the server cannot write into: the spool goes there (and says
    // where it could not write), until the directory is writable again.
    let loc = run_dir().join(format!("temp_ts_{}", std::process::id()));
    std::fs::create_dir_all(&loc).unwrap();
    let uid = std::fs::metadata(target().datadir()).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::os::unix::fs::chown(&loc, Some(uid.uid()), Some(uid.gid())).unwrap();
    let ts = unique_name("temp_ts");
    target().exec(
        "postgres",
        &format!("CREATE TABLESPACE {ts} LOCATION '{}'", loc.display()),
    );
    let version_dir = std::fs::read_dir(&loc)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("PG_"))
        .expect("the tablespace's version directory")
        .path();
    let mode = |m: u32| {
        std::fs::set_permissions(&version_dir, std::fs::Permissions::from_mode(m)).unwrap()
    };
    mode(0o000);
    target().exec(
        "postgres",
        &format!(
            "ALTER DATABASE {0} RESET temp_file_limit; ALTER DATABASE {0} SET temp_tablespaces = '{ts}'",
            tgt.name
        ),
    );
    let e = wait_for_last_error(&tgt, g.name(), SYNC_TIMEOUT, "name the tablespace", |e| {
        e.contains("pg_tblspc")
    });
    eprintln!("spool error in the temporary tablespace: {e}");
    assert_eq!(count(&tgt, "t"), 0);
    mode(0o700);
    wait_applied(&src, &tgt, g.name(), Duration::from_secs(120));
    assert_tables_equal(&src, &tgt, "t");
}

// ---- 17. Exhausted worker slots ----------------------------------------------------------

/// With every background worker slot taken, the copy cannot start: one WARNING with a hint,
/// then retries with a growing delay (it used to log a line every 50 ms).
#[test]
fn exhausted_worker_slots_give_one_warning_and_a_backoff() {
    // 5: PostgreSQL's logical replication launcher, TimescaleDB's launcher and scheduler,
    // livesync's launcher and the apply worker; nothing left for a table-sync worker.
    let tc = Cluster::new_private_with(
        ClusterSpec::new(Kind::Target, "fewworkers").conf("max_worker_processes = 5"),
    );
    let src = Db::fresh(source(), "fewwk_src");
    let tgt = Db::fresh(&tc, "fewwk_tgt");
    both(&src, &tgt, "CREATE TABLE t (id int PRIMARY KEY)");
    src.exec("INSERT INTO t VALUES (1); CREATE PUBLICATION p FOR TABLE t");
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("fewwk"));
    sleep(Duration::from_secs(12));
    let log = std::fs::read_to_string(tc.logfile()).unwrap();
    let n = log.matches("no background worker slot is free").count();
    assert!(
        (1..=2).contains(&n),
        "{n} warnings about worker slots in 12 s\n{}",
        tc.log_tail(30)
    );
    assert!(log.contains("Raise max_worker_processes"), "no hint");
    assert!(sub_rels(&tgt, g.name()).iter().all(|r| r.state == 'i'));
    drop(g);
}

// ---- 16. A copy that cannot succeed as it stands ------------------------------------------

/// A hypertable copy into 5 000 chunks on PostgreSQL's default lock table (its single
/// transaction holds a lock per chunk and index) runs out of shared memory: the table's row
/// says so with a hint, and the copy is retried with a growing delay, not in a tight loop
/// that makes every other session of the server fail too.
#[test]
fn a_copy_that_exhausts_the_lock_table_is_explained_and_retried_slowly() {
    // PostgreSQL's defaults for what sizes the lock table.
    let tc = Cluster::new_private_with(
        ClusterSpec::new(Kind::Target, "locks_tgt")
            .conf("max_connections = 100")
            .conf("max_worker_processes = 8")
            .conf("max_wal_senders = 10")
            .conf("max_locks_per_transaction = 64"),
    );
    let src = Db::fresh(source(), "locks_src");
    let tgt = Db::fresh(&tc, "locks_tgt");
    both(
        &src,
        &tgt,
        "CREATE TABLE m (ts timestamptz NOT NULL, v int)",
    );
    tgt.exec("SELECT create_hypertable('m', 'ts', chunk_time_interval => interval '1 day')");
    src.exec(
        "INSERT INTO m SELECT '2000-01-01'::timestamptz + g * interval '1 day', g \
           FROM generate_series(1, 5000) g;
         CREATE PUBLICATION p FOR TABLE m",
    );
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("locks"));
    // While a copy attempt holds the lock table, other sessions (ours too) may fail with
    // "out of shared memory": such a read is just retried.
    let try_one =
        |sql: &str| -> Option<postgres::Row> { tgt.try_client().ok()?.query_one(sql, &[]).ok() };
    let mut err = None;
    wait_until(
        Duration::from_secs(180),
        "the copy's error on the table's row",
        || {
            err = try_one(&format!(
                "SELECT max(last_error) FROM livesync.subscription_rel WHERE subname = '{}'",
                g.name()
            ))
            .and_then(|r| r.get::<_, Option<String>>(0))
            .filter(|e| e.contains("shared memory"));
            err.is_some()
        },
    );
    let err = err.unwrap();
    assert!(err.contains("max_locks_per_transaction"), "{err}");
    // Retried with a growing delay: few attempts, however long the sync runs.
    sleep(Duration::from_secs(20));
    let failures = std::fs::read_to_string(tc.logfile())
        .unwrap()
        .matches("out of shared memory")
        .count();
    assert!(
        failures <= 12,
        "{failures} out-of-shared-memory errors: a tight loop"
    );
    let mut rows = None;
    wait_until(SYNC_TIMEOUT, "a count of m", || {
        rows = try_one("SELECT count(*)::int8 FROM m").map(|r| r.get::<_, i64>(0));
        rows.is_some()
    });
    assert_eq!(rows, Some(0), "a failed copy left rows behind");
    drop(g);
}

// ---- 17. A full table of syncs -----------------------------------------------------------

/// Shared memory holds every sync of the server, running or stopped (64). One more
/// `livesync_start` is an ERROR with a hint, not a sync that is created and never runs.
#[test]
fn a_full_table_of_syncs_refuses_one_more_with_a_hint() {
    let tc = Cluster::new_private(Kind::Target, "fullreg_tgt");
    let src = Db::fresh(source(), "fullreg_src");
    let tgt = Db::fresh(&tc, "fullreg_tgt");
    let mut c = tgt.client();
    // A publication that does not exist yet: no slot is created on the shared source.
    for i in 0..64 {
        let name = format!("fullreg_{i}");
        c.execute(
            "SELECT livesync_start(source => $1, publication => 'not_yet', subscription => $2)",
            &[&src.uri(), &name],
        )
        .unwrap();
        c.execute("SELECT livesync_stop($1)", &[&name]).unwrap();
    }
    let e = c
        .execute(
            "SELECT livesync_start(source => $1, publication => 'not_yet', subscription => 'one_more')",
            &[&src.uri()],
        )
        .expect_err("a 65th sync was accepted");
    assert_eq!(sqlstate(&e).as_deref(), Some("53400"), "{}", err_text(&e));
    assert!(err_text(&e).contains("livesync_drop"), "{}", err_text(&e));
    assert!(sub_info(&tgt, "one_more").is_none());
    // Dropping one makes room again.
    c.execute("SELECT livesync_drop('fullreg_0')", &[]).unwrap();
    c.execute(
        "SELECT livesync_start(source => $1, publication => 'not_yet', subscription => 'one_more')",
        &[&src.uri()],
    )
    .unwrap();
}

// ---- Runs of INSERTs written by COPY keep an INSERT's checks -------------------------------

/// Runs of inserted rows are written by COPY into plain tables. COPY checks neither
/// row-level security nor the INSERT privilege (PostgreSQL's `COPY FROM` statement checks
/// them before it starts): where either applies to the table's owner, the rows must be
/// refused as the owner's INSERT would refuse them, and arrive once the owner allows them.
#[test]
fn inserts_respect_the_owners_row_security_and_privileges() {
    let src = Db::fresh(source(), "copychk_src");
    let tgt = Db::fresh(target(), "copychk_tgt");
    let owner = unique_name("copyowner");
    target().exec("postgres", &format!("CREATE ROLE {owner} LOGIN"));
    both(
        &src,
        &tgt,
        "CREATE TABLE rls_t (id int PRIMARY KEY, v int); CREATE TABLE priv_t (id int PRIMARY KEY, v int)",
    );
    src.exec("CREATE PUBLICATION p FOR TABLE rls_t, priv_t");
    tgt.exec(&format!(
        "ALTER TABLE rls_t OWNER TO {owner}; ALTER TABLE priv_t OWNER TO {owner};
         ALTER TABLE rls_t ENABLE ROW LEVEL SECURITY; ALTER TABLE rls_t FORCE ROW LEVEL SECURITY;
         CREATE POLICY small ON rls_t FOR INSERT WITH CHECK (v < 100);
         CREATE POLICY see ON rls_t FOR SELECT USING (true);
         REVOKE INSERT ON priv_t FROM {owner}"
    ));
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("copychk"));
    wait_caught_up(&src, &tgt, g.name());

    // One transaction of 20 rows (a run long enough for COPY), one of them against the policy.
    src.exec("INSERT INTO rls_t SELECT g, CASE WHEN g = 7 THEN 500 ELSE g END FROM generate_series(1, 20) g");
    let e = wait_for_last_error(&tgt, g.name(), SYNC_TIMEOUT, "refuse the row", |e| {
        e.contains("row-level security")
    });
    assert!(e.contains("rls_t"), "{e}");
    assert_eq!(
        count(&tgt, "rls_t"),
        0,
        "rows against the owner's policy landed"
    );
    tgt.exec(
        "DROP POLICY small ON rls_t; CREATE POLICY small ON rls_t FOR INSERT WITH CHECK (v < 1000)",
    );
    wait_applied(&src, &tgt, g.name(), SYNC_TIMEOUT);
    assert_tables_equal(&src, &tgt, "rls_t");

    // The owner may not insert into priv_t.
    src.exec("INSERT INTO priv_t SELECT g, g FROM generate_series(1, 20) g");
    let e = wait_for_last_error(&tgt, g.name(), SYNC_TIMEOUT, "refuse the rows", |e| {
        e.contains("permission denied")
    });
    assert!(e.contains("priv_t"), "{e}");
    assert_eq!(
        count(&tgt, "priv_t"),
        0,
        "rows the owner may not insert landed"
    );
    tgt.exec(&format!("GRANT INSERT ON priv_t TO {owner}"));
    wait_applied(&src, &tgt, g.name(), SYNC_TIMEOUT);
    assert_tables_equal(&src, &tgt, "priv_t");
}

/// The initial copy writes by COPY too, and must refuse what the owner's INSERT would: a
/// row against the owner's row-level security policy is an error on the table, nothing of
/// the copy lands, and the table is copied once the policy allows the row.
#[test]
fn the_copy_respects_the_owners_row_security() {
    let src = Db::fresh(source(), "copyrls_src");
    let tgt = Db::fresh(target(), "copyrls_tgt");
    let owner = unique_name("copyrlsowner");
    target().exec("postgres", &format!("CREATE ROLE {owner} LOGIN"));
    both(&src, &tgt, "CREATE TABLE rls_c (id int PRIMARY KEY, v int)");
    src.exec(
        "INSERT INTO rls_c SELECT g, CASE WHEN g = 7 THEN 500 ELSE g END FROM generate_series(1, 30) g;
         CREATE PUBLICATION p FOR TABLE rls_c",
    );
    tgt.exec(&format!(
        "ALTER TABLE rls_c OWNER TO {owner};
         ALTER TABLE rls_c ENABLE ROW LEVEL SECURITY; ALTER TABLE rls_c FORCE ROW LEVEL SECURITY;
         CREATE POLICY small ON rls_c FOR INSERT WITH CHECK (v < 100);
         CREATE POLICY see ON rls_c FOR SELECT USING (true)"
    ));
    let g = start_sync(&tgt, &src.uri(), "p", &unique_name("copyrls"));
    let rel_error = || -> Option<String> {
        tgt.client()
            .query_opt(
                "SELECT last_error FROM livesync.subscription_rel \
                  WHERE subname = $1 AND last_error IS NOT NULL",
                &[&g.name()],
            )
            .ok()
            .flatten()
            .map(|r| r.get(0))
    };
    wait_until(
        SYNC_TIMEOUT,
        "the copy of rls_c to fail on the policy",
        || rel_error().is_some_and(|e| e.contains("row-level security")),
    );
    assert_eq!(
        count(&tgt, "rls_c"),
        0,
        "rows against the owner's policy landed"
    );
    tgt.exec(
        "DROP POLICY small ON rls_c; CREATE POLICY small ON rls_c FOR INSERT WITH CHECK (v < 1000)",
    );
    wait_caught_up(&src, &tgt, g.name());
    assert_tables_equal(&src, &tgt, "rls_c");
}
