//! Security (issue 4): the source password never shows (views, pg_stat_activity on both sides,
//! server logs, error messages), non-superusers cannot operate syncs or read the connection
//! strings, and TLS with certificate verification works end to end.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use livesync_e2e::postgres::NoTls;
use livesync_e2e::*;

const PASSWORD: &str = "Sekr1t-Pa55-xyzzy";
const WRONG_PASSWORD: &str = "Wr0ng-Pa55-plugh";
const PASSFILE_PASSWORD: &str = "Pa55file-Only-quux";

/// A source that demands SCRAM passwords over TCP.
fn pw_source() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        let c = Cluster::new_private_with(
            ClusterSpec::new(Kind::Source, "pwsrc")
                .conf("log_connections = on")
                .conf("log_statement = 'all'")
                .conf("log_replication_commands = on")
                .hba("host all all 127.0.0.1/32 scram-sha-256")
                .hba("host replication all 127.0.0.1/32 scram-sha-256"),
        );
        // Not logged (log_statement = all would put the passwords in the log we grep).
        let mut cl = c.client("postgres");
        cl.batch_execute("SET log_statement = 'none'; SET password_encryption = 'scram-sha-256'")
            .unwrap();
        cl.batch_execute(&format!(
            "CREATE ROLE sec_user LOGIN REPLICATION PASSWORD '{PASSWORD}'; \
             CREATE ROLE pf_user LOGIN REPLICATION PASSWORD '{PASSFILE_PASSWORD}'"
        ))
        .unwrap();
        c
    })
}

fn grant_db(src: &Db) {
    src.exec("GRANT SELECT ON ALL TABLES IN SCHEMA public TO sec_user, pf_user");
}

fn assert_no_secret(what: &str, text: &str) {
    for pw in [PASSWORD, WRONG_PASSWORD, PASSFILE_PASSWORD] {
        assert!(
            !text.contains(pw),
            "the password {pw:?} appears in {what}:\n{}",
            text.lines()
                .filter(|l| l.contains(pw))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// Everything a user can see about the syncs and connections, as text.
fn visible_state(tgt: &Db, src_cluster: &Cluster) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (what, sql) in [
        (
            "livesync.subscription",
            "SELECT coalesce(string_agg(s::text, E'\\n'), '') FROM livesync.subscription s",
        ),
        (
            "livesync.subscription_rel",
            "SELECT coalesce(string_agg(s::text, E'\\n'), '') FROM livesync.subscription_rel s",
        ),
        (
            "_ts_live_sync.subscription_rel",
            "SELECT coalesce(string_agg(s::text, E'\\n'), '') FROM _ts_live_sync.subscription_rel s",
        ),
        (
            "target pg_stat_activity",
            "SELECT coalesce(string_agg(a::text, E'\\n'), '') FROM pg_stat_activity a",
        ),
    ] {
        out.push((what.to_string(), tgt.query_one::<String>(sql)));
    }
    for (what, sql) in [
        (
            "source pg_stat_activity",
            "SELECT coalesce(string_agg(a::text, E'\\n'), '') FROM pg_stat_activity a",
        ),
        (
            "source pg_stat_replication",
            "SELECT coalesce(string_agg(a::text, E'\\n'), '') FROM pg_stat_replication a",
        ),
    ] {
        out.push((
            what.to_string(),
            src_cluster.query_one::<String>("postgres", sql),
        ));
    }
    out
}

fn write_passfile(dir: &Path, port: u16) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let path = dir.join("pgpass");
    std::fs::write(
        &path,
        format!("127.0.0.1:{port}:*:pf_user:{PASSFILE_PASSWORD}\n"),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Readable by the target's postgres OS user, who runs livesync's workers.
    target_install().chown(&path);
    path
}

#[test]
fn password_never_shown() {
    let sc = pw_source();
    let tgt = Db::fresh(target(), "secret_tgt");
    let passdir = run_dir().join(format!("livesync-e2e-pass-{}", std::process::id()));
    let passfile = write_passfile(&passdir, sc.port());
    let mut subs = Vec::new();
    let mut guards = Vec::new();
    for how in ["uri", "keyvalue", "passfile"] {
        let src = Db::fresh(sc, &format!("secret_src_{how}"));
        src.exec(&format!(
            "{}; {}; CREATE PUBLICATION analytics FOR TABLE t",
            kv_table_ddl("t"),
            kv_fill_sql("t", 100)
        ));
        grant_db(&src);
        let ci = match how {
            "uri" => sc.uri_as("sec_user", Some(PASSWORD), &src.name),
            "keyvalue" => format!(
                "host=127.0.0.1 port={} dbname={} user=sec_user password='{PASSWORD}'",
                sc.port(),
                src.name
            ),
            _ => format!(
                "host=127.0.0.1 port={} dbname={} user=pf_user passfile={}",
                sc.port(),
                src.name,
                passfile.display()
            ),
        };
        // One target database per sync (the source tables are all called t).
        let tdb = Db::fresh(target(), &format!("secret_tgt_{how}"));
        tdb.exec(&kv_table_ddl("t"));
        let sub = format!("secret_{how}");
        guards.push(start_sync(&tdb, &ci, "analytics", &sub));
        let w = BackgroundWriter::kv(&src, "t", 101);
        std::thread::sleep(Duration::from_millis(500));
        w.stop();
        assert_synced(&src, &tdb, &sub, &["t"]);
        for (what, text) in visible_state(&tdb, sc) {
            assert_no_secret(&format!("{what} (sync via {how})"), &text);
        }
        let shown: String = tdb.query_one(&format!(
            "SELECT source FROM livesync.subscription WHERE subname = '{sub}'"
        ));
        eprintln!("[e2e] {how}: livesync.subscription.source = {shown}");
        // The connection string itself is kept (superusers only, in livesync.sync).
        let stored: String = tdb.query_one(&format!(
            "SELECT source FROM livesync.sync WHERE subname = '{sub}'"
        ));
        assert_eq!(stored, ci);
        subs.push((sub, tdb));
    }
    // A failing start with a wrong password, as URI and key=value.
    for (ci, sub) in [
        (
            sc.uri_as("sec_user", Some(WRONG_PASSWORD), "postgres"),
            "wrong_pw_uri",
        ),
        (
            format!(
                "host=127.0.0.1 port={} dbname=postgres user=sec_user password={WRONG_PASSWORD}",
                sc.port()
            ),
            "wrong_pw_kv",
        ),
        (
            format!(
                "host=127.0.0.1 port={} dbname=postgres user=sec_user passfile={}",
                sc.port(),
                passfile.display()
            ),
            "wrong_pw_passfile",
        ),
    ] {
        let res = try_livesync_start(&tgt, &ci, "analytics", Some(sub), None);
        let _g = SyncGuard::new(&tgt, sub);
        let text = assert_sqlstate(res, &["28P01", "28000", "08"], sub);
        eprintln!("[e2e] {sub}: {text}");
        assert_no_secret(&format!("the error of livesync_start ({sub})"), &text);
    }
    for (what, text) in visible_state(&tgt, sc) {
        assert_no_secret(&what, &text);
    }
    for (sub, tdb) in &subs {
        for (what, text) in visible_state(tdb, sc) {
            assert_no_secret(&format!("{what} (sync {sub}, at the end)"), &text);
        }
    }
    // The server logs: the target's and the source's (log_statement = all there).
    std::thread::sleep(Duration::from_millis(500));
    for (what, log) in [
        ("the target server log", target().logfile()),
        ("the source server log", sc.logfile()),
    ] {
        let text = std::fs::read_to_string(log).unwrap();
        assert_no_secret(&format!("{what} ({})", log.display()), &text);
    }
    for (sub, tdb) in &subs {
        livesync_drop(tdb, sub);
    }
    drop(guards);
    let _ = std::fs::remove_dir_all(&passdir);
}

#[test]
fn non_superuser_cannot_operate_or_read_the_connection_strings() {
    let src = Db::fresh(source(), "nonsuper_src");
    src.exec(&format!(
        "{}; {}; CREATE PUBLICATION analytics FOR TABLE t",
        kv_table_ddl("t"),
        kv_fill_sql("t", 100)
    ));
    let tgt = Db::fresh(target(), "nonsuper_tgt");
    tgt.exec(&kv_table_ddl("t"));
    let sub = "nonsuper";
    let _g = start_sync(&tgt, &src.uri(), "analytics", sub);
    assert_synced(&src, &tgt, sub, &["t"]);
    target().exec(
        "postgres",
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lowly') THEN \
         CREATE ROLE lowly LOGIN NOSUPERUSER; END IF; END $$",
    );
    let pid_before = sub_info(&tgt, sub).unwrap().pid;
    let mut cfg = tgt.config();
    cfg.user("lowly");
    let mut c = cfg.connect(NoTls).expect("connect as lowly");
    let uri = src.uri();
    for (sql, what) in [
        (
            format!("SELECT livesync_start('{uri}', 'analytics', 'lowly_sync')"),
            "livesync_start",
        ),
        (format!("SELECT livesync_stop('{sub}')"), "livesync_stop"),
        (format!("SELECT livesync_drop('{sub}')"), "livesync_drop"),
        (
            format!("SELECT livesync_drop('{sub}', false)"),
            "livesync_drop(.., false)",
        ),
        (
            "SELECT * FROM livesync.sync".to_string(),
            "reading livesync.sync",
        ),
        (
            "SELECT * FROM livesync.sync_rel".to_string(),
            "reading livesync.sync_rel",
        ),
        // Not the extension's owner: PostgreSQL refuses, and livesync must not have
        // stopped the sync or dropped its slot before that.
        ("DROP EXTENSION livesync".to_string(), "DROP EXTENSION"),
    ] {
        let res = c.batch_execute(&sql);
        let text = assert_sqlstate(res, &["42501"], &format!("{what} as a non-superuser"));
        eprintln!("[e2e] lowly: {what}: {text}");
    }
    for sql in [
        "SELECT count(*) FROM livesync.subscription",
        "SELECT count(*) FROM livesync.subscription_rel",
        "SELECT count(*) FROM _ts_live_sync.subscription_rel",
    ] {
        let n: i64 = c
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("{sql} as lowly: {}", err_text(&e)))
            .get(0);
        assert!(n >= 1, "{sql} as lowly shows nothing");
    }
    let info = sub_info(&tgt, sub).unwrap();
    assert!(
        info.enabled && info.pid.is_some() && info.pid == pid_before,
        "lowly changed the sync (apply worker was {pid_before:?}): {info:?}"
    );
    assert!(sub_info(&tgt, "lowly_sync").is_none());
    assert_eq!(
        slots_on_source(source(), "lowly_sync"),
        Vec::<String>::new()
    );
    assert_eq!(slots_on_source(source(), sub), vec![sub.to_string()]);
    src.exec("INSERT INTO t SELECT g, g * 10, md5(g::text) FROM generate_series(101, 200) g");
    assert_synced(&src, &tgt, sub, &["t"]);
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[test]
fn tls_verify_full_works_and_a_wrong_ca_is_refused() {
    let certs = run_dir().join(format!("livesync-e2e-certs-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&certs);
    make_test_certs(&certs);
    let sc = Cluster::new_private_with(
        ClusterSpec::new(Kind::Source, "tlssrc")
            .conf("ssl = on")
            .conf(&format!(
                "ssl_cert_file = '{}'",
                certs.join("server.crt").display()
            ))
            .conf(&format!(
                "ssl_key_file = '{}'",
                certs.join("server.key").display()
            ))
            // TCP only with TLS.
            .hba("hostnossl all all 127.0.0.1/32 reject")
            .hba("hostnossl replication all 127.0.0.1/32 reject"),
    );
    let src = Db::fresh(&sc, "tls_src");
    src.exec(&format!(
        "{}; {}; CREATE PUBLICATION analytics FOR TABLE t",
        kv_table_ddl("t"),
        kv_fill_sql("t", 1_000)
    ));
    let tgt = Db::fresh(target(), "tls_tgt");
    tgt.exec(&kv_table_ddl("t"));
    let ca = certs.join("ca.crt");
    let other = certs.join("otherca.crt");

    // Without TLS the source refuses (proves the pg_hba rules are in force).
    let res = try_livesync_start(
        &tgt,
        &format!("{} sslmode=disable", src.conninfo()),
        "analytics",
        Some("tls_off"),
        None,
    );
    let _g0 = SyncGuard::new(&tgt, "tls_off");
    let text = assert_sqlstate(
        res,
        &["28", "08"],
        "sslmode=disable against a TLS-only source",
    );
    eprintln!("[e2e] sslmode=disable: {text}");

    // A wrong CA is refused, with a message about the certificate.
    let res = try_livesync_start(
        &tgt,
        &format!(
            "host=localhost hostaddr=127.0.0.1 port={} dbname={} user=postgres \
             sslmode=verify-full sslrootcert={}",
            sc.port(),
            src.name,
            other.display()
        ),
        "analytics",
        Some("tls_wrong_ca"),
        None,
    );
    let _g1 = SyncGuard::new(&tgt, "tls_wrong_ca");
    let text = assert_sqlstate(res, &["08"], "verify-full with the wrong CA");
    eprintln!("[e2e] wrong CA: {text}");
    assert!(
        text.to_lowercase().contains("certificate"),
        "the error should mention the certificate: {text}"
    );
    assert!(text.contains("\nHINT: "), "no hint: {text}");
    assert!(sub_info(&tgt, "tls_wrong_ca").is_none());
    assert_eq!(slots_on_source(&sc, "tls_wrong_ca"), Vec::<String>::new());

    // verify-full with the right CA: copy, changes, every connection encrypted.
    let sub = "tls_ok";
    let ci = format!(
        "postgres://postgres@localhost:{}/{}?sslmode=verify-full&sslrootcert={}",
        sc.port(),
        src.name,
        ca.display()
    );
    let _g = start_sync(&tgt, &ci, "analytics", sub);
    wait_for_tables(&tgt, sub, &["public.t"], 'r');
    let w = BackgroundWriter::kv(&src, "t", 1_001);
    std::thread::sleep(Duration::from_secs(2));
    let ssl_rows: Vec<(String, bool)> = sc
        .client("postgres")
        .query(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.datname = $1 AND a.backend_type = 'walsender'",
            &[&src.name],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    w.stop();
    assert!(
        !ssl_rows.is_empty(),
        "no walsender of the sync on the source"
    );
    assert!(
        ssl_rows.iter().all(|(_, ssl)| *ssl),
        "a connection of the sync is not encrypted: {ssl_rows:?}"
    );
    assert_synced(&src, &tgt, sub, &["t"]);
    livesync_drop(&tgt, sub);
    assert_eq!(slots_on_source(&sc, sub), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(&certs);
}
