//! Crashes and restarts: each test owns the cluster it restarts or kills (a private cluster);
//! the other side is this binary's shared cluster.
//!
//! Table `ins` has a primary key on the source but none on the target, so a change applied
//! twice shows up as a duplicate instead of an error; `kv` gets updates and deletes.

use std::thread::sleep;
use std::time::{Duration, Instant};

use livesync_e2e::*;

/// Waits until the sync has an apply worker other than `old`.
fn wait_new_worker(tgt: &Db, sub: &str, old: Option<i32>) -> i32 {
    let mut pid = None;
    wait_until(
        SYNC_TIMEOUT,
        &format!("sync {sub} to get a new apply worker"),
        || {
            pid = try_sub_info(tgt, sub)
                .ok()
                .flatten()
                .and_then(|i| i.pid)
                .filter(|p| Some(*p) != old);
            pid.is_some()
        },
    );
    pid.unwrap()
}

#[test]
fn target_immediate_restart_resumes_by_itself() {
    let tc = Cluster::new_private(Kind::Target, "restart_tgt");
    let src = Db::fresh(source(), "restart_src");
    let tgt = Db::fresh(&tc, "restart_tgt");
    setup_kv_ins(&src, &tgt, 5_000);
    let sub = "restart_target";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.ins", "public.kv"], 'r');
    let old_pid = sub_info(&tgt, sub).unwrap().pid;

    let w1 = BackgroundWriter::kv(&src, "kv", 5_001);
    let w2 = ins_writer(&src, 5_001);
    sleep(Duration::from_secs(1));
    let t0 = Instant::now();
    tc.restart(StopMode::Immediate);
    sleep(Duration::from_secs(2)); // writes after the restart
    let (s1, s2) = (w1.stop(), w2.stop());
    let new_pid = wait_new_worker(&tgt, sub, old_pid);
    eprintln!(
        "[e2e] apply worker {old_pid:?} -> {new_pid} {:.1}s after the restart; writers {s1:?} {s2:?}",
        t0.elapsed().as_secs_f64()
    );
    assert_kv_ins_synced(&src, &tgt, sub);
    assert!(sub_info(&tgt, sub).unwrap().enabled);

    // A second time, with a fast shutdown and writes while the target is down.
    tc.stop(StopMode::Fast);
    src.exec(
        "INSERT INTO ins SELECT g, 'while down' FROM generate_series(800001, 801000) g; \
              UPDATE kv SET payload = 'while down' WHERE id % 3 = 0",
    );
    tc.start();
    assert_kv_ins_synced(&src, &tgt, sub);
}

#[test]
fn kill9_of_the_apply_worker_resumes_by_itself() {
    let tc = Cluster::new_private(Kind::Target, "kill_tgt");
    let src = Db::fresh(source(), "kill_src");
    let tgt = Db::fresh(&tc, "kill_tgt");
    setup_kv_ins(&src, &tgt, 5_000);
    let sub = "kill_apply";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.ins", "public.kv"], 'r');

    let w1 = BackgroundWriter::kv(&src, "kv", 5_001);
    let w2 = ins_writer(&src, 5_001);
    for round in 0..2 {
        sleep(Duration::from_secs(1));
        let pid = sub_info(&tgt, sub).unwrap().pid.expect("apply worker pid");
        eprintln!("[e2e] round {round}: kill -9 {pid}");
        kill9(pid);
        // The postmaster restarts everything (crash recovery); the sync comes back by itself.
        sleep(Duration::from_millis(500));
        tc.wait_ready(Duration::from_secs(60));
        wait_new_worker(&tgt, sub, Some(pid));
    }
    sleep(Duration::from_secs(1));
    w1.stop();
    w2.stop();
    assert_kv_ins_synced(&src, &tgt, sub);
}

#[test]
fn kill9_during_initial_copy_copies_each_row_once() {
    let tc = Cluster::new_private(Kind::Target, "killcopy_tgt");
    let src = Db::fresh(source(), "killcopy_src");
    let tgt = Db::fresh(&tc, "killcopy_tgt");
    // Big enough that the copy is always seen in state 'd' (it takes seconds).
    setup_kv_ins(&src, &tgt, 1_500_000);
    let sub = "kill_copy";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);

    // Kill a table-sync worker (or, failing that, the apply worker) while a table is copying.
    let mut victim = None;
    let t0 = Instant::now();
    while victim.is_none() && t0.elapsed() < Duration::from_secs(30) {
        let copying = try_sub_rels(&tgt, sub)
            .map(|r| r.iter().any(|x| x.state == 'd'))
            .unwrap_or(false);
        if copying {
            let apply = try_sub_info(&tgt, sub).ok().flatten().and_then(|i| i.pid);
            let backends = livesync_backends(&tgt);
            victim = backends
                .iter()
                .find(|(p, t)| Some(*p) != apply && t.contains("sync"))
                .or_else(|| backends.iter().find(|(p, _)| Some(*p) == apply))
                .cloned();
        }
        sleep(Duration::from_millis(20));
    }
    match victim {
        Some((pid, kind)) => {
            eprintln!("[e2e] kill -9 {pid} ({kind}) during the copy");
            kill9(pid);
            sleep(Duration::from_millis(500));
            tc.wait_ready(Duration::from_secs(60));
        }
        None => panic!(
            "no table was seen in state 'd' within 30 s, so nothing was killed: the test proved nothing"
        ),
    }
    src.exec("INSERT INTO ins SELECT g, 'after' FROM generate_series(2000001, 2000100) g");
    assert_kv_ins_synced(&src, &tgt, sub);
}

#[test]
fn stopped_sync_stays_stopped_across_restart() {
    let tc = Cluster::new_private(Kind::Target, "stopped_tgt");
    let src = Db::fresh(source(), "stopped_src");
    let tgt = Db::fresh(&tc, "stopped_tgt");
    setup_kv_ins(&src, &tgt, 1_000);
    let sub = "stay_stopped";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    assert_kv_ins_synced(&src, &tgt, sub);
    livesync_stop(&tgt, sub);
    src.exec("INSERT INTO ins SELECT g, 'while stopped' FROM generate_series(700001, 700100) g");

    tc.restart(StopMode::Immediate);
    sleep(Duration::from_secs(3));
    let info = sub_info(&tgt, sub).expect("row kept");
    assert!(
        !info.enabled && info.pid.is_none(),
        "a stopped sync came back after restart: {info:?}"
    );
    assert_eq!(livesync_backends(&tgt), vec![]);
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*) FROM ins WHERE id > 700000"),
        0
    );

    try_livesync_start(&tgt, &src.uri(), "analytics", Some(sub), None)
        .unwrap_or_else(|e| panic!("resume: {}", err_text(&e)));
    assert_kv_ins_synced(&src, &tgt, sub);
}

#[test]
fn source_immediate_restart_resumes_by_itself() {
    let sc = Cluster::new_private(Kind::Source, "restart_src");
    let src = Db::fresh(&sc, "srcrestart_src");
    let tgt = Db::fresh(target(), "srcrestart_tgt");
    setup_kv_ins(&src, &tgt, 5_000);
    let sub = "restart_source";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.ins", "public.kv"], 'r');
    src.exec("INSERT INTO ins SELECT g, 'before' FROM generate_series(600001, 601000) g");
    sc.restart(StopMode::Immediate);
    src.exec(
        "INSERT INTO ins SELECT g, 'after' FROM generate_series(601001, 602000) g; \
              DELETE FROM kv WHERE id % 5 = 0",
    );
    assert_kv_ins_synced(&src, &tgt, sub);
    // The guard's drop needs the source up: drop now, while it is.
    livesync_drop(&tgt, sub);
    assert_eq!(slots_on_source(&sc, sub), Vec::<String>::new());
}
