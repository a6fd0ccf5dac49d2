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
