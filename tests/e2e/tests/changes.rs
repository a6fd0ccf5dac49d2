//! Issue 3: what changes livesync applies, and how, on this binary's shared source and target
//! clusters. Ported from PostgreSQL's own `src/test/subscription/t/` (001_rep_changes,
//! 002_types, 003_constraints, 006_rewrite, 008_diff_schema, 010_truncate, 011_generated,
//! 013_partition, 100_bugs): replica identities (key, index, FULL with duplicates and types
//! without equality, NOTHING), key updates, unchanged TOAST, TRUNCATE (several tables,
//! CASCADE, RESTART IDENTITY), partitioned sources (via root, leaves, missing leaf), column
//! differences, generated and identity columns, a wide table of types (also with a target
//! database in non-ISO settings), many small transactions, publication changes during the
//! copy, apply and copy errors with recovery, and large transactions.
//!
//! Every test works in databases of its own and uses a sync name no other test of this binary
//! uses (slots are global on the shared source).

use std::thread::sleep;
use std::time::{Duration, Instant};

use livesync_e2e::postgres::Client;
use livesync_e2e::*;

/// Generous timeout for the waits of this binary (tests run two at a time on a small machine).
const LONG: Duration = Duration::from_secs(120);

/// Creates the same DDL on source and target.
fn ddl_both(src: &Db, tgt: &Db, ddl: &str) {
    src.exec(ddl);
    tgt.exec(ddl);
}

fn describe(tgt: &Db, sub: &str) -> String {
    format!(
        "livesync.subscription: {:?}\nlivesync.subscription_rel: {:?}\nrel errors: {:?}",
        try_sub_info(tgt, sub).map_err(|e| err_text(&e)),
        try_sub_rels(tgt, sub).map_err(|e| err_text(&e)),
        rel_errors(tgt, sub)
    )
}

/// Waits (120 s) until the sync lists exactly `tables`, all in `state`.
fn wait_tables(tgt: &Db, sub: &str, tables: &[&str], state: char) {
    let mut want: Vec<String> = tables.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_until_or(
        LONG,
        &format!("sync {sub} to list exactly {want:?}, all in state '{state}'"),
        || describe(tgt, sub),
        || match try_sub_rels(tgt, sub) {
            Ok(rels) => {
                let mut got: Vec<String> = rels.iter().map(|r| r.qualified()).collect();
                got.sort();
                got == want && rels.iter().all(|r| r.state == state)
            }
            Err(_) => false,
        },
    );
}

/// Waits (`timeout`) until every table is 'r' and `applied_lsn` reached the source's current
/// WAL position.
fn caught_up_within(src: &Db, tgt: &Db, sub: &str, timeout: Duration) {
    wait_until_or(
        timeout,
        &format!("every table of sync {sub} in state 'r'"),
        || describe(tgt, sub),
        || {
            try_sub_rels(tgt, sub)
                .map(|r| !r.is_empty() && r.iter().all(|x| x.state == 'r'))
                .unwrap_or(false)
        },
    );
    wait_applied(src, tgt, sub, timeout);
}

fn caught_up(src: &Db, tgt: &Db, sub: &str) {
    caught_up_within(src, tgt, sub, LONG);
}

/// Caught up (120 s), then every table equal.
fn synced(src: &Db, tgt: &Db, sub: &str, tables: &[&str]) {
    caught_up(src, tgt, sub);
    for t in tables {
        assert_tables_equal(src, tgt, t);
    }
}

/// `schema.table: last_error` of the sync's tables that have one.
fn rel_errors(tgt: &Db, sub: &str) -> Vec<String> {
    let Ok(mut c) = tgt.try_client() else {
        return vec![];
    };
    c.query(
        "SELECT schemaname || '.' || tablename || ': ' || last_error FROM livesync.subscription_rel \
         WHERE subname = $1 AND last_error IS NOT NULL ORDER BY 1",
        &[&sub],
    )
    .map(|rows| rows.iter().map(|r| r.get(0)).collect())
    .unwrap_or_default()
}

/// Waits until the sync's last_error or one of its tables' last_error satisfies `ok`.
fn wait_any_error(
    tgt: &Db,
    sub: &str,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let mut found = None;
    wait_until_or(
        timeout,
        &format!("sync {sub} to report {what} in subscription or subscription_rel.last_error"),
        || describe(tgt, sub),
        || {
            let mut all = rel_errors(tgt, sub);
            all.extend(sub_last_error(tgt, sub));
            found = all.into_iter().find(|e| ok(e));
            found.is_some()
        },
    );
    found.unwrap()
}

fn client_with(db: &Db, setup: &str) -> Client {
    let mut c = db.client();
    if !setup.is_empty() {
        c.batch_execute(setup)
            .unwrap_or_else(|e| panic!("{setup}: {}", err_text(&e)));
    }
    c
}

fn rows_text(c: &mut Client, query: &str) -> Vec<String> {
    c.query(
        format!("SELECT t::text FROM {query} t ORDER BY 1").as_str(),
        &[],
    )
    .unwrap_or_else(|e| panic!("rows of {query}: {}", err_text(&e)))
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Compares `src_query` on the source with `tgt_query` on the target (table names or
/// parenthesised subqueries) by order-independent checksums, each session first running
/// `setup` (e.g. `SET DateStyle = ISO`); panics with the differing rows.
fn assert_same_in(src: &Db, tgt: &Db, src_query: &str, tgt_query: &str, setup: &str) {
    let mut s = client_with(src, setup);
    let mut t = client_with(tgt, setup);
    let a = table_checksum(&mut s, src_query);
    let b = table_checksum(&mut t, tgt_query);
    if a == b {
        return;
    }
    let (sr, tr) = (rows_text(&mut s, src_query), rows_text(&mut t, tgt_query));
    let (only_src, only_tgt) = multiset_differences(&sr, &tr);
    panic!(
        "source {src_query} ({} rows) and target {tgt_query} ({} rows) differ (session: {setup:?})\n\
         source rows missing or with another multiplicity on the target: {only_src:?}\n\
         target rows missing or with another multiplicity on the source: {only_tgt:?}\n{}",
        a.0,
        b.0,
        all_log_tails(30)
    );
}

fn assert_same(src: &Db, tgt: &Db, src_query: &str, tgt_query: &str) {
    assert_same_in(src, tgt, src_query, tgt_query, "");
}

fn count(db: &Db, sql_from: &str) -> i64 {
    db.query_one(&format!("SELECT count(*)::int8 FROM {sql_from}"))
}

// ---------------------------------------------------------------------------------------------
// Replica identity, key updates, TOAST
// ---------------------------------------------------------------------------------------------

#[test]
fn primary_key_updates_including_key_changes() {
    // 001_rep_changes: tab_rep / tab_include (UPDATE SET a = -a), composite keys.
    let src = Db::fresh(source(), "pk_src");
    let tgt = Db::fresh(target(), "pk_tgt");
    ddl_both(
        &src,
        &tgt,
        "CREATE TABLE tab_rep (a int PRIMARY KEY, b text); \
         CREATE TABLE tab_include (a int, b text, CONSTRAINT covering PRIMARY KEY (a) INCLUDE (b)); \
         CREATE TABLE comp (k1 int, k2 text, v int, PRIMARY KEY (k1, k2)); \
         CREATE SCHEMA \"Other Schema\"; \
         CREATE TABLE \"Other Schema\".\"Mixed Table\" (\"Id\" int PRIMARY KEY, \"we\"\"ird col\" text)",
    );
    src.exec(
        "INSERT INTO tab_rep SELECT g, 'r' || g FROM generate_series(1, 50) g; \
         INSERT INTO tab_include SELECT g, 'i' || g FROM generate_series(1, 50) g; \
         INSERT INTO comp SELECT g % 10, 'k' || (g / 10), g FROM generate_series(1, 100) g; \
         INSERT INTO \"Other Schema\".\"Mixed Table\" SELECT g, 'w' || g FROM generate_series(1, 20) g; \
         CREATE PUBLICATION p FOR TABLE tab_rep, tab_include, comp, \"Other Schema\".\"Mixed Table\"",
    );
    let sub = "pk_updates";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(
        &tgt,
        sub,
        &[
            "public.tab_rep",
            "public.tab_include",
            "public.comp",
            "Other Schema.Mixed Table",
        ],
        'r',
    );
    src.exec(
        "INSERT INTO tab_rep SELECT g, 'r' || g FROM generate_series(51, 60) g; \
         DELETE FROM tab_rep WHERE a > 20 AND a <= 40; \
         UPDATE tab_rep SET a = -a; \
         UPDATE tab_rep SET a = a - 1000, b = b || ' moved' WHERE a > -10; \
         DELETE FROM tab_include WHERE a > 20; \
         UPDATE tab_include SET a = -a; \
         UPDATE comp SET k2 = k2 || 'x' WHERE k1 = 3; \
         UPDATE comp SET k1 = k1 + 100, v = -v WHERE k1 = 4; \
         DELETE FROM comp WHERE k1 = 5; \
         UPDATE \"Other Schema\".\"Mixed Table\" SET \"Id\" = \"Id\" + 100, \"we\"\"ird col\" = 'q''\"' WHERE \"Id\" % 2 = 0; \
         DELETE FROM \"Other Schema\".\"Mixed Table\" WHERE \"Id\" = 3",
    );
    // A key changed twice in one transaction, and back.
    src.exec(
        "BEGIN; UPDATE tab_rep SET a = 5000 WHERE a = -1; UPDATE tab_rep SET a = 5001 WHERE a = 5000; \
         UPDATE tab_rep SET a = -1 WHERE a = 5001; UPDATE tab_rep SET b = 'back' WHERE a = -1; COMMIT",
    );
    synced(
        &src,
        &tgt,
        sub,
        &[
            "tab_rep",
            "tab_include",
            "comp",
            "\"Other Schema\".\"Mixed Table\"",
        ],
    );
    assert_eq!(count(&tgt, "tab_rep WHERE a > 0"), 0);
    assert_no_duplicates(&tgt, "tab_rep", "a");
    assert_no_duplicates(&tgt, "comp", "k1, k2");
}

#[test]
fn replica_identity_using_index() {
    // 100_bugs: REPLICA IDENTITY USING INDEX; the target also without any index.
    let src = Db::fresh(source(), "riidx_src");
    let tgt = Db::fresh(target(), "riidx_tgt");
    let ddl = |t: &str| {
        format!(
            "CREATE TABLE {t} (a int NOT NULL, b text NOT NULL, c text, d int); \
             CREATE UNIQUE INDEX {t}_ab ON {t} (a, b); \
             ALTER TABLE {t} REPLICA IDENTITY USING INDEX {t}_ab"
        )
    };
    src.exec(&format!("{}; {}", ddl("ri"), ddl("ri_noidx")));
    tgt.exec(&ddl("ri"));
    tgt.exec("CREATE TABLE ri_noidx (a int NOT NULL, b text NOT NULL, c text, d int)");
    for t in ["ri", "ri_noidx"] {
        src.exec(&format!(
            "INSERT INTO {t} SELECT g % 100, 'b' || (g / 100), CASE WHEN g % 7 = 0 THEN NULL ELSE 'c' || g END, g \
             FROM generate_series(1, 1000) g"
        ));
    }
    src.exec("CREATE PUBLICATION p FOR TABLE ri, ri_noidx");
    let sub = "ri_index";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.ri", "public.ri_noidx"], 'r');
    for t in ["ri", "ri_noidx"] {
        src.exec(&format!(
            "UPDATE {t} SET c = 'changed ' || d WHERE a % 5 = 0; \
             UPDATE {t} SET b = b || '!' WHERE a % 3 = 0; \
             UPDATE {t} SET a = a + 1000, d = -d WHERE a % 11 = 0; \
             UPDATE {t} SET c = NULL WHERE a % 13 = 0; \
             DELETE FROM {t} WHERE a % 4 = 1; \
             INSERT INTO {t} VALUES (5000, 'new', NULL, NULL)"
        ));
    }
    synced(&src, &tgt, sub, &["ri", "ri_noidx"]);
    assert_no_duplicates(&tgt, "ri", "a, b");
    assert_no_duplicates(&tgt, "ri_noidx", "a, b");
}

#[test]
fn replica_identity_full_types_without_equality_and_duplicate_rows() {
    // 001_rep_changes: tab_full / tab_full2 with duplicate tuples.
    let src = Db::fresh(source(), "full_src");
    let tgt = Db::fresh(target(), "full_tgt");
    ddl_both(
        &src,
        &tgt,
        "CREATE TABLE full_t (n int, j json, p point, t text, f float8, ts timestamptz); \
         ALTER TABLE full_t REPLICA IDENTITY FULL; \
         CREATE TABLE tab_full2 (x text); ALTER TABLE tab_full2 REPLICA IDENTITY FULL",
    );
    src.exec(
        "INSERT INTO full_t SELECT g % 10, json_build_object('k', g % 10, 'a', json_build_array(1, 'x')), \
                point(g % 10, 0.5), CASE WHEN g % 10 = 0 THEN NULL ELSE 'dup ' || (g % 10) END, \
                (g % 10) / 3.0, '2024-01-01 00:00:00+00'::timestamptz + (g % 10) * interval '1 hour' \
         FROM generate_series(1, 40) g; \
         INSERT INTO full_t VALUES (NULL, NULL, NULL, NULL, NULL, NULL), (NULL, NULL, NULL, NULL, NULL, NULL), \
                (99, '{\"x\": [1, 2]}', '(1.5,-2.25)', E'tab\\t\"q\"', 'NaN', 'infinity'), \
                (99, '{\"x\": [1, 2]}', '(1.5,-2.25)', E'tab\\t\"q\"', 'NaN', 'infinity'); \
         INSERT INTO tab_full2 VALUES ('a'), ('b'), ('b'), ('b'), ('c'), ('c'); \
         CREATE PUBLICATION p FOR TABLE full_t, tab_full2",
    );
    let sub = "ri_full";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.full_t", "public.tab_full2"], 'r');

    // One of several identical rows: exactly one must change on the target too.
    src.exec(
        "DELETE FROM full_t WHERE ctid = (SELECT ctid FROM full_t WHERE n = 3 LIMIT 1); \
         UPDATE full_t SET t = 'only one' WHERE ctid = (SELECT ctid FROM full_t WHERE n = 4 LIMIT 1); \
         DELETE FROM full_t WHERE ctid = (SELECT ctid FROM full_t WHERE n IS NULL LIMIT 1); \
         UPDATE full_t SET n = -99 WHERE ctid = (SELECT ctid FROM full_t WHERE n = 99 LIMIT 1); \
         UPDATE full_t SET j = '[]' WHERE n = 5; \
         UPDATE full_t SET p = point(-1, -1) WHERE n = 6; \
         DELETE FROM full_t WHERE n = 0; \
         UPDATE tab_full2 SET x = 'bb' WHERE x = 'b'; \
         DELETE FROM tab_full2 WHERE ctid = (SELECT ctid FROM tab_full2 WHERE x = 'c' LIMIT 1); \
         INSERT INTO full_t VALUES (7, '{}', '(0,0)', 'late', -0.0, '-infinity')",
    );
    synced(&src, &tgt, sub, &["full_t", "tab_full2"]);
    assert_eq!(count(&tgt, "full_t WHERE n = 3"), 3);
    assert_eq!(count(&tgt, "full_t WHERE t = 'only one'"), 1);
    assert_eq!(count(&tgt, "tab_full2 WHERE x = 'bb'"), 3);
    assert_eq!(count(&tgt, "tab_full2 WHERE x = 'c'"), 1);
}

#[test]
fn replica_identity_nothing_inserts_replicate_and_missing_identity_is_reported() {
    // 001_rep_changes: tab_nothing (only INSERTs replicate). PostgreSQL itself refuses an
    // UPDATE of such a table on the source while the publication publishes updates, so the
    // case that reaches the target is a partitioned root published via the root whose leaves
    // have keys but the root has none: the Relation message carries no identity.
    let src = Db::fresh(source(), "nothing_src");
    let tgt = Db::fresh(target(), "nothing_tgt");
    src.exec(
        "CREATE TABLE nothing_t (a int, b text); ALTER TABLE nothing_t REPLICA IDENTITY NOTHING; \
         CREATE TABLE pr_root (id int NOT NULL, v text) PARTITION BY RANGE (id); \
         CREATE TABLE pr_leaf PARTITION OF pr_root FOR VALUES FROM (0) TO (100000); \
         ALTER TABLE pr_leaf ADD PRIMARY KEY (id)",
    );
    tgt.exec(
        "CREATE TABLE nothing_t (a int, b text); \
         CREATE TABLE pr_root (id int NOT NULL, v text)",
    );
    src.exec(
        "INSERT INTO nothing_t SELECT g, 'n' || g FROM generate_series(1, 20) g; \
         INSERT INTO pr_root SELECT g, 'v' || g FROM generate_series(1, 20) g; \
         CREATE PUBLICATION p FOR TABLE nothing_t, pr_root WITH (publish_via_partition_root = true)",
    );
    let sub = "ri_nothing";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.nothing_t", "public.pr_root"], 'r');
    src.exec(
        "INSERT INTO nothing_t SELECT g, 'n' || g FROM generate_series(21, 40) g; \
         INSERT INTO pr_root SELECT g, 'v' || g FROM generate_series(21, 40) g",
    );
    synced(&src, &tgt, sub, &["nothing_t", "pr_root"]);

    // The source refuses the UPDATE of a table without identity (as in 001_rep_changes).
    let refused = src
        .client()
        .batch_execute("UPDATE nothing_t SET b = 'x' WHERE a = 1");
    let msg = assert_sqlstate(
        refused,
        &["55000"],
        "UPDATE of a REPLICA IDENTITY NOTHING table",
    );
    assert!(msg.contains("replica identity"), "{msg}");

    // An UPDATE that reaches livesync without any identity: a clear error naming the table.
    src.exec("UPDATE pr_root SET v = 'updated' WHERE id = 5");
    let err = wait_sub_error(
        &tgt,
        sub,
        LONG,
        "the missing replica identity",
        || describe(&tgt, sub),
        |e| e.contains("pr_root") && e.to_lowercase().contains("replica identity"),
    );
    eprintln!("[e2e] last_error: {err}");
}

#[test]
fn unchanged_toast_values_are_kept() {
    // Updates of other columns send the TOASTed column as "unchanged": it keeps its value.
    let src = Db::fresh(source(), "toast_src");
    let tgt = Db::fresh(target(), "toast_tgt");
    let ddl = "CREATE TABLE doc (id int PRIMARY KEY, big text, small int, other text); \
               ALTER TABLE doc ALTER COLUMN big SET STORAGE EXTERNAL; \
               ALTER TABLE doc ALTER COLUMN other SET STORAGE EXTERNAL; \
               CREATE TABLE doc_full (id int, big text, small int); \
               ALTER TABLE doc_full ALTER COLUMN big SET STORAGE EXTERNAL; \
               ALTER TABLE doc_full REPLICA IDENTITY FULL; \
               CREATE TABLE doc_idx (id int NOT NULL, big text, small int); \
               CREATE UNIQUE INDEX doc_idx_id ON doc_idx (id); \
               ALTER TABLE doc_idx REPLICA IDENTITY USING INDEX doc_idx_id; \
               ALTER TABLE doc_idx ALTER COLUMN big SET STORAGE EXTERNAL";
    ddl_both(&src, &tgt, ddl);
    // ~16 kB of md5s per value: stored out of line.
    let big = |seed: &str| {
        format!("(SELECT string_agg(md5({seed} || '-' || x), '') FROM generate_series(1, 500) x)")
    };
    let fill = |from: i32, to: i32| {
        format!(
            "INSERT INTO doc SELECT g, {}, g, CASE WHEN g % 2 = 0 THEN {} END FROM generate_series({from}, {to}) g; \
             INSERT INTO doc_full SELECT g, {}, g FROM generate_series({from}, {to}) g; \
             INSERT INTO doc_idx SELECT g, {}, g FROM generate_series({from}, {to}) g",
            big("g::text"),
            big("'o' || g"),
            big("g::text"),
            big("g::text")
        )
    };
    src.exec(&fill(1, 20));
    let len: i32 = src.query_one("SELECT min(octet_length(big)) FROM doc");
    assert!(len > 8000, "{len}");
    src.exec("CREATE PUBLICATION p FOR TABLE doc, doc_full, doc_idx");
    let sub = "toast_kept";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(
        &tgt,
        sub,
        &["public.doc", "public.doc_full", "public.doc_idx"],
        'r',
    );
    src.exec(&fill(21, 30));
    src.exec(
        "UPDATE doc SET small = small + 1000; \
         UPDATE doc SET id = id + 100 WHERE id <= 3; \
         UPDATE doc SET other = 'short now' WHERE id = 4; \
         UPDATE doc SET big = big || 'x', small = -small WHERE id % 5 = 0; \
         UPDATE doc SET big = NULL WHERE id = 7; UPDATE doc SET small = 0 WHERE id = 7; \
         DELETE FROM doc WHERE id % 9 = 0; \
         UPDATE doc_full SET small = small + 1000; \
         DELETE FROM doc_full WHERE id % 4 = 0; \
         UPDATE doc_idx SET small = small + 1000; \
         UPDATE doc_idx SET id = id + 100 WHERE id % 3 = 0; \
         DELETE FROM doc_idx WHERE id % 4 = 0",
    );
    // Several updates of one row in one transaction.
    src.exec("BEGIN; UPDATE doc SET small = 1 WHERE id = 8; UPDATE doc SET small = 2 WHERE id = 8; COMMIT");
    synced(&src, &tgt, sub, &["doc", "doc_full", "doc_idx"]);
    assert_eq!(count(&tgt, "doc WHERE big IS NULL"), 1);
    assert_eq!(
        count(&tgt, "doc WHERE octet_length(big) > 8000"),
        count(&src, "doc WHERE octet_length(big) > 8000")
    );
}

// ---------------------------------------------------------------------------------------------
// TRUNCATE
// ---------------------------------------------------------------------------------------------

#[test]
fn truncate_one_table() {
    // 010_truncate: a single table, inside a transaction, a hypertable target, and a
    // publication that does not publish TRUNCATE.
    let src = Db::fresh(source(), "trunc1_src");
    let tgt = Db::fresh(target(), "trunc1_tgt");
    ddl_both(
        &src,
        &tgt,
        "CREATE TABLE t1 (a int PRIMARY KEY, b text); CREATE TABLE keep (a int PRIMARY KEY); \
         CREATE TABLE metrics (ts timestamptz NOT NULL, dev int NOT NULL, v float8, PRIMARY KEY (dev, ts)); \
         CREATE TABLE ins_only (a int PRIMARY KEY)",
    );
    tgt.exec(
        "SET client_min_messages = warning; \
         SELECT create_hypertable('metrics', 'ts', chunk_time_interval => interval '1 day')",
    );
    src.exec(
        "INSERT INTO t1 SELECT g, 'x' FROM generate_series(1, 100) g; \
         INSERT INTO keep SELECT generate_series(1, 10); \
         INSERT INTO metrics SELECT '2024-01-01'::timestamptz + g * interval '1 hour', g % 3, g \
           FROM generate_series(1, 200) g; \
         INSERT INTO ins_only SELECT generate_series(1, 10); \
         CREATE PUBLICATION p FOR TABLE t1, keep, metrics; \
         CREATE PUBLICATION p_ins FOR TABLE ins_only WITH (publish = 'insert')",
    );
    let sub = "trunc_one";
    let sub2 = "trunc_one_ins";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    let _g2 = start_sync(&tgt, &src.uri(), "p_ins", sub2);
    wait_tables(
        &tgt,
        sub,
        &["public.t1", "public.keep", "public.metrics"],
        'r',
    );
    wait_tables(&tgt, sub2, &["public.ins_only"], 'r');
    src.exec("TRUNCATE t1");
    synced(&src, &tgt, sub, &["t1", "keep", "metrics"]);
    assert_eq!(count(&tgt, "t1"), 0);
    assert_eq!(count(&tgt, "keep"), 10);

    src.exec(
        "BEGIN; INSERT INTO t1 VALUES (1, 'before'); TRUNCATE t1; \
         INSERT INTO t1 SELECT g, 'after' FROM generate_series(1, 5) g; COMMIT; \
         TRUNCATE metrics; \
         INSERT INTO metrics VALUES ('2024-02-01', 1, 1)",
    );
    synced(&src, &tgt, sub, &["t1", "keep", "metrics"]);
    assert_eq!(count(&tgt, "metrics"), 1);

    // publish = 'insert': TRUNCATE is not replicated.
    src.exec("TRUNCATE ins_only; INSERT INTO ins_only VALUES (100)");
    caught_up(&src, &tgt, sub2);
    assert_eq!(
        count(&tgt, "ins_only"),
        11,
        "a TRUNCATE that is not published was applied"
    );
}

#[test]
fn truncate_several_tables_in_one_statement() {
    let src = Db::fresh(source(), "truncn_src");
    let tgt = Db::fresh(target(), "truncn_tgt");
    ddl_both(
        &src,
        &tgt,
        "CREATE TABLE t2 (a int PRIMARY KEY); CREATE TABLE t3 (a int PRIMARY KEY); \
         CREATE TABLE t4 (a int PRIMARY KEY); CREATE TABLE unpub (a int PRIMARY KEY)",
    );
    src.exec(
        "INSERT INTO t2 SELECT generate_series(1, 30); INSERT INTO t3 SELECT generate_series(1, 30); \
         INSERT INTO t4 SELECT generate_series(1, 30); INSERT INTO unpub SELECT generate_series(1, 30); \
         CREATE PUBLICATION p FOR TABLE t2, t3, t4",
    );
    tgt.exec("INSERT INTO unpub SELECT generate_series(1, 7)");
    let sub = "trunc_many";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.t2", "public.t3", "public.t4"], 'r');
    // A TRUNCATE of published and unpublished tables together.
    src.exec("TRUNCATE t2, t3, unpub; INSERT INTO t3 VALUES (42)");
    synced(&src, &tgt, sub, &["t2", "t3", "t4"]);
    assert_eq!(count(&tgt, "t2"), 0);
    assert_eq!(count(&tgt, "t4"), 30);
    assert_eq!(
        count(&tgt, "unpub"),
        7,
        "an unpublished table was truncated"
    );
}

#[test]
fn truncate_cascade_and_restart_identity() {
    // 010_truncate: FK between two published tables with CASCADE; RESTART IDENTITY restarts
    // the target's sequences too.
    let src = Db::fresh(source(), "truncc_src");
    let tgt = Db::fresh(target(), "truncc_tgt");
    ddl_both(
        &src,
        &tgt,
        "CREATE TABLE parent (a int PRIMARY KEY); \
         CREATE TABLE child (x int PRIMARY KEY, y int REFERENCES parent); \
         CREATE TABLE ident (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, v text); \
         CREATE TABLE ser (id serial PRIMARY KEY, v text)",
    );
    src.exec(
        "INSERT INTO parent SELECT generate_series(1, 10); \
         INSERT INTO child SELECT g, g % 10 + 1 FROM generate_series(1, 50) g; \
         INSERT INTO ident (v) SELECT 'i' || g FROM generate_series(1, 20) g; \
         INSERT INTO ser (v) SELECT 's' || g FROM generate_series(1, 20) g; \
         CREATE PUBLICATION p FOR TABLE parent, child, ident, ser",
    );
    let sub = "trunc_cascade";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(
        &tgt,
        sub,
        &[
            "public.parent",
            "public.child",
            "public.ident",
            "public.ser",
        ],
        'r',
    );
    // The target's sequences move on (as if used locally): RESTART IDENTITY must reset them.
    tgt.exec(
        "SELECT setval(pg_get_serial_sequence('ident', 'id'), 500); \
         SELECT setval(pg_get_serial_sequence('ser', 'id'), 500)",
    );
    src.exec("TRUNCATE parent CASCADE");
    synced(&src, &tgt, sub, &["parent", "child"]);
    assert_eq!(count(&tgt, "child"), 0);

    src.exec(
        "TRUNCATE ident, ser RESTART IDENTITY; \
         INSERT INTO ident (v) SELECT 'new' || g FROM generate_series(1, 5) g; \
         INSERT INTO ser (v) SELECT 'new' || g FROM generate_series(1, 5) g; \
         INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1)",
    );
    synced(&src, &tgt, sub, &["parent", "child", "ident", "ser"]);
    assert_eq!(tgt.query_one::<i32>("SELECT max(id) FROM ident"), 5);
    for t in ["ident", "ser"] {
        let next: i64 = tgt.query_one(&format!(
            "SELECT nextval(pg_get_serial_sequence('{t}', 'id'))"
        ));
        assert_eq!(
            next, 1,
            "TRUNCATE ... RESTART IDENTITY did not restart {t}'s sequence on the target"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Partitioned sources
// ---------------------------------------------------------------------------------------------

const PART_DDL: &str =
    "CREATE TABLE meas (id int NOT NULL, ts timestamptz NOT NULL, dev int, v float8, \
                        PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts); \
     CREATE TABLE meas_2024_01 PARTITION OF meas FOR VALUES FROM ('2024-01-01 00:00+00') TO ('2024-02-01 00:00+00'); \
     CREATE TABLE meas_2024_02 PARTITION OF meas FOR VALUES FROM ('2024-02-01 00:00+00') TO ('2024-03-01 00:00+00'); \
     CREATE TABLE meas_def PARTITION OF meas DEFAULT";

fn part_fill(from: i32, to: i32) -> String {
    format!(
        "INSERT INTO meas SELECT g, '2024-01-01 00:00+00'::timestamptz + (g % 90) * interval '1 day', \
                g % 7, g * 0.5 FROM generate_series({from}, {to}) g"
    )
}

/// Changes on the source root: inserts into every partition, updates that move rows between
/// partitions, updates in place, deletes.
const PART_CHANGES: &str = "UPDATE meas SET v = -v WHERE id % 5 = 0; \
     UPDATE meas SET ts = ts + interval '31 days' WHERE id % 10 = 1; \
     UPDATE meas SET id = id + 100000 WHERE id % 10 = 2; \
     DELETE FROM meas WHERE id % 10 = 3; \
     DELETE FROM meas_2024_02 WHERE id % 10 = 4";

/// The leaf partitions, as `livesync.subscription_rel` lists them without
/// publish_via_partition_root.
const PART_LEAVES: [&str; 3] = [
    "public.meas_2024_01",
    "public.meas_2024_02",
    "public.meas_def",
];
/// Every table of the partition tree, for comparisons.
const PART_TABLES: [&str; 4] = ["meas", "meas_2024_01", "meas_2024_02", "meas_def"];

/// `meas` with rows 1..=2000 on the source, its schema (and partitions) on the target, and
/// a sync of publication `p` (the leaves) whose leaves are ready.
fn partition_leaves_synced(src: &Db, tgt: &Db, sub: &str) -> SyncGuard {
    src.exec(PART_DDL);
    src.exec(&part_fill(1, 2000));
    src.exec("CREATE PUBLICATION p FOR TABLE meas");
    copy_schema(src, tgt, &[]);
    let guard = start_sync(tgt, &src.uri(), "p", sub);
    wait_tables(tgt, sub, &PART_LEAVES, 'r');
    guard
}

/// Every table of the tree equals the source's, with no row twice.
fn partition_tree_synced(src: &Db, tgt: &Db, sub: &str) {
    synced(src, tgt, sub, &PART_TABLES);
    assert_no_duplicates(tgt, "meas", "id, ts");
}

fn partition_root_case(hypertable: bool) {
    let tag = if hypertable { "ht" } else { "plain" };
    let src = Db::fresh(source(), &format!("viaroot_{tag}_src"));
    let tgt = Db::fresh(target(), &format!("viaroot_{tag}_tgt"));
    src.exec(PART_DDL);
    src.exec(&part_fill(1, 2000));
    src.exec("CREATE PUBLICATION p FOR TABLE meas WITH (publish_via_partition_root = true)");
    tgt.exec(
        "CREATE TABLE meas (id int NOT NULL, ts timestamptz NOT NULL, dev int, v float8, \
                            PRIMARY KEY (id, ts))",
    );
    if hypertable {
        tgt.exec(
            "SET client_min_messages = warning; \
             SELECT create_hypertable('meas', 'ts', chunk_time_interval => interval '7 days')",
        );
    }
    let sub = format!("via_root_{tag}");
    let _g = start_sync(&tgt, &src.uri(), "p", &sub);
    wait_tables(&tgt, &sub, &["public.meas"], 'r');
    src.exec(&part_fill(2001, 3000));
    src.exec(PART_CHANGES);
    synced(&src, &tgt, &sub, &["meas"]);
    assert_no_duplicates(&tgt, "meas", "id, ts");
    if hypertable {
        assert_eq!(count_only(&tgt, "meas"), 0, "rows in the hypertable's root");
        assert!(chunk_count(&tgt, "meas") > 5);
    }
}

#[test]
fn partitioned_source_via_root_to_single_table() {
    partition_root_case(false);
}

#[test]
fn partitioned_source_via_root_to_hypertable() {
    partition_root_case(true);
}

#[test]
fn partitioned_source_leaves_to_same_leaves() {
    // 013_partition: publish_via_partition_root = false; the target has the same partitions.
    let src = Db::fresh(source(), "leaves_src");
    let tgt = Db::fresh(target(), "leaves_tgt");
    let sub = "leaves_same";
    let _g = partition_leaves_synced(&src, &tgt, sub);
    src.exec(&part_fill(2001, 3000));
    src.exec(PART_CHANGES);
    partition_tree_synced(&src, &tgt, sub);
}

#[test]
fn publish_via_partition_root_switch_is_followed_without_doubling() {
    // ALTER PUBLICATION ... SET (publish_via_partition_root) swaps the leaves for their
    // root in the publication (and back). The target has the same partitions, so the rows
    // the sync wrote through the leaves are the rows the root's copy brings again: they
    // must be replaced, not doubled (native replication may lose or double them here).
    let src = Db::fresh(source(), "viaswitch_src");
    let tgt = Db::fresh(target(), "viaswitch_tgt");
    let sub = "via_switch";
    let _g = partition_leaves_synced(&src, &tgt, sub);

    for (via_root, tables) in [(true, &["public.meas"][..]), (false, &PART_LEAVES[..])] {
        // Keep writing while the publication switches.
        let first = if via_root { 10_000 } else { 20_000 };
        let w = BackgroundWriter::spawn(&src, "meas writer", move |c, i| {
            c.execute(&part_fill(first + i as i32, first + i as i32), &[])
                .map(|_| ())
        });
        sleep(Duration::from_millis(300));
        src.exec(&format!(
            "ALTER PUBLICATION p SET (publish_via_partition_root = {via_root})"
        ));
        wait_tables(&tgt, sub, tables, 'r');
        src.exec(PART_CHANGES);
        let written = w.stop();
        assert!(written.inserts > 0, "the writer wrote nothing");
        partition_tree_synced(&src, &tgt, sub);
    }
}

#[test]
fn partitioned_source_leaf_missing_on_target_then_created() {
    let src = Db::fresh(source(), "leafmiss_src");
    let tgt = Db::fresh(target(), "leafmiss_tgt");
    src.exec(PART_DDL);
    src.exec(&part_fill(1, 2000));
    src.exec("CREATE PUBLICATION p FOR TABLE meas");
    copy_schema(&src, &tgt, &[]);
    tgt.exec("DROP TABLE meas_2024_02");
    let sub = "leaf_missing";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    let err = wait_any_error(&tgt, sub, LONG, "the missing leaf meas_2024_02", |e| {
        e.contains("meas_2024_02")
    });
    eprintln!("[e2e] error for the missing leaf: {err}");
    src.exec(&part_fill(2001, 2500));
    tgt.exec(
        "CREATE TABLE meas_2024_02 PARTITION OF meas \
         FOR VALUES FROM ('2024-02-01 00:00+00') TO ('2024-03-01 00:00+00')",
    );
    wait_tables(&tgt, sub, &PART_LEAVES, 'r');
    src.exec(PART_CHANGES);
    partition_tree_synced(&src, &tgt, sub);
}

#[test]
fn partition_added_on_the_target_while_the_sync_writes_does_not_deadlock() {
    // CREATE TABLE ... PARTITION OF locks the parent, then the default partition. The
    // executor locks a partition first and opens its parent afterwards (to build the
    // partition constraint), so a sync writing into the default partition could deadlock
    // with the user's DDL. Here the DDL holds the parent while a change for the default
    // partition arrives: the sync must wait without holding the partition, and the DDL
    // must go through (it failed with 40P01 before the sync locked parents first).
    let src = Db::fresh(source(), "partddl_src");
    let tgt = Db::fresh(target(), "partddl_tgt");
    let sub = "part_ddl";
    let _g = partition_leaves_synced(&src, &tgt, sub);

    let mut ddl = tgt.client();
    ddl.batch_execute("BEGIN; LOCK TABLE ONLY meas IN ACCESS EXCLUSIVE MODE")
        .unwrap();
    // Lands in meas_def on both sides.
    src.exec("INSERT INTO meas VALUES (1000001, '2024-06-01 00:00+00', 1, 1)");
    wait_until(LONG, "the sync to wait for the lock on meas", || {
        tgt.query_one::<i64>(
            "SELECT count(*) FROM pg_locks \
              WHERE relation = 'public.meas'::regclass AND NOT granted",
        ) > 0
    });
    // Past deadlock_timeout (1 s), so a lock cycle would be detected by the DDL.
    sleep(Duration::from_millis(1500));
    ddl.batch_execute(
        "CREATE TABLE meas_2030_01 PARTITION OF meas \
         FOR VALUES FROM ('2030-01-01 00:00+00') TO ('2030-02-01 00:00+00'); COMMIT",
    )
    .unwrap_or_else(|e| panic!("the DDL failed: {}", err_text(&e)));
    src.exec(PART_CHANGES);
    partition_tree_synced(&src, &tgt, sub);
    assert_eq!(count_only(&tgt, "meas_2030_01"), 0);
}

// ---------------------------------------------------------------------------------------------
// Column differences, generated and identity columns, constraints, triggers
// ---------------------------------------------------------------------------------------------

#[test]
fn target_with_extra_columns_gets_defaults() {
    // 008_diff_schema: extra target columns (default, now(), identity, plain), a column
    // dropped on the source later.
    let src = Db::fresh(source(), "extra_src");
    let tgt = Db::fresh(target(), "extra_tgt");
    src.exec("CREATE TABLE t (id int PRIMARY KEY, a text, b int)");
    tgt.exec(
        "CREATE TABLE t (id int PRIMARY KEY, a text, b int, extra1 text DEFAULT 'local', \
                         extra2 timestamptz DEFAULT now(), d bigint DEFAULT 999, \
                         e int GENERATED BY DEFAULT AS IDENTITY, extra4 int)",
    );
    src.exec(
        "INSERT INTO t SELECT g, 'a' || g, g FROM generate_series(1, 100) g; \
         CREATE PUBLICATION p FOR TABLE t",
    );
    let sub = "extra_cols";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.t"], 'r');
    tgt.exec("UPDATE t SET extra4 = 7 WHERE id <= 10");
    src.exec(
        "INSERT INTO t SELECT g, 'a' || g, g FROM generate_series(101, 150) g; \
         UPDATE t SET a = 'upd' WHERE id <= 20; DELETE FROM t WHERE id % 10 = 5",
    );
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "t", "(SELECT id, a, b FROM t)");
    assert_eq!(
        count(
            &tgt,
            "t WHERE extra1 IS DISTINCT FROM 'local' OR extra2 IS NULL OR d IS DISTINCT FROM 999 OR e IS NULL"
        ),
        0,
        "extra target columns did not get their defaults"
    );
    assert_eq!(
        count(&tgt, "t WHERE id <= 10 AND extra4 IS DISTINCT FROM 7"),
        0,
        "an UPDATE overwrote a target-only column"
    );
    assert_no_duplicates(&tgt, "t", "e");

    // A column dropped on the source: later rows leave it to the target's default (NULL).
    src.exec(
        "ALTER TABLE t DROP COLUMN b; \
         INSERT INTO t SELECT g, 'after drop' FROM generate_series(151, 160) g; \
         UPDATE t SET a = 'upd2' WHERE id = 1",
    );
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "t", "(SELECT id, a FROM t)");
    assert_eq!(count(&tgt, "t WHERE id > 150 AND b IS NULL"), 10);
    assert_eq!(tgt.query_one::<i32>("SELECT b FROM t WHERE id = 1"), 1);
}

#[test]
fn target_with_different_column_order() {
    // 001_rep_changes: tab_mixed.
    let src = Db::fresh(source(), "order_src");
    let tgt = Db::fresh(target(), "order_tgt");
    src.exec("CREATE TABLE tab_mixed (a int PRIMARY KEY, b text, c numeric, d timestamptz)");
    tgt.exec(
        "CREATE TABLE tab_mixed (x text DEFAULT 'local', d timestamptz, c numeric, b text, a int PRIMARY KEY)",
    );
    src.exec(
        "INSERT INTO tab_mixed SELECT g, 'b' || g, g * 1.1, '2024-01-01 00:00+00'::timestamptz + g * interval '1 min' \
           FROM generate_series(1, 500) g; \
         CREATE PUBLICATION p FOR TABLE tab_mixed",
    );
    let sub = "col_order";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.tab_mixed"], 'r');
    src.exec(
        "INSERT INTO tab_mixed VALUES (1000, 'new', 3.3, NULL); \
         UPDATE tab_mixed SET b = 'baz', c = -c WHERE a % 3 = 0; \
         UPDATE tab_mixed SET a = a + 2000 WHERE a % 7 = 0; \
         DELETE FROM tab_mixed WHERE a % 5 = 0",
    );
    caught_up(&src, &tgt, sub);
    let q = "(SELECT a, b, c, d FROM tab_mixed)";
    assert_same(&src, &tgt, q, q);
    assert_eq!(count(&tgt, "tab_mixed WHERE x IS DISTINCT FROM 'local'"), 0);
}

#[test]
fn source_column_missing_on_target_is_reported_then_added() {
    // 008_diff_schema / 006_rewrite: a column added on the source while streaming; the target
    // lacks it until the user adds it; nothing is lost.
    let src = Db::fresh(source(), "misscol_src");
    let tgt = Db::fresh(target(), "misscol_tgt");
    ddl_both(&src, &tgt, "CREATE TABLE t (id int PRIMARY KEY, a text)");
    src.exec(
        "INSERT INTO t SELECT g, 'a' || g FROM generate_series(1, 100) g; \
         CREATE PUBLICATION p FOR TABLE t",
    );
    let sub = "missing_col";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.t"], 'r');
    src.exec(
        "ALTER TABLE t ADD COLUMN newcol int NOT NULL DEFAULT 0; \
         INSERT INTO t SELECT g, 'a' || g, g FROM generate_series(101, 150) g; \
         UPDATE t SET newcol = -id WHERE id <= 10; DELETE FROM t WHERE id = 50",
    );
    let err = wait_sub_error(
        &tgt,
        sub,
        LONG,
        "the missing column",
        || describe(&tgt, sub),
        |e| e.contains("newcol") && e.contains("public.t"),
    );
    eprintln!("[e2e] last_error: {err}");
    assert!(err.contains("newcol"), "{err}");
    src.exec("INSERT INTO t VALUES (151, 'while broken', 151)");
    // As the source's DDL: rows that existed before the source's ADD COLUMN hold its
    // default there, which no change carries.
    tgt.exec("ALTER TABLE t ADD COLUMN newcol int NOT NULL DEFAULT 0");
    synced(&src, &tgt, sub, &["t"]);
    assert_no_duplicates(&tgt, "t", "id");

    // 006_rewrite: a type change (table rewrite) on both sides.
    src.exec("ALTER TABLE t ALTER COLUMN newcol TYPE bigint");
    tgt.exec("ALTER TABLE t ALTER COLUMN newcol TYPE bigint");
    src.exec(
        "INSERT INTO t VALUES (200, 'big', 9000000000); UPDATE t SET newcol = newcol * 3 WHERE id < 20",
    );
    synced(&src, &tgt, sub, &["t"]);
}

#[test]
fn generated_and_identity_columns_on_the_target() {
    // 011_generated: the target computes its own generated columns, whether the source has no
    // such column, a plain one, or a generated one with another expression; GENERATED ALWAYS
    // AS IDENTITY target columns take the source's values.
    let src = Db::fresh(source(), "gen_src");
    let tgt = Db::fresh(target(), "gen_tgt");
    src.exec(
        "CREATE TABLE g (id int PRIMARY KEY, a int, b int, g_plain int, \
                         g_src int GENERATED ALWAYS AS (a * 2) STORED); \
         CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY (START WITH 100) PRIMARY KEY, v text)",
    );
    tgt.exec(
        "CREATE TABLE g (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, a int, b int, \
                         g_plain int GENERATED ALWAYS AS (a + b) STORED, \
                         g_src int GENERATED ALWAYS AS (a * 22) STORED, \
                         g_new int GENERATED ALWAYS AS (b * 3) STORED); \
         CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)",
    );
    src.exec(
        "INSERT INTO g (id, a, b, g_plain) SELECT g * 10, g, g % 7, -1 FROM generate_series(1, 300) g; \
         INSERT INTO ident (v) SELECT 'v' || g FROM generate_series(1, 50) g; \
         CREATE PUBLICATION p FOR TABLE g, ident",
    );
    let sub = "generated";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.g", "public.ident"], 'r');
    src.exec(
        "INSERT INTO g (id, a, b, g_plain) SELECT g * 10, g, g % 7, -1 FROM generate_series(301, 400) g; \
         UPDATE g SET a = a + 1000 WHERE id % 30 = 0; \
         UPDATE g SET b = NULL WHERE id % 70 = 0; \
         UPDATE g SET id = id + 1 WHERE id % 110 = 0; \
         DELETE FROM g WHERE id % 50 = 0; \
         INSERT INTO ident (v) SELECT 'w' || g FROM generate_series(1, 20) g; \
         UPDATE ident SET v = v || '!' WHERE id % 3 = 0; DELETE FROM ident WHERE id % 4 = 0",
    );
    caught_up(&src, &tgt, sub);
    let q = "(SELECT id, a, b FROM g)";
    assert_same(&src, &tgt, q, q);
    assert_eq!(
        count(
            &tgt,
            "g WHERE g_plain IS DISTINCT FROM a + b OR g_src IS DISTINCT FROM a * 22 \
             OR g_new IS DISTINCT FROM b * 3"
        ),
        0,
        "generated target columns hold values that are not their expression's"
    );
    assert_tables_equal(&src, &tgt, "ident");
    assert_eq!(
        count(&tgt, "ident WHERE id < 100"),
        0,
        "identity values were generated on the target"
    );
}

#[test]
fn target_constraints_not_enforced_and_replica_triggers_fire() {
    // 003_constraints: a foreign key on the target is not checked (its parent table is not
    // published); an ENABLE REPLICA trigger fires, an ordinary one does not.
    let src = Db::fresh(source(), "constr_src");
    let tgt = Db::fresh(target(), "constr_tgt");
    src.exec(
        "CREATE TABLE tab_fk (bid int PRIMARY KEY); \
         CREATE TABLE tab_fk_ref (id int PRIMARY KEY, junk text, bid int REFERENCES tab_fk (bid)); \
         INSERT INTO tab_fk VALUES (1), (2); \
         INSERT INTO tab_fk_ref SELECT g, 'junk', g % 2 + 1 FROM generate_series(1, 10) g; \
         CREATE PUBLICATION p FOR TABLE tab_fk_ref",
    );
    tgt.exec(
        "CREATE TABLE tab_fk (bid int PRIMARY KEY); \
         CREATE TABLE tab_fk_ref (id int PRIMARY KEY, bid int REFERENCES tab_fk (bid), junk text); \
         CREATE TABLE trig_log (id int, fired text); \
         CREATE FUNCTION replica_fn() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN NEW.junk := 'replica:' || coalesce(NEW.junk, ''); RETURN NEW; END $$; \
         CREATE FUNCTION origin_fn() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN INSERT INTO trig_log VALUES (NEW.id, 'origin'); RETURN NEW; END $$; \
         CREATE TRIGGER t_replica BEFORE INSERT OR UPDATE ON tab_fk_ref FOR EACH ROW EXECUTE FUNCTION replica_fn(); \
         ALTER TABLE tab_fk_ref ENABLE REPLICA TRIGGER t_replica; \
         CREATE TRIGGER t_origin AFTER INSERT OR UPDATE ON tab_fk_ref FOR EACH ROW EXECUTE FUNCTION origin_fn()",
    );
    let sub = "constraints";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.tab_fk_ref"], 'r');
    src.exec(
        "INSERT INTO tab_fk VALUES (3); INSERT INTO tab_fk_ref VALUES (11, 'live', 3); \
         UPDATE tab_fk_ref SET junk = 'upd' WHERE id = 1",
    );
    caught_up(&src, &tgt, sub);
    assert_eq!(count(&tgt, "tab_fk"), 0);
    assert_eq!(
        count(&tgt, "tab_fk_ref"),
        11,
        "rows violating the target's FK must be applied"
    );
    assert_eq!(
        count(&tgt, "tab_fk_ref WHERE junk NOT LIKE 'replica:%'"),
        0,
        "the ENABLE REPLICA trigger did not fire for every copied or applied row"
    );
    assert_eq!(
        tgt.query_one::<String>("SELECT junk FROM tab_fk_ref WHERE id = 1"),
        "replica:upd"
    );
    assert_eq!(
        count(&tgt, "trig_log"),
        0,
        "an ordinary (origin) trigger fired"
    );
}

#[test]
fn table_without_columns() {
    // 001_rep_changes: tab_no_col.
    let src = Db::fresh(source(), "nocol_src");
    let tgt = Db::fresh(target(), "nocol_tgt");
    ddl_both(
        &src,
        &tgt,
        "CREATE TABLE tab_no_col (); CREATE TABLE other (a int PRIMARY KEY)",
    );
    src.exec(
        "INSERT INTO tab_no_col DEFAULT VALUES; INSERT INTO tab_no_col DEFAULT VALUES; \
         CREATE PUBLICATION p FOR TABLE tab_no_col, other",
    );
    let sub = "no_columns";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.tab_no_col", "public.other"], 'r');
    src.exec(
        "INSERT INTO tab_no_col DEFAULT VALUES; INSERT INTO other VALUES (1); \
         INSERT INTO tab_no_col DEFAULT VALUES",
    );
    caught_up(&src, &tgt, sub);
    assert_eq!(count(&tgt, "tab_no_col"), 4);
    assert_eq!(count(&tgt, "other"), 1);
}

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

/// The session settings under which both sides are compared.
const ISO: &str =
    "SET DateStyle = 'ISO, MDY'; SET IntervalStyle = postgres; SET TimeZone = 'UTC'; \
                   SET extra_float_digits = 3; SET bytea_output = hex";
/// The target database's settings of the non-ISO run.
const ODD: &str = "SET DateStyle = 'SQL, DMY'; SET IntervalStyle = sql_standard; \
                   SET TimeZone = 'America/New_York'; SET extra_float_digits = 0";

fn types_ddl(with_xml: bool) -> String {
    format!(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy', 'it''s \"quoted\"'); \
         CREATE TYPE pair AS (x int, label text, at timestamptz); \
         CREATE DOMAIN posint AS int CHECK (VALUE > 0); \
         CREATE DOMAIN email AS text CHECK (VALUE LIKE '%@%'); \
         CREATE TABLE types ( \
           id int PRIMARY KEY, i2 smallint, i4 int, i8 bigint, num numeric, num_s numeric(12,3), \
           f4 real, f8 double precision, bo boolean, ch char(5), vc varchar(30), tx text, \
           by bytea, d date, tm time, tmtz timetz, ts timestamp, tstz timestamptz, iv interval, \
           u uuid, ip inet, cid cidr, mac macaddr, mac8 macaddr8, bt bit(4), vb varbit, \
           m money, tv tsvector, tq tsquery, js json, jb jsonb, {xml} \
           ia int[], ia2 int[], ta text[], tsa timestamptz[], fa float8[], \
           e mood, ea mood[], c pair, ca pair[], dom posint, em email, \
           r4 int4range, r8 int8range, nr numrange, dr daterange, tsr tsrange, tstzr tstzrange, \
           mr int4multirange, pt point, ln lseg, bx box, ci circle, pg polygon, lsn pg_lsn, \
           \"Weird \"\"Col\"\"\" text); \
         CREATE TABLE types_full (LIKE types); ALTER TABLE types_full REPLICA IDENTITY FULL",
        xml = if with_xml { "x xml," } else { "" }
    )
}

/// Rows with edge values; ids from `base`.
fn types_rows(base: i32, with_xml: bool) -> String {
    let x = |v: &str| {
        if with_xml {
            format!("{v}, ")
        } else {
            String::new()
        }
    };
    format!(
        r#"INSERT INTO types VALUES
 ({b1}, 1, 2, 3, 1.5, 2.25, 1.5, 2.5, true, 'ab', 'varchar', 'plain',
  '\x00ff10', '2024-02-29', '12:34:56.789', '12:34:56.789+05:30', '2024-01-02 03:04:05.678901',
  '2024-01-02 03:04:05.678901+02', '1 year 2 mons -3 days 04:05:06.789',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '192.168.1.5/24', '10.0.0.0/8', '08:00:2b:01:02:03',
  '08:00:2b:01:02:03:04:05', B'1010', B'10101', '$12.34', 'a fat cat:3A sat',
  'fat & (rat | !cat)', '{{"a": [1, 2.50, null], "b": "\u00e9"}}', '{{"a": [1, 2.50, null], "k": {{"z": 1}}}}', {x1}
  '{{1,2,3}}', '{{{{1,NULL}},{{3,4}}}}', ARRAY['a', NULL, 'NULL', '', 'with "quote"', 'back\slash', 'com,ma', '{{}}'],
  ARRAY['2024-01-01 00:00+00'::timestamptz, NULL, 'infinity'], ARRAY[1.5, 'NaN', '-Infinity']::float8[],
  'happy', ARRAY['sad', 'it''s "quoted"']::mood[], ROW(1, 'a "b", c\d', '2024-01-01 10:00+00'),
  ARRAY[ROW(1, 'x', NULL)::pair, ROW(NULL, NULL, NULL)::pair, NULL], 7, 'me@example.com',
  '[1,10)', '(,100]', '[1.5,2.5]', '[2024-01-01,2024-12-31]', '["2024-01-01 00:00","2024-01-02 00:00")',
  '["2024-01-01 00:00+00",)', '{{[1,3), [5,7)}}', '(1.5,-2.25)', '[(0,0),(1,1)]', '(1,1),(0,0)',
  '<(0,0),2.5>', '((0,0),(1,0),(1,1))', '16/B374D848', 'weird'),
 ({b2}, -32768, -2147483648, -9223372036854775808, 'NaN', -0.001, 'NaN', 'NaN', false, '', '', '',
  '\x', 'infinity', '00:00:00', '24:00:00-15:59', 'infinity', 'infinity', '-178000000 years',
  '00000000-0000-0000-0000-000000000000', '::1', '2001:db8::/32', 'ff:ff:ff:ff:ff:ff',
  'ff:ff:ff:ff:ff:ff:ff:ff', B'0000', B'', '-$92,233,720,368,547,758.08', '', '', '[]', '{{}}', {x2}
  '{{}}', '{{{{{{1}}}},{{{{2}}}}}}', '{{}}', '{{}}', '{{}}', 'sad', '{{}}', ROW(NULL, '', NULL), '{{}}', 2147483647, 'a@b',
  'empty', '(,)', 'empty', '(,)', 'empty', '(,)', '{{}}', '(0,0)', '[(0,0),(0,0)]', '(0,0),(0,0)',
  '<(0,0),0>', '((0,0))', '0/0', ''),
 ({b3}, 32767, 2147483647, 9223372036854775807, 'Infinity', 999999999.999, '-Infinity', '-Infinity', NULL, 'abcde',
  'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', E'tab\there\nnewline\rcr \\ backslash \\N ''single'' "double" \u00e9\u00f1 \u4e2d\u6587 \U0001F600 \x01\x7f end',
  '\xdeadbeef', '-infinity', '23:59:59.999999', '00:00:00+15:59', '-infinity', '-infinity',
  '-1 days +23:59:59.999999', 'ffffffff-ffff-ffff-ffff-ffffffffffff', '255.255.255.255', '0.0.0.0/0',
  '00:00:00:00:00:00', '00:00:00:00:00:00:00:00', B'1111', B'1', '$0.00', 'é:1 中文:2',
  '''quoted'' & ''back\\slash''', '"just a string with \"quotes\""', '[1, "two", {{"3": null}}]', {x3}
  NULL, '{{{{NULL,NULL}},{{NULL,NULL}}}}', ARRAY[E'tab\t', E'nl\n', E'\\N', 'NULL'], '{{-infinity}}', '{{-0}}',
  'it''s "quoted"', ARRAY['ok', NULL]::mood[], ROW(-1, E'nl\nx', '-infinity'), NULL, 1, 'x@y',
  '[-2147483648,2147483647)', '[-9223372036854775808,9223372036854775807)', '(-Infinity,Infinity)',
  '[-infinity,infinity]', '(,"2024-01-01 00:00")', '["-infinity","infinity"]', '{{[1,2), empty}}',
  '(1e+300,-1e-300)', '[(0,0),(1e10,1)]', '(1,1),(-1,-1)', '<(1,1),1e-5>', '((0,0),(1,1))',
  'FFFFFFFF/FFFFFFFF', E'\t'),
 ({b4}{nulls});
 INSERT INTO types (id, f4, f8, num, tstz, ts, d, iv, tx, by, ia, jb, r4)
   SELECT {b5} + g, g / 7.0, -0.0::float8 + g / 3.0, g / 11.0,
          '2000-01-01 00:00+00'::timestamptz + g * interval '1 day 1 hour 1.5 sec',
          '1999-12-31 23:59:59'::timestamp - g * interval '7 days', date '0044-03-15 BC' + g * 3,
          g * interval '1 mon 1 day 0.001 sec', md5(g::text) || E'\n\\', decode(md5(g::text), 'hex'),
          ARRAY[g, -g], jsonb_build_object('g', g, 'half', g / 2.0), int4range(g, g + g % 3)
   FROM generate_series(1, 300) g"#,
        b1 = base + 1,
        b2 = base + 2,
        b3 = base + 3,
        b4 = base + 4,
        nulls = ", NULL".repeat(if with_xml { 56 } else { 55 }),
        b5 = base + 10,
        x1 = x("'<a b=\"1\">t &amp; x</a>'"),
        x2 = x("''"),
        x3 = x("'<?xml version=\"1.0\"?><r/>'"),
    )
}

fn types_case(odd_target_settings: bool) {
    let tag = if odd_target_settings { "odd" } else { "iso" };
    let src = Db::fresh(source(), &format!("types_{tag}_src"));
    let tgt = if odd_target_settings {
        // Settings of the target database before CREATE EXTENSION and the start.
        let db = Db::fresh_without_livesync(target(), &format!("types_{tag}_tgt"));
        db.exec(&format!(
            "ALTER DATABASE {n} SET DateStyle = 'SQL, DMY'; \
             ALTER DATABASE {n} SET IntervalStyle = 'sql_standard'; \
             ALTER DATABASE {n} SET TimeZone = 'America/New_York'; \
             ALTER DATABASE {n} SET extra_float_digits = 0",
            n = db.name
        ));
        db.exec("CREATE EXTENSION livesync");
        db
    } else {
        Db::fresh(target(), &format!("types_{tag}_tgt"))
    };
    let with_xml = src.client().batch_execute("SELECT '<a/>'::xml").is_ok()
        && tgt.client().batch_execute("SELECT '<a/>'::xml").is_ok();
    eprintln!("[e2e] xml column: {with_xml}");
    src.exec(&types_ddl(with_xml));
    copy_schema(&src, &tgt, &[]);
    if odd_target_settings {
        // Every type through TimescaleDB's COPY and into chunks too (integer dimension).
        tgt.exec(
            "SET client_min_messages = warning; \
             SELECT create_hypertable('types_full', 'id', chunk_time_interval => 500)",
        );
    }
    src.exec(&types_rows(0, with_xml));
    src.exec("INSERT INTO types_full SELECT * FROM types");
    src.exec("CREATE PUBLICATION p FOR TABLE types, types_full");
    let sub = format!("types_{tag}");
    let _g = start_sync(&tgt, &src.uri(), "p", &sub);
    wait_tables(&tgt, &sub, &["public.types", "public.types_full"], 'r');
    caught_up(&src, &tgt, &sub);
    for t in ["types", "types_full"] {
        assert_same_in(&src, &tgt, t, t, ISO);
    }

    // Apply: inserts of the same edge values, updates between edge values, deletes.
    src.exec(&types_rows(1000, with_xml));
    src.exec(&format!(
        "INSERT INTO types_full SELECT * FROM types WHERE id > 1000; \
         UPDATE types SET tx = tx || ' updated', tstz = tstz + interval '1 hour', iv = -iv WHERE id % 2 = 0; \
         UPDATE types SET (f8, num, d, ts, c, e, r4, jb{xml}) = \
           (SELECT f8, num, d, ts, c, e, r4, jb{xml} FROM types s WHERE s.id = 3) WHERE id IN (1, 1001, 15); \
         DELETE FROM types WHERE id % 5 = 0; \
         UPDATE types SET id = id + 5000 WHERE id IN (2, 1002); \
         UPDATE types_full SET tx = coalesce(tx, '') || ' updated' WHERE id % 2 = 0; \
         UPDATE types_full SET i2 = 0 WHERE id IN (1, 2, 3, 4, 1001, 1002, 1003, 1004); \
         DELETE FROM types_full WHERE id % 5 = 0 OR id IN (3, 1003)",
        xml = if with_xml { ", x" } else { "" }
    ));
    caught_up(&src, &tgt, &sub);
    for t in ["types", "types_full"] {
        assert_same_in(&src, &tgt, t, t, ISO);
        // Also equal when both sessions print in the target's odd settings.
        assert_same_in(&src, &tgt, t, t, ODD);
    }
    assert_no_duplicates(&tgt, "types", "id");
}

#[test]
fn types_copy_and_apply() {
    types_case(false);
}

#[test]
fn types_copy_and_apply_with_non_iso_target_settings() {
    types_case(true);
}

/// The START_REPLICATION command of sync `sub`'s apply worker, as its walsender shows it
/// (waits for the walsender).
fn apply_stream_command(src: &Db, sub: &str) -> String {
    // The walsender that holds the sync's slot (an earlier one may still be listed).
    let sql = format!(
        "SELECT coalesce(max(query), '') FROM pg_stat_activity \
          WHERE pid = (SELECT active_pid FROM pg_replication_slots WHERE slot_name = '{sub}') \
            AND query LIKE 'START_REPLICATION%'"
    );
    let mut q = String::new();
    wait_until(LONG, "the apply worker's walsender", || {
        q = src.query_one::<String>(&sql);
        !q.is_empty()
    });
    q
}

/// The built-in types' binary values (pgoutput's `binary 'true'`), loaded as they are by
/// binary COPY into a hypertable's chunks and into a plain table, and turned into text
/// (receive, then output function) for a table whose `bit(4)` column must be checked as
/// text, and for UPDATEs and DELETEs by key and by whole row: equal to the source, also
/// when both sides print in a target database's non-ISO settings (the worker's conversion
/// must not print in them).
#[test]
fn types_in_binary_form() {
    let src = Db::fresh(source(), "types_bin_src");
    let tgt = Db::fresh_without_livesync(target(), "types_bin_tgt");
    tgt.exec(&format!(
        "ALTER DATABASE {n} SET DateStyle = 'SQL, DMY'; \
         ALTER DATABASE {n} SET IntervalStyle = 'sql_standard'; \
         ALTER DATABASE {n} SET TimeZone = 'America/New_York'; \
         ALTER DATABASE {n} SET extra_float_digits = 0; \
         ALTER DATABASE {n} SET log_min_messages = debug1",
        n = tgt.name
    ));
    tgt.exec("CREATE EXTENSION livesync");
    let with_xml = src.client().batch_execute("SELECT '<a/>'::xml").is_ok()
        && tgt.client().batch_execute("SELECT '<a/>'::xml").is_ok();
    // Every column of `types` whose type is built in, but tsquery (never sent in binary
    // form: binval::SAFE) and bit(4) (added below, checked as text).
    let cols = format!(
        "id, i2, i4, i8, num, num_s, f4, f8, bo, ch, vc, tx, by, d, tm, tmtz, ts, tstz, iv, u, \
         ip, cid, mac, mac8, vb, m, tv, js, jb, {}ia, ia2, ta, tsa, fa, r4, r8, nr, dr, tsr, \
         tstzr, mr, pt, ln, bx, ci, pg, lsn, \"Weird \"\"Col\"\"\"",
        if with_xml { "x, " } else { "" }
    );
    src.exec(&types_ddl(with_xml));
    src.exec(&format!(
        "CREATE TABLE types_bin AS SELECT {cols} FROM types WITH NO DATA; \
         ALTER TABLE types_bin ADD PRIMARY KEY (id); \
         CREATE TABLE types_bin_plain (LIKE types_bin INCLUDING ALL); \
         CREATE TABLE types_bin_full AS SELECT {cols}, bt FROM types WITH NO DATA; \
         ALTER TABLE types_bin_full REPLICA IDENTITY FULL"
    ));
    let tables = ["types_bin", "types_bin_plain", "types_bin_full"];
    copy_schema(&src, &tgt, &tables);
    tgt.exec(
        "SET client_min_messages = warning; \
         SELECT create_hypertable('types_bin', 'id', chunk_time_interval => 500)",
    );
    // Runs long enough for COPY (8 rows and more).
    let fill = |base: i32| {
        src.exec(&types_rows(base, with_xml));
        let mut sql = String::new();
        for (t, extra) in [
            ("types_bin", ""),
            ("types_bin_plain", ""),
            ("types_bin_full", ", bt"),
        ] {
            sql.push_str(&format!(
                "INSERT INTO {t} SELECT {cols}{extra} FROM types WHERE {new}; \
                 INSERT INTO {t} SELECT {c2}{extra} FROM types t, generate_series(1, 4) g WHERE {new}; ",
                new = format!("id BETWEEN {base} AND {}", base + 999),
                c2 = cols.replacen("id,", "id + g * 10000,", 1)
            ));
        }
        src.exec(&sql);
    };
    fill(0);
    src.exec("CREATE PUBLICATION p FOR TABLE types_bin, types_bin_plain, types_bin_full");
    let sub = "types_bin";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(
        &tgt,
        sub,
        &[
            "public.types_bin",
            "public.types_bin_full",
            "public.types_bin_plain",
        ],
        'r',
    );
    caught_up(&src, &tgt, sub);
    // Binary from a source no newer than the target (an older one cannot read values only a
    // newer one has, such as 17's infinite intervals).
    let binary = source().major() <= target().major();
    let cmd = apply_stream_command(&src, sub);
    assert_eq!(cmd.contains("binary 'true'"), binary, "{cmd}");
    let chunks = chunk_count(&tgt, "types_bin");

    fill(1000);
    src.exec(
        "UPDATE types_bin SET tx = tx || ' updated', tstz = tstz + interval '1 hour', iv = -iv WHERE id % 2 = 0; \
         UPDATE types_bin SET (f8, num, d, ts) = (SELECT f8, num, d, ts FROM types_bin s WHERE s.id = 3) WHERE id IN (1, 1001, 15); \
         DELETE FROM types_bin WHERE id % 5 = 0; \
         UPDATE types_bin SET id = id + 5000 WHERE id IN (2, 1002); \
         UPDATE types_bin_plain SET mr = '{}', lsn = '0/0' WHERE id % 3 = 0; \
         UPDATE types_bin_full SET tx = coalesce(tx, '') || ' updated' WHERE id % 2 = 0; \
         UPDATE types_bin_full SET i2 = 0 WHERE id IN (1, 2, 3, 4, 1001, 1002, 1003, 1004); \
         DELETE FROM types_bin_full WHERE id % 5 = 0 OR id IN (3, 1003)",
    );
    caught_up(&src, &tgt, sub);
    for t in tables {
        assert_same_in(&src, &tgt, t, t, ISO);
        assert_same_in(&src, &tgt, t, t, ODD);
    }
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*) FROM ONLY types_bin"),
        0,
        "rows in the hypertable's root"
    );
    assert!(
        chunk_count(&tgt, "types_bin") > chunks,
        "the applied rows made chunks of their own"
    );
    // How the apply worker wrote its INSERT runs (its DEBUG1 lines).
    let log = std::fs::read_to_string(target().logfile()).unwrap();
    let copied = |table: &str, how: &str| {
        log.lines()
            .any(|l| l.contains(&format!("rows into \"public.{table}\" by {how} COPY")))
    };
    assert_eq!(copied("types_bin", "binary"), binary);
    assert_eq!(copied("types_bin_plain", "binary"), binary);
    assert!(
        copied("types_bin_full", "text"),
        "bit(4) is checked as text"
    );
    assert!(!copied("types_bin_full", "binary"));
    let cmd = apply_stream_command(&src, sub);
    assert_eq!(
        cmd.contains("binary 'true'"),
        binary,
        "still the same: {cmd}"
    );
}

/// Types whose binary form would not mean the same on the target travel as text, in the
/// copy and in the stream: `regclass` (its binary form is the source's OID of the table,
/// its text the table's name; the target's table of that name has another OID) and
/// `tsquery` (PostgreSQL 18 refuses an empty one in the binary form 15 sends).
#[test]
fn catalog_oids_and_tsquery_travel_as_text() {
    let src = Db::fresh(source(), "oid_types_src");
    let tgt = Db::fresh(target(), "oid_types_tgt");
    // The named tables get other OIDs on the target than on the source.
    tgt.exec("CREATE TABLE shift_oids_1 (x int); CREATE TABLE shift_oids_2 (x int)");
    ddl_both(
        &src,
        &tgt,
        "CREATE TABLE named_a (x int); CREATE TABLE named_b (x int); \
         CREATE TABLE refs (id int PRIMARY KEY, rc regclass, rcs regclass[]); \
         CREATE TABLE queries (id int PRIMARY KEY, tq tsquery)",
    );
    let rows = |from: i32| {
        let to = from + 19;
        format!(
            "INSERT INTO refs SELECT g, CASE WHEN g % 2 = 0 THEN 'named_a' ELSE 'named_b' END::regclass, \
               ARRAY['named_a', 'named_b']::regclass[] FROM generate_series({from}, {to}) g; \
             INSERT INTO queries SELECT g, CASE WHEN g % 3 = 0 THEN ''::tsquery ELSE 'fat & (rat | !cat)'::tsquery END \
               FROM generate_series({from}, {to}) g"
        )
    };
    src.exec(&rows(1));
    src.exec("CREATE PUBLICATION p FOR TABLE refs, queries");
    let sub = "oid_types";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["refs", "queries"]);
    src.exec(&format!(
        "{}; UPDATE refs SET rc = 'named_a' WHERE id % 5 = 0; UPDATE queries SET tq = '' WHERE id % 5 = 0; \
         DELETE FROM refs WHERE id % 7 = 0",
        rows(101)
    ));
    synced(&src, &tgt, sub, &["refs", "queries"]);
    assert_eq!(
        tgt.query_one::<i64>(
            "SELECT count(*) FROM refs WHERE rc IN ('named_a'::regclass, 'named_b'::regclass)"
        ),
        tgt.query_one::<i64>("SELECT count(*) FROM refs"),
        "every regclass names one of the target's tables"
    );
}

/// A binary stream meets a column whose type may not come in binary form (an enum added
/// to a published table, inside a transaction that inserted and updated rows before it):
/// the apply worker starts again asking for text, from its last commit, and nothing is lost
/// or applied twice. The source streams these transactions before they commit (a
/// `logical_decoding_work_mem` of 64 kB for its database), so binary values also go
/// through the spool, and the Relation message with the enum comes inside a streamed
/// transaction.
#[test]
fn binary_stream_restarts_in_text_for_a_user_type() {
    let src = Db::fresh(source(), "bin_text_src");
    let tgt = Db::fresh(target(), "bin_text_tgt");
    src.exec(&format!(
        "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'",
        src.name
    ));
    ddl_both(&src, &tgt, &kv_table_ddl("a"));
    src.exec(&kv_fill_sql("a", 100));
    src.exec("CREATE PUBLICATION p FOR TABLE a");
    let sub = "bin_text";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["a"]);
    let cmd = apply_stream_command(&src, sub);
    // Text from a newer source from the start (types_in_binary_form).
    let binary = source().major() <= target().major();
    assert_eq!(cmd.contains("binary 'true'"), binary, "{cmd}");
    src.exec(
        "BEGIN; \
         INSERT INTO a SELECT g, g, 'binary ' || g FROM generate_series(101, 3000) g; \
         UPDATE a SET v = v + 1, payload = payload || ' updated' WHERE id % 2 = 0; \
         DELETE FROM a WHERE id % 9 = 0; \
         COMMIT",
    );
    synced(&src, &tgt, sub, &["a"]);
    let streamed = |src: &Db| {
        src.query_one::<i64>(&format!(
            "SELECT coalesce(sum(stream_txns), 0)::int8 FROM pg_stat_replication_slots WHERE slot_name = '{sub}'"
        ))
    };
    // The walsender reports its slot's counters now and then.
    wait_until(LONG, "the transaction counted as streamed", || {
        streamed(&src) >= 1
    });

    ddl_both(&src, &tgt, "CREATE TYPE mood AS ENUM ('sad', 'happy')");
    tgt.exec("ALTER TABLE a ADD COLUMN m mood");
    src.exec(
        "BEGIN; \
         INSERT INTO a SELECT g, g, 'before' FROM generate_series(3001, 5000) g; \
         UPDATE a SET v = -v WHERE id <= 200; \
         ALTER TABLE a ADD COLUMN m mood; \
         INSERT INTO a SELECT g, g, 'after', 'happy' FROM generate_series(5001, 7000) g; \
         UPDATE a SET m = 'sad' WHERE id % 3 = 0; \
         COMMIT",
    );
    synced(&src, &tgt, sub, &["a"]);
    assert!(
        streamed(&src) >= 2,
        "the second transaction was streamed too"
    );
    assert_eq!(
        count_only(&tgt, "a"),
        src.query_one::<i64>("SELECT count(*) FROM a")
    );
    let cmd = apply_stream_command(&src, sub);
    assert!(!cmd.contains("binary"), "restarted in text: {cmd}");
    src.exec("INSERT INTO a SELECT g, g, 'text', 'happy' FROM generate_series(7001, 7100) g; DELETE FROM a WHERE id % 7 = 0");
    synced(&src, &tgt, sub, &["a"]);
}

// ---------------------------------------------------------------------------------------------
// Many transactions, publication changes during the copy
// ---------------------------------------------------------------------------------------------

#[test]
fn many_small_transactions_interleaving_tables() {
    let src = Db::fresh(source(), "small_src");
    let tgt = Db::fresh(target(), "small_tgt");
    let ddl = format!(
        "{}; {}; {}",
        kv_table_ddl("a"),
        kv_table_ddl("b"),
        kv_table_ddl("c")
    );
    ddl_both(&src, &tgt, &ddl);
    src.exec(&format!(
        "{}; {}; {}",
        kv_fill_sql("a", 20_000),
        kv_fill_sql("b", 1_000),
        kv_fill_sql("c", 1_000)
    ));
    src.exec("CREATE PUBLICATION p FOR TABLE a, b, c");
    let sub = "small_txns";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    // 2000 transactions, each touching the three tables, starting while the copy runs.
    let t0 = Instant::now();
    let mut c = src.client();
    let ins_a = c
        .prepare("INSERT INTO a VALUES ($1::int8, $1::int8 * 10, 'txn')")
        .unwrap();
    let upd_b = c
        .prepare("UPDATE b SET v = v + 1, payload = md5(random()::text) WHERE id = $1")
        .unwrap();
    let ins_c = c.prepare("INSERT INTO c VALUES ($1, $1, 'new')").unwrap();
    let del_c = c.prepare("DELETE FROM c WHERE id = $1").unwrap();
    for i in 0..2000i64 {
        let mut tx = c.transaction().unwrap();
        tx.execute(&ins_a, &[&(100_000 + i)]).unwrap();
        tx.execute(&upd_b, &[&(i % 1000 + 1)]).unwrap();
        tx.execute(&ins_c, &[&(100_000 + i)]).unwrap();
        tx.execute(&del_c, &[&(i % 1000 + 1)]).unwrap();
        if i % 3 == 0 {
            tx.execute(&del_c, &[&(100_000 + i)]).unwrap();
        }
        tx.commit().unwrap();
    }
    eprintln!("[e2e] 2000 source transactions in {:?}", t0.elapsed());
    let t1 = Instant::now();
    synced(&src, &tgt, sub, &["a", "b", "c"]);
    eprintln!("[e2e] caught up {:?} after the last commit", t1.elapsed());
    for t in ["a", "b", "c"] {
        assert_no_duplicates(&tgt, t, "id");
    }
}

#[test]
fn table_dropped_from_publication_while_copying() {
    let src = Db::fresh(source(), "dropcp_src");
    let tgt = Db::fresh(target(), "dropcp_tgt");
    ddl_both(
        &src,
        &tgt,
        &format!("{}; {}", kv_table_ddl("big"), kv_table_ddl("small")),
    );
    src.exec(&kv_fill_sql("big", 600_000));
    src.exec(&kv_fill_sql("small", 100));
    src.exec("CREATE PUBLICATION p FOR TABLE big, small");
    let sub = "drop_while_copy";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    // As soon as big is being copied (or 5 s), drop it from the publication.
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(5) {
        let copying = try_sub_rels(&tgt, sub)
            .map(|r| r.iter().any(|x| x.tablename == "big" && x.state == 'd'))
            .unwrap_or(false);
        if copying {
            break;
        }
        sleep(Duration::from_millis(20));
    }
    eprintln!("[e2e] dropping big while: {:?}", sub_rels(&tgt, sub));
    src.exec("ALTER PUBLICATION p DROP TABLE big");
    wait_tables(&tgt, sub, &["public.small"], 'r');
    let prefix = format!("{sub}_sync_");
    wait_until_or(
        LONG,
        "no table-sync slot left on the source",
        || format!("slots: {:?}", slots_on_source(source(), &prefix)),
        || slots_on_source(source(), &prefix).is_empty(),
    );
    assert!(slots_on_source(source(), sub).contains(&sub.to_string()));
    let big_before = table_checksum(&mut tgt.client(), "big");
    src.exec(
        "INSERT INTO big VALUES (900001, 1, 'not published'); DELETE FROM big WHERE id < 100; \
         INSERT INTO small VALUES (101, 1, 'live')",
    );
    synced(&src, &tgt, sub, &["small"]);
    sleep(Duration::from_secs(2));
    assert_eq!(
        table_checksum(&mut tgt.client(), "big"),
        big_before,
        "a table dropped from the publication changed on the target"
    );
    eprintln!("[e2e] rows of big left on the target: {}", big_before.0);
    assert!(slots_on_source(source(), &prefix).is_empty());
}

/// kv tables `t` (`t_rows` rows) and `u` (`u_rows`) on both sides, publication `p` of
/// both, and sync `sub` of it, copied and caught up.
fn kv_pair_synced(src: &Db, tgt: &Db, sub: &str, t_rows: i64, u_rows: i64) -> SyncGuard {
    ddl_both(
        src,
        tgt,
        &format!("{}; {}", kv_table_ddl("t"), kv_table_ddl("u")),
    );
    src.exec(&format!(
        "{}; {}",
        kv_fill_sql("t", t_rows),
        kv_fill_sql("u", u_rows)
    ));
    src.exec("CREATE PUBLICATION p FOR TABLE t, u");
    let guard = start_sync(tgt, &src.uri(), "p", sub);
    wait_tables(tgt, sub, &["public.t", "public.u"], 'r');
    synced(src, tgt, sub, &["t", "u"]);
    guard
}

#[test]
fn table_readded_to_publication_is_copied_again() {
    let src = Db::fresh(source(), "readd_src");
    let tgt = Db::fresh(target(), "readd_tgt");
    let sub = "readd";
    let _g = kv_pair_synced(&src, &tgt, sub, 5_000, 100);

    src.exec("ALTER PUBLICATION p DROP TABLE t");
    wait_tables(&tgt, sub, &["public.u"], 'r');
    src.exec(
        "UPDATE t SET payload = 'while out' WHERE id % 3 = 0; DELETE FROM t WHERE id % 7 = 0; \
         INSERT INTO t SELECT g, g, 'while out' FROM generate_series(5001, 5500) g",
    );
    // The copy adds to what the target holds: the user empties the table first.
    tgt.exec("TRUNCATE t");
    let w = BackgroundWriter::kv(&src, "t", 10_001);
    src.exec("ALTER PUBLICATION p ADD TABLE t");
    wait_tables(&tgt, sub, &["public.t", "public.u"], 'r');
    w.stop();
    synced(&src, &tgt, sub, &["t", "u"]);
    assert_no_duplicates(&tgt, "t", "id");
    assert!(slots_on_source(source(), &format!("{sub}_sync_")).is_empty());
}

// ---------------------------------------------------------------------------------------------
// Errors and recovery
// ---------------------------------------------------------------------------------------------

#[test]
fn apply_error_unique_violation_then_recovery() {
    let src = Db::fresh(source(), "uniq_src");
    let tgt = Db::fresh(target(), "uniq_tgt");
    let sub = "uniq_err";
    let _g = kv_pair_synced(&src, &tgt, sub, 1_000, 10);

    // A row edited by hand on the target with the key the source inserts next.
    tgt.exec("INSERT INTO t VALUES (1001, -1, 'by hand')");
    src.exec("INSERT INTO u VALUES (11, 11, 'before the conflict')");
    src.exec("INSERT INTO t SELECT g, g * 10, 'src' FROM generate_series(1001, 1100) g");
    src.exec(
        "UPDATE t SET v = -v WHERE id % 10 = 0; DELETE FROM t WHERE id % 13 = 0; \
         INSERT INTO u VALUES (12, 12, 'after the conflict')",
    );
    let t0 = Instant::now();
    let err = wait_sub_error(
        &tgt,
        sub,
        Duration::from_secs(30),
        "the unique violation",
        || describe(&tgt, sub),
        |e| {
            let l = e.to_lowercase();
            l.contains("duplicate key") || l.contains("unique")
        },
    );
    eprintln!("[e2e] last_error after {:?}: {err}", t0.elapsed());
    tgt.exec("DELETE FROM t WHERE id = 1001");
    synced(&src, &tgt, sub, &["t", "u"]);
    assert_no_duplicates(&tgt, "t", "id");
    src.exec("INSERT INTO t VALUES (2000, 1, 'after recovery')");
    synced(&src, &tgt, sub, &["t"]);
    eprintln!(
        "[e2e] last_error after recovery: {:?}",
        sub_last_error(&tgt, sub)
    );
}

#[test]
fn failing_table_copy_reported_per_table_other_table_ready() {
    let src = Db::fresh(source(), "badcopy_src");
    let tgt = Db::fresh(target(), "badcopy_tgt");
    src.exec(&format!(
        "{}; CREATE TABLE t_bad (id int PRIMARY KEY, a text, c int)",
        kv_table_ddl("t_ok")
    ));
    tgt.exec(&format!(
        "{}; CREATE TABLE t_bad (id int PRIMARY KEY, a text)",
        kv_table_ddl("t_ok")
    ));
    src.exec(&format!(
        "{}; INSERT INTO t_bad SELECT g, 'a', g FROM generate_series(1, 100) g; \
         CREATE PUBLICATION p FOR TABLE t_ok, t_bad",
        kv_fill_sql("t_ok", 2_000)
    ));
    let sub = "bad_copy";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    let mut err = String::new();
    wait_until_or(
        LONG,
        "t_ok in 'r' and t_bad's subscription_rel.last_error naming the column",
        || describe(&tgt, sub),
        || {
            let rels = try_sub_rels(&tgt, sub).unwrap_or_default();
            let ok_ready = rels.iter().any(|r| r.tablename == "t_ok" && r.state == 'r');
            let bad: Option<String> = tgt
                .try_client()
                .ok()
                .and_then(|mut c| {
                    c.query_opt(
                        "SELECT last_error FROM livesync.subscription_rel \
                         WHERE subname = $1 AND tablename = 't_bad'",
                        &[&sub],
                    )
                    .ok()
                    .flatten()
                })
                .and_then(|r| r.get(0));
            if let Some(e) = bad {
                err = e;
            }
            ok_ready && err.contains("t_bad") && err.contains("\"c\"")
        },
    );
    eprintln!("[e2e] t_bad last_error: {err}");
    // t_ok streams while t_bad is failing.
    src.exec("INSERT INTO t_ok VALUES (5000, 1, 'live')");
    wait_until_or(
        LONG,
        "t_ok to get the live row while t_bad fails",
        || describe(&tgt, sub),
        || count(&tgt, "t_ok WHERE id = 5000") == 1,
    );
    // The user adds the column: the copy is retried and succeeds.
    tgt.exec("ALTER TABLE t_bad ADD COLUMN c int");
    src.exec("INSERT INTO t_bad VALUES (101, 'live', 101)");
    wait_tables(&tgt, sub, &["public.t_ok", "public.t_bad"], 'r');
    synced(&src, &tgt, sub, &["t_ok", "t_bad"]);
    assert_no_duplicates(&tgt, "t_bad", "id");
}

// ---------------------------------------------------------------------------------------------
// Large transactions
// ---------------------------------------------------------------------------------------------

/// RSS in kB of a process (`ps -o rss=`).
fn rss_kb(pid: i32) -> Option<u64> {
    let out = std::process::Command::new("ps")
        .args(["-o", "rss=", "-p", &pid.to_string()])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn apply_worker_rss(tgt: &Db, sub: &str) -> (Option<i32>, Option<u64>) {
    let pid = sub_info(tgt, sub).and_then(|i| i.pid);
    (pid, pid.and_then(rss_kb))
}

#[test]
fn large_transactions_subtransactions_and_aborts() {
    let n: i64 = std::env::var("LIVESYNC_E2E_BIG_TXN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let src = Db::fresh(source(), "bigtxn_src");
    let tgt = Db::fresh(target(), "bigtxn_tgt");
    ddl_both(
        &src,
        &tgt,
        &format!("{}; {}", kv_table_ddl("big"), kv_table_ddl("side")),
    );
    src.exec(&kv_fill_sql("side", 100));
    src.exec("CREATE PUBLICATION p FOR TABLE big, side");
    let sub = "big_txn";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.big", "public.side"], 'r');
    let before = apply_worker_rss(&tgt, sub);
    let timeout = LONG + Duration::from_millis(n as u64); // +1 s per 1000 rows
    let t0 = Instant::now();

    // One large INSERT ... SELECT transaction.
    src.exec(&format!(
        "INSERT INTO big SELECT g, g * 10, md5(g::text) FROM generate_series(1, {n}) g"
    ));
    // Subtransactions, one rolled back.
    src.exec(&format!(
        "BEGIN; \
         INSERT INTO side SELECT g, g, 'kept' FROM generate_series(101, 200) g; \
         SAVEPOINT s1; \
         INSERT INTO big SELECT g, -1, 'rolled back' FROM generate_series({a}, {b}) g; \
         UPDATE side SET payload = 'rolled back' WHERE id <= 50; \
         DELETE FROM big WHERE id <= 1000; \
         ROLLBACK TO s1; \
         UPDATE side SET payload = 'kept update' WHERE id > 150; \
         SAVEPOINT s2; \
         DELETE FROM big WHERE id % 1000 = 7; \
         RELEASE s2; \
         SAVEPOINT s3; INSERT INTO side VALUES (1000, 1, 'nested'); SAVEPOINT s4; \
         INSERT INTO side VALUES (1001, 1, 'inner rolled back'); ROLLBACK TO s4; RELEASE s3; \
         COMMIT",
        a = n + 1,
        b = n + n / 10
    ));
    // An aborted large transaction.
    src.exec(&format!(
        "BEGIN; INSERT INTO big SELECT g, 0, 'aborted' FROM generate_series({a}, {b}) g; \
         UPDATE side SET payload = 'aborted'; ROLLBACK",
        a = 10 * n + 1,
        b = 11 * n
    ));
    // A large UPDATE and a large DELETE, then a small transaction.
    src.exec("UPDATE big SET v = v + 1 WHERE id % 2 = 0");
    src.exec("DELETE FROM big WHERE id % 3 = 0");
    src.exec("INSERT INTO side VALUES (2000, 2, 'last')");
    caught_up_within(&src, &tgt, sub, timeout);
    eprintln!("[e2e] {n} rows: applied in {:?}", t0.elapsed());
    let after = apply_worker_rss(&tgt, sub);
    eprintln!("[e2e] apply worker (pid, RSS kB) before: {before:?}, at the end: {after:?}");
    assert_tables_equal(&src, &tgt, "big");
    assert_tables_equal(&src, &tgt, "side");
    assert_no_duplicates(&tgt, "big", "id");
    assert_eq!(
        count(&tgt, "big WHERE payload IN ('rolled back', 'aborted')")
            + count(
                &tgt,
                "side WHERE payload IN ('rolled back', 'aborted', 'inner rolled back')"
            ),
        0
    );
}

#[test]
fn publication_row_filter_and_column_list_apply_to_copy_and_changes() {
    // PostgreSQL 15 publications may publish some rows and some columns: the initial copy
    // must honour them exactly as the streamed changes do (native tablesync does).
    let src = Db::fresh(source(), "rowfilter_src");
    let tgt = Db::fresh(target(), "rowfilter_tgt");
    src.exec(
        "CREATE TABLE t (id int, region text NOT NULL, secret text, v int, PRIMARY KEY (id, region)); \
         INSERT INTO t SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, 'hidden' || g, g \
           FROM generate_series(1, 3000) g; \
         CREATE PUBLICATION p FOR TABLE t (id, region, v) WHERE (region = 'eu')",
    );
    tgt.exec("CREATE TABLE t (id int, region text NOT NULL, secret text, v int, PRIMARY KEY (id, region))");
    let sub = "row_filter";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.t"], 'r');
    src.exec(
        "INSERT INTO t SELECT g, 'eu', 'hidden', g FROM generate_series(3001, 3100) g; \
         INSERT INTO t SELECT g, 'us', 'hidden', g FROM generate_series(3101, 3200) g; \
         UPDATE t SET v = -v WHERE region = 'eu' AND id % 2 = 0; \
         DELETE FROM t WHERE region = 'eu' AND id % 5 = 0",
    );
    caught_up(&src, &tgt, sub);
    let published = "(SELECT id, region, v FROM t WHERE region = 'eu')";
    assert_eq!(
        table_checksum(&mut src.client(), published),
        table_checksum(&mut tgt.client(), "(SELECT id, region, v FROM t)"),
        "the target must hold exactly the published rows and columns"
    );
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*) FROM t WHERE secret IS NOT NULL OR region <> 'eu'"),
        0,
        "an unpublished row or column reached the target"
    );
}

/// livesync groups source transactions into one target transaction and writes each table's
/// changes in runs (one statement per run, repeated UPDATEs of a row merged into its newest
/// image). Inside one such batch: the same key updated many times, deleted and inserted
/// again, a key changed and its old value reused, a row that moves between hypertable chunks
/// and back, an unchanged TOASTed value kept across merged updates, changes to two tables
/// interleaved, and rows the target no longer has (each source UPDATE of a missing row
/// counted, as PostgreSQL does, even when merged).
#[test]
fn changes_inside_one_batch_keep_source_order() {
    let src = Db::fresh(source(), "batch_order_src");
    let tgt = Db::fresh(target(), "batch_order_tgt");
    src.exec(
        "CREATE TABLE ord (id int PRIMARY KEY, v text, n int, big text); \
         CREATE TABLE ord_ht (id int PRIMARY KEY, ts timestamptz NOT NULL, v text); \
         CREATE TABLE side (id int PRIMARY KEY, v int)",
    );
    tgt.exec(
        "CREATE TABLE ord (id int PRIMARY KEY, v text, n int, big text); \
         CREATE TABLE ord_ht (id int, ts timestamptz NOT NULL, v text, PRIMARY KEY (id, ts)); \
         SET client_min_messages = warning; \
         SELECT create_hypertable('ord_ht', 'ts', chunk_time_interval => interval '1 day'); \
         CREATE TABLE side (id int PRIMARY KEY, v int)",
    );
    src.exec(
        "ALTER TABLE ord ALTER COLUMN big SET STORAGE EXTERNAL; \
         INSERT INTO ord SELECT g, 'v' || g, 0, NULL FROM generate_series(1, 100) g; \
         UPDATE ord SET big = (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 400) i) WHERE id = 6; \
         INSERT INTO ord_ht SELECT g, timestamptz '2024-01-01' + g * interval '1 hour', 'h' || g \
           FROM generate_series(1, 100) g; \
         INSERT INTO side SELECT g, 0 FROM generate_series(1, 10) g; \
         CREATE PUBLICATION p FOR TABLE ord, ord_ht, side",
    );
    let sub = "batch_order";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["ord", "ord_ht", "side"]);

    // Stopped, the source writes a backlog, which the restarted sync applies in one batch.
    livesync_stop(&tgt, sub);
    // Rows only the target lost: 3 source UPDATEs of row 7 and a DELETE of row 8 miss.
    tgt.exec("DELETE FROM ord WHERE id IN (7, 8)");
    let mut steps: Vec<String> = Vec::new();
    for i in 1..=5 {
        steps.push(format!("UPDATE ord SET v = 'a{i}', n = n + 1 WHERE id = 1"));
        steps.push(format!(
            "UPDATE side SET v = v + {i} WHERE id = {}",
            i % 3 + 1
        ));
    }
    steps.extend(
        [
            "DELETE FROM ord WHERE id = 1",
            "INSERT INTO ord VALUES (1, 'reborn', 100, NULL)",
            "UPDATE ord SET n = n + 1 WHERE id = 1",
            "UPDATE ord SET v = v || '!' WHERE id = 1",
            // A key changes; its old value is used again, then the new key updated.
            "UPDATE ord SET id = 1000 WHERE id = 2",
            "INSERT INTO ord VALUES (2, 'second life', 0, NULL)",
            "UPDATE ord SET n = 42 WHERE id = 1000",
            "UPDATE ord SET n = 43 WHERE id = 2",
            // All in one source transaction.
            "BEGIN; UPDATE ord SET v = 'x' WHERE id = 4; UPDATE side SET v = -1 WHERE id = 9; \
             UPDATE ord SET v = 'y' WHERE id = 4; DELETE FROM ord WHERE id = 4; \
             INSERT INTO ord VALUES (4, 'z', 4, NULL); UPDATE ord SET n = 44 WHERE id = 4; COMMIT",
            // The TOASTed value is not sent again: the merged images keep the target's.
            "UPDATE ord SET n = 1 WHERE id = 6",
            "UPDATE ord SET n = 2, v = 'six' WHERE id = 6",
            "UPDATE ord SET v = 'gone', n = n + 1 WHERE id = 7",
            "UPDATE ord SET n = n + 1 WHERE id = 7",
            "UPDATE ord SET n = n + 1 WHERE id = 7",
            "DELETE FROM ord WHERE id = 8",
            "DELETE FROM ord WHERE id = 9",
            "INSERT INTO ord VALUES (9, 'nine again', 9, NULL)",
            "DELETE FROM ord WHERE id = 9",
            // A row moves to another chunk, is updated there, and moves back.
            "UPDATE ord_ht SET ts = ts + interval '10 days' WHERE id = 5",
            "UPDATE ord_ht SET v = 'moved' WHERE id = 5",
            "UPDATE ord_ht SET ts = ts - interval '10 days', v = v || ' back' WHERE id = 5",
            "UPDATE ord_ht SET v = 'h6 once' WHERE id = 6",
            "UPDATE ord_ht SET v = 'h6 twice' WHERE id = 6",
            "DELETE FROM ord_ht WHERE id = 7",
            "INSERT INTO ord_ht VALUES (7, timestamptz '2024-03-01', 'h7 later')",
            "UPDATE ord_ht SET ts = ts + interval '1 day' WHERE id = 7",
        ]
        .map(String::from),
    );
    for s in &steps {
        src.exec(s);
    }
    let _g2 = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["ord_ht", "side"]);
    // Row 7 stays missing on the target.
    let q = "(SELECT id, v, n, md5(big) FROM ord WHERE id <> 7)";
    assert_same(&src, &tgt, q, q);
    assert_eq!(count(&tgt, "ord WHERE id = 7"), 0);
    assert_eq!(
        count(
            &tgt,
            "ord WHERE id = 6 AND big IS NOT NULL AND v = 'six' AND n = 2"
        ),
        1
    );
    assert_eq!(count(&tgt, "ord_ht WHERE id = 7"), 1);
    // Conflicts: every source UPDATE of the missing row 7 (3, though merged into one
    // image) and the DELETE of row 8.
    assert_eq!(
        missing_counts(&tgt, sub),
        (3, 1),
        "update_missing, delete_missing"
    );
}

/// Two rows swap the values of a UNIQUE column that is not their key (through a temporary
/// value), as a list reordering does. Applied one row at a time, in source order, that never
/// collides; written as one statement over the rows' newest images it would (the unique
/// index is checked row by row), and the sync would be stuck on a transaction the source
/// committed fine.
#[test]
fn unique_column_values_swapped_inside_one_batch() {
    let src = Db::fresh(source(), "swap_src");
    let tgt = Db::fresh(target(), "swap_tgt");
    ddl_both(
        &src,
        &tgt,
        "CREATE TABLE slots (id int PRIMARY KEY, pos int NOT NULL UNIQUE, label text)",
    );
    src.exec(
        "INSERT INTO slots SELECT g, g, 'l' || g FROM generate_series(1, 20) g; \
         CREATE PUBLICATION p FOR TABLE slots",
    );
    let sub = "swap_unique";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["slots"]);
    livesync_stop(&tgt, sub);
    // Swaps, each in one source transaction, and one spread over three.
    src.exec(
        "BEGIN; UPDATE slots SET pos = -1 WHERE id = 1; UPDATE slots SET pos = 1 WHERE id = 2; \
         UPDATE slots SET pos = 2 WHERE id = 1; COMMIT; \
         BEGIN; UPDATE slots SET pos = -1 WHERE id = 3; UPDATE slots SET pos = 3 WHERE id = 4; \
         UPDATE slots SET pos = 4, label = 'moved' WHERE id = 3; COMMIT",
    );
    src.exec("UPDATE slots SET pos = -5 WHERE id = 5");
    src.exec("UPDATE slots SET pos = 5 WHERE id = 6");
    src.exec("UPDATE slots SET pos = 6 WHERE id = 5");
    let _g2 = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["slots"]);
    assert_eq!(
        try_sub_info(&tgt, sub)
            .ok()
            .flatten()
            .and_then(|i| i.last_error),
        None
    );
}

/// Runs of UPDATEs and DELETEs into a hypertable touch only the chunks their rows are in. A
/// run is one statement joined by key; planned once and reused, it cannot exclude chunks,
/// and probes every chunk for every row (on a hypertable of hundreds of chunks, a
/// millisecond a row); planned with the bounds of the whole run, it reads every chunk
/// between its oldest and newest row. The scans the chunks' statistics count tell which
/// chunks a run read.
#[test]
fn hypertable_runs_touch_only_their_chunks() {
    let src = Db::fresh(source(), "ht_runs_src");
    let tgt = Db::fresh(target(), "ht_runs_tgt");
    // The source's key holds the time column too: a DELETE's old key image has it (with
    // only `id` there, no chunk could be left out).
    daily_hypertable(&src, &tgt, "hts");
    // 30 days, 20 rows a day: ids 1..600, day 30 holds ids 581..600.
    src.exec(
        "INSERT INTO hts SELECT g, timestamptz '2024-01-01 00:30:00+00' + ((g - 1) / 20) * interval '1 day' \
           + ((g - 1) % 20) * interval '1 minute' + interval '0.000123 second', 0 \
           FROM generate_series(1, 600) g; \
         CREATE PUBLICATION p FOR TABLE hts",
    );
    let sub = "ht_runs";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["hts"]);
    assert_eq!(chunk_count(&tgt, "hts"), 30);
    livesync_stop(&tgt, sub);
    let middle_chunk_scans = |tgt: &Db| -> i64 {
        tgt.query_one(
            "SELECT coalesce(sum(coalesce(seq_scan, 0) + coalesce(idx_scan, 0)), 0)::int8 \
               FROM pg_stat_user_tables \
              WHERE relid IN (SELECT show_chunks('hts', older_than => timestamptz '2024-01-29 00:00:00+00', \
                                                  newer_than => timestamptz '2024-01-02 00:00:00+00'))",
        )
    };
    let before = middle_chunk_scans(&tgt);
    // The backlog: one transaction per change, in the oldest day and the two newest only
    // (the first and last rows of each included, which are the bounds of the groups).
    for id in (561..=600).step_by(2).chain([1, 3, 20]) {
        src.exec(&format!("UPDATE hts SET v = v + {id} WHERE id = {id}"));
    }
    for id in [561, 580, 581, 600] {
        src.exec(&format!("UPDATE hts SET v = -1 WHERE id = {id}"));
    }
    for id in [562, 570, 582, 599, 2, 19] {
        src.exec(&format!("DELETE FROM hts WHERE id = {id}"));
    }
    let _g2 = start_sync(&tgt, &src.uri(), "p", sub);
    caught_up(&src, &tgt, sub);
    // Stopped, the worker has reported its statistics.
    livesync_stop(&tgt, sub);
    assert_eq!(
        middle_chunk_scans(&tgt) - before,
        0,
        "the runs read chunks (days 2 to 28) between their rows"
    );
    assert_tables_equal(&src, &tgt, "hts");
    assert_eq!(
        missing_counts(&tgt, sub),
        (0, 0),
        "update_missing, delete_missing"
    );
}

/// A hypertable's run of UPDATEs or DELETEs is written per chunk interval by a statement
/// whose plan is kept for that interval. The target's retention dropping the interval's
/// chunk must not leave a kept plan reading it ("could not open relation"), and a plan
/// made while the interval had no chunk must not stay in use once a new chunk holds rows
/// there: its UPDATEs and DELETEs would find nothing.
#[test]
fn hypertable_run_plans_follow_a_chunk_dropped_and_made_again() {
    let src = Db::fresh(source(), "ht_plans_src");
    let tgt = Db::fresh(target(), "ht_plans_tgt");
    daily_hypertable(&src, &tgt, "htp");
    src.exec(
        "INSERT INTO htp SELECT id, timestamptz '2024-01-01 10:00:00+00' + id * interval '1 minute', 0 \
           FROM generate_series(1, 6) id; \
         INSERT INTO htp VALUES (10, '2024-01-05 10:00:00+00', 0); \
         CREATE PUBLICATION p FOR TABLE htp",
    );
    let sub = "ht_plans";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["htp"]);
    // Plans kept for the first day, reading its chunk.
    src.exec("UPDATE htp SET v = 5 WHERE id = 5");
    src.exec("DELETE FROM htp WHERE id = 6");
    caught_up(&src, &tgt, sub);
    // The target's retention drops the first day.
    tgt.exec("SELECT drop_chunks('htp', older_than => timestamptz '2024-01-02 00:00:00+00')");
    assert_eq!(chunk_count(&tgt, "htp"), 1);
    // No chunk for that day now: nothing to update or delete.
    src.exec("UPDATE htp SET v = 1 WHERE id = 1");
    src.exec("DELETE FROM htp WHERE id = 2");
    caught_up(&src, &tgt, sub);
    assert_eq!(
        missing_counts(&tgt, sub),
        (1, 1),
        "update_missing, delete_missing"
    );
    // The day gets a chunk again, and rows that its runs must find.
    src.exec(
        "INSERT INTO htp VALUES (7, '2024-01-01 12:00:00+00', 0), (8, '2024-01-01 13:00:00+00', 0)",
    );
    caught_up(&src, &tgt, sub);
    assert_eq!(chunk_count(&tgt, "htp"), 2);
    src.exec("UPDATE htp SET v = 7 WHERE id = 7");
    src.exec("DELETE FROM htp WHERE id = 8");
    src.exec("UPDATE htp SET v = 10 WHERE id = 10");
    caught_up(&src, &tgt, sub);
    assert_eq!(
        tgt.query_one::<String>("SELECT string_agg(id || ':' || v, ' ' ORDER BY id) FROM htp"),
        "7:7 10:10"
    );
    assert_eq!(
        missing_counts(&tgt, sub),
        (1, 1),
        "update_missing, delete_missing"
    );
    assert!(
        rel_errors(&tgt, sub).is_empty(),
        "{:?}",
        rel_errors(&tgt, sub)
    );
}

/// An integer time column's chunk intervals: the last one an int4 column has ends past
/// 2^31 - 1, the first of an int2 column begins below -2^15. Their edges cannot be
/// written in the column's type (a statement bounded by them fails to parse), so the
/// runs of those intervals are bounded by their own values.
#[test]
fn hypertable_runs_in_the_last_interval_of_an_integer_column() {
    let src = Db::fresh(source(), "ht_int_src");
    let tgt = Db::fresh(target(), "ht_int_tgt");
    let ddl = "CREATE TABLE hti (id int, t int4 NOT NULL, v int, PRIMARY KEY (id, t)); \
               CREATE TABLE hts2 (id int, t int2 NOT NULL, v int, PRIMARY KEY (id, t))";
    src.exec(ddl);
    tgt.exec(&format!(
        "{ddl}; SET client_min_messages = warning; \
         SELECT create_hypertable('hti', 't', chunk_time_interval => 1000000); \
         SELECT create_hypertable('hts2', 't', chunk_time_interval => 10000)"
    ));
    src.exec(
        "INSERT INTO hti VALUES (1, 2147483647, 0), (2, 2147000123, 0), (3, 5, 0); \
         INSERT INTO hts2 VALUES (1, -32768, 0), (2, 32767, 0), (3, 5, 0); \
         CREATE PUBLICATION p FOR TABLE hti, hts2",
    );
    let sub = "ht_int";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["hti", "hts2"]);
    src.exec("UPDATE hti SET v = id; UPDATE hts2 SET v = id");
    src.exec("DELETE FROM hti WHERE id = 2; DELETE FROM hts2 WHERE id = 1");
    caught_up(&src, &tgt, sub);
    assert!(
        rel_errors(&tgt, sub).is_empty(),
        "{:?}",
        rel_errors(&tgt, sub)
    );
    assert_tables_equal(&src, &tgt, "hti");
    assert_tables_equal(&src, &tgt, "hts2");
    assert_eq!(
        missing_counts(&tgt, sub),
        (0, 0),
        "update_missing, delete_missing"
    );
}

/// Runs of INSERTs into a hypertable are loaded by TimescaleDB's COPY from a staging file
/// the apply worker keeps for its life, rewritten for each run: a shorter run after a
/// longer one leaves nothing of the longer one behind (its rows would come again, or fail
/// on the key), the file is emptied once loaded, and removed when the worker exits.
#[test]
fn hypertable_insert_runs_share_one_staging_file() {
    let src = Db::fresh(source(), "ht_stage_src");
    let tgt = Db::fresh(target(), "ht_stage_tgt");
    daily_hypertable(&src, &tgt, "hst");
    src.exec("CREATE PUBLICATION p FOR TABLE hst");
    let sub = "ht_stage";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["hst"]);
    let pid = sub_info(&tgt, sub)
        .and_then(|i| i.pid)
        .expect("the apply worker's pid");
    let stage = target()
        .datadir()
        .join("base/pgsql_tmp")
        .join(format!("pgsql_tmp_livesync_copy_apply_{pid}"));
    // A long run, then shorter ones (each long enough to be written by COPY), each applied
    // before the next is written.
    for (from, n) in [(1, 2000), (3001, 50), (4001, 10)] {
        src.exec(&format!(
            "INSERT INTO hst SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute', g \
               FROM generate_series({from}, {}) g",
            from + n - 1
        ));
        caught_up(&src, &tgt, sub);
        assert_eq!(
            sub_info(&tgt, sub).and_then(|i| i.pid),
            Some(pid),
            "the apply worker restarted: {:?}",
            sub_info(&tgt, sub).and_then(|i| i.last_error)
        );
        let len = std::fs::metadata(&stage)
            .unwrap_or_else(|e| {
                panic!(
                    "the apply worker keeps its staging file {} between runs: {e}",
                    stage.display()
                )
            })
            .len();
        assert_eq!(len, 0, "the staging file keeps the loaded rows");
    }
    assert_tables_equal(&src, &tgt, "hst");
    assert_eq!(count_only(&tgt, "hst"), 0, "rows in the hypertable's root");
    livesync_stop(&tgt, sub);
    let deadline = Instant::now() + LONG;
    while stage.exists() {
        assert!(
            Instant::now() < deadline,
            "the stopped worker left its staging file {}",
            stage.display()
        );
        sleep(Duration::from_millis(100));
    }
}

/// Runs into a hypertable whose time values livesync does not read itself (BC dates,
/// printed with a suffix) are grouped by the server instead: every change lands, and a run
/// over both eras is split correctly.
#[test]
fn hypertable_runs_of_bc_times() {
    let src = Db::fresh(source(), "ht_bc_src");
    let tgt = Db::fresh(target(), "ht_bc_tgt");
    daily_hypertable(&src, &tgt, "htb");
    // ids 1..10 in 44 BC, 11..20 in 1850, 21..30 in 2024.
    src.exec(
        "INSERT INTO htb SELECT g, CASE WHEN g <= 10 THEN timestamptz '0044-03-15 12:00:00+00 BC' \
                                        WHEN g <= 20 THEN timestamptz '1850-06-01 12:00:00+00' \
                                        ELSE timestamptz '2024-06-01 12:00:00+00' END \
                                   + g * interval '1 minute', 0 \
           FROM generate_series(1, 30) g; \
         CREATE PUBLICATION p FOR TABLE htb",
    );
    let sub = "ht_bc";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["htb"]);
    livesync_stop(&tgt, sub);
    // One backlog, so the changes come in one batch: runs over all three eras.
    for id in 1..=30 {
        src.exec(&format!("UPDATE htb SET v = v + {id} WHERE id = {id}"));
    }
    for id in [2, 9, 12, 19, 22, 29] {
        src.exec(&format!("DELETE FROM htb WHERE id = {id}"));
    }
    let _g2 = start_sync(&tgt, &src.uri(), "p", sub);
    caught_up(&src, &tgt, sub);
    assert_tables_equal(&src, &tgt, "htb");
    assert_eq!(
        missing_counts(&tgt, sub),
        (0, 0),
        "update_missing, delete_missing"
    );
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*)::int8 FROM htb WHERE v = id"),
        24,
        "every surviving row updated"
    );
}

/// Runs of UPDATEs and DELETEs find their rows through the target's key index, however
/// long the run: told a run's length, the planner would rather hash the run and read every
/// row of every chunk it touches (for 2000 keys into 300 000 rows, 200 ms instead of 10).
/// Applying the runs must add no sequential scan of a chunk; the rows they changed show
/// that the worker's statistics were counted.
#[test]
fn runs_find_rows_by_the_key_index() {
    let src = Db::fresh(source(), "runs_idx_src");
    let tgt = Db::fresh(target(), "runs_idx_tgt");
    // The source's key is id alone, so a DELETE carries no time: it looks in every chunk.
    src.exec("CREATE TABLE hk (id int PRIMARY KEY, ts timestamptz NOT NULL, v int)");
    daily_hypertable_on(&tgt, "hk");
    // 60 000 rows 10 s apart: 7 daily chunks.
    src.exec(
        "INSERT INTO hk SELECT g, timestamptz '2024-01-01 00:00:00+00' + g * interval '10 s', 0 \
           FROM generate_series(1, 60000) g; \
         CREATE PUBLICATION p FOR TABLE hk",
    );
    let sub = "runs_idx";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    // Caught up, not compared yet: a comparison reads every chunk, and its statistics could
    // reach the counters late.
    caught_up(&src, &tgt, sub);
    tgt.exec("ANALYZE hk");
    let chunk_stats = |what: &str| {
        tgt.query_one::<i64>(&format!(
            "SELECT coalesce(sum({what}), 0)::int8 FROM pg_catalog.pg_stat_user_tables \
              WHERE relid IN (SELECT show_chunks('hk'))"
        ))
    };
    // The copy's statistics (a table-sync worker hands them over as it exits) have settled
    // when two readings a second apart agree.
    let mut seq_before = chunk_stats("seq_scan");
    let settled = Instant::now();
    loop {
        sleep(Duration::from_secs(1));
        let now = chunk_stats("seq_scan");
        if now == seq_before || settled.elapsed() > LONG {
            break;
        }
        seq_before = now;
    }
    // Runs of 2000 (the most a run holds): 2 of UPDATEs in one chunk, 6 of DELETEs, more
    // than the 5 executions after which a prepared statement may switch plans by itself.
    src.exec("UPDATE hk SET v = 1 WHERE id BETWEEN 1001 AND 5000");
    src.exec("DELETE FROM hk WHERE id BETWEEN 20001 AND 32000");
    caught_up(&src, &tgt, sub);
    // The worker hands over its statistics when it exits.
    livesync_stop(&tgt, sub);
    wait_until_or(
        LONG,
        "the apply worker's row counts in the chunks' statistics",
        || {
            format!(
                "n_tup_upd {}, n_tup_del {}",
                chunk_stats("n_tup_upd"),
                chunk_stats("n_tup_del")
            )
        },
        || chunk_stats("n_tup_upd") >= 4000 && chunk_stats("n_tup_del") >= 12000,
    );
    assert_eq!(
        chunk_stats("seq_scan") - seq_before,
        0,
        "sequential scans of the chunks while applying runs of UPDATEs and DELETEs"
    );
    assert_tables_equal(&src, &tgt, "hk");
    assert_eq!(
        missing_counts(&tgt, sub),
        (0, 0),
        "update_missing, delete_missing"
    );
}

/// Runs of INSERTs are written by COPY (PostgreSQL's into a plain table, in COPYs of 64
/// rows, TimescaleDB's into a hypertable): values COPY must escape (tab, newline, carriage return, backslash,
/// the text `\N`), NULLs and empty strings arrive as the source has them; a hypertable's
/// rows land in its chunks, none in its root; a target column the source lacks gets its
/// default; non-ASCII text arrives intact where the database's client_encoding is LATIN1.
#[test]
fn insert_runs_by_copy_keep_every_value() {
    let src = Db::fresh(source(), "inscopy_src");
    let tgt = Db::fresh(target(), "inscopy_tgt");
    src.exec("CREATE TABLE pt (id int PRIMARY KEY, s text, n int)");
    tgt.exec("CREATE TABLE pt (id int PRIMARY KEY, s text, n int, extra text DEFAULT 'dflt')");
    daily_hypertable(&src, &tgt, "hc");
    // Copied, then applied, into a database whose sessions default to another encoding:
    // the values, which come in UTF8, must still be read as UTF8.
    src.exec("INSERT INTO pt VALUES (0, 'ü ø', 0); CREATE PUBLICATION p FOR TABLE pt, hc");
    tgt.exec(&format!(
        "ALTER DATABASE {} SET client_encoding = 'LATIN1'",
        tgt.name
    ));
    let sub = "ins_copy";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    caught_up(&src, &tgt, sub);
    src.exec(
        r"INSERT INTO pt SELECT g, CASE g % 5 WHEN 0 THEN E'a\tb\nc\\d\re' || g WHEN 1 THEN '\N'
            WHEN 2 THEN '' WHEN 3 THEN NULL ELSE 'é ' || g END, nullif(g % 7, 0)
            FROM generate_series(1, 150) g;
          INSERT INTO hc SELECT g, timestamptz '2024-01-01' + g * interval '5 hours', g
            FROM generate_series(1, 50) g",
    );
    caught_up(&src, &tgt, sub);
    let rows = "SELECT string_agg(id || ':' || quote_nullable(s) || ':' || quote_nullable(n), ',' \
                ORDER BY id) FROM pt";
    let want: String = src.query_one(rows);
    assert_eq!(tgt.query_one::<String>(rows), want);
    assert_eq!(count(&tgt, "pt WHERE extra = 'dflt'"), 151);
    assert_tables_equal(&src, &tgt, "hc");
    assert_eq!(count(&tgt, "ONLY hc"), 0, "rows in the hypertable's root");
    assert!(chunk_count(&tgt, "hc") >= 10);
}

/// A run into a plain table is written in several COPYs: one refused (a key a user inserted
/// on the target by hand, in the run's third COPY) is an error that leaves none of the
/// run's rows, not even the COPYs before it, and the run arrives whole once the row is
/// gone.
#[test]
fn a_refused_copy_run_lands_none_of_its_copies() {
    let src = Db::fresh(source(), "copyerr_src");
    let tgt = Db::fresh(target(), "copyerr_tgt");
    let ddl = "CREATE TABLE pe (id int PRIMARY KEY, s text)";
    src.exec(&format!("{ddl}; CREATE PUBLICATION p FOR TABLE pe"));
    tgt.exec(ddl);
    let sub = "copy_err";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    caught_up(&src, &tgt, sub);
    tgt.exec("INSERT INTO pe VALUES (140, 'by hand')");
    src.exec("INSERT INTO pe SELECT g, 'r' || g FROM generate_series(1, 150) g");
    refused_run_arrives_after_the_fix(&src, &tgt, sub, "pe");
}

/// The run just written into `table` stops the sync on a duplicate key, with nothing of it
/// on the target but the one row a user inserted there; once that row is deleted the run
/// arrives whole.
fn refused_run_arrives_after_the_fix(src: &Db, tgt: &Db, sub: &str, table: &str) {
    wait_sub_error(
        tgt,
        sub,
        LONG,
        "the unique violation",
        || describe(tgt, sub),
        |e| e.contains("duplicate key"),
    );
    assert_eq!(count(tgt, table), 1, "part of a refused run landed");
    tgt.exec(&format!("DELETE FROM {table}"));
    caught_up(src, tgt, sub);
    assert_tables_equal(src, tgt, table);
}

/// A run that TimescaleDB's COPY refuses (a key a user inserted on the target by hand) is
/// an error that writes nothing of the run, and the run arrives whole once the row is gone.
#[test]
fn a_refused_hypertable_copy_run_arrives_after_the_fix() {
    let src = Db::fresh(source(), "htcopyerr_src");
    let tgt = Db::fresh(target(), "htcopyerr_tgt");
    daily_hypertable(&src, &tgt, "hce");
    src.exec("CREATE PUBLICATION p FOR TABLE hce");
    let sub = "ht_copy_err";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    caught_up(&src, &tgt, sub);
    let rows = "SELECT g, timestamptz '2024-01-01' + g * interval '5 hours', g FROM generate_series(1, 20) g";
    tgt.exec(&format!("INSERT INTO hce {rows} OFFSET 4 LIMIT 1"));
    src.exec(&format!("INSERT INTO hce {rows}"));
    refused_run_arrives_after_the_fix(&src, &tgt, sub, "hce");
    assert_eq!(count(&tgt, "ONLY hce"), 0, "rows in the hypertable's root");
}

/// Table `name` (id int, ts timestamptz, v int; key (id, ts)) on the source, and as a
/// hypertable of 1-day chunks on the target.
fn daily_hypertable(src: &Db, tgt: &Db, name: &str) {
    src.exec(&daily_table_ddl(name));
    daily_hypertable_on(tgt, name);
}

/// [`daily_hypertable`]'s target side alone.
fn daily_hypertable_on(tgt: &Db, name: &str) {
    tgt.exec(&format!(
        "{}; SET client_min_messages = warning; \
         SELECT create_hypertable('{name}', 'ts', chunk_time_interval => interval '1 day')",
        daily_table_ddl(name)
    ));
}

fn daily_table_ddl(name: &str) -> String {
    format!("CREATE TABLE {name} (id int, ts timestamptz NOT NULL, v int, PRIMARY KEY (id, ts))")
}

/// The sync's `update_missing` and `delete_missing` counters.
fn missing_counts(tgt: &Db, sub: &str) -> (i64, i64) {
    let r = tgt
        .client()
        .query_one(
            "SELECT update_missing::int8, delete_missing::int8 FROM livesync.subscription \
              WHERE subname = $1",
            &[&sub],
        )
        .expect("counters");
    (r.get(0), r.get(1))
}

/// A stream that keeps bringing small source transactions, which the worker keeps up with,
/// commits each time it has applied all the source had sent: what is applied is visible
/// while the source keeps writing, not once `livesync.apply_batch_delay` (here 10 s, its
/// largest value) has passed or the source has paused. Before, a worker that had caught up
/// paused to let the walsender's messages gather, found the next ones after the pause, and
/// kept its target transaction open for them.
#[test]
fn a_busy_stream_commits_whenever_it_has_caught_up() {
    let tc = Cluster::new_private_with(
        ClusterSpec::new(Kind::Target, "caughtup").conf("livesync.apply_batch_delay = 10000"),
    );
    let src = Db::fresh(source(), "caughtup_src");
    let tgt = Db::fresh(&tc, "caughtup_tgt");
    ddl_both(&src, &tgt, "CREATE TABLE t (id bigint PRIMARY KEY)");
    src.exec("CREATE PUBLICATION p FOR TABLE t");
    let sub = "caughtup";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.t"], 'r');
    // A source transaction every 2 ms or so: the next one always arrives within the pause.
    let writer = BackgroundWriter::spawn(&src, "one-row transactions into t", |c, i| {
        c.execute("INSERT INTO t VALUES ($1)", &[&(i as i64)])
            .map(|_| ())
    });
    wait_until_or(
        Duration::from_secs(5),
        "rows on the target while the source is still writing them",
        || describe(&tgt, sub),
        || count_only(&tgt, "t") > 0,
    );
    let written = writer.stop().inserts;
    synced(&src, &tgt, sub, &["t"]);
    assert_eq!(count_only(&tgt, "t"), written as i64);
}
