//! Issue 9: the initial copy of a table, observable while it runs.

use livesync_e2e::*;

/// What `livesync.subscription_rel` says of one table's copy.
#[derive(Debug, Clone, PartialEq)]
struct Progress {
    state: String,
    rows_copied: Option<i64>,
    bytes_copied: Option<i64>,
    approximate_rows: Option<i64>,
    approximate_size: Option<i64>,
    started: bool,
    eta_in_future: Option<bool>,
}

/// None until the sync lists the table.
fn progress(tgt: &Db, sub: &str) -> Option<Progress> {
    let rows = tgt
        .client()
        .query(
            "SELECT state::text, rows_copied, bytes_copied, approximate_rows, approximate_size, \
                    copy_started_at IS NOT NULL, copy_eta > now() \
               FROM livesync.subscription_rel WHERE subname = $1",
            &[&sub],
        )
        .unwrap();
    let r = rows.first()?;
    Some(Progress {
        state: r.get(0),
        rows_copied: r.get(1),
        bytes_copied: r.get(2),
        approximate_rows: r.get(3),
        approximate_size: r.get(4),
        started: r.get(5),
        eta_in_future: r.get(6),
    })
}

/// While a table is copied, `subscription_rel` shows the rows and bytes loaded so far
/// (growing), the source's estimates and a time to finish; the loader shows up in
/// `pg_stat_progress_copy`; once copied, the counts are the copy's exact totals.
#[test]
fn progress_columns_move_during_a_copy() {
    let src = Db::fresh(source(), "progress_src");
    let tgt = Db::fresh(target(), "progress_tgt");
    let n: i64 = 40_000;
    src.exec(&format!(
        "CREATE TABLE t (id int PRIMARY KEY, payload text); \
         INSERT INTO t SELECT g, repeat(md5(g::text), 16) FROM generate_series(1, {n}) g; \
         ANALYZE t; CREATE PUBLICATION p FOR TABLE t"
    ));
    // A slow load (a pause every 200 rows), so that the copy can be watched.
    tgt.exec(
        "CREATE TABLE t (id int PRIMARY KEY, payload text); \
         CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.id % 200 = 0 THEN PERFORM pg_sleep(0.02); END IF; RETURN NEW; END $$; \
         CREATE TRIGGER slow BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION slow(); \
         ALTER TABLE t ENABLE ALWAYS TRIGGER slow",
    );
    let sub = "progress";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    let mut seen: Vec<Progress> = Vec::new();
    let mut in_progress_copy = false;
    wait_until(SYNC_TIMEOUT, "the copy to finish", || {
        let Some(p) = progress(&tgt, sub) else {
            return false;
        };
        if p.state == "d" && p.rows_copied.unwrap_or(0) > 0 {
            in_progress_copy |= tgt.query_one::<i64>(
                "SELECT count(*) FROM pg_stat_progress_copy c JOIN pg_stat_activity a USING (pid) \
                  WHERE a.backend_type = 'livesync table sync worker' \
                    AND c.relid = 't'::regclass AND c.command = 'COPY FROM'",
            ) > 0;
            seen.push(p.clone());
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        matches!(p.state.as_str(), "f" | "s" | "r")
    });
    // Seen during the copy: growing counts, the estimates, a time to finish.
    let during: Vec<i64> = seen.iter().filter_map(|p| p.rows_copied).collect();
    assert!(
        during.windows(2).all(|w| w[0] <= w[1]) && during.first() < during.last(),
        "rows_copied must grow while the table is copied: {during:?}"
    );
    assert!(
        *during.first().unwrap() < n && *during.last().unwrap() <= n,
        "counts seen only at the end, or beyond the table: {during:?}"
    );
    let p = seen.last().unwrap();
    assert!(p.started && p.bytes_copied.unwrap_or(0) > 0, "{p:?}");
    let est = p
        .approximate_rows
        .expect("approximate_rows from the source's reltuples");
    assert!(
        (n * 9 / 10..=n * 11 / 10).contains(&est),
        "approximate_rows {est} for {n} rows"
    );
    assert!(p.approximate_size.unwrap_or(0) > 20 << 20, "{p:?}");
    // With rows to go, the copy ends after now.
    let early = &seen[0];
    assert_eq!(
        early.eta_in_future,
        Some(true),
        "copy_eta while copying: {early:?}"
    );
    assert!(
        in_progress_copy,
        "the loader must show up in pg_stat_progress_copy"
    );

    // Once copied: the exact totals, no time to finish.
    wait_for_sync_state(&tgt, sub, 'r');
    let done = progress(&tgt, sub).unwrap();
    assert_eq!(done.rows_copied, Some(n), "{done:?}");
    assert!(done.bytes_copied.unwrap() > n * 512, "{done:?}");
    assert_eq!(done.eta_in_future, None, "{done:?}");
    assert_tables_equal(&src, &tgt, "t");
}

/// A private target with PostgreSQL's defaults for what sizes the lock table and the
/// worker pool, and livesync's copy settings for this test.
fn copy_target(name: &str, settings: &[&str]) -> Cluster {
    let mut spec = ClusterSpec::new(Kind::Target, name)
        .conf("max_connections = 100")
        .conf("max_worker_processes = 8")
        .conf("max_wal_senders = 10")
        .conf("max_locks_per_transaction = 64");
    for s in settings {
        spec = spec.conf(s);
    }
    Cluster::new_private_with(spec)
}

/// A private target (see [`copy_target`]) that copies in 1 MB slices with `workers` workers
/// per table, and `settings`.
fn sliced_target(name: &str, workers: u32, settings: &[&str]) -> Cluster {
    let workers = format!("livesync.max_copy_workers_per_table = {workers}");
    let mut all = vec!["livesync.copy_slice_size = 1", workers.as_str()];
    all.extend(settings);
    copy_target(name, &all)
}

/// Fresh databases `<name>_src` on the shared source and `<name>_tgt` on `tc`, with the kv
/// table on both sides, filled with `n` rows on the source, published as `p`; the target's
/// loads pause 10 ms every `pause_every` rows so that a copy can be watched.
fn kv_pair<'a>(tc: &'a Cluster, name: &str, n: i64, pause_every: i64) -> (Db<'static>, Db<'a>) {
    let src = Db::fresh(source(), &format!("{name}_src"));
    let tgt = Db::fresh(tc, &format!("{name}_tgt"));
    src.exec(&format!(
        "{}; {}; ANALYZE t; CREATE PUBLICATION p FOR TABLE t",
        kv_table_ddl("t"),
        kv_fill_sql("t", n)
    ));
    tgt.exec(&format!(
        "{}; \
         CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.id % {pause_every} = 0 THEN PERFORM pg_sleep(0.01); END IF; RETURN NEW; END $$; \
         CREATE TRIGGER slow BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION slow(); \
         ALTER TABLE t ENABLE ALWAYS TRIGGER slow",
        kv_table_ddl("t")
    ));
    (src, tgt)
}

/// Moves rows to other keys on the source, down (negative, the first slice) and up (past
/// every key, the last slice), so that rows cross slices while they are copied.
fn key_mover(src: &Db, n: i64) -> BackgroundWriter {
    let mut rng: u64 = 0x2545_F491_4F6C_DD1D;
    BackgroundWriter::spawn(src, "key mover on t", move |c, i| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let id = 1 + (rng % n as u64) as i64;
        let sql = if i % 2 == 0 {
            "UPDATE t SET id = -id WHERE id = $1"
        } else {
            "UPDATE t SET id = id + 100000000 WHERE id = $1"
        };
        c.execute(sql, &[&id])?;
        Ok(())
    })
}

/// One loaded part of a copy, as `livesync.copy_range` records it.
#[derive(Debug, Clone, PartialEq)]
struct Part {
    sliceno: i32,
    lo: Option<String>,
    hi: Option<String>,
    lsn: String,
    rows: i64,
    done_at: String,
}

fn parts(tgt: &Db) -> Vec<Part> {
    tgt.client()
        .query(
            "SELECT sliceno, lo, hi, lsn::text, rows, done_at::text FROM livesync.copy_range \
              WHERE lsn IS NOT NULL ORDER BY sliceno, done_at",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| Part {
            sliceno: r.get(0),
            lo: r.get(1),
            hi: r.get(2),
            lsn: r.get(3),
            rows: r.get(4),
            done_at: r.get(5),
        })
        .collect()
}

/// A table larger than `livesync.copy_slice_size` is copied in slices by several workers
/// at once, while the source keeps inserting, updating, deleting and moving rows between
/// slices; the target ends equal to the source.
#[test]
fn sliced_copy_in_parallel_under_concurrent_writes() {
    let tc = sliced_target("slices_tgt", 3, &[]);
    let n = 200_000;
    let (src, tgt) = kv_pair(&tc, "slices", n, 200);
    let writer = BackgroundWriter::kv(&src, "t", n + 1);
    let mover = key_mover(&src, n);
    let sub = "slices";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    let (mut most_workers, mut done_seen) = (0, Vec::new());
    let mut total = 0;
    wait_until(SYNC_TIMEOUT, "the sliced copy to finish", || {
        let rows = tgt
            .client()
            .query(
                "SELECT state::text, coalesce(slices_done, 0), coalesce(slices_total, 0), copy_workers \
                   FROM livesync.subscription_rel WHERE subname = $1",
                &[&sub],
            )
            .unwrap();
        // None until the sync lists the table.
        let Some(r) = rows.first() else {
            return false;
        };
        let state: String = r.get(0);
        if state == "d" {
            most_workers = most_workers.max(r.get::<_, i32>(3));
            done_seen.push(r.get::<_, i32>(1));
            total = r.get::<_, i32>(2);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        matches!(state.as_str(), "f" | "s" | "r")
    });
    assert!(
        total >= 6,
        "{total} slices for a table of ~20 MB in 1 MB slices"
    );
    assert!(
        most_workers >= 2,
        "at most {most_workers} worker(s) loaded the table at once; target log:\n{}",
        tc.log_tail(60)
    );
    assert!(
        done_seen.first() < done_seen.last(),
        "slices_done must grow during the copy: {done_seen:?}"
    );
    wait_for_sync_state(&tgt, sub, 'r');
    std::thread::sleep(std::time::Duration::from_millis(500));
    eprintln!("[e2e] writers: {:?} {:?}", writer.stop(), mover.stop());
    assert_synced(&src, &tgt, sub, &["t"]);
    let done: (i32, i32) = {
        let r = tgt
            .client()
            .query_one(
                "SELECT slices_done, slices_total FROM livesync.subscription_rel WHERE subname = $1",
                &[&sub],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(done, (total, total));
}

/// A kill -9 of a loader in the middle of a sliced copy, then an immediate restart of the
/// target: the parts committed before stay as they are (same rows, same snapshot, same
/// time), only what was not loaded is read again (under a new snapshot), and the target
/// ends equal to the source, which kept writing throughout.
#[test]
fn a_killed_loader_and_a_restart_redo_only_unfinished_slices() {
    let tc = sliced_target("resume_tgt", 2, &[]);
    let n = 300_000;
    let (src, tgt) = kv_pair(&tc, "resume", n, 100);
    let writer = BackgroundWriter::kv(&src, "t", n + 1);
    let mover = key_mover(&src, n);
    let sub = "resume";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    let mut before = Vec::new();
    wait_until(SYNC_TIMEOUT, "parts of the copy to be committed", || {
        before = parts(&tgt);
        let pending: i64 =
            tgt.query_one("SELECT count(*) FROM livesync.copy_range WHERE lsn IS NULL");
        assert!(
            pending > 0 || before.len() < 3,
            "the copy ended before the test could kill a loader"
        );
        before.len() >= 3
    });
    let loader: i32 = tgt.query_one(
        "SELECT pid FROM pg_stat_activity \
          WHERE backend_type IN ('livesync copy worker', 'livesync table sync worker') \
          ORDER BY backend_type LIMIT 1",
    );
    let before = parts(&tgt);
    kill9(loader);
    tc.restart(StopMode::Immediate);
    wait_for_sync_state(&tgt, sub, 'r');
    std::thread::sleep(std::time::Duration::from_millis(500));
    eprintln!("[e2e] writers: {:?} {:?}", writer.stop(), mover.stop());
    assert_synced(&src, &tgt, sub, &["t"]);

    let after = parts(&tgt);
    for p in &before {
        assert!(
            after.contains(p),
            "part {p:?}, committed before the kill, was redone or changed: {after:?}"
        );
    }
    let first_lsn = &before[0].lsn;
    let redone: Vec<&Part> = after.iter().filter(|p| !before.contains(p)).collect();
    assert!(!redone.is_empty(), "nothing was loaded after the restart");
    assert!(
        redone.iter().all(|p| p.lsn != *first_lsn),
        "parts loaded after the restart must be read under a new snapshot: {redone:?}"
    );
    let rows_before: i64 = before.iter().map(|p| p.rows).sum();
    let rows_all: i64 = after.iter().map(|p| p.rows).sum();
    let copied: i64 = tgt.query_one(&format!(
        "SELECT rows_copied FROM livesync.subscription_rel WHERE subname = '{sub}'"
    ));
    assert_eq!(rows_all, copied, "rows_copied is the sum of the parts");
    assert!(
        rows_before > 0 && rows_all - rows_before < n,
        "after the restart {} rows were loaded again, {rows_before} before",
        rows_all - rows_before
    );
}

/// A copy into ~3 000 hypertable chunks on PostgreSQL's default lock table: a table with a
/// key is committed in parts that each lock a bounded number of chunks.
#[test]
fn a_copy_into_3000_chunks_fits_the_default_lock_table() {
    let tc = copy_target("chunks_tgt", &[]);
    let src = Db::fresh(source(), "chunks_src");
    let tgt = Db::fresh(&tc, "chunks_tgt");
    src.exec(
        "CREATE TABLE m (id bigint PRIMARY KEY, ts timestamptz NOT NULL, v int); \
         INSERT INTO m SELECT g, '2000-01-01'::timestamptz + (g / 10) * interval '1 day', g \
           FROM generate_series(0, 29999) g; \
         CREATE PUBLICATION p FOR TABLE m",
    );
    tgt.exec(
        "CREATE TABLE m (id bigint NOT NULL, ts timestamptz NOT NULL, v int, PRIMARY KEY (id, ts)); \
         SELECT create_hypertable('m', 'ts', chunk_time_interval => interval '1 day')",
    );
    let sub = "chunks";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_for_sync_state(&tgt, sub, 'r');
    assert_eq!(chunk_count(&tgt, "m"), 3000);
    assert_synced(&src, &tgt, sub, &["m"]);
    let parts: i64 = tgt.query_one("SELECT count(*) FROM livesync.copy_range");
    assert!(parts > 1, "the copy committed in {parts} part(s)");
}

/// A copy resumed under a later snapshot (L2) while the apply worker lags behind it (at
/// P < L2, held up in a backlog): the table is handed over only past L2, or the apply
/// worker would apply again what the parts read at L2 already hold (the source's inserts
/// between P and L2 would come twice).
#[test]
fn a_resumed_copy_is_handed_over_past_its_latest_snapshot() {
    let tc = sliced_target(
        "handover_tgt",
        2,
        &[
            // One source transaction per target commit: the apply worker commits the
            // backlog's first row alone (and starts the copy's worker after that commit)
            // before the second row waits.
            "livesync.apply_batch_rows = 1",
        ],
    );
    let n = 200_000;
    let (src, tgt) = kv_pair(&tc, "handover", n, 100);
    let u = "CREATE TABLE u (id int PRIMARY KEY, note text)";
    src.exec(&format!("{u}; ALTER PUBLICATION p ADD TABLE u"));
    tgt.exec(u);
    let writer = BackgroundWriter::kv(&src, "t", n + 1);
    let sub = "handover";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_until(SYNC_TIMEOUT, "u ready and parts of t committed", || {
        let u_ready: bool = tgt.query_one(&format!(
            "SELECT coalesce(bool_or(state = 'r'), false) FROM livesync.subscription_rel \
              WHERE subname = '{sub}' AND tablename = 'u'"
        ));
        u_ready && parts(&tgt).len() >= 2
    });
    livesync_stop(&tgt, sub);
    let pending: i64 = tgt.query_one("SELECT count(*) FROM livesync.copy_range WHERE lsn IS NULL");
    assert!(
        pending > 0,
        "the copy finished before it could be interrupted"
    );
    // A backlog for the apply worker, written while the sync is stopped, whose second row
    // waits for a lock this test holds: the apply worker applies the first row (and starts
    // the copy's table-sync worker after that commit), then stays behind the backlog while
    // the copy resumes under a snapshot taken after it.
    let mut holder = tgt.client();
    holder.execute("SELECT pg_advisory_lock(42)", &[]).unwrap();
    tgt.exec(
        "CREATE FUNCTION wait_u() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF NEW.id >= 2 THEN PERFORM pg_advisory_xact_lock(42); END IF; RETURN NEW; END $$; \
         CREATE TRIGGER wait_u BEFORE INSERT ON u FOR EACH ROW EXECUTE FUNCTION wait_u(); \
         ALTER TABLE u ENABLE ALWAYS TRIGGER wait_u",
    );
    for i in 1..=20 {
        src.exec(&format!("INSERT INTO u VALUES ({i}, 'backlog')"));
    }
    let p: String = src.query_one("SELECT pg_current_wal_lsn()::text");
    let _g2 = start_sync(&tgt, &src.uri(), "p", sub);
    // The copy finishes while the apply worker waits (behind p) ...
    wait_until(SYNC_TIMEOUT, "the resumed copy to finish", || {
        tgt.query_one::<String>(&format!(
            "SELECT state::text FROM livesync.subscription_rel WHERE subname = '{sub}' AND tablename = 't'"
        )) == "f"
    });
    let later: bool = tgt.query_one(&format!(
        "SELECT bool_or(lsn > '{p}'::pg_lsn) FROM livesync.copy_range"
    ));
    assert!(
        later,
        "no part was read under a snapshot later than the backlog"
    );
    let applied: i64 = tgt.query_one("SELECT count(*) FROM u");
    assert_eq!(
        applied, 1,
        "the apply worker must still be held up in the backlog"
    );
    // ... and hands it over from there, at its next commit.
    holder
        .execute("SELECT pg_advisory_unlock(42)", &[])
        .unwrap();
    wait_for_sync_state(&tgt, sub, 'r');
    std::thread::sleep(std::time::Duration::from_millis(500));
    eprintln!("[e2e] writer: {:?}", writer.stop());
    assert_synced(&src, &tgt, sub, &["t", "u"]);
}

/// Start a sync of `t` (see [`kv_pair`]) and stop it once its copy has committed a part
/// holding the smallest key while the last slice is still to load.
fn interrupted_copy(src: &Db, tgt: &Db, sub: &str) -> SyncGuard {
    let g = start_sync(tgt, &src.uri(), "p", sub);
    wait_until(SYNC_TIMEOUT, "the first part of the copy", || {
        tgt.query_one::<bool>(
            "SELECT EXISTS (SELECT 1 FROM livesync.copy_range WHERE lo IS NULL AND lsn IS NOT NULL)",
        )
    });
    livesync_stop(tgt, sub);
    let last_pending: bool = tgt.query_one(
        "SELECT EXISTS (SELECT 1 FROM livesync.copy_range WHERE hi IS NULL AND lsn IS NULL)",
    );
    assert!(
        last_pending,
        "the copy's last slice was loaded before it could be interrupted"
    );
    g
}

/// A unique value that moved, while the copy was interrupted, from a row already copied to
/// a row still to copy: the rest, read under a new snapshot, cannot be loaded next to the
/// old parts, so the copy starts over (before: the same unique violation forever).
#[test]
fn a_value_moved_between_parts_starts_the_copy_over() {
    let tc = sliced_target("moved_tgt", 2, &[]);
    let n = 200_000;
    let (src, tgt) = kv_pair(&tc, "moved", n, 100);
    for db in [&src, &tgt] {
        db.exec("CREATE UNIQUE INDEX t_payload ON t (payload)");
    }
    let sub = "moved";
    let _g = interrupted_copy(&src, &tgt, sub);
    src.exec(&format!(
        "BEGIN; \
         UPDATE t SET payload = 'moved away' WHERE id = 1; \
         UPDATE t SET payload = md5('1') WHERE id = {n}; \
         COMMIT"
    ));
    let _g2 = start_sync(&tgt, &src.uri(), "p", sub);
    wait_for_sync_state(&tgt, sub, 'r');
    assert_synced(&src, &tgt, sub, &["t"]);
    let why: Option<String> =
        tgt.query_one("SELECT last_error FROM livesync.subscription_rel WHERE tablename = 't'");
    assert_eq!(why, None, "a ready table shows no error");
}

/// The source's key changed while the copy was interrupted (here: no key any more): the
/// pending slices, ranges of the old key, mean nothing now, and the copy starts over
/// (before: each pending slice copied the whole table).
#[test]
fn a_copy_whose_key_changed_while_interrupted_starts_over() {
    let tc = sliced_target("rekey_tgt", 2, &[]);
    let n = 200_000;
    let (src, tgt) = kv_pair(&tc, "rekey", n, 100);
    let sub = "rekey";
    let _g = interrupted_copy(&src, &tgt, sub);
    src.exec("ALTER TABLE t REPLICA IDENTITY FULL; ALTER TABLE t DROP CONSTRAINT t_pkey");
    let writer = BackgroundWriter::kv(&src, "t", n + 1);
    let _g2 = start_sync(&tgt, &src.uri(), "p", sub);
    wait_for_sync_state(&tgt, sub, 'r');
    std::thread::sleep(std::time::Duration::from_millis(500));
    eprintln!("[e2e] writer: {:?}", writer.stop());
    assert_synced(&src, &tgt, sub, &["t"]);
    let total: i32 =
        tgt.query_one("SELECT slices_total FROM livesync.subscription_rel WHERE tablename = 't'");
    assert_eq!(total, 1, "copied again as one slice, without a key");
}

/// Columns of many built-in types, with NULLs and text that needs escaping in COPY's text
/// format.
const TYPES_DDL: &str = "(id bigint PRIMARY KEY, i2 int2, i4 int4, n numeric(12,3), f4 real, \
    f8 double precision, b bool, t text, vc varchar(20), ch char(3), by bytea, d date, \
    ts timestamp, tz timestamptz, tm time, iv interval, u uuid, j jsonb, js json, ip inet, \
    arr int[], tarr text[], bits varbit(8))";

/// A table copied in COPY's binary format (the same built-in types on both sides) and one
/// in its text format (a column of another type on the target) arrive equal to the source,
/// values that need escaping and NULLs included.
#[test]
fn binary_and_text_copies_agree_on_every_type() {
    let src = Db::fresh(source(), "formats_src");
    let tgt = Db::fresh(target(), "formats_tgt");
    let fill = "INSERT INTO {t} SELECT g, g::int2, -g, g * 1.5, g / 3.0, -g / 7.0, g % 2 = 0, \
        E'tab\\there\\nnew line \\\\ back ' || g || ' é', 'v' || g, 'c' || (g % 10), \
        decode(md5(g::text), 'hex'), date '2000-01-01' + g, timestamp '2000-01-01' + g * interval '1 min', \
        timestamptz '2000-01-01 00:00+02' + g * interval '1 s', time '00:00' + g * interval '1 s', \
        g * interval '1 h 1 s', md5(g::text)::uuid, jsonb_build_object('g', g, 's', E'q\"\\\\'), \
        json_build_array(g, 'x'), ('10.0.' || (g % 256) || '.1')::inet, ARRAY[g, NULL, -g], \
        ARRAY['a b', NULL, E'c\\td'], (g % 256)::bit(8)::varbit \
        FROM generate_series(1, 2000) g; \
        INSERT INTO {t} (id) VALUES (0)";
    for t in ["as_is", "other_type"] {
        src.exec(&format!("CREATE TABLE {t} {TYPES_DDL}"));
        src.exec(&fill.replace("{t}", t));
    }
    src.exec("CREATE PUBLICATION p FOR TABLE as_is, other_type");
    tgt.exec(&format!("CREATE TABLE as_is {TYPES_DDL}"));
    tgt.exec(&format!(
        "CREATE TABLE other_type {}",
        TYPES_DDL.replace("t text,", "t varchar(200),")
    ));
    let sub = "formats";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_for_sync_state(&tgt, sub, 'r');
    assert_synced(&src, &tgt, sub, &["as_is", "other_type"]);
    let log = std::fs::read_to_string(target().logfile()).unwrap();
    let method = |table: &str| -> String {
        log.lines()
            .rev()
            .find(|l| l.contains(&format!("copied \"public.{table}\" (")))
            .and_then(|l| l.split(&format!("copied \"public.{table}\" (")).nth(1))
            .and_then(|r| r.split(')').next())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(method("as_is"), "binary COPY");
    assert_eq!(method("other_type"), "COPY");
}
