//! Integration tests of the source client (`src/source/`) against real servers of the
//! source's PostgreSQL major (`LIVESYNC_E2E_SOURCE_PG`, see the harness's `Install`).
//!
//! Self-contained: this file starts its own two small clusters (one with SSL and logical
//! replication, one with `ssl=off` and a short `wal_sender_timeout`), as the `postgres` OS user
//! when run as root, with a CA and server certificate made by the `openssl` CLI. A watchdog
//! shell stops each cluster and removes its directory when the test process exits.

#[path = "../../../src/source/mod.rs"]
#[allow(dead_code, unused_imports)]
mod source;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use source::{ConnInfo, Connection, MapEnv, ReplMessage, SourceError};

// ---------------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------------

const PW: &str = "s3cr3t pw'\\";

struct Pg {
    dir: PathBuf,
    port: u16,
}

impl Pg {
    fn sock(&self) -> PathBuf {
        self.dir.join("sock")
    }
    fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }
    /// key=value conninfo over TCP to 127.0.0.1.
    fn tcp(&self, extra: &str) -> String {
        format!("host=127.0.0.1 port={} dbname=postgres {extra}", self.port)
    }
    /// key=value conninfo over the Unix socket as the superuser.
    fn unix(&self, extra: &str) -> String {
        format!(
            "host={} port={} user=postgres dbname=postgres {extra}",
            self.sock().display(),
            self.port
        )
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A server program of the source's install, as its `postgres` OS user.
fn as_postgres(program: &str) -> Command {
    livesync_e2e::source_install().server(program)
}

fn run(mut c: Command, what: &str) -> String {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn chown_r(p: &Path) {
    if is_root() {
        let (uid, gid) = livesync_e2e::source_install().postgres_ids();
        let mut c = Command::new("chown");
        c.arg("-R").arg(format!("{uid}:{gid}")).arg(p);
        run(c, "chown");
    }
}

// The watchdog deliberately outlives this process: it is never waited for.
#[allow(clippy::zombie_processes)]
fn start_cluster(name: &str, conf: &[&str], ssl: bool) -> Pg {
    // The harness's run directory: the same path for the server, also in a chroot.
    let dir = livesync_e2e::run_dir().join(format!("source-client-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("sock")).unwrap();
    let data = dir.join("data");
    let port = free_port();
    if ssl {
        livesync_e2e::make_test_certs(&dir.join("certs"));
    }
    chown_r(&dir);
    let mut c = as_postgres("initdb");
    c.arg("-D")
        .arg(&data)
        .args(["-U", "postgres", "-A", "trust", "-N", "--no-instructions"])
        .env("LC_ALL", "C");
    run(c, "initdb");

    let mut text = format!(
        "\nport = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
         wal_level = logical\nmax_replication_slots = 30\nmax_wal_senders = 30\nfsync = off\n\
         ssl = {}\n",
        dir.join("sock").display(),
        if ssl { "on" } else { "off" }
    );
    if ssl {
        let certs = dir.join("certs");
        text += &format!(
            "ssl_cert_file = '{}'\nssl_key_file = '{}'\n",
            certs.join("server.crt").display(),
            certs.join("server.key").display()
        );
    }
    for l in conf {
        text += l;
        text += "\n";
    }
    let conf_path = data.join("postgresql.conf");
    let mut existing = std::fs::read_to_string(&conf_path).unwrap();
    existing += &text;
    std::fs::write(&conf_path, existing).unwrap();
    std::fs::write(
        data.join("pg_hba.conf"),
        "local all all trust\n\
         local replication all trust\n\
         host all u_md5 127.0.0.1/32 md5\n\
         host all u_scram 127.0.0.1/32 scram-sha-256\n\
         host all u_clear 127.0.0.1/32 password\n\
         host replication u_scram 127.0.0.1/32 scram-sha-256\n\
         host all all 127.0.0.1/32 trust\n\
         host replication all 127.0.0.1/32 trust\n",
    )
    .unwrap();
    chown_r(&dir);
    let mut c = as_postgres("pg_ctl");
    c.arg("-D")
        .arg(&data)
        .arg("-l")
        .arg(dir.join("log"))
        .args(["-w", "-t", "60", "start"]);
    run(c, "pg_ctl start");

    // Watchdog: stop the cluster (immediate shutdown: SIGQUIT to the postmaster) and remove
    // it when this test process is gone.
    let script = format!(
        "while [ -d /proc/{pid} ]; do sleep 1; done; p=$(head -1 '{data}/postmaster.pid' 2>/dev/null); \
         if [ -n \"$p\" ] && grep -q postgres /proc/$p/cmdline 2>/dev/null; then kill -QUIT $p; sleep 2; fi; rm -rf '{dir}'",
        pid = std::process::id(),
        data = data.display(),
        dir = dir.display()
    );
    let mut w = Command::new("/bin/sh");
    w.arg("-c").arg(script);
    w.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    w.spawn().expect("spawn watchdog");

    let pg = Pg { dir, port };
    block_on(async {
        let mut c = Connection::connect(&ConnInfo::parse(&pg.unix("")).unwrap(), false, "setup")
            .await
            .expect("connect as superuser over the Unix socket");
        let pw = PW.replace('\'', "''");
        let pw = if pw.contains('\\') {
            format!("E'{}'", pw.replace('\\', "\\\\"))
        } else {
            format!("'{pw}'")
        };
        for sql in [
            "SET password_encryption = 'md5'".to_string(),
            format!("CREATE ROLE u_md5 LOGIN PASSWORD {pw}"),
            "SET password_encryption = 'scram-sha-256'".to_string(),
            format!("CREATE ROLE u_scram LOGIN REPLICATION SUPERUSER PASSWORD {pw}"),
            format!("CREATE ROLE u_clear LOGIN PASSWORD {pw}"),
        ] {
            c.simple_query(&sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        c.close().await;
    });
    pg
}

fn main_pg() -> &'static Pg {
    static PG: OnceLock<Pg> = OnceLock::new();
    PG.get_or_init(|| start_cluster("main", &[], true))
}

/// ssl=off and a short wal_sender_timeout (keepalives with reply_requested come quickly).
fn plain_pg() -> &'static Pg {
    static PG: OnceLock<Pg> = OnceLock::new();
    PG.get_or_init(|| start_cluster("plain", &["wal_sender_timeout = '2s'"], false))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

async fn connect(s: &str) -> Result<Connection, SourceError> {
    Connection::connect(&ConnInfo::parse(s).unwrap(), false, "source_client_test").await
}

/// Connecting with `s` must fail with an error of the kind `is` accepts, `want` in its message.
async fn connect_fails(s: &str, want: &str, is: fn(&SourceError) -> bool) {
    let e = connect(s)
        .await
        .err()
        .unwrap_or_else(|| panic!("{s} must fail"));
    assert!(is(&e), "{s}: {e:?}");
    assert!(e.to_string().contains(want), "{s}: {e}");
}

async fn connect_repl(s: &str) -> Connection {
    Connection::connect(&ConnInfo::parse(s).unwrap(), true, "source_client_test")
        .await
        .unwrap_or_else(|e| panic!("replication connect {s}: {e}"))
}

async fn superuser(pg: &Pg) -> Connection {
    connect(&pg.unix("")).await.expect("superuser connection")
}

fn uniq(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

async fn one(c: &mut Connection, sql: &str) -> Option<String> {
    let rows = c
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.first().and_then(|r| r.get(0).map(str::to_string))
}

// ---------------------------------------------------------------------------------------------
// Startup and authentication
// ---------------------------------------------------------------------------------------------

#[test]
fn trust_unix_socket_and_parameters() {
    let pg = main_pg();
    block_on(async {
        let mut c = connect(&pg.unix("options='-c work_mem=7MB'"))
            .await
            .unwrap();
        let major = livesync_e2e::source_install().major.to_string();
        assert!(c.parameter("server_version").unwrap().starts_with(&major));
        assert_eq!(c.parameter("client_encoding"), Some("UTF8"));
        assert_eq!(c.parameter("DateStyle"), Some("ISO, MDY"));
        assert_eq!(c.parameter("IntervalStyle"), Some("postgres"));
        assert_eq!(c.parameter("application_name"), Some("source_client_test"));
        assert!(!c.is_tls());
        let pid = one(&mut c, "SELECT pg_backend_pid()").await.unwrap();
        assert_eq!(pid, c.backend_pid().to_string());
        assert_eq!(one(&mut c, "SHOW work_mem").await.as_deref(), Some("7MB"));
        assert_eq!(
            one(&mut c, "SHOW extra_float_digits").await.as_deref(),
            Some("3")
        );
        assert_eq!(
            one(&mut c, "SHOW bytea_output").await.as_deref(),
            Some("hex")
        );
        c.close().await;
    });
}

#[test]
fn trust_tcp_application_name_from_conninfo_wins() {
    let pg = main_pg();
    block_on(async {
        let mut c = connect(&pg.tcp("user=postgres sslmode=disable application_name=mine"))
            .await
            .unwrap();
        assert_eq!(
            one(
                &mut c,
                "SELECT application_name FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            )
            .await
            .as_deref(),
            Some("mine")
        );
        c.close().await;
    });
}

#[test]
fn md5_scram_cleartext_auth() {
    let pg = main_pg();
    let quoted = "'s3cr3t pw\\'\\\\'";
    block_on(async {
        for user in ["u_md5", "u_scram", "u_clear"] {
            for mode in ["disable", "require"] {
                let s = pg.tcp(&format!("user={user} password={quoted} sslmode={mode}"));
                let mut c = connect(&s)
                    .await
                    .unwrap_or_else(|e| panic!("{user}/{mode}: {e}"));
                assert_eq!(
                    one(&mut c, "SELECT current_user").await.as_deref(),
                    Some(user)
                );
                assert_eq!(c.is_tls(), mode == "require");
                c.close().await;
            }
        }
        // The same through a URI with a percent-encoded password.
        let uri = format!(
            "postgresql://u_scram:s3cr3t%20pw%27%5C@127.0.0.1:{}/postgres?sslmode=prefer",
            pg.port
        );
        let mut c = connect(&uri).await.unwrap();
        assert!(c.is_tls(), "sslmode=prefer uses SSL when the server has it");
        c.simple_query("SELECT 1").await.unwrap();
        c.close().await;
    });
}

#[test]
fn wrong_or_missing_password() {
    let pg = main_pg();
    block_on(async {
        for user in ["u_md5", "u_scram", "u_clear"] {
            let e = connect(&pg.tcp(&format!("user={user} password=wrong sslmode=disable")))
                .await
                .err()
                .expect("wrong password must fail");
            assert_eq!(e.sqlstate(), Some("28P01"), "{user}: {e}");
            assert!(
                e.to_string().contains("password authentication failed"),
                "{e}"
            );
            assert!(!e.to_string().contains("wrong"), "{e}");

            let e = connect(&pg.tcp(&format!(
                "user={user} sslmode=disable passfile=/nonexistent"
            )))
            .await
            .err()
            .expect("missing password must fail");
            assert!(matches!(e, SourceError::Auth(_)), "{user}: {e:?}");
            assert!(e.to_string().contains("no password supplied"), "{e}");
        }
    });
}

#[test]
fn passfile_supplies_password() {
    let pg = main_pg();
    let f = std::env::temp_dir().join(uniq("pgpass"));
    std::fs::write(
        &f,
        format!("127.0.0.1:{}:*:u_scram:s3cr3t pw'\\\\\n", pg.port),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
    block_on(async {
        let mut c = connect(&pg.tcp(&format!("user=u_scram passfile={}", f.display())))
            .await
            .unwrap();
        assert_eq!(
            one(&mut c, "SELECT current_user").await.as_deref(),
            Some("u_scram")
        );
        c.close().await;
    });
    std::fs::remove_file(&f).unwrap();
}

#[test]
fn connection_refused_and_unknown_host() {
    block_on(async {
        let port = free_port();
        let e = connect(&format!(
            "host=127.0.0.1 port={port} user=u sslmode=disable"
        ))
        .await
        .err()
        .unwrap();
        assert!(matches!(e, SourceError::Connect { .. }), "{e:?}");
        assert!(e.to_string().contains(&format!("port {port}")), "{e}");
        let e = connect("host=no-such-host.invalid user=u")
            .await
            .err()
            .unwrap();
        assert!(matches!(e, SourceError::Connect { .. }), "{e:?}");
        let e = connect("host=/nonexistent/dir user=u").await.err().unwrap();
        assert!(matches!(e, SourceError::Connect { .. }), "{e:?}");
    });
}

/// A listener that accepts TCP connections and never answers.
fn silent_listener() -> (u16, std::thread::JoinHandle<()>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        l.set_nonblocking(true).unwrap();
        let mut held = Vec::new();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok((s, _)) = l.accept() {
                held.push(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    (port, h)
}

#[test]
fn connect_timeout_on_silent_server() {
    let (port, _h) = silent_listener();
    block_on(async {
        for mode in ["disable", "prefer", "require"] {
            let t = Instant::now();
            let e = connect(&format!(
                "host=127.0.0.1 port={port} user=u connect_timeout=2 sslmode={mode}"
            ))
            .await
            .err()
            .unwrap();
            let el = t.elapsed();
            assert!(matches!(e, SourceError::Timeout { secs: 2, .. }), "{e:?}");
            assert!(
                el >= Duration::from_millis(1900) && el < Duration::from_secs(4),
                "{el:?}"
            );
        }
        // Without connect_timeout: the 10 s default.
        let t = Instant::now();
        let e = connect(&format!("host=127.0.0.1 port={port} user=u"))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, SourceError::Timeout { secs: 10, .. }), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(12));
    });
}

// ---------------------------------------------------------------------------------------------
// TLS
// ---------------------------------------------------------------------------------------------

#[test]
fn tls_modes() {
    let pg = main_pg();
    let ca = pg.certs().join("ca.crt");
    let other = pg.certs().join("otherca.crt");
    block_on(async {
        let ok = |s: String| async move {
            let mut c = connect(&s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
            assert!(c.is_tls(), "{s}");
            assert_eq!(
                one(
                    &mut c,
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                )
                .await
                .as_deref(),
                Some("t")
            );
            c.close().await;
        };
        let fail = |s: String, want: &'static str| async move {
            connect_fails(&s, want, |e| matches!(e, SourceError::Tls(_))).await
        };
        let p = pg.port;
        ok(format!(
            "host=127.0.0.1 port={p} user=postgres sslmode=require"
        ))
        .await;
        ok(format!(
            "host=localhost port={p} user=postgres sslmode=verify-full sslrootcert={}",
            ca.display()
        ))
        .await;
        ok(format!(
            "host=127.0.0.1 port={p} user=postgres sslmode=verify-full sslrootcert={}",
            ca.display()
        ))
        .await;
        ok(format!("host=wrong.example hostaddr=127.0.0.1 port={p} user=postgres sslmode=verify-ca sslrootcert={}", ca.display())).await;
        // Wrong CA.
        fail(
            format!(
                "host=localhost port={p} user=postgres sslmode=verify-full sslrootcert={}",
                other.display()
            ),
            "certificate verify failed",
        )
        .await;
        fail(
            format!(
                "host=localhost port={p} user=postgres sslmode=verify-ca sslrootcert={}",
                other.display()
            ),
            "certificate verify failed",
        )
        .await;
        // require + sslrootcert behaves like verify-ca.
        fail(
            format!(
                "host=localhost port={p} user=postgres sslmode=require sslrootcert={}",
                other.display()
            ),
            "certificate verify failed",
        )
        .await;
        // Wrong host name.
        fail(
            format!("host=wrong.example hostaddr=127.0.0.1 port={p} user=postgres sslmode=verify-full sslrootcert={}", ca.display()),
            "does not match host name",
        )
        .await;
        // Missing root certificate file.
        fail(
            format!("host=localhost port={p} user=postgres sslmode=verify-full sslrootcert=/nonexistent/root.crt"),
            "/nonexistent/root.crt",
        )
        .await;
    });
}

#[test]
fn tls_against_server_without_ssl() {
    let pg = plain_pg();
    block_on(async {
        let e = connect(&pg.tcp("user=postgres sslmode=require"))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, SourceError::Tls(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("server does not support SSL, but SSL was required"),
            "{e}"
        );
        for mode in ["prefer", "allow"] {
            let mut c = connect(&pg.tcp(&format!("user=postgres sslmode={mode}")))
                .await
                .unwrap();
            assert!(!c.is_tls());
            assert_eq!(one(&mut c, "SELECT 1").await.as_deref(), Some("1"));
            c.close().await;
        }
    });
}

// ---------------------------------------------------------------------------------------------
// Queries and COPY
// ---------------------------------------------------------------------------------------------

#[test]
fn simple_query_results_and_errors() {
    let pg = main_pg();
    block_on(async {
        let mut c = superuser(pg).await;
        let rows = c
            .simple_query(
                "SELECT 1 AS a; SELECT 'x' AS b, NULL::text AS c UNION ALL SELECT 'y', 'z'",
            )
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].len(), 2);
        assert_eq!(rows[0].get_by_name("b"), Some("x"));
        assert_eq!(rows[0].get(1), None);
        assert_eq!(rows[1].get_by_name("c"), Some("z"));
        assert!(c.simple_query("").await.unwrap().is_empty());
        assert!(c
            .simple_query("SET work_mem = '8MB'")
            .await
            .unwrap()
            .is_empty());
        let e = c.simple_query("SELECT 1/0").await.err().unwrap();
        assert_eq!(e.sqlstate(), Some("22012"));
        assert_eq!(e.to_string(), "division by zero");
        assert!(!e.is_fatal());
        // Still usable.
        assert_eq!(one(&mut c, "SELECT 'ok'").await.as_deref(), Some("ok"));
        let e = c
            .copy_out("COPY no_such_table TO STDOUT")
            .await
            .err()
            .unwrap();
        assert_eq!(e.sqlstate(), Some("42P01"));
        let e = c.copy_out("SELECT 1").await.err().unwrap();
        assert!(matches!(e, SourceError::Protocol(_)), "{e:?}");
        assert_eq!(
            one(&mut c, "SELECT 'still ok'").await.as_deref(),
            Some("still ok")
        );
        assert_eq!(
            one(
                &mut c,
                "SELECT '2024-01-02 03:04:05+00'::timestamptz AT TIME ZONE 'UTC'"
            )
            .await
            .as_deref(),
            Some("2024-01-02 03:04:05")
        );
        c.close().await;
    });
}

fn expected_copy_text(n: usize) -> String {
    let mut s = String::new();
    for i in 1..=n {
        if i % 10 == 0 {
            s += &format!("{i}\t\\N\n");
        } else {
            s += &format!("{i}\trow {i} tab\\there 'q' \\\\ ü\n");
        }
    }
    s
}

#[test]
fn copy_out_returns_exactly_the_rows() {
    let pg = main_pg();
    // Qualified: every connection of the client has an empty search_path.
    let t = format!("public.{}", uniq("copy_t"));
    block_on(async {
        let mut c = superuser(pg).await;
        c.simple_query(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v text);
             INSERT INTO {t} SELECT i, CASE WHEN i % 10 = 0 THEN NULL ELSE 'row ' || i || E' tab\\there ''q'' \\\\ ü' END
               FROM generate_series(1, 5000) i"
        ))
        .await
        .unwrap();
        let mut out = c
            .copy_out(&format!("COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT"))
            .await
            .unwrap();
        let mut data = Vec::new();
        let mut chunks = 0;
        while let Some(chunk) = out.next_chunk().await.unwrap() {
            data.extend_from_slice(&chunk);
            chunks += 1;
        }
        assert!(out.next_chunk().await.unwrap().is_none());
        assert_eq!(chunks, 5000, "one CopyData per row");
        assert_eq!(String::from_utf8(data).unwrap(), expected_copy_text(5000));

        // A COPY abandoned midway: the next command still works.
        {
            let mut out = c.copy_out(&format!("COPY {t} TO STDOUT")).await.unwrap();
            assert!(out.next_chunk().await.unwrap().is_some());
        }
        assert_eq!(
            one(&mut c, &format!("SELECT count(*) FROM {t}"))
                .await
                .as_deref(),
            Some("5000")
        );
        c.simple_query(&format!("DROP TABLE {t}")).await.unwrap();
        c.close().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Replication
// ---------------------------------------------------------------------------------------------

/// Reads messages until `pred` has seen what it wants, answering keepalives, within `secs`.
async fn stream_until(
    c: &mut Connection,
    secs: u64,
    mut pred: impl FnMut(&[u8]) -> bool,
) -> (usize, u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut n = 0;
    let mut last_end = 0;
    loop {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for replication data"
        );
        match tokio::time::timeout(Duration::from_secs(1), c.next_replication_message()).await {
            Err(_) => continue,
            Ok(Err(e)) => panic!("replication stream: {e}"),
            Ok(Ok(ReplMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            })) => {
                if reply_requested {
                    c.send_standby_status(last_end, last_end, last_end, false)
                        .await
                        .unwrap();
                }
                let _ = wal_end;
            }
            Ok(Ok(ReplMessage::XLogData { wal_end, data, .. })) => {
                n += 1;
                last_end = last_end.max(wal_end);
                if pred(&data) {
                    return (n, last_end);
                }
            }
        }
    }
}

fn lsn_to_u64(s: &str) -> u64 {
    let (a, b) = s.split_once('/').unwrap();
    (u64::from_str_radix(a, 16).unwrap() << 32) | u64::from_str_radix(b, 16).unwrap()
}

/// Columns of a pgoutput Insert message (text format, proto 1/2, no streaming xid).
fn parse_insert(d: &[u8]) -> Vec<String> {
    assert_eq!(d[0], b'I');
    assert_eq!(d[5], b'N');
    let n = u16::from_be_bytes([d[6], d[7]]) as usize;
    let mut pos = 8;
    let mut out = Vec::new();
    for _ in 0..n {
        assert_eq!(d[pos], b't');
        let len = u32::from_be_bytes(d[pos + 1..pos + 5].try_into().unwrap()) as usize;
        out.push(String::from_utf8(d[pos + 5..pos + 5 + len].to_vec()).unwrap());
        pos += 5 + len;
    }
    assert_eq!(pos, d.len());
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn identify_system_slot_stream_and_keepalive() {
    let pg = main_pg();
    // Qualified: every connection of the client has an empty search_path.
    let t = format!("public.{}", uniq("repl_t"));
    let slot = uniq("s");
    let publ = uniq("p");
    block_on(async {
        let mut su = superuser(pg).await;
        su.simple_query(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text); CREATE PUBLICATION {publ} FOR TABLE {t}"))
            .await
            .unwrap();

        let ca = pg.certs().join("ca.crt");
        let mut r = connect_repl(&pg.tcp(&format!(
            "user=u_scram password='s3cr3t pw\\'\\\\' sslmode=verify-full host=localhost sslrootcert={}",
            ca.display()
        )))
        .await;
        let rows = r.simple_query("IDENTIFY_SYSTEM").await.unwrap();
        assert_eq!(rows.len(), 1);
        assert!(rows[0]
            .get_by_name("systemid")
            .unwrap()
            .parse::<u64>()
            .is_ok());
        assert_eq!(rows[0].get_by_name("timeline"), Some("1"));
        assert!(rows[0].get_by_name("xlogpos").unwrap().contains('/'));
        assert_eq!(rows[0].get_by_name("dbname"), Some("postgres"));

        let rows = r
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'nothing')"
            ))
            .await
            .unwrap();
        assert_eq!(rows[0].get_by_name("slot_name"), Some(slot.as_str()));
        assert_eq!(rows[0].get_by_name("output_plugin"), Some("pgoutput"));

        // Errors before streaming keep the connection usable.
        let e = r
            .start_replication(&format!(
                "START_REPLICATION SLOT no_such_slot LOGICAL 0/0 (proto_version '2', publication_names '{publ}')"
            ))
            .await
            .err()
            .unwrap();
        assert_eq!(e.sqlstate(), Some("42704"), "{e}");

        r.start_replication(&format!(
            "START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '2', publication_names '{publ}')"
        ))
        .await
        .unwrap();
        assert!(matches!(
            r.simple_query("SELECT 1").await,
            Err(SourceError::Protocol(_))
        ));

        su.simple_query(&format!(
            "INSERT INTO {t} VALUES (42, 'hello from the source')"
        ))
        .await
        .unwrap();
        let mut kinds = Vec::new();
        let (_, end) = stream_until(&mut r, 30, |d| {
            kinds.push(d[0]);
            d[0] == b'C'
        })
        .await;
        assert_eq!(
            kinds,
            vec![b'B', b'R', b'I', b'C'],
            "begin, relation, insert, commit"
        );

        // Ask for a keepalive, then confirm the position and check the slot moved.
        r.send_standby_status(end, end, end, true).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "no keepalive");
            if let ReplMessage::Keepalive { wal_end, .. } =
                r.next_replication_message().await.unwrap()
            {
                assert!(wal_end >= end);
                break;
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let flushed = one(
                &mut su,
                &format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'"),
            )
            .await
            .unwrap();
            if lsn_to_u64(&flushed) >= end {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "confirmed_flush_lsn did not reach {end:X}: {flushed}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        // End the stream from our side; the connection can run commands again.
        r.end_replication().await.unwrap();
        r.simple_query(&format!("DROP_REPLICATION_SLOT {slot}"))
            .await
            .unwrap();
        r.close().await;
        su.simple_query(&format!("DROP PUBLICATION {publ}; DROP TABLE {t}"))
            .await
            .unwrap();
        su.close().await;
    });
}

#[test]
fn server_requested_keepalive_is_answered() {
    // wal_sender_timeout = 2s: unanswered, the walsender would drop us within 2 s.
    let pg = plain_pg();
    let slot = uniq("ka");
    let publ = uniq("p");
    block_on(async {
        let mut su = superuser(pg).await;
        su.simple_query(&format!("CREATE PUBLICATION {publ} FOR ALL TABLES"))
            .await
            .unwrap();
        let mut r = connect_repl(&pg.tcp("user=postgres")).await;
        r.simple_query(&format!(
            "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'nothing')"
        ))
        .await
        .unwrap();
        r.start_replication(&format!(
            "START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '2', publication_names '{publ}')"
        ))
        .await
        .unwrap();
        let start = Instant::now();
        let mut requested = 0;
        while start.elapsed() < Duration::from_secs(7) {
            match tokio::time::timeout(Duration::from_millis(500), r.next_replication_message())
                .await
            {
                Err(_) => {}
                Ok(Ok(ReplMessage::Keepalive {
                    wal_end,
                    reply_requested,
                    ..
                })) => {
                    if reply_requested {
                        requested += 1;
                        r.send_standby_status(wal_end, wal_end, wal_end, false)
                            .await
                            .unwrap();
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => panic!("stream broke after {:?}: {e}", start.elapsed()),
            }
        }
        assert!(
            requested >= 2,
            "the server asked for replies {requested} times"
        );
        r.end_replication().await.unwrap();
        r.simple_query(&format!("DROP_REPLICATION_SLOT {slot}"))
            .await
            .unwrap();
        r.close().await;
        su.simple_query(&format!("DROP PUBLICATION {publ}"))
            .await
            .unwrap();
    });
}

fn row_pad(i: usize) -> usize {
    (i * 7919) % 120_000
}

/// Cancel-safety: every call wrapped in a 1 ms timeout, all rows still arrive intact.
fn cancel_safety(pg: &Pg, conninfo: String) {
    // Qualified: every connection of the client has an empty search_path.
    let t = format!("public.{}", uniq("cs_t"));
    let slot = uniq("cs");
    let publ = uniq("p");
    const N: usize = 400;
    block_on(async {
        let mut su = superuser(pg).await;
        su.simple_query(&format!("CREATE TABLE {t} (id int PRIMARY KEY, v text); CREATE PUBLICATION {publ} FOR TABLE {t}"))
            .await
            .unwrap();
        let mut r = connect_repl(&conninfo).await;
        r.simple_query(&format!(
            "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'nothing')"
        ))
        .await
        .unwrap();
        r.start_replication(&format!(
            "START_REPLICATION SLOT {slot} LOGICAL 0/0 (proto_version '2', publication_names '{publ}')"
        ))
        .await
        .unwrap();
        // One transaction per row, rows up to ~120 kB, written while we read: messages arrive
        // in pieces, so many of the 1 ms timeouts cancel a read in the middle of a message.
        let sock = pg.unix("");
        let table = t.clone();
        let writer = std::thread::spawn(move || {
            block_on(async move {
                let mut w = connect(&sock).await.unwrap();
                for i in 1..=N {
                    w.simple_query(&format!(
                        "INSERT INTO {table} VALUES ({i}, 'v{i}' || repeat('x', {}) || 'end')",
                        row_pad(i)
                    ))
                    .await
                    .unwrap();
                    tokio::time::sleep(Duration::from_millis(3)).await;
                }
                w.simple_query(&format!("INSERT INTO {table} VALUES (-1, 'last')"))
                    .await
                    .unwrap();
                w.close().await;
            })
        });

        let mut next_id = 1usize;
        let mut timeouts = 0usize;
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut done = false;
        while !done {
            assert!(Instant::now() < deadline, "only got up to id {next_id}");
            match tokio::time::timeout(Duration::from_millis(1), r.next_replication_message()).await
            {
                Err(_) => timeouts += 1,
                Ok(Err(e)) => panic!("{e}"),
                Ok(Ok(ReplMessage::Keepalive {
                    wal_end,
                    reply_requested: true,
                    ..
                })) => {
                    r.send_standby_status(wal_end, wal_end, wal_end, false)
                        .await
                        .unwrap();
                }
                Ok(Ok(ReplMessage::Keepalive { .. })) => {}
                Ok(Ok(ReplMessage::XLogData { data, .. })) => {
                    if data[0] != b'I' {
                        continue;
                    }
                    if contains(&data, b"last") {
                        done = true;
                        continue;
                    }
                    let cols = parse_insert(&data);
                    assert_eq!(
                        cols[0],
                        next_id.to_string(),
                        "rows arrive in order, none lost"
                    );
                    let want = format!("v{next_id}{}end", "x".repeat(row_pad(next_id)));
                    assert_eq!(cols[1], want, "row {next_id}: value intact");
                    next_id += 1;
                }
            }
        }
        assert_eq!(next_id, N + 1);
        writer.join().unwrap();
        assert!(
            timeouts > 10,
            "the test did not cancel reads ({timeouts} timeouts)"
        );
        eprintln!("cancel safety: {timeouts} timeouts while streaming {N} rows");
        r.end_replication().await.unwrap();
        r.simple_query(&format!("DROP_REPLICATION_SLOT {slot}"))
            .await
            .unwrap();
        r.close().await;
        su.simple_query(&format!("DROP PUBLICATION {publ}; DROP TABLE {t}"))
            .await
            .unwrap();
    });
}

#[test]
fn cancel_safe_streaming_plain() {
    let pg = main_pg();
    cancel_safety(pg, pg.tcp("user=postgres sslmode=disable"));
}

#[test]
fn cancel_safe_streaming_tls() {
    let pg = main_pg();
    cancel_safety(pg, pg.tcp("user=postgres sslmode=require"));
}

#[test]
fn snapshot_copy_then_stream_from_consistent_point() {
    let pg = main_pg();
    // Qualified: every connection of the client has an empty search_path.
    let t = format!("public.{}", uniq("snap_t"));
    let slot = uniq("x");
    let publ = uniq("p");
    block_on(async {
        let mut su = superuser(pg).await;
        su.simple_query(&format!(
            "CREATE TABLE {t} (id int PRIMARY KEY, v text); CREATE PUBLICATION {publ} FOR TABLE {t};
             INSERT INTO {t} SELECT i, 'before ' || i FROM generate_series(1, 100) i"
        ))
        .await
        .unwrap();
        let mut r = connect_repl(&pg.tcp("user=postgres sslmode=require")).await;
        // READ ONLY: PostgreSQL 17+ requires it of SNAPSHOT 'use'.
        r.simple_query("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .unwrap();
        let rows = r
            .simple_query(&format!(
                "CREATE_REPLICATION_SLOT {slot} LOGICAL pgoutput (SNAPSHOT 'use')"
            ))
            .await
            .unwrap();
        let consistent = rows[0].get_by_name("consistent_point").unwrap().to_string();
        // Written after the slot's snapshot: not in the COPY, but in the stream.
        su.simple_query(&format!(
            "INSERT INTO {t} VALUES (101, 'after 101'); UPDATE {t} SET v = 'changed' WHERE id = 1"
        ))
        .await
        .unwrap();
        let mut out = r.copy_out(&format!("COPY {t} TO STDOUT")).await.unwrap();
        let mut text = Vec::new();
        while let Some(c) = out.next_chunk().await.unwrap() {
            text.extend_from_slice(&c);
        }
        let text = String::from_utf8(text).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_by_key(|l| l.split('\t').next().unwrap().parse::<i32>().unwrap());
        let expected: Vec<String> = (1..=100).map(|i| format!("{i}\tbefore {i}")).collect();
        assert_eq!(lines, expected);
        r.simple_query("COMMIT").await.unwrap();

        r.start_replication(&format!(
            "START_REPLICATION SLOT {slot} LOGICAL {consistent} (proto_version '2', publication_names '{publ}')"
        ))
        .await
        .unwrap();
        let mut seen_insert = false;
        stream_until(&mut r, 30, |d| {
            if d[0] == b'I' && contains(d, b"after 101") {
                seen_insert = true;
            }
            d[0] == b'U' && contains(d, b"changed")
        })
        .await;
        assert!(seen_insert);
        r.end_replication().await.unwrap();
        r.simple_query(&format!("DROP_REPLICATION_SLOT {slot}"))
            .await
            .unwrap();
        r.close().await;
        su.simple_query(&format!("DROP PUBLICATION {publ}; DROP TABLE {t}"))
            .await
            .unwrap();
    });
}

// ---------------------------------------------------------------------------------------------
// libpq defaults, service files, target_session_attrs, channel binding, CRLs, TLS versions,
// requirepeer, search_path
// ---------------------------------------------------------------------------------------------

/// Connect (not for replication) with `env` as the environment, ask `sql`, disconnect.
async fn ask_env(s: &str, env: &MapEnv, sql: &str) -> Option<String> {
    let mut c = connect_env(s, env, false)
        .await
        .unwrap_or_else(|e| panic!("{s}: {e}"));
    let v = one(&mut c, sql).await;
    c.close().await;
    v
}

async fn connect_env(s: &str, env: &MapEnv, replication: bool) -> Result<Connection, SourceError> {
    let info = ConnInfo::parse_with_env(s, env).unwrap_or_else(|e| panic!("parse {s}: {e}"));
    Connection::connect(&info, replication, "source_client_test").await
}

/// The OS user the clusters run as (the server's end of a Unix socket).
/// The name, on this machine, of the OS user the source's server runs as (a chroot's
/// `postgres` has a uid of its own, which may be another user's here).
fn server_os_user() -> String {
    let out = if is_root() {
        let (uid, _) = livesync_e2e::source_install().postgres_ids();
        Command::new("id").arg("-nu").arg(uid.to_string()).output()
    } else {
        Command::new("id").arg("-un").output()
    }
    .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn search_path_is_empty_on_every_connection() {
    let pg = main_pg();
    let role = uniq("sp_role");
    let schema = uniq("sp_evil");
    block_on(async {
        let mut su = superuser(pg).await;
        // A role whose settings put a planted schema first, with a function that would win
        // over pg_catalog.lower(text) for a varchar argument.
        su.simple_query(&format!(
            "CREATE SCHEMA {schema};
             CREATE FUNCTION {schema}.lower(varchar) RETURNS text LANGUAGE sql AS $$ SELECT 'planted' $$;
             GRANT USAGE ON SCHEMA {schema} TO PUBLIC;
             CREATE ROLE {role} LOGIN SUPERUSER REPLICATION;
             ALTER ROLE {role} SET search_path = {schema}, public"
        ))
        .await
        .unwrap();
        // The setup really plants the function: a session with the role's search_path uses it.
        assert_eq!(
            one(
                &mut su,
                &format!("SET search_path = {schema}, public; SELECT lower('ABC'::varchar)")
            )
            .await
            .as_deref(),
            Some("planted")
        );
        su.simple_query("RESET search_path").await.unwrap();

        for (conninfo, replication) in [
            (pg.unix(&format!("user={role}")), false),
            (pg.tcp(&format!("user={role} sslmode=require")), false),
            (pg.tcp(&format!("user={role} sslmode=disable")), true),
        ] {
            let info = ConnInfo::parse(&conninfo).unwrap();
            let mut c = Connection::connect(&info, replication, "source_client_test")
                .await
                .unwrap_or_else(|e| panic!("{conninfo}: {e}"));
            assert_eq!(
                one(&mut c, "SHOW search_path").await.as_deref(),
                Some(""),
                "{conninfo} replication={replication}"
            );
            if !replication {
                assert_eq!(
                    one(&mut c, "SELECT lower('ABC'::varchar)").await.as_deref(),
                    Some("abc"),
                    "{conninfo}"
                );
            }
            c.close().await;
        }
        su.simple_query(&format!("DROP ROLE {role}; DROP SCHEMA {schema} CASCADE"))
            .await
            .unwrap();
        su.close().await;
    });
}

#[test]
fn user_and_other_defaults_come_from_the_environment() {
    let pg = main_pg();
    block_on(async {
        // The case of the issue: a socket directory and a database, no user. The default
        // user is PGUSER ...
        let s = format!(
            "host={} port={} dbname=postgres",
            pg.sock().display(),
            pg.port
        );
        let env = MapEnv::new()
            .with_var("PGUSER", "u_md5")
            .with_os_user("u_clear");
        assert_eq!(
            ask_env(&s, &env, "SELECT current_user").await.as_deref(),
            Some("u_md5")
        );
        // ... else the OS user's name.
        let env = MapEnv::new().with_os_user("u_clear");
        assert_eq!(
            ask_env(&s, &env, "SELECT current_user").await.as_deref(),
            Some("u_clear")
        );
        // Host, port, database, user, password and sslmode all from the environment, over
        // TCP with SCRAM: an empty connection string.
        let env = MapEnv::new()
            .with_var("PGHOST", "127.0.0.1")
            .with_var("PGPORT", pg.port.to_string())
            .with_var("PGDATABASE", "template1")
            .with_var("PGUSER", "u_scram")
            .with_var("PGPASSWORD", PW)
            .with_var("PGSSLMODE", "require")
            .with_var("PGAPPNAME", "from_env");
        let mut c = connect_env("", &env, false).await.unwrap();
        assert!(c.is_tls());
        assert_eq!(
            one(&mut c, "SELECT current_user || ' ' || current_database() || ' ' || current_setting('application_name')")
                .await
                .as_deref(),
            Some("u_scram template1 from_env")
        );
        c.close().await;
        // The connection string wins over the environment.
        let mut c = connect_env("sslmode=disable dbname=postgres", &env, false)
            .await
            .unwrap();
        assert!(!c.is_tls());
        assert_eq!(
            one(&mut c, "SELECT current_database()").await.as_deref(),
            Some("postgres")
        );
        c.close().await;
        // The real environment: the user is the test process's OS user, which the server
        // is asked for (it has no such role unless it is postgres).
        let out = Command::new("id").arg("-un").output().unwrap();
        let me = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let info = ConnInfo::parse(&s).unwrap();
        assert_eq!(info.user, me);
        match Connection::connect(&info, false, "source_client_test").await {
            Ok(mut c) => {
                assert_eq!(one(&mut c, "SELECT current_user").await, Some(me));
                c.close().await;
            }
            Err(e) => {
                assert_eq!(e.sqlstate(), Some("28000"), "{e}");
                assert!(e.to_string().contains(&format!("\"{me}\"")), "{e}");
            }
        }
    });
}

#[test]
fn service_file_supplies_the_connection() {
    let pg = main_pg();
    let dir = std::env::temp_dir().join(uniq("svc"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pg_service.conf");
    std::fs::write(
        &file,
        format!(
            "# test services\n[other]\nhost=/nonexistent\n\n[src]\nhost=127.0.0.1\nport={}\n\
             dbname=template1\nuser=u_scram\npassword={PW}\nsslmode=require\n",
            pg.port
        ),
    )
    .unwrap();
    block_on(async {
        let env = MapEnv::new().with_var("PGSERVICEFILE", file.to_str().unwrap());
        let mut c = connect_env("service=src", &env, false).await.unwrap();
        assert!(c.is_tls());
        assert_eq!(
            one(&mut c, "SELECT current_user || ' ' || current_database()")
                .await
                .as_deref(),
            Some("u_scram template1")
        );
        c.close().await;
        // Values in the string win over the service's.
        assert_eq!(
            ask_env(
                "service=src dbname=postgres user=postgres",
                &env,
                "SELECT current_user || ' ' || current_database()"
            )
            .await
            .as_deref(),
            Some("postgres postgres")
        );
        // PGSERVICE, and the system-wide file of PGSYSCONFDIR.
        let env = MapEnv::new()
            .with_var("PGSYSCONFDIR", dir.to_str().unwrap())
            .with_var("PGSERVICE", "src");
        let mut c = connect_env("", &env, true).await.unwrap();
        assert_eq!(one(&mut c, "SHOW port").await, Some(pg.port.to_string()));
        c.close().await;
        // An unknown service is an error.
        let e = ConnInfo::parse_with_env("service=nope", &env).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid connection string: definition of service \"nope\" not found"
        );
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn target_session_attrs_picks_a_matching_host() {
    let (ro, rw) = (plain_pg(), main_pg());
    let role = uniq("tsa");
    block_on(async {
        // The same role on both servers, read-only by default on the first one.
        let mut su_ro = superuser(ro).await;
        su_ro
            .simple_query(&format!(
                "CREATE ROLE {role} LOGIN REPLICATION; ALTER ROLE {role} SET default_transaction_read_only = on"
            ))
            .await
            .unwrap();
        let mut su_rw = superuser(rw).await;
        su_rw
            .simple_query(&format!("CREATE ROLE {role} LOGIN REPLICATION"))
            .await
            .unwrap();
        let env = MapEnv::new();
        let both = |attrs: &str, first: &Pg, second: &Pg| {
            format!(
                "host=127.0.0.1,127.0.0.1 port={},{} dbname=postgres user={role} sslmode=disable target_session_attrs={attrs}",
                first.port, second.port
            )
        };
        for (attrs, first, second, want, replication) in [
            ("read-write", ro, rw, rw, false),
            ("read-write", ro, rw, rw, true),
            ("read-write", rw, ro, rw, false),
            ("read-only", rw, ro, ro, false),
            ("read-only", ro, rw, ro, true),
            ("any", ro, rw, ro, false),
            ("primary", ro, rw, ro, false),
            ("prefer-standby", rw, ro, rw, false),
        ] {
            let s = both(attrs, first, second);
            let mut c = connect_env(&s, &env, replication)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                one(&mut c, "SHOW port").await,
                Some(want.port.to_string()),
                "{s} replication={replication}"
            );
            if attrs == "read-write" {
                assert_eq!(
                    one(&mut c, "SHOW transaction_read_only").await.as_deref(),
                    Some("off")
                );
            }
            c.close().await;
        }
        // No host matches: a clear error naming the last one.
        let e = connect_env(
            &format!(
                "host=127.0.0.1 port={} dbname=postgres user={role} sslmode=disable target_session_attrs=read-write",
                ro.port
            ),
            &env,
            false,
        )
        .await
        .err()
        .unwrap();
        assert!(matches!(e, SourceError::Connect { .. }), "{e:?}");
        assert!(e.to_string().ends_with("session is read-only"), "{e}");
        assert!(e.to_string().contains(&format!("port {}", ro.port)), "{e}");
        let e = connect_env(&both("standby", ro, rw), &env, false)
            .await
            .err()
            .unwrap();
        assert!(
            e.to_string().ends_with("server is not in hot standby mode"),
            "{e}"
        );
        su_ro
            .simple_query(&format!("DROP ROLE {role}"))
            .await
            .unwrap();
        su_rw
            .simple_query(&format!("DROP ROLE {role}"))
            .await
            .unwrap();
    });
}

#[test]
fn channel_binding() {
    let pg = main_pg();
    let plain = plain_pg();
    let ca = pg.certs().join("ca.crt");
    let pw = "'s3cr3t pw\\'\\\\'";
    block_on(async {
        // SCRAM-SHA-256-PLUS over TLS: the server checks our tls-server-end-point data.
        for extra in [
            "sslmode=require channel_binding=require".to_string(),
            format!(
                "host=localhost sslmode=verify-full sslrootcert={} channel_binding=require",
                ca.display()
            ),
            "sslmode=require".to_string(), // channel_binding=prefer, the default
        ] {
            for replication in [false, true] {
                let s = pg.tcp(&format!("user=u_scram password={pw} {extra}"));
                let info = ConnInfo::parse(&s).unwrap();
                let mut c = Connection::connect(&info, replication, "source_client_test")
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
                assert!(c.is_tls());
                assert_eq!(
                    one(&mut c, "SELECT 'bound'").await.as_deref(),
                    Some("bound")
                );
                c.close().await;
            }
        }
        let fail = |s: String, want: &'static str| async move {
            connect_fails(&s, want, |e| matches!(e, SourceError::Auth(_))).await
        };
        // Without TLS.
        fail(
            plain.tcp(&format!(
                "user=u_scram password={pw} channel_binding=require"
            )),
            "channel binding is required, but the connection does not use SSL",
        )
        .await;
        fail(
            pg.unix(&format!("password={pw} channel_binding=require")),
            "channel binding required, but server authenticated client without channel binding",
        )
        .await;
        let e = ConnInfo::parse(&pg.tcp("user=u_scram sslmode=disable channel_binding=require"))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("cannot be used with sslmode \"disable\""),
            "{e}"
        );
        // md5, password and trust over TLS: no channel binding possible.
        for user in ["u_md5", "u_clear"] {
            fail(
                pg.tcp(&format!(
                    "user={user} password={pw} sslmode=require channel_binding=require"
                )),
                "channel binding required but not supported by server's authentication request",
            )
            .await;
        }
        fail(
            pg.tcp("user=postgres sslmode=require channel_binding=require"),
            "channel binding required, but server authenticated client without channel binding",
        )
        .await;
        // Disabled: plain SCRAM-SHA-256 over TLS still works.
        let c = connect(&pg.tcp(&format!(
            "user=u_scram password={pw} sslmode=require channel_binding=disable"
        )))
        .await
        .unwrap();
        assert!(c.is_tls());
        c.close().await;
    });
}

/// Runs `openssl ca` in `dir` with a minimal CA configuration for the test CA `ca`.
fn openssl_ca(dir: &Path, certs: &Path, ca: &str, args: &[&str]) {
    let cnf = dir.join(format!("{ca}.cnf"));
    if !cnf.exists() {
        std::fs::write(dir.join(format!("{ca}.index")), "").unwrap();
        std::fs::write(dir.join(format!("{ca}.crlnumber")), "01\n").unwrap();
        std::fs::write(
            &cnf,
            format!(
                "[ca]\ndefault_ca = d\n[d]\ndatabase = {dir}/{ca}.index\ncrlnumber = {dir}/{ca}.crlnumber\n\
                 certificate = {certs}/{ca}.crt\nprivate_key = {certs}/{ca}.key\ndefault_md = sha256\n\
                 default_crl_days = 30\n",
                dir = dir.display(),
                certs = certs.display()
            ),
        )
        .unwrap();
    }
    let mut c = Command::new("openssl");
    c.arg("ca")
        .arg("-config")
        .arg(&cnf)
        .args(args)
        .current_dir(dir);
    run(c, &format!("openssl ca {args:?}"));
}

#[test]
fn certificate_revocation_lists() {
    let pg = main_pg();
    let certs = pg.certs();
    let ca = certs.join("ca.crt");
    let dir = std::env::temp_dir().join(uniq("crl"));
    std::fs::create_dir_all(dir.join("revoked_dir")).unwrap();
    // An empty CRL of our CA, a CRL revoking the server certificate, and one of another CA.
    openssl_ca(&dir, &certs, "ca", &["-gencrl", "-out", "empty.crl"]);
    let server_crt = certs.join("server.crt");
    openssl_ca(
        &dir,
        &certs,
        "ca",
        &["-revoke", server_crt.to_str().unwrap()],
    );
    openssl_ca(&dir, &certs, "ca", &["-gencrl", "-out", "revoked.crl"]);
    openssl_ca(&dir, &certs, "otherca", &["-gencrl", "-out", "other.crl"]);
    std::fs::copy(dir.join("revoked.crl"), dir.join("revoked_dir/1a2b3c4d.r0")).unwrap();
    std::fs::write(dir.join("revoked_dir/README"), "not a CRL\n").unwrap();
    let base = |extra: String| {
        pg.tcp(&format!(
            "host=localhost user=postgres sslmode=verify-full sslrootcert={} {extra}",
            ca.display()
        ))
    };
    block_on(async {
        let c = connect(&base(format!("sslcrl={}", dir.join("empty.crl").display())))
            .await
            .unwrap();
        assert!(c.is_tls());
        c.close().await;
        let fail = |s: String, want: &'static str| async move {
            connect_fails(&s, want, |e| matches!(e, SourceError::Tls(_))).await
        };
        fail(
            base(format!("sslcrl={}", dir.join("revoked.crl").display())),
            "certificate verify failed: certificate revoked",
        )
        .await;
        fail(
            base(format!("sslcrldir={}", dir.join("revoked_dir").display())),
            "certificate revoked",
        )
        .await;
        // verify-ca checks revocation too.
        fail(
            pg.tcp(&format!(
                "user=postgres sslmode=verify-ca sslrootcert={} sslcrl={}",
                ca.display(),
                dir.join("revoked.crl").display()
            )),
            "certificate revoked",
        )
        .await;
        // Only another CA's CRL: our server certificate's status is unknown.
        fail(
            base(format!("sslcrl={}", dir.join("other.crl").display())),
            "unable to get certificate CRL",
        )
        .await;
        // A CRL that cannot be read, or that cannot be checked, is an error.
        fail(
            base("sslcrl=/nonexistent/x.crl".into()),
            "/nonexistent/x.crl",
        )
        .await;
        fail(
            pg.tcp(&format!(
                "user=postgres sslmode=require sslcrl={}",
                dir.join("revoked.crl").display()
            )),
            "sslcrl/sslcrldir cannot be checked",
        )
        .await;
    });
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn tls_protocol_versions() {
    let pg = main_pg();
    block_on(async {
        for (extra, want) in [
            ("ssl_min_protocol_version=TLSv1.3", "TLSv1.3"),
            ("ssl_max_protocol_version=TLSv1.2", "TLSv1.2"),
            (
                "ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.2",
                "TLSv1.2",
            ),
            ("", "TLSv1.3"),
        ] {
            let s = pg.tcp(&format!("user=postgres sslmode=require {extra}"));
            let mut c = connect(&s).await.unwrap_or_else(|e| panic!("{s}: {e}"));
            assert_eq!(
                one(
                    &mut c,
                    "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                )
                .await
                .as_deref(),
                Some(want),
                "{s}"
            );
            c.close().await;
        }
        for (extra, want) in [
            (
                "ssl_max_protocol_version=TLSv1.1",
                "ssl_max_protocol_version \"TLSv1.1\" is not supported: only TLSv1.2 and TLSv1.3 are available",
            ),
            (
                "ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2",
                "invalid SSL protocol version range",
            ),
        ] {
            let e = ConnInfo::parse(&pg.tcp(&format!("user=postgres sslmode=require {extra}")))
                .unwrap_err();
            assert!(matches!(e, SourceError::InvalidConnInfo(_)), "{e:?}");
            assert!(e.to_string().contains(want), "{e}");
        }
    });
}

#[test]
fn requirepeer_checks_the_server_user() {
    let pg = main_pg();
    let owner = server_os_user();
    block_on(async {
        let mut c = connect(&pg.unix(&format!("requirepeer={owner}")))
            .await
            .unwrap();
        assert_eq!(one(&mut c, "SELECT 1").await.as_deref(), Some("1"));
        c.close().await;
        let e = connect(&pg.unix("requirepeer=someone_else"))
            .await
            .err()
            .unwrap();
        assert!(matches!(e, SourceError::Connect { .. }), "{e:?}");
        assert!(
            e.to_string().contains(&format!(
                "requirepeer specifies \"someone_else\", but actual peer user name is \"{owner}\""
            )),
            "{e}"
        );
    });
}
