//! Bad input to `livesync_start` (API.md, "Validates synchronously"): each case must raise an
//! ERROR with an informative message and a hint, within seconds, and leave no row in
//! livesync.subscription / livesync.subscription_rel and no slot on the source.
//!
//! Expected SQLSTATEs (assumptions, see the report / README of the tests):
//! - malformed connection string: 42601 syntax_error (what native CREATE SUBSCRIPTION uses)
//!   or 22023 invalid_parameter_value;
//! - unreachable source, source that never answers: class 08 (connection exception);
//! - source with wal_level=replica: 55000 object_not_in_prerequisite_state;
//! - role without REPLICATION: 42501 insufficient_privilege;
//! - wrong password: 28P01 invalid_password (or 28000 invalid_authorization_specification);
//! - invalid subscription name: 42602 invalid_name or 22023 invalid_parameter_value;
//! - name already running: 42710 duplicate_object or 55006 object_in_use.

use std::io::Read;
use std::net::TcpListener;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use livesync_e2e::postgres::{Client, NoTls};
use livesync_e2e::*;

/// A source database with table `t` and publication `analytics`.
fn source_db<'a>(cluster: &'a Cluster, prefix: &str) -> Db<'a> {
    let src = Db::fresh(cluster, prefix);
    src.exec(&format!(
        "{}; {}; CREATE PUBLICATION analytics FOR TABLE t",
        kv_table_ddl("t"),
        kv_fill_sql("t", 100)
    ));
    src
}

/// Calls livesync_start and checks everything API.md promises for a rejected call.
#[allow(clippy::too_many_arguments)]
fn assert_rejected(
    tgt: &Db,
    source_cluster: Option<&Cluster>,
    conninfo: &str,
    publication: &str,
    sub: &str,
    codes: &[&str],
    must_mention: &[&str],
    max_secs: u64,
) {
    let what = format!(
        "livesync_start(source => {conninfo:?}, publication => {publication:?}, subscription => {sub:?})"
    );
    let t0 = Instant::now();
    let res = try_livesync_start(tgt, conninfo, publication, Some(sub), None);
    let elapsed = t0.elapsed();
    let _guard = SyncGuard::new(tgt, sub); // in case it wrongly succeeded
    let text = assert_sqlstate(res, codes, &what);
    eprintln!(
        "[e2e] {what} -> after {:.2}s: {text}",
        elapsed.as_secs_f64()
    );
    assert!(
        elapsed < Duration::from_secs(max_secs),
        "{what}: took {elapsed:?} (limit {max_secs} s) to fail"
    );
    let lower = text.to_lowercase();
    assert!(
        must_mention.is_empty() || must_mention.iter().any(|w| lower.contains(w)),
        "{what}: the error should mention one of {must_mention:?}: {text}"
    );
    assert!(
        text.contains("\nHINT: "),
        "{what}: API.md promises a hint: {text}"
    );
    assert!(
        sub_info(tgt, sub).is_none(),
        "{what}: left a row in livesync.subscription"
    );
    assert!(
        sub_rels(tgt, sub).is_empty(),
        "{what}: left rows in livesync.subscription_rel"
    );
    if let Some(c) = source_cluster {
        assert_eq!(
            slots_on_source(c, sub),
            Vec::<String>::new(),
            "{what}: left a slot on the source"
        );
    }
    // A background process must not create one a moment later either.
    thread::sleep(Duration::from_millis(500));
    assert!(sub_info(tgt, sub).is_none(), "{what}: a row appeared later");
    if let Some(c) = source_cluster {
        assert_eq!(
            slots_on_source(c, sub),
            Vec::<String>::new(),
            "{what}: a slot appeared later"
        );
    }
}

#[test]
fn malformed_conninfo_is_rejected() {
    let tgt = Db::fresh(target(), "bad_conninfo");
    let cases = [
        ("this is not a conninfo", "malformed_kv"),
        ("host='unterminated", "malformed_quote"),
        ("postgres://[::1", "malformed_uri"),
        ("host=127.0.0.1 bogus_option=1", "malformed_option"),
    ];
    for (ci, sub) in cases {
        assert_rejected(
            &tgt,
            Some(source()),
            ci,
            "analytics",
            sub,
            &["42601", "22023"],
            &[],
            5,
        );
    }
    // Invalid option values: libpq itself only notices them when connecting, so a connection
    // error is tolerated as well.
    assert_rejected(
        &tgt,
        Some(source()),
        &format!("postgres://postgres@127.0.0.1:notaport/{}", tgt.name),
        "analytics",
        "malformed_port",
        &["42601", "22023", "08"],
        &["port"],
        5,
    );
    assert_rejected(
        &tgt,
        Some(source()),
        &format!("{} sslmode=bogus", source().conninfo("postgres")),
        "analytics",
        "malformed_sslmode",
        &["42601", "22023", "08"],
        &["sslmode"],
        5,
    );
}

#[test]
fn unreachable_source_is_rejected() {
    let tgt = Db::fresh(target(), "bad_unreachable");
    // A port nothing listens on.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let ci = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    assert_rejected(
        &tgt,
        Some(source()),
        &ci,
        "analytics",
        "unreachable",
        &["08"],
        &["connect"],
        5,
    );
}

/// Accepts TCP connections and never says a word.
fn silent_listener() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().flatten() {
            let mut s2 = s.try_clone().unwrap();
            thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while matches!(s2.read(&mut buf), Ok(n) if n > 0) {}
            });
            held.push(s);
        }
    });
    port
}

#[test]
fn silent_source_times_out() {
    let tgt = Db::fresh(target(), "bad_silent");
    let port = silent_listener();
    // No connect_timeout: API.md promises failure within 10 s (3 s of slack here).
    let ci = format!("host=127.0.0.1 port={port} dbname=postgres user=postgres");
    assert_rejected(
        &tgt,
        None,
        &ci,
        "analytics",
        "silent_default",
        &["08"],
        &[],
        13,
    );
    // connect_timeout is honoured.
    let ci = format!("postgres://postgres@127.0.0.1:{port}/postgres?connect_timeout=2");
    assert_rejected(
        &tgt,
        None,
        &ci,
        "analytics",
        "silent_timeout2",
        &["08"],
        &[],
        6,
    );
}

#[test]
fn source_without_logical_wal_level_is_rejected() {
    let replica = Cluster::new_private_with(
        ClusterSpec::new(Kind::Source, "walreplica").conf("wal_level = replica"),
    );
    assert_eq!(
        replica.query_one::<String>("postgres", "SHOW wal_level"),
        "replica"
    );
    let src = source_db(&replica, "wal_replica");
    let tgt = Db::fresh(target(), "bad_wal_level");
    assert_rejected(
        &tgt,
        Some(&replica),
        &src.uri(),
        "analytics",
        "wal_replica",
        &["55000"],
        &["wal_level"],
        10,
    );
}

#[test]
fn role_without_replication_privilege_is_rejected() {
    let src = source_db(source(), "norepl_src");
    source().exec(
        "postgres",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'norepl') THEN \
         CREATE ROLE norepl LOGIN NOREPLICATION NOSUPERUSER; END IF; END $$",
    );
    src.exec("GRANT SELECT ON ALL TABLES IN SCHEMA public TO norepl");
    let tgt = Db::fresh(target(), "bad_norepl");
    let ci = source().uri_as("norepl", None, &src.name);
    assert_rejected(
        &tgt,
        Some(source()),
        &ci,
        "analytics",
        "no_repl_priv",
        &["42501"],
        &["replication"],
        10,
    );
}

/// A source that demands passwords over TCP: scram-sha-256 for most roles, md5 for `md5_user`.
fn auth_source() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let c = Cluster::new_private_with(
            ClusterSpec::new(Kind::Source, "authsrc")
                .hba("host all md5_user 127.0.0.1/32 md5")
                .hba("host all all 127.0.0.1/32 scram-sha-256")
                .hba("host replication md5_user 127.0.0.1/32 md5")
                .hba("host replication all 127.0.0.1/32 scram-sha-256"),
        );
        c.exec(
            "postgres",
            "SET password_encryption = 'scram-sha-256'; \
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 'right-pass'; \
             SET password_encryption = 'md5'; \
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'md5-pass'",
        );
        c
    })
}

fn auth_source_db(prefix: &str) -> Db<'static> {
    let src = source_db(auth_source(), prefix);
    src.exec("GRANT SELECT ON ALL TABLES IN SCHEMA public TO scram_user, md5_user");
    src
}

#[test]
fn wrong_password_is_rejected() {
    let src = auth_source_db("wrongpw_src");
    let tgt = Db::fresh(target(), "bad_password");
    for (user, sub) in [
        ("scram_user", "wrong_pw_scram"),
        ("md5_user", "wrong_pw_md5"),
    ] {
        let ci = auth_source().uri_as(user, Some("wrong-pass"), &src.name);
        assert_rejected(
            &tgt,
            Some(auth_source()),
            &ci,
            "analytics",
            sub,
            &["28P01", "28000"],
            &["password", "authentication"],
            10,
        );
    }
    // No password at all.
    let ci = auth_source().uri_as("scram_user", None, &src.name);
    assert_rejected(
        &tgt,
        Some(auth_source()),
        &ci,
        "analytics",
        "no_pw",
        &["28P01", "28000", "08"],
        &["password", "authentication"],
        10,
    );
}

#[test]
fn scram_and_md5_passwords_work() {
    let src = auth_source_db("goodpw_src");
    for (user, pass, sub) in [
        ("scram_user", "right-pass", "good_pw_scram"),
        ("md5_user", "md5-pass", "good_pw_md5"),
    ] {
        let tgt = Db::fresh(target(), sub);
        tgt.exec(&kv_table_ddl("t"));
        let ci = auth_source().uri_as(user, Some(pass), &src.name);
        let _g = start_sync(&tgt, &ci, "analytics", sub);
        assert_synced(&src, &tgt, sub, &["t"]);
        let shown: String =
            tgt.query_one("SELECT string_agg(s::text, ' ') FROM livesync.subscription s");
        assert!(
            !shown.contains(pass),
            "password shown in livesync.subscription: {shown}"
        );
        livesync_drop(&tgt, sub);
        assert_eq!(slots_on_source(auth_source(), sub), Vec::<String>::new());
    }
}

#[test]
fn invalid_subscription_names_are_rejected() {
    let src = source_db(source(), "badname_src");
    let tgt = Db::fresh(target(), "bad_names");
    let too_long = "a".repeat(41);
    for name in [
        "UPPER",
        "has space",
        too_long.as_str(),
        "",
        "dash-name",
        "semi;colon",
        "caf\u{e9}",
    ] {
        assert_rejected(
            &tgt,
            Some(source()),
            &src.uri(),
            "analytics",
            name,
            &["42602", "22023"],
            &[],
            5,
        );
    }
    // Exactly 40 characters is fine.
    let forty = format!("n{}", "0".repeat(39));
    assert_eq!(forty.len(), 40);
    tgt.exec(&kv_table_ddl("t"));
    let _g = start_sync(&tgt, &src.uri(), "analytics", &forty);
    assert_synced(&src, &tgt, &forty, &["t"]);
    livesync_drop(&tgt, &forty);
    assert_eq!(slots_on_source(source(), &forty), Vec::<String>::new());
}

#[test]
fn name_already_running_is_rejected() {
    let src = source_db(source(), "dup_src");
    let tgt = Db::fresh(target(), "bad_dup");
    tgt.exec(&kv_table_ddl("t"));
    let sub = "dup_sync";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.t"], 'r');
    let before = sub_info(&tgt, sub).unwrap();
    let slots_before = slots_on_source(source(), sub);

    for (ci, publ) in [(src.uri(), "analytics"), (src.conninfo(), "other_pub")] {
        let t0 = Instant::now();
        let res = try_livesync_start(&tgt, &ci, publ, Some(sub), None);
        let text = assert_sqlstate(res, &["42710", "55006"], "livesync_start of a running name");
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(text.contains("\nHINT: "), "API.md promises a hint: {text}");
    }
    let after = sub_info(&tgt, sub).expect("the running sync must survive");
    assert_eq!(after.pid, before.pid, "the running sync was restarted");
    assert_eq!(after.publication, "analytics");
    assert_eq!(
        tgt.query_one::<i64>(&format!(
            "SELECT count(*) FROM livesync.subscription WHERE subname = '{sub}'"
        )),
        1
    );
    assert_eq!(slots_on_source(source(), sub), slots_before);
    src.exec("INSERT INTO t SELECT g, g, 'x' FROM generate_series(101, 200) g");
    assert_synced(&src, &tgt, sub, &["t"]);
}

#[test]
fn start_without_preload_names_shared_preload_libraries() {
    // CREATE EXTENSION works without preloading, but there is no launcher and no shared
    // memory, so livesync_start must refuse with a hint, not start nothing silently.
    let tc = Cluster::new_private_with(
        ClusterSpec::new(Kind::Target, "nopreload")
            .conf("shared_preload_libraries = 'timescaledb'"),
    );
    let src = source_db(source(), "nopreload_src");
    let tgt = Db::fresh(&tc, "nopreload_tgt");
    assert_rejected(
        &tgt,
        Some(source()),
        &src.uri(),
        "analytics",
        "nopreload",
        &["55000"],
        &["shared_preload_libraries"],
        5,
    );
}

#[test]
fn exhausted_replication_slots_are_reported() {
    let full = Cluster::new_private_with(
        ClusterSpec::new(Kind::Source, "fullslots").conf("max_replication_slots = 1"),
    );
    full.exec(
        "postgres",
        "SELECT pg_create_logical_replication_slot('occupied', 'pgoutput')",
    );
    let src = source_db(&full, "full_slots");
    let tgt = Db::fresh(target(), "full_slots_tgt");
    assert_rejected(
        &tgt,
        Some(&full),
        &src.uri(),
        "analytics",
        "fullslots",
        &["53400"],
        &["max_replication_slots"],
        10,
    );
}

#[test]
fn publication_dropped_while_running_is_reported() {
    let src = source_db(source(), "pubdrop_src");
    let tgt = Db::fresh(target(), "pubdrop_tgt");
    tgt.exec(&kv_table_ddl("t"));
    let sub = "pub_dropped";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.t"], 'r');
    src.exec("DROP PUBLICATION analytics; INSERT INTO t VALUES (100001, 1, 'after the drop')");
    let err = wait_for_last_error(
        &tgt,
        sub,
        Duration::from_secs(60),
        "name the dropped publication",
        |e| e.contains("analytics") && e.contains("does not exist"),
    );
    eprintln!("[e2e] last_error after DROP PUBLICATION: {err}");
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*) FROM t WHERE id = 100001"),
        0,
        "a change made after the publication was dropped was applied"
    );
}

/// A client of `tgt` that collects the server's NOTICEs and WARNINGs.
fn client_with_notices(tgt: &Db) -> (Client, Arc<Mutex<Vec<String>>>) {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let sink = notices.clone();
    let client = tgt
        .config()
        .notice_callback(move |n| {
            sink.lock()
                .unwrap()
                .push(format!("{}: {}", n.severity(), n.message()))
        })
        .connect(NoTls)
        .expect("connect to the target");
    (client, notices)
}

#[test]
fn drop_with_the_source_gone_names_the_way_out() {
    // livesync_drop must drop the slots on the source, so a source it cannot reach is an
    // ERROR that changes nothing and says how to forget the sync anyway; DROP EXTENSION
    // (which must not be blocked by a dead source) warns and names the slots left behind.
    let src = source_db(source(), "gone_src");
    let tgt = Db::fresh(target(), "gone_tgt");
    tgt.exec(&kv_table_ddl("t"));
    let proxy = TcpProxy::start(source().port());
    let ci = format!(
        "postgres://postgres@127.0.0.1:{}/{}?connect_timeout=3",
        proxy.port(),
        src.name
    );
    // Both read the same table into the same target table: only one copies it.
    for (sub, copy_data) in [("gone_a", None), ("gone_b", Some(false))] {
        try_livesync_start(&tgt, &ci, "analytics", Some(sub), copy_data)
            .unwrap_or_else(|e| panic!("livesync_start {sub}: {}", err_text(&e)));
        wait_for_tables(&tgt, sub, &["public.t"], 'r');
    }
    proxy.cut();

    let t0 = Instant::now();
    let res = tgt.client().batch_execute("SELECT livesync_drop('gone_a')");
    let text = assert_sqlstate(res, &["08"], "livesync_drop with the source unreachable");
    eprintln!(
        "[e2e] livesync_drop with the source gone, after {:.1}s: {text}",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "livesync_drop took {:?} to fail",
        t0.elapsed()
    );
    assert!(
        text.contains("drop_slots => false"),
        "the hint should name livesync_drop(..., drop_slots => false): {text}"
    );
    assert!(
        sub_info(&tgt, "gone_a").is_some(),
        "a failed livesync_drop forgot the sync"
    );
    assert_eq!(
        slots_on_source(source(), "gone_a"),
        vec!["gone_a".to_string()],
        "the slot must still be there"
    );

    tgt.exec("SELECT livesync_drop('gone_a', drop_slots => false)");
    assert!(sub_info(&tgt, "gone_a").is_none(), "gone_a is still listed");
    drop_slot_left_behind("gone_a", "drop_slots => false must leave the slot alone");

    // DROP EXTENSION with the source gone: done, with a WARNING naming the slots.
    let (mut c, notices) = client_with_notices(&tgt);
    c.batch_execute("DROP EXTENSION livesync")
        .unwrap_or_else(|e| panic!("DROP EXTENSION with the source gone: {}", err_text(&e)));
    let notices = notices.lock().unwrap().clone();
    eprintln!("[e2e] DROP EXTENSION with the source gone said: {notices:?}");
    assert!(
        notices
            .iter()
            .any(|n| n.starts_with("WARNING") && n.contains("gone_b")),
        "DROP EXTENSION should warn that the slots of gone_b were left: {notices:?}"
    );
    wait_until(
        Duration::from_secs(10),
        "livesync workers of the dropped extension to exit",
        || livesync_backends(&tgt).is_empty(),
    );
    drop_slot_left_behind(
        "gone_b",
        "DROP EXTENSION must not lose track of a slot silently",
    );
}

/// The sync's main slot (and no other) is still on the source: check, then drop it.
fn drop_slot_left_behind(sub: &str, why: &str) {
    assert_eq!(
        slots_on_source(source(), sub),
        vec![sub.to_string()],
        "{why}"
    );
    source()
        .client("postgres")
        .execute("SELECT pg_drop_replication_slot($1)", &[&sub])
        .expect("drop the slot left behind");
}

#[test]
fn errors_of_other_utility_statements_reach_the_client_intact() {
    // livesync's ProcessUtility hook (it watches for DROP EXTENSION livesync) sees every
    // utility statement run on the target. Errors raised inside them must reach the client
    // exactly as without livesync: SQLSTATE, detail, constraint and table names, the error
    // position, COPY's context line, and no Rust backtrace.
    use livesync_e2e::postgres::error::{ErrorPosition, SqlState};
    use std::io::Write;
    let tgt = Db::fresh(target(), "hookpass");
    let mut c = tgt.client();
    c.batch_execute("CREATE TABLE u (id int PRIMARY KEY); INSERT INTO u VALUES (1)")
        .unwrap();

    let copy = (|| {
        let mut w = c.copy_in("COPY u FROM STDIN")?;
        w.write_all(b"2\n1\n").expect("write to COPY");
        w.finish()
    })();
    let e = copy.expect_err("COPY of a duplicate key must fail");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::UNIQUE_VIOLATION, "{db:?}");
    assert_eq!(db.detail(), Some("Key (id)=(1) already exists."), "{db:?}");
    assert_eq!(db.constraint(), Some("u_pkey"), "{db:?}");
    assert_eq!(db.table(), Some("u"), "{db:?}");
    assert!(
        db.where_().is_some_and(|w| w.contains("COPY u, line 2")),
        "{db:?}"
    );

    let e = c
        .batch_execute("CREATE TABLE x (a no_such_type)")
        .expect_err("an unknown type must fail");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code(), &SqlState::UNDEFINED_OBJECT, "{db:?}");
    assert_eq!(db.position(), Some(&ErrorPosition::Original(19)), "{db:?}");
    assert_eq!(db.detail(), None, "{db:?}");
    assert_eq!(db.where_(), None, "{db:?}");
}
