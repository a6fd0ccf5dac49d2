//! Fault injection (issue 4): an unreachable source, a terminated walsender, source restarts
//! under writes, crashes of the target during the copy, replication slots dropped / recreated /
//! invalidated behind livesync's back, an idle source, and a pgbench soak.
//!
//! Every fault test keeps a write workload running on the source during the fault, stops it,
//! then checks target == source (order-independent checksums) and that no key is doubled:
//! table `ins` has a primary key on the source but none on the target, so a change applied
//! twice shows up as a duplicate instead of an error.
//!
//! Environment: `LIVESYNC_E2E_OUTAGE_SECS` (default 20) is how long the source stays
//! unreachable; `LIVESYNC_E2E_SOAK_SECS` (default 20) how long the pgbench soak runs.

use std::thread::sleep;
use std::time::{Duration, Instant};

use livesync_e2e::*;

/// A writer that survives source restarts: per iteration one transaction inserting into
/// `ins` (id `first + i`) and updating a `kv` row.
fn reconnecting_writer(src: &Db, first: i64) -> BackgroundWriter {
    BackgroundWriter::spawn_reconnecting(src, "reconnecting writer", move |c, i| {
        let mut tx = c.transaction()?;
        tx.execute(
            "INSERT INTO ins VALUES ($1::int8, md5($1::int8::text))",
            &[&(first + i as i64)],
        )?;
        tx.execute(
            "UPDATE kv SET v = v + 1 WHERE id = $1",
            &[&(1 + (i as i64 * 7919) % 5_000)],
        )?;
        tx.commit()
    })
}

// ---------------------------------------------------------------------------------------------
// 1. Source unreachable for a while
// ---------------------------------------------------------------------------------------------

#[test]
fn source_unreachable_for_a_while_resumes_by_itself() {
    let outage = Duration::from_secs(env_secs("LIVESYNC_E2E_OUTAGE_SECS", 20));
    let src = Db::fresh(source(), "outage_src");
    let tgt = Db::fresh(target(), "outage_tgt");
    setup_kv_ins(&src, &tgt, 5_000);
    let proxy = TcpProxy::start(source().port());
    let ci = format!(
        "postgres://postgres@127.0.0.1:{}/{}?connect_timeout=5",
        proxy.port(),
        src.name
    );
    let sub = "outage";
    let _g = start_sync(&tgt, &ci, "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.ins", "public.kv"], 'r');
    assert_kv_ins_synced(&src, &tgt, sub);
    assert_eq!(last_error(&tgt, sub), None, "an error before any fault");

    let w1 = BackgroundWriter::kv(&src, "kv", 5_001);
    let w2 = ins_writer(&src, 5_001);
    sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    proxy.cut();
    eprintln!("[e2e] source cut off for {outage:?}");
    let err = wait_for_last_error(
        &tgt,
        sub,
        outage.max(Duration::from_secs(15)),
        "be set while the source is unreachable",
        |_| true,
    );
    eprintln!(
        "[e2e] last_error {:.1}s into the outage: {err}",
        t0.elapsed().as_secs_f64()
    );
    let lower = err.to_lowercase();
    assert!(
        ["connect", "connection", "source", "stream"]
            .iter()
            .any(|w| lower.contains(w)),
        "last_error should say the source connection failed: {err}"
    );
    if let Some(rest) = outage.checked_sub(t0.elapsed()) {
        sleep(rest);
    }
    // Still unreachable at the end of the outage: the error is still there.
    assert!(
        last_error(&tgt, sub).is_some(),
        "last_error vanished while the source was still unreachable"
    );
    proxy.restore();
    let t1 = Instant::now();
    sleep(Duration::from_secs(2)); // writes after the restore
    let (s1, s2) = (w1.stop(), w2.stop());
    // The retry backoff is capped by livesync.max_retry_interval (60 s by default).
    wait_applied(&src, &tgt, sub, Duration::from_secs(120));
    eprintln!(
        "[e2e] caught up {:.1}s after the restore; writers {s1:?} {s2:?}; proxy (passed, refused) {:?}",
        t1.elapsed().as_secs_f64(),
        proxy.counts()
    );
    assert_kv_ins_synced(&src, &tgt, sub);
    // Applying again: the error is cleared by the first successful commit.
    src.exec("INSERT INTO ins VALUES (9000001, 'after recovery')");
    assert_kv_ins_synced(&src, &tgt, sub);
    wait_until_or(
        Duration::from_secs(30),
        "last_error to be cleared once the sync applies again",
        || format!("{:?}", sub_info(&tgt, sub)),
        || last_error(&tgt, sub).is_none(),
    );
    livesync_drop(&tgt, sub);
}

// ---------------------------------------------------------------------------------------------
// 2. The walsender is terminated
// ---------------------------------------------------------------------------------------------

#[test]
fn terminated_walsender_resumes_by_itself() {
    let src = Db::fresh(source(), "termws_src");
    let tgt = Db::fresh(target(), "termws_tgt");
    setup_kv_ins(&src, &tgt, 5_000);
    let sub = "term_walsender";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.ins", "public.kv"], 'r');

    let w1 = BackgroundWriter::kv(&src, "kv", 5_001);
    let w2 = ins_writer(&src, 5_001);
    for round in 0..3 {
        sleep(Duration::from_secs(1));
        let mut pid = None;
        wait_until(
            SYNC_TIMEOUT,
            &format!("slot {sub} to be active (round {round})"),
            || {
                pid = slot_active_pid(source(), sub);
                pid.is_some()
            },
        );
        let pid = pid.unwrap();
        let app: Option<String> = src
            .client()
            .query_opt(
                "SELECT application_name FROM pg_stat_replication WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .map(|r| r.get(0));
        eprintln!("[e2e] round {round}: pg_terminate_backend({pid}) (application_name {app:?})");
        let ok: bool = src
            .client()
            .query_one("SELECT pg_terminate_backend($1)", &[&pid])
            .unwrap()
            .get(0);
        assert!(ok, "pg_terminate_backend({pid}) returned false");
        wait_until(
            SYNC_TIMEOUT,
            &format!("a new walsender for slot {sub}"),
            || slot_active_pid(source(), sub).is_some_and(|p| p != pid),
        );
    }
    sleep(Duration::from_secs(1));
    w1.stop();
    w2.stop();
    assert_kv_ins_synced(&src, &tgt, sub);
}

#[test]
fn terminated_walsenders_during_copy_copy_each_row_once() {
    let src = Db::fresh(source(), "termcopy_src");
    let tgt = Db::fresh(target(), "termcopy_tgt");
    setup_kv_ins(&src, &tgt, 1_000_000);
    let sub = "term_copy";
    let w1 = BackgroundWriter::kv(&src, "kv", 5_001);
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    // (walsenders, copy connections) terminated.
    let mut terminated = (0, 0);
    let t0 = Instant::now();
    while terminated.1 == 0 && t0.elapsed() < Duration::from_secs(30) {
        // A table's copy is being read (its copy connection exists).
        let copying: bool = src.query_one(
            "SELECT count(*) > 0 FROM pg_stat_activity \
              WHERE datname = current_database() AND backend_type = 'client backend' \
                AND application_name LIKE 'term\\_copy\\_sync\\_%'",
        );
        if copying {
            // Every walsender of this database (the table-sync workers' and the apply
            // worker's) and the connections that read the tables' copies.
            for row in src
                .client()
                .query(
                    "SELECT backend_type = 'walsender', pg_terminate_backend(pid) \
                       FROM pg_stat_activity \
                      WHERE datname = current_database() \
                        AND (backend_type = 'walsender' \
                             OR application_name LIKE 'term\\_copy\\_sync\\_%')",
                    &[],
                )
                .unwrap()
            {
                if row.get::<_, bool>(0) {
                    terminated.0 += 1;
                } else {
                    terminated.1 += 1;
                }
            }
        }
        sleep(Duration::from_millis(20));
    }
    assert!(
        terminated.1 > 0,
        "no copy connection was terminated during a copy: the test proved nothing"
    );
    eprintln!(
        "[e2e] terminated {} walsenders and {} copy connections during the copy",
        terminated.0, terminated.1
    );
    src.exec("INSERT INTO ins SELECT g, 'after' FROM generate_series(2000001, 2000100) g");
    sleep(Duration::from_secs(1));
    w1.stop();
    assert_kv_ins_synced(&src, &tgt, sub);
}

// ---------------------------------------------------------------------------------------------
// 3. Source restarts (fast and immediate) under writes
// ---------------------------------------------------------------------------------------------

#[test]
fn source_fast_and_immediate_restarts_under_writes() {
    let sc = Cluster::new_private(Kind::Source, "restart_src_w");
    let src = Db::fresh(&sc, "srcrw_src");
    let tgt = Db::fresh(target(), "srcrw_tgt");
    setup_kv_ins(&src, &tgt, 5_000);
    let sub = "restart_src_writes";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.ins", "public.kv"], 'r');

    let w = reconnecting_writer(&src, 100_001);
    for mode in [StopMode::Fast, StopMode::Immediate, StopMode::Fast] {
        sleep(Duration::from_secs(2));
        eprintln!("[e2e] source restart, mode {mode:?}");
        sc.restart(mode);
    }
    sleep(Duration::from_secs(2)); // writes after the last restart
    let stats = w.stop();
    eprintln!(
        "[e2e] writer: {} transactions committed, {} interrupted",
        stats.inserts, stats.deletes
    );
    assert!(stats.inserts > 0);
    assert_kv_ins_synced(&src, &tgt, sub);
    // The guard's drop needs the source up: drop now, while it is.
    livesync_drop(&tgt, sub);
    assert_eq!(slots_on_source(&sc, sub), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// 4. Target crashes during the copy
// ---------------------------------------------------------------------------------------------

/// Waits (30 s) until a table of the sync is in state 'd' and returns the pids of the
/// table-sync workers then (may be empty if the copy ended meanwhile).
fn wait_copying(tgt: &Db, sub: &str) -> Vec<i32> {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        let copying = try_sub_rels(tgt, sub)
            .map(|r| r.iter().any(|x| x.state == 'd'))
            .unwrap_or(false);
        if copying {
            let apply = try_sub_info(tgt, sub).ok().flatten().and_then(|i| i.pid);
            return livesync_backends(tgt)
                .into_iter()
                .filter(|(p, t)| Some(*p) != apply && t.contains("table sync"))
                .map(|(p, _)| p)
                .collect();
        }
        sleep(Duration::from_millis(20));
    }
    panic!(
        "no table of {sub} was seen in state 'd' within 30 s: the test proved nothing\n{:?}",
        try_sub_rels(tgt, sub)
    );
}

#[test]
fn kill9_of_a_table_sync_worker_during_copy_under_writes() {
    let tc = Cluster::new_private(Kind::Target, "killts_tgt");
    let src = Db::fresh(source(), "killts_src");
    let tgt = Db::fresh(&tc, "killts_tgt");
    setup_kv_ins(&src, &tgt, 1_000_000);
    let sub = "kill_tablesync";
    let w1 = BackgroundWriter::kv(&src, "kv", 5_001);
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    let mut victim = None;
    let t0 = Instant::now();
    while victim.is_none() && t0.elapsed() < Duration::from_secs(30) {
        victim = wait_copying(&tgt, sub).first().copied();
    }
    let pid = victim.expect("no table sync worker seen during the copy");
    eprintln!("[e2e] kill -9 of table sync worker {pid} during the copy");
    kill9(pid);
    sleep(Duration::from_millis(500));
    tc.wait_ready(Duration::from_secs(60));
    src.exec("INSERT INTO ins SELECT g, 'after' FROM generate_series(2000001, 2000100) g");
    sleep(Duration::from_secs(1));
    w1.stop();
    assert_kv_ins_synced(&src, &tgt, sub);
}

#[test]
fn target_immediate_restart_during_copy_copies_each_row_once() {
    let tc = Cluster::new_private(Kind::Target, "restartcopy_tgt");
    let src = Db::fresh(source(), "restartcopy_src");
    let tgt = Db::fresh(&tc, "restartcopy_tgt");
    setup_kv_ins(&src, &tgt, 1_000_000);
    let sub = "restart_copy";
    let w1 = BackgroundWriter::kv(&src, "kv", 5_001);
    let w2 = ins_writer(&src, 3_000_001);
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    let workers = wait_copying(&tgt, sub);
    eprintln!(
        "[e2e] immediate restart of the target while copying (table sync workers {workers:?})"
    );
    tc.restart(StopMode::Immediate);
    sleep(Duration::from_secs(1));
    // And once more if a copy is (again) running.
    if try_sub_rels(&tgt, sub)
        .map(|r| r.iter().any(|x| x.state == 'd'))
        .unwrap_or(false)
    {
        eprintln!("[e2e] second immediate restart, a copy is running again");
        tc.restart(StopMode::Immediate);
    }
    sleep(Duration::from_secs(1));
    w1.stop();
    w2.stop();
    assert_kv_ins_synced(&src, &tgt, sub);
}

// ---------------------------------------------------------------------------------------------
// 5. The main slot dropped, recreated or invalidated behind livesync's back
// ---------------------------------------------------------------------------------------------

/// The error livesync must record when its slot is gone: names the slot and asks for a resync.
fn slot_error_ok(sub: &str) -> impl Fn(&str) -> bool + '_ {
    move |e: &str| e.contains(sub) && e.to_lowercase().contains("resync")
}

/// Rows with `id > after_id` in the target's `ins` (changes made after the slot was lost).
fn rows_after(tgt: &Db, after_id: i64) -> i64 {
    tgt.query_one(&format!(
        "SELECT count(*)::int8 FROM ins WHERE id > {after_id}"
    ))
}

/// `livesync_start` after the slot was lost (`what` says how): refusing to resume right
/// away is fine if the error says why; otherwise the sync must stop with that error.
fn assert_resume_refused_or_stops(src: &Db, tgt: &Db, sub: &str, after_id: i64, what: &str) {
    match try_livesync_start(tgt, &src.uri(), "analytics", Some(sub), None) {
        Err(e) => {
            let text = err_text(&e);
            eprintln!("[e2e] {what}: {text}");
            assert!(
                slot_error_ok(sub)(&text),
                "resume refused, but the error does not name the slot and ask for a resync: {text}"
            );
            assert_eq!(rows_after(tgt, after_id), 0);
        }
        Ok(()) => assert_stops_with_slot_error(src, tgt, sub, after_id),
    }
}

/// After the slot was lost: the error must say so, the sync must not go on as if nothing
/// happened (no row written after the loss appears), and it stays that way for a while.
fn assert_stops_with_slot_error(src: &Db, tgt: &Db, sub: &str, after_id: i64) {
    // More changes while livesync is (re)trying.
    src.exec(&format!(
        "INSERT INTO ins SELECT g, 'after the slot was lost' \
         FROM generate_series({}, {}) g",
        after_id + 10_001,
        after_id + 10_100
    ));
    let err = wait_for_last_error(
        tgt,
        sub,
        SYNC_TIMEOUT,
        "name the slot and ask for a resync",
        slot_error_ok(sub),
    );
    eprintln!("[e2e] {sub}: last_error = {err}");
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        assert_eq!(
            rows_after(tgt, after_id),
            0,
            "rows written after the slot was lost appeared on the target as if nothing happened \
             (last_error {:?})",
            last_error(tgt, sub)
        );
        sleep(Duration::from_millis(200));
    }
    let err2 = last_error(tgt, sub);
    assert!(
        err2.as_deref().is_some_and(slot_error_ok(sub)),
        "the slot error must stay until the user acts: {err2:?}"
    );
}

/// The kv/ins fixture synced under writes by sync `sub`, which is then stopped, and its
/// slot dropped on the source behind livesync's back.
fn synced_stopped_and_slot_dropped(src: &Db, tgt: &Db, sub: &str) -> SyncGuard {
    setup_kv_ins(src, tgt, 1_000);
    let guard = start_sync(tgt, &src.uri(), "analytics", sub);
    let w = BackgroundWriter::kv(src, "kv", 5_001);
    sleep(Duration::from_secs(1));
    w.stop();
    assert_kv_ins_synced(src, tgt, sub);
    livesync_stop(tgt, sub);
    wait_until(SYNC_TIMEOUT, "the slot to be released", || {
        slot_active_pid(source(), sub).is_none()
    });
    src.exec(&format!("SELECT pg_drop_replication_slot('{sub}')"));
    guard
}

#[test]
fn slot_dropped_while_stopped_is_reported_not_ignored() {
    let src = Db::fresh(source(), "slotdrop_src");
    let tgt = Db::fresh(target(), "slotdrop_tgt");
    let sub = "slot_dropped_stopped";
    let _g = synced_stopped_and_slot_dropped(&src, &tgt, sub);
    let after_id = 1_000_000;
    src.exec(&format!(
        "INSERT INTO ins SELECT g, 'after the drop' FROM generate_series({}, {}) g",
        after_id + 1,
        after_id + 100
    ));
    assert_resume_refused_or_stops(
        &src,
        &tgt,
        sub,
        after_id,
        "resume after the slot was dropped",
    );
}

#[test]
fn slot_dropped_while_running_is_reported_not_ignored() {
    let src = Db::fresh(source(), "slotdrop2_src");
    let tgt = Db::fresh(target(), "slotdrop2_tgt");
    setup_kv_ins(&src, &tgt, 1_000);
    let sub = "slot_dropped_running";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.ins", "public.kv"], 'r');
    let w = BackgroundWriter::kv(&src, "kv", 5_001);
    sleep(Duration::from_secs(1));
    // Terminate the walsender and drop the slot while it is inactive (retry: livesync
    // reconnects quickly).
    let t0 = Instant::now();
    let mut dropped = false;
    while !dropped && t0.elapsed() < Duration::from_secs(30) {
        let mut c = src.client();
        c.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&sub],
        )
        .unwrap();
        dropped = c
            .execute("SELECT pg_drop_replication_slot($1)", &[&sub])
            .is_ok();
        if !dropped {
            sleep(Duration::from_millis(5));
        }
    }
    assert!(dropped, "could not drop slot {sub} within 30 s");
    eprintln!("[e2e] slot {sub} dropped while the sync was running");
    w.stop();
    let after_id = 1_000_000;
    src.exec(&format!(
        "INSERT INTO ins SELECT g, 'after the drop' FROM generate_series({}, {}) g",
        after_id + 1,
        after_id + 100
    ));
    assert_stops_with_slot_error(&src, &tgt, sub, after_id);
}

#[test]
fn slot_recreated_under_the_same_name_is_reported_not_ignored() {
    let src = Db::fresh(source(), "slotre_src");
    let tgt = Db::fresh(target(), "slotre_tgt");
    let sub = "slot_recreated";
    let _g = synced_stopped_and_slot_dropped(&src, &tgt, sub);
    let after_id = 1_000_000;
    // Changes between the drop and the re-creation: lost for any new slot.
    src.exec(&format!(
        "INSERT INTO ins SELECT g, 'between drop and create' FROM generate_series({}, {}) g; \
         UPDATE kv SET payload = 'between' WHERE id % 7 = 0",
        after_id + 1,
        after_id + 100
    ));
    src.exec(&format!(
        "SELECT pg_create_logical_replication_slot('{sub}', 'pgoutput')"
    ));
    src.exec(&format!(
        "INSERT INTO ins SELECT g, 'after create' FROM generate_series({}, {}) g",
        after_id + 101,
        after_id + 200
    ));
    assert_resume_refused_or_stops(&src, &tgt, sub, after_id, "resume on a recreated slot");
}

#[test]
fn slot_invalidated_by_max_slot_wal_keep_size_is_reported() {
    let sc = Cluster::new_private_with(
        ClusterSpec::new(Kind::Source, "walkeep_src")
            .conf("max_slot_wal_keep_size = '1MB'")
            .conf("min_wal_size = '32MB'")
            .conf("max_wal_size = '64MB'"),
    );
    let src = Db::fresh(&sc, "walkeep_src");
    let tgt = Db::fresh(target(), "walkeep_tgt");
    setup_kv_ins(&src, &tgt, 1_000);
    let sub = "slot_invalidated";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    let w = BackgroundWriter::kv(&src, "kv", 5_001);
    sleep(Duration::from_secs(1));
    w.stop();
    assert_kv_ins_synced(&src, &tgt, sub);
    livesync_stop(&tgt, sub);
    wait_until(SYNC_TIMEOUT, "the slot to be released", || {
        slot_active_pid(&sc, sub).is_none()
    });
    let after_id = 1_000_000;
    let mut next = after_id + 1;
    let t0 = Instant::now();
    let mut status = String::new();
    while t0.elapsed() < Duration::from_secs(60) {
        src.exec(&format!(
            "INSERT INTO ins SELECT g, repeat('x', 200) FROM generate_series({next}, {}) g",
            next + 999
        ));
        next += 1000;
        sc.exec("postgres", "SELECT pg_switch_wal(); CHECKPOINT");
        status = sc.query_one(
            "postgres",
            &format!(
                "SELECT coalesce(wal_status, 'NULL') FROM pg_replication_slots \
                 WHERE slot_name = '{sub}'"
            ),
        );
        if status == "lost" {
            break;
        }
    }
    assert_eq!(status, "lost", "the slot was not invalidated within 60 s");
    eprintln!(
        "[e2e] slot {sub} invalidated after {} rows",
        next - after_id - 1
    );
    assert_resume_refused_or_stops(&src, &tgt, sub, after_id, "resume on an invalidated slot");
    livesync_drop(&tgt, sub);
}

// ---------------------------------------------------------------------------------------------
// 6. Idle source: the slot's confirmed position keeps advancing
// ---------------------------------------------------------------------------------------------

#[test]
fn idle_source_slot_keeps_advancing() {
    let src = Db::fresh(source(), "idle_src");
    let tgt = Db::fresh(target(), "idle_tgt");
    setup_kv_ins(&src, &tgt, 1_000);
    src.exec("CREATE TABLE unpublished (id bigint PRIMARY KEY, payload text)");
    let sub = "idle_source";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    let w = BackgroundWriter::kv(&src, "kv", 5_001);
    sleep(Duration::from_secs(1));
    w.stop();
    assert_kv_ins_synced(&src, &tgt, sub);

    // Only WAL that holds nothing published from now on.
    let w = BackgroundWriter::spawn(&src, "unpublished writer", |c, i| {
        c.execute(
            "INSERT INTO unpublished VALUES ($1::int8, md5($1::int8::text))",
            &[&(i as i64)],
        )
        .map(|_| ())
    });
    sleep(Duration::from_secs(2));
    w.stop();
    src.exec(
        "SELECT pg_switch_wal(); \
         INSERT INTO unpublished SELECT g, 'x' FROM generate_series(10000001, 10001000) g",
    );
    let pos = current_lsn(&src);
    let slot_pos = || -> Option<String> {
        source()
            .client("postgres")
            .query_one(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&sub],
            )
            .ok()
            .and_then(|r| r.get(0))
    };
    eprintln!(
        "[e2e] source at {pos}, slot confirmed_flush_lsn {:?}",
        slot_pos()
    );
    let t0 = Instant::now();
    wait_until_or(
        Duration::from_secs(60),
        &format!("slot {sub}'s confirmed_flush_lsn to pass {pos} with no published change"),
        || format!("confirmed_flush_lsn {:?}", slot_pos()),
        || {
            source()
                .client("postgres")
                .query_one(
                    "SELECT coalesce(confirmed_flush_lsn >= $1::text::pg_lsn, false) \
                     FROM pg_replication_slots WHERE slot_name = $2",
                    &[&pos, &sub],
                )
                .map(|r| r.get::<_, bool>(0))
                .unwrap_or(false)
        },
    );
    eprintln!(
        "[e2e] confirmed_flush_lsn passed {pos} after {:.1}s",
        t0.elapsed().as_secs_f64()
    );
    // API.md: applied_lsn advances on keepalives too.
    wait_applied(&src, &tgt, sub, Duration::from_secs(60));
    assert_kv_ins_synced(&src, &tgt, sub);
}

// ---------------------------------------------------------------------------------------------
// 7. Soak: pgbench TPC-B + a hypertable
// ---------------------------------------------------------------------------------------------

fn pgbench(src: &Db, args: &[&str]) -> String {
    let mut cmd = src.cluster.install().client("pgbench");
    cmd.args(["-h", "127.0.0.1", "-p"])
        .arg(src.cluster.port().to_string())
        .args(["-U", "postgres"])
        .args(args)
        .arg(&src.name)
        .env_remove("PGOPTIONS");
    let out = cmd.output().expect("run pgbench");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

#[test]
fn soak_pgbench_tpcb_and_hypertable() {
    let secs = env_secs("LIVESYNC_E2E_SOAK_SECS", 20);
    let src = Db::fresh(source(), "soak_src");
    let tgt = Db::fresh(target(), "soak_tgt");
    pgbench(&src, &["-i", "-s", "1", "-q"]);
    src.exec(
        "ALTER TABLE pgbench_history REPLICA IDENTITY FULL; \
         CREATE TABLE metrics (id bigserial PRIMARY KEY, ts timestamptz NOT NULL, \
                               device int NOT NULL, value float8); \
         CREATE PUBLICATION soak FOR TABLE pgbench_accounts, pgbench_branches, \
                pgbench_tellers, pgbench_history, metrics",
    );
    tgt.exec(
        "CREATE TABLE pgbench_accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84)); \
         CREATE TABLE pgbench_branches (bid int PRIMARY KEY, bbalance int, filler char(88)); \
         CREATE TABLE pgbench_tellers (tid int PRIMARY KEY, bid int, tbalance int, filler char(84)); \
         CREATE TABLE pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, \
                                       filler char(22)); \
         CREATE TABLE metrics (id bigint NOT NULL, ts timestamptz NOT NULL, device int NOT NULL, \
                               value float8); \
         SELECT create_hypertable('metrics', 'ts', chunk_time_interval => interval '5 seconds')",
    );
    let sub = "soak";
    let _g = start_sync(&tgt, &src.uri(), "soak", sub);
    let tables = [
        "pgbench_accounts",
        "pgbench_branches",
        "pgbench_tellers",
        "pgbench_history",
        "metrics",
    ];
    wait_for_sync_state(&tgt, sub, 'r');
    assert_synced(&src, &tgt, sub, &tables);

    let script = run_dir().join(format!("livesync-soak-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "\\set d random(1, 100)\nINSERT INTO metrics (ts, device, value) VALUES (now(), :d, random());\n",
    )
    .unwrap();
    let script_arg = script.display().to_string();
    let secs_arg = secs.to_string();
    let bench = {
        let src2 = src.clone();
        let script_arg = script_arg.clone();
        let secs_arg = secs_arg.clone();
        let name = src2.name.clone();
        let port = src2.cluster.port();
        let mut pgbench = src2.cluster.install().client("pgbench");
        std::thread::spawn(move || {
            let out = pgbench
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .args(["-n", "-c", "4", "-j", "2", "-T", &secs_arg])
                .args(["-b", "tpcb-like", "-f", &script_arg])
                .arg(&name)
                .env_remove("PGOPTIONS")
                .output()
                .expect("run pgbench");
            (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            )
        })
    };
    let mut lag_bytes = Vec::new();
    let mut lag_secs = Vec::new();
    let t0 = Instant::now();
    while !bench.is_finished() {
        sleep(Duration::from_secs(1));
        if let Ok(mut c) = tgt.try_client() {
            if let Ok(r) = c.query_one(
                "SELECT (SELECT lag_bytes::float8 FROM livesync.subscription WHERE subname = $1), \
                        (SELECT extract(epoch FROM now() - max(ts))::float8 FROM metrics)",
                &[&sub],
            ) {
                if let Some(b) = r.get::<_, Option<f64>>(0) {
                    lag_bytes.push(b);
                }
                if let Some(s) = r.get::<_, Option<f64>>(1) {
                    lag_secs.push(s);
                }
            }
        }
    }
    let (ok, out) = bench.join().unwrap();
    let _ = std::fs::remove_file(&script);
    assert!(ok, "pgbench run failed:\n{out}");
    let tps = out
        .lines()
        .filter(|l| l.starts_with("tps") || l.contains("number of transactions actually"))
        .collect::<Vec<_>>()
        .join("; ");
    let t_end = Instant::now();
    assert_synced(&src, &tgt, sub, &tables);
    assert_no_duplicates(&tgt, "metrics", "id");
    assert_no_duplicates(&tgt, "pgbench_accounts", "aid");
    eprintln!(
        "[e2e] soak {secs}s ({:.1}s wall): {tps}; {} lag samples: lag_bytes p50 {:.0} p99 {:.0} max {:.0}; \
         newest metrics row age p50 {:.2}s p99 {:.2}s max {:.2}s; caught up {:.1}s after pgbench ended; \
         metrics rows {}, history rows {}, chunks {}",
        t0.elapsed().as_secs_f64(),
        lag_bytes.len(),
        percentile(&lag_bytes, 50.0),
        percentile(&lag_bytes, 99.0),
        percentile(&lag_bytes, 100.0),
        percentile(&lag_secs, 50.0),
        percentile(&lag_secs, 99.0),
        percentile(&lag_secs, 100.0),
        t_end.elapsed().as_secs_f64(),
        tgt.query_one::<i64>("SELECT count(*) FROM metrics"),
        tgt.query_one::<i64>("SELECT count(*) FROM pgbench_history"),
        chunk_count(&tgt, "metrics"),
    );
    assert_eq!(
        count_only(&tgt, "metrics"),
        0,
        "rows in the hypertable's root"
    );
}

#[test]
fn spool_write_error_is_reported_and_retried() {
    // A large source transaction is streamed before it commits and spooled to the target's
    // base/pgsql_tmp. When the spool cannot be written (a full disk, here a directory the
    // server may not write to), the sync reports the error, retries, and loses nothing.
    let tc = Cluster::new_private(Kind::Target, "spool_tgt");
    let src = Db::fresh(source(), "spool_src");
    src.stream_large_transactions();
    let tgt = Db::fresh(&tc, "spool_tgt");
    setup_kv_ins(&src, &tgt, 1_000);
    let sub = "spool_error";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.ins", "public.kv"], 'r');

    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tc.datadir().join("base").join("pgsql_tmp");
    if !tmp.exists() {
        std::fs::create_dir(&tmp).expect("create base/pgsql_tmp");
        let owner = std::fs::metadata(tc.datadir()).expect("stat the data directory");
        std::os::unix::fs::chown(&tmp, Some(owner.uid()), Some(owner.gid()))
            .expect("chown base/pgsql_tmp to the server's user");
    }
    let mode = |m: u32| {
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(m))
            .expect("chmod base/pgsql_tmp")
    };
    mode(0o000);
    let w = ins_writer(&src, 1_000_001);
    // Far more than logical_decoding_work_mem (64kB on this source database): streamed.
    src.exec("INSERT INTO ins SELECT g, md5(g::text) FROM generate_series(2000001, 2050000) g");
    let err = wait_for_last_error(
        &tgt,
        sub,
        Duration::from_secs(60),
        "report the spool error",
        |e| e.to_lowercase().contains("spool"),
    );
    eprintln!("[e2e] spool error reported: {err}");
    mode(0o700);
    sleep(Duration::from_secs(1));
    w.stop();
    // The worker retries after its backoff (capped by livesync.max_retry_interval).
    wait_applied(&src, &tgt, sub, Duration::from_secs(120));
    assert_kv_ins_synced(&src, &tgt, sub);
}
