//! Bad input to every livesync function (issue 4): NULL, empty, malformed, too long, unknown
//! and duplicate names, names that need quoting. Each is an ERROR with a SQLSTATE and a hint,
//! raised before anything is written (no row in livesync.subscription, no slot).
//!
//! And the other side: publication names that need quoting work, and so do schemas, tables and
//! columns named like SQL keywords or with spaces, quotes, mixed case and unicode.
//!
//! Expected SQLSTATEs: NULL 22004 null_value_not_allowed; empty 22023
//! invalid_parameter_value (42602 for the subscription name); unknown sync 42704
//! undefined_object; duplicate 42710 duplicate_object; invalid subscription name 42602
//! invalid_name; too long: 42622 name_too_long / 22023 / 42602 (names), 42601 / 22023 / 08
//! (a 10 kB connection string).

use std::time::{Duration, Instant};

use livesync_e2e::postgres::types::ToSql;
use livesync_e2e::*;

fn source_db<'a>(cluster: &'a Cluster, prefix: &str) -> Db<'a> {
    let src = Db::fresh(cluster, prefix);
    src.exec(&format!(
        "{}; {}; CREATE PUBLICATION analytics FOR TABLE t",
        kv_table_ddl("t"),
        kv_fill_sql("t", 100)
    ));
    src
}

/// Runs `sql` with `params` and checks the ERROR: SQLSTATE in `codes`, a hint, quick, and
/// nothing left behind (no sync row at all in this database, no slot named `slot_prefix`).
fn assert_call_rejected(
    tgt: &Db,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    codes: &[&str],
    slot_prefix: &str,
    what: &str,
) -> String {
    let rows_before: i64 = tgt.query_one("SELECT count(*)::int8 FROM livesync.subscription");
    let t0 = Instant::now();
    let res = tgt.client().execute(sql, params).map(|_| ());
    let elapsed = t0.elapsed();
    let text = assert_sqlstate(res, codes, what);
    eprintln!("[e2e] {what} -> {:.2}s: {text}", elapsed.as_secs_f64());
    assert!(
        text.contains("\nHINT: "),
        "{what}: every rejection needs a hint: {text}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "{what}: took {elapsed:?} to fail"
    );
    let rows_after: i64 = tgt.query_one("SELECT count(*)::int8 FROM livesync.subscription");
    assert_eq!(rows_after, rows_before, "{what}: left a row");
    let rels: i64 = tgt.query_one(
        "SELECT count(*)::int8 FROM livesync.subscription_rel r \
         WHERE NOT EXISTS (SELECT FROM livesync.subscription s WHERE s.subname = r.subname)",
    );
    assert_eq!(rels, 0, "{what}: left orphan subscription_rel rows");
    if !slot_prefix.is_empty() {
        assert_eq!(
            slots_on_source(source(), slot_prefix),
            Vec::<String>::new(),
            "{what}: left a slot"
        );
    }
    text
}

const START4: &str = "SELECT livesync_start($1::text, $2::text, $3::text, $4::bool)";

#[test]
fn null_arguments_are_rejected() {
    let src = source_db(source(), "nullarg_src");
    let tgt = Db::fresh(target(), "nullarg_tgt");
    let uri = src.uri();
    let none: Option<String> = None;
    let some = |s: &str| Some(s.to_string());
    let sub = "null_args";
    let _g = SyncGuard::new(&tgt, sub);
    type Case<'a> = (
        Option<String>,
        Option<String>,
        Option<String>,
        Option<bool>,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            none.clone(),
            some("analytics"),
            some(sub),
            Some(true),
            "source",
        ),
        (
            Some(uri.clone()),
            none.clone(),
            some(sub),
            Some(true),
            "publication",
        ),
        (
            Some(uri.clone()),
            some("analytics"),
            none.clone(),
            Some(true),
            "subscription",
        ),
    ];
    for (s, p, n, c, which) in &cases {
        let text = assert_call_rejected(
            &tgt,
            START4,
            &[s, p, n, c],
            &["22004"],
            sub,
            &format!("livesync_start with {which} NULL"),
        );
        assert!(
            text.contains(which),
            "the error should name the NULL argument {which}: {text}"
        );
    }
    for (sql, what) in [
        ("SELECT livesync_stop(NULL)", "livesync_stop(NULL)"),
        ("SELECT livesync_drop(NULL)", "livesync_drop(NULL)"),
        (
            "SELECT livesync_drop('null_args', NULL)",
            "livesync_drop(.., drop_slots => NULL)",
        ),
    ] {
        assert_call_rejected(&tgt, sql, &[], &["22004", "42704"], "", what);
    }
}

#[test]
fn null_copy_data_is_rejected() {
    let src = source_db(source(), "nullcd_src");
    let tgt = Db::fresh(target(), "nullcd_tgt");
    let sub = "null_copy_data";
    let _g = SyncGuard::new(&tgt, sub);
    let text = assert_call_rejected(
        &tgt,
        START4,
        &[&src.uri(), &"analytics", &sub, &None::<bool>],
        &["22004"],
        sub,
        "livesync_start with copy_data NULL",
    );
    assert!(text.contains("copy_data"), "should name copy_data: {text}");
}

#[test]
fn too_long_publication_name_is_rejected() {
    let src = source_db(source(), "longpub_src");
    let tgt = Db::fresh(target(), "longpub_tgt");
    let sub = "long_pub";
    let _g = SyncGuard::new(&tgt, sub);
    // A publication name can have at most 63 bytes (NAMEDATALEN): this one can never exist.
    let long_pub = "p".repeat(1_000);
    assert_call_rejected(
        &tgt,
        START4,
        &[&src.uri(), &long_pub, &sub, &true],
        &["42622", "22023", "42602"],
        sub,
        "1000-character publication name",
    );
}

#[test]
fn malformed_10kb_connection_string_error_is_bounded() {
    let tgt = Db::fresh(target(), "longgarbage_tgt");
    let sub = "long_garbage";
    let _g = SyncGuard::new(&tgt, sub);
    let long_garbage = "y".repeat(10_000);
    let text = assert_call_rejected(
        &tgt,
        START4,
        &[&long_garbage, &"analytics", &sub, &true],
        &["42601", "22023"],
        sub,
        "10 kB of garbage as connection string",
    );
    assert!(
        text.len() < 4_000,
        "the error echoes the whole 10 kB connection string ({} bytes): {}...",
        text.len(),
        &text[..200.min(text.len())]
    );
}

#[test]
fn empty_and_malformed_arguments_are_rejected() {
    let src = source_db(source(), "emptyarg_src");
    let tgt = Db::fresh(target(), "emptyarg_tgt");
    let uri = src.uri();
    let sub = "empty_args";
    let _g = SyncGuard::new(&tgt, sub);
    for (s, p, n, codes, what) in [
        (
            "",
            "analytics",
            sub,
            &["22023", "42601"][..],
            "empty source",
        ),
        (
            "   ",
            "analytics",
            sub,
            &["22023", "42601"][..],
            "blank source",
        ),
        (
            uri.as_str(),
            "",
            sub,
            &["22023", "42602"][..],
            "empty publication",
        ),
        (
            uri.as_str(),
            "analytics",
            "",
            &["42602", "22023"][..],
            "empty subscription",
        ),
    ] {
        assert_call_rejected(&tgt, START4, &[&s, &p, &n, &true], codes, sub, what);
    }
    for (sql, what) in [
        ("SELECT livesync_stop('')", "livesync_stop('')"),
        ("SELECT livesync_drop('')", "livesync_drop('')"),
    ] {
        assert_call_rejected(&tgt, sql, &[], &["22023", "42602", "42704"], "", what);
    }
    // Too long: a 10 kB connection string (see also the tests above).
    let long_source = format!("{} application_name={}", src.conninfo(), "x".repeat(10_000));
    let text = assert_call_rejected(
        &tgt,
        START4,
        &[&long_source, &"analytics", &sub, &true],
        &["42601", "22023", "08", "42622"],
        sub,
        "10 kB connection string",
    );
    assert!(
        text.len() < 4_000,
        "the error echoes the whole 10 kB connection string ({} bytes)",
        text.len()
    );
    let long_sub = "s".repeat(1_000);
    assert_call_rejected(
        &tgt,
        START4,
        &[&uri, &"analytics", &long_sub, &true],
        &["42602", "42622", "22023"],
        "sss",
        "1000-character subscription name",
    );
    for (sql, what) in [
        (
            format!("SELECT livesync_stop('{long_sub}')"),
            "livesync_stop of a 1000-character name",
        ),
        (
            format!("SELECT livesync_drop('{long_sub}')"),
            "livesync_drop of a 1000-character name",
        ),
    ] {
        assert_call_rejected(
            &tgt,
            &sql,
            &[],
            &["42602", "42622", "22023", "42704"],
            "",
            what,
        );
    }
}

#[test]
fn unknown_subscription_for_stop_and_drop() {
    let tgt = Db::fresh(target(), "unknown_tgt");
    for sql in [
        "SELECT livesync_stop('no_such_sync')",
        "SELECT livesync_drop('no_such_sync')",
        "SELECT livesync_drop('no_such_sync', false)",
        "SELECT livesync_stop()",
        "SELECT livesync_drop()",
    ] {
        let text = assert_call_rejected(&tgt, sql, &[], &["42704"], "", sql);
        assert!(
            text.contains("no_such_sync") || text.contains("livesync"),
            "{sql}: the error should name the sync: {text}"
        );
    }
}

#[test]
fn names_needing_quoting_and_duplicates_are_rejected() {
    let src = source_db(source(), "quotename_src");
    let tgt = Db::fresh(target(), "quotename_tgt");
    tgt.exec(&kv_table_ddl("t"));
    let uri = src.uri();
    for name in [
        "Mixed Case",
        "MixedCase",
        "with\"quote",
        "with'quote",
        "with space",
        " lead",
        "trail ",
        "\"quoted\"",
        "tab\there",
        "nul?",
        "caf\u{e9}",
        "\u{1F600}",
    ] {
        let text = assert_call_rejected(
            &tgt,
            START4,
            &[&uri, &"analytics", &name, &true],
            &["42602"],
            "",
            &format!("subscription name {name:?}"),
        );
        assert!(
            text.contains("subscription"),
            "the error should say the subscription name is invalid: {text}"
        );
    }
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*)::int8 FROM livesync.subscription"),
        0
    );
    // Duplicates: a stopped sync of the same name with another publication or source.
    let sub = "dup_stopped";
    let _g = start_sync(&tgt, &uri, "analytics", sub);
    assert_synced(&src, &tgt, sub, &["t"]);
    livesync_stop(&tgt, sub);
    for (s, p, what) in [
        (uri.clone(), "other_pub", "same name, other publication"),
        (src.conninfo(), "analytics", "same name, other source"),
    ] {
        let rows_before: i64 = tgt.query_one("SELECT count(*)::int8 FROM livesync.subscription");
        let res = tgt
            .client()
            .execute(START4, &[&s, &p, &sub, &true])
            .map(|_| ());
        let text = assert_sqlstate(res, &["42710"], what);
        assert!(text.contains("\nHINT: "), "{what}: no hint: {text}");
        assert_eq!(
            tgt.query_one::<i64>("SELECT count(*)::int8 FROM livesync.subscription"),
            rows_before
        );
        let info = sub_info(&tgt, sub).unwrap();
        assert!(!info.enabled, "{what}: the stopped sync was started");
        assert_eq!(info.publication, "analytics");
    }
    assert_eq!(slots_on_source(source(), sub), vec![sub.to_string()]);
    livesync_drop(&tgt, sub);
}

#[test]
fn publication_name_needing_quotes_works() {
    let src = Db::fresh(source(), "mypub_src");
    let tgt = Db::fresh(target(), "mypub_tgt");
    src.exec(&format!(
        "{}; {}; CREATE PUBLICATION \"My Pub\" FOR TABLE t",
        kv_table_ddl("t"),
        kv_fill_sql("t", 1_000)
    ));
    tgt.exec(&kv_table_ddl("t"));
    let sub = "my_pub";
    let _g = start_sync(&tgt, &src.uri(), "My Pub", sub);
    wait_for_tables(&tgt, sub, &["public.t"], 'r');
    let w = BackgroundWriter::kv(&src, "t", 1_001);
    std::thread::sleep(Duration::from_secs(2));
    w.stop();
    assert_synced(&src, &tgt, sub, &["t"]);
    assert_eq!(sub_info(&tgt, sub).unwrap().publication, "My Pub");
    // A publication whose name has a quote in it, created after the start (the sync waits).
    let sub2 = "quote_pub";
    tgt.exec("CREATE TABLE u (id int PRIMARY KEY, \"Val\" text)");
    let _g2 = start_sync(&tgt, &src.uri(), "it's \"odd\"", sub2);
    src.exec(
        "CREATE TABLE u (id int PRIMARY KEY, \"Val\" text); \
         INSERT INTO u SELECT g, g::text FROM generate_series(1, 100) g; \
         CREATE PUBLICATION \"it's \"\"odd\"\"\" FOR TABLE u",
    );
    wait_for_tables(&tgt, sub2, &["public.u"], 'r');
    src.exec("UPDATE u SET \"Val\" = 'x' WHERE id < 10; DELETE FROM u WHERE id > 90");
    assert_synced(&src, &tgt, sub2, &["u"]);
}

#[test]
fn identifiers_needing_quotes_copy_and_apply() {
    let src = Db::fresh(source(), "ident_src");
    let tgt = Db::fresh(target(), "ident_tgt");
    let ddl = "CREATE SCHEMA \"select\"; CREATE SCHEMA \"My Schema\"; CREATE SCHEMA \"sch\u{e9}ma\"; \
         CREATE TABLE \"select\".\"order\" (\"user\" int PRIMARY KEY, \"group\" text, \
                \"Mixed Case\" text, \"with \"\"quote\"\"\" text, \"na\u{ef}ve \u{2603}\" text, \"from\" int); \
         CREATE TABLE \"My Schema\".\"My Table\" (\"Id\" int PRIMARY KEY, \"the value\" text, \"a'b\" text); \
         CREATE TABLE \"sch\u{e9}ma\".\"t\u{e4}ble \u{65e5}\u{672c}\" (\"\u{30ad}\u{30fc}\" int PRIMARY KEY, \"v\u{e4}l\" text); \
         CREATE TABLE public.\"user\" (\"column\" int, \"desc\" text) ; \
         ALTER TABLE public.\"user\" REPLICA IDENTITY FULL";
    src.exec(ddl);
    tgt.exec(ddl);
    src.exec(
        "INSERT INTO \"select\".\"order\" SELECT g, 'g' || g, 'm' || g, 'q''' || g, '\u{2603}' || g, g \
           FROM generate_series(1, 500) g; \
         INSERT INTO \"My Schema\".\"My Table\" SELECT g, 'v' || g, 'ab' FROM generate_series(1, 500) g; \
         INSERT INTO \"sch\u{e9}ma\".\"t\u{e4}ble \u{65e5}\u{672c}\" SELECT g, '\u{e4}' || g FROM generate_series(1, 500) g; \
         INSERT INTO public.\"user\" SELECT g, 'd' || g FROM generate_series(1, 100) g; \
         CREATE PUBLICATION \"Pub \"\"Q\"\"\" FOR TABLE \"select\".\"order\", \"My Schema\".\"My Table\", \
                \"sch\u{e9}ma\".\"t\u{e4}ble \u{65e5}\u{672c}\", public.\"user\"",
    );
    let sub = "identifiers";
    let _g = start_sync(&tgt, &src.uri(), "Pub \"Q\"", sub);
    wait_for_tables(
        &tgt,
        sub,
        &[
            "My Schema.My Table",
            "public.user",
            "sch\u{e9}ma.t\u{e4}ble \u{65e5}\u{672c}",
            "select.order",
        ],
        'r',
    );
    let tables = [
        "\"select\".\"order\"",
        "\"My Schema\".\"My Table\"",
        "\"sch\u{e9}ma\".\"t\u{e4}ble \u{65e5}\u{672c}\"",
        "public.\"user\"",
    ];
    assert_synced(&src, &tgt, sub, &tables);
    src.exec(
        "INSERT INTO \"select\".\"order\" VALUES (1001, 'new', 'New', 'q''\"', '\u{1F600}', 1); \
         UPDATE \"select\".\"order\" SET \"group\" = 'upd', \"Mixed Case\" = NULL WHERE \"user\" % 3 = 0; \
         UPDATE \"select\".\"order\" SET \"user\" = \"user\" + 100000 WHERE \"user\" % 50 = 1; \
         DELETE FROM \"select\".\"order\" WHERE \"user\" % 7 = 0; \
         UPDATE \"My Schema\".\"My Table\" SET \"the value\" = 'changed', \"a'b\" = 'x''y' WHERE \"Id\" < 50; \
         DELETE FROM \"My Schema\".\"My Table\" WHERE \"Id\" > 450; \
         INSERT INTO \"sch\u{e9}ma\".\"t\u{e4}ble \u{65e5}\u{672c}\" VALUES (1001, '\u{65e5}\u{672c}\u{8a9e}'); \
         UPDATE \"sch\u{e9}ma\".\"t\u{e4}ble \u{65e5}\u{672c}\" SET \"v\u{e4}l\" = 'u' WHERE \"\u{30ad}\u{30fc}\" < 100; \
         DELETE FROM \"sch\u{e9}ma\".\"t\u{e4}ble \u{65e5}\u{672c}\" WHERE \"\u{30ad}\u{30fc}\" > 400; \
         UPDATE public.\"user\" SET \"desc\" = 'u' WHERE \"column\" < 10; \
         DELETE FROM public.\"user\" WHERE \"column\" > 90",
    );
    assert_synced(&src, &tgt, sub, &tables);
}
