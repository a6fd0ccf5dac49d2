//! End-to-end test harness for livesync.
//!
//! It owns real PostgreSQL clusters (15, 17 or 18: [`Install`]) started for the tests: a SOURCE (`wal_level=logical`)
//! and a TARGET (TimescaleDB + livesync preloaded), each started once per test binary and
//! shared by its tests ([`source()`], [`target()`]), plus private clusters for the tests that
//! restart or kill a server ([`Cluster::new_private`]). Every test works in databases of its
//! own ([`Db::fresh`]), polls livesync's views with a timeout ([`wait_until`]) and compares
//! order-independent row checksums between source and target ([`assert_tables_equal`]).
//!
//! Environment:
//! - `LIVESYNC_E2E_PRELOAD`: the target's `shared_preload_libraries`
//!   (default `timescaledb,livesync`; `timescaledb` runs the harness without livesync).
//! - `LIVESYNC_E2E_DIR`: where clusters live (default `/tmp/livesync-e2e`).
//! - `LIVESYNC_E2E_PG`: the target's PostgreSQL major (default 15); `LIVESYNC_E2E_SOURCE_PG`:
//!   the source's (default: the target's). A major installed on this machine
//!   (`/usr/lib/postgresql/N/bin`) runs here; another runs in the chroot that
//!   `scripts/pgchroot.sh N` made (see [`Install`]).
//! - `LIVESYNC_E2E_TARGET_CONF`: extra `postgresql.conf` lines for targets (`;`-separated).
//! - `LIVESYNC_E2E_GUC_<NAME>=<value>`: sets `livesync.<name>` on targets
//!   (e.g. `LIVESYNC_E2E_GUC_PUBLICATION_REFRESH_INTERVAL=2`).
//! - `LIVESYNC_E2E_KEEP=1`: keep data directories at exit.
//!
//! The servers run as the `postgres` OS user when the tests run as root (PostgreSQL refuses to
//! run as root). Every cluster a process started is stopped (immediate mode) at process exit;
//! clusters left over by earlier runs that died are stopped and removed when a run starts.

use std::collections::{BTreeSet, HashSet};
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime};

pub use postgres;
use postgres::types::FromSqlOwned;
use postgres::{Client, Config, NoTls};

/// How long the sync tests wait for states and catch-up.
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(60);
/// statement_timeout of every client the harness opens (a hang becomes an error).
const STATEMENT_TIMEOUT: &str = "120s";

// ---------------------------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------------------------

/// A PostgreSQL major the harness runs servers and client programs of: installed on this
/// machine (`/usr/lib/postgresql/N/bin`), or in the Debian chroot `scripts/pgchroot.sh N`
/// made under `$LIVESYNC_SETUP_DIR` (default `/var/tmp/livesync-setup/pgN/root`).
///
/// Servers in a chroot see the same paths as the tests: the harness's directory is a real
/// directory inside the chroot, and the same path on this machine is a symlink to it
/// ([`run_dir`]). Data directories, sockets, logs and the files tests hand to a server
/// therefore have one name everywhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Install {
    /// The PostgreSQL major version (15, 17, 18).
    pub major: u32,
    /// The chroot, or None on this machine.
    root: Option<PathBuf>,
    /// The binaries' directory, as seen inside `root`.
    bin: PathBuf,
}

impl Install {
    /// The install of PostgreSQL `major`: this machine's for 15, the chroot's for the others
    /// (the same rule as the Makefile's and scripts/demo.sh's).
    pub fn of(major: u32) -> Install {
        let bin = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
        if major == 15 {
            return Install {
                major,
                root: None,
                bin,
            };
        }
        let setup = std::env::var("LIVESYNC_SETUP_DIR")
            .unwrap_or_else(|_| "/var/tmp/livesync-setup".into());
        let root = PathBuf::from(setup).join(format!("pg{major}/root"));
        assert!(
            root.join(bin.strip_prefix("/").unwrap()).join("postgres").exists(),
            "PostgreSQL {major} is neither installed here nor in {}: run `scripts/pgchroot.sh {major}` \
             (or `PG={major} make test`)",
            root.display()
        );
        Install {
            major,
            root: Some(root),
            bin,
        }
    }

    /// PostgreSQL `major` of this machine run from another binaries' directory: a prefix
    /// of its own, with another livesync in it (`scripts/old-version.sh`).
    pub fn host_at(major: u32, bin: PathBuf) -> Install {
        Install {
            major,
            root: None,
            bin,
        }
    }

    /// The chroot this install runs in, if any.
    pub fn chroot(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// A path of this install as seen from this machine.
    pub fn host_path(&self, p: &Path) -> PathBuf {
        match &self.root {
            Some(r) => r.join(p.strip_prefix("/").unwrap_or(p)),
            None => p.to_path_buf(),
        }
    }

    /// uid/gid of this install's `postgres` OS user.
    pub fn postgres_ids(&self) -> (u32, u32) {
        match &self.root {
            None => host_postgres_ids(),
            Some(r) => {
                let passwd = fs::read_to_string(r.join("etc/passwd")).expect("chroot /etc/passwd");
                let f: Vec<&str> = passwd
                    .lines()
                    .find(|l| l.starts_with("postgres:"))
                    .expect("a postgres user in the chroot")
                    .split(':')
                    .collect();
                (f[2].parse().unwrap(), f[3].parse().unwrap())
            }
        }
    }

    /// `chown` to this install's `postgres` user (when we are root).
    pub fn chown(&self, path: &Path) {
        if !is_root() {
            return;
        }
        let (uid, gid) = self.postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
    }

    /// A client program of this install (`psql`, `pg_dump`, `pgbench`, ...), run as we are.
    pub fn client(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.root {
            None => Command::new(path),
            Some(r) => {
                let mut c = Command::new("chroot");
                c.arg(r).arg(path);
                c
            }
        }
    }

    /// A server program (`initdb`, `pg_ctl`), run as the `postgres` OS user when we are root.
    pub fn server(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut cmd = match (&self.root, is_root()) {
            (None, true) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg("postgres").arg("--").arg(path);
                c
            }
            (None, false) => Command::new(path),
            (Some(r), _) => {
                let (uid, gid) = self.postgres_ids();
                let mut c = Command::new("chroot");
                c.arg(format!("--userspec={uid}:{gid}")).arg(r).arg(path);
                c
            }
        };
        for v in [
            "PGDATA",
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGOPTIONS",
        ] {
            cmd.env_remove(v);
        }
        cmd.env("LC_ALL", "C");
        cmd
    }
}

fn major_from_env(var: &str) -> Option<u32> {
    let v = std::env::var(var).ok()?;
    Some(
        v.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{var}={v}: expected a PostgreSQL major version")),
    )
}

/// The install targets run on (`LIVESYNC_E2E_PG`, default 15).
pub fn target_install() -> &'static Install {
    static I: OnceLock<Install> = OnceLock::new();
    I.get_or_init(|| Install::of(major_from_env("LIVESYNC_E2E_PG").unwrap_or(15)))
}

/// The install sources run on (`LIVESYNC_E2E_SOURCE_PG`, default: the target's).
pub fn source_install() -> &'static Install {
    static I: OnceLock<Install> = OnceLock::new();
    I.get_or_init(|| match major_from_env("LIVESYNC_E2E_SOURCE_PG") {
        Some(m) => Install::of(m),
        None => target_install().clone(),
    })
}

/// The install a cluster of this kind runs on by default.
pub fn install_for(kind: Kind) -> &'static Install {
    match kind {
        Kind::Source => source_install(),
        Kind::Target => target_install(),
    }
}

/// The target's `shared_preload_libraries`.
pub fn target_preload() -> String {
    std::env::var("LIVESYNC_E2E_PRELOAD").unwrap_or_else(|_| "timescaledb,livesync".to_string())
}

/// True when livesync is in the target's preload list (tests that need it can say why they
/// fail when it is not).
pub fn livesync_preloaded() -> bool {
    target_preload().split(',').any(|l| l.trim() == "livesync")
}

/// The harness's directory: `$LIVESYNC_E2E_DIR` (default `/tmp/livesync-e2e`) when every
/// server runs on this machine. When one runs in a chroot, the directory is
/// `<that>-pg<N>`, a real directory inside the chroot and a symlink to it here, so that a
/// path means the same file to the tests and to every server.
fn harness_root() -> PathBuf {
    let base = std::env::var("LIVESYNC_E2E_DIR").unwrap_or_else(|_| "/tmp/livesync-e2e".into());
    let chroots: Vec<&Install> = [source_install(), target_install()]
        .into_iter()
        .filter(|i| i.chroot().is_some())
        .collect();
    let Some(inst) = chroots.first() else {
        return PathBuf::from(base);
    };
    assert!(
        chroots.iter().all(|i| i.chroot() == inst.chroot()),
        "the source (PostgreSQL {}) and the target (PostgreSQL {}) would run in two different \
         chroots, which share no paths: run one of them on this machine's PostgreSQL",
        source_install().major,
        target_install().major
    );
    let link = PathBuf::from(format!("{base}-pg{}", inst.major));
    let real = inst.host_path(&link);
    fs::create_dir_all(&real).unwrap_or_else(|e| panic!("mkdir {}: {e}", real.display()));
    if fs::read_link(&link).ok().as_deref() != Some(real.as_path()) {
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&real, &link)
            .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", link.display(), real.display()));
    }
    link
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid of this machine's `postgres` OS user.
fn host_postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let name = std::ffi::CString::new("postgres").unwrap();
        // SAFETY: getpwnam gets a valid C string; the result is read at once, before any other
        // getpw* call of this process could overwrite it (this runs once, under OnceLock).
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        assert!(
            !pw.is_null(),
            "the harness runs as root but there is no `postgres` OS user"
        );
        // SAFETY: pw is non-null and points to a static passwd record.
        unsafe { ((*pw).pw_uid, (*pw).pw_gid) }
    })
}

fn run_checked(mut cmd: Command, what: &str) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence/permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Sends SIGKILL to one process (e.g. a livesync worker, by the pid from
/// `livesync.subscription.pid`).
pub fn kill9(pid: i32) {
    // SAFETY: plain kill(2) on a pid the test got from the server it started.
    let r = unsafe { libc::kill(pid, libc::SIGKILL) };
    assert!(r == 0, "kill -9 {pid}: {}", std::io::Error::last_os_error());
}

// ---------------------------------------------------------------------------------------------
// Run directory, registry of started clusters, cleanup at start and at exit
// ---------------------------------------------------------------------------------------------

struct Registered {
    name: String,
    datadir: PathBuf,
    logfile: PathBuf,
}

static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
static USED_PORTS: Mutex<Vec<u16>> = Mutex::new(Vec::new());
static NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// This process's run directory (`<root>/run-<pid>`), created on first use after cleaning up
/// what dead earlier runs left behind.
/// This process's directory for clusters and files of the tests.
pub fn run_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let root = harness_root();
        fs::create_dir_all(&root).unwrap_or_else(|e| panic!("mkdir {}: {e}", root.display()));
        let _ = fs::set_permissions(&root, fs::Permissions::from_mode(0o755));
        cleanup_stale_runs(&root);
        let dir = root.join(format!("run-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        target_install().chown(&dir);
        // SAFETY: registering a plain extern "C" fn with no captured state.
        unsafe { libc::atexit(stop_all_at_exit) };
        dir
    })
}

fn read_postmaster_pid(datadir: &Path) -> Option<i32> {
    let text = fs::read_to_string(datadir.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

/// True when `pid` is a postgres process (guards against a recycled pid).
fn is_postgres_process(pid: i32) -> bool {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).contains("postgres"))
        .unwrap_or(false)
}

fn stop_postmaster_by_pid(datadir: &Path, sig: i32, wait: Duration) {
    let Some(pid) = read_postmaster_pid(datadir) else {
        return;
    };
    if !pid_alive(pid) || !is_postgres_process(pid) {
        return;
    }
    // SAFETY: kill(2) on the postmaster recorded in our own data directory.
    unsafe { libc::kill(pid, sig) };
    let deadline = Instant::now() + wait;
    while pid_alive(pid) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
}

fn cleanup_stale_runs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("run-")
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid as u32 == std::process::id() || pid_alive(pid) {
            continue; // a concurrent harness owns it
        }
        if let Ok(clusters) = fs::read_dir(&path) {
            for c in clusters.flatten() {
                let data = c.path().join("data");
                if data.is_dir() {
                    stop_postmaster_by_pid(&data, libc::SIGQUIT, Duration::from_secs(10));
                    stop_postmaster_by_pid(&data, libc::SIGKILL, Duration::from_secs(5));
                    let _ = fs::remove_dir_all(&data);
                }
            }
        }
        // Keep the logs of recent runs for post-mortems; drop old runs entirely.
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .map(|t| SystemTime::now().duration_since(t).unwrap_or_default())
            .map(|age| age > Duration::from_secs(2 * 3600))
            .unwrap_or(true);
        if old {
            let _ = fs::remove_dir_all(&path);
        }
    }
}

extern "C" fn stop_all_at_exit() {
    let Ok(list) = REGISTRY.try_lock() else {
        return;
    };
    let mut pids = Vec::new();
    for r in list.iter() {
        if let Some(pid) = read_postmaster_pid(&r.datadir) {
            if pid_alive(pid) && is_postgres_process(pid) {
                // SAFETY: immediate shutdown of a postmaster this process started.
                unsafe { libc::kill(pid, libc::SIGQUIT) };
                pids.push(pid);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while pids.iter().any(|p| pid_alive(*p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if std::env::var_os("LIVESYNC_E2E_KEEP").is_none() {
        for r in list.iter() {
            let _ = fs::remove_dir_all(&r.datadir);
        }
    }
}

fn free_port() -> u16 {
    let mut used = USED_PORTS.lock().unwrap();
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().unwrap().port();
        if !used.contains(&port) {
            used.push(port);
            return port;
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_else(|e| format!("<cannot read: {e}>"));
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last lines of the log of every cluster this process started.
pub fn all_log_tails(lines: usize) -> String {
    let list = match REGISTRY.lock() {
        Ok(l) => l,
        Err(p) => p.into_inner(),
    };
    let mut s = String::new();
    for r in list.iter() {
        let _ = writeln!(
            s,
            "----- last {lines} lines of {} ({}) -----\n{}",
            r.name,
            r.logfile.display(),
            tail(&r.logfile, lines)
        );
    }
    s
}

/// A unique lowercase name with this prefix (for databases, syncs, roles).
pub fn unique_name(prefix: &str) -> String {
    let n = NAME_COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{}_{n}", prefix.to_lowercase())
}

// ---------------------------------------------------------------------------------------------
// Clusters
// ---------------------------------------------------------------------------------------------

/// What a cluster is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// wal_level=logical, many slots and walsenders.
    Source,
    /// TimescaleDB + livesync preloaded (see `LIVESYNC_E2E_PRELOAD`), also wal_level=logical.
    Target,
}

/// pg_ctl shutdown modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopMode {
    Smart,
    Fast,
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Smart => "smart",
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Everything needed to create a cluster.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    pub kind: Kind,
    pub name: String,
    /// Extra postgresql.conf lines, appended last (they win).
    pub extra_conf: Vec<String>,
    /// pg_hba.conf lines put before the defaults (first match wins).
    pub hba: Vec<String>,
    /// Environment variables of the server processes (e.g. `PGSERVICEFILE`, which livesync's
    /// source connections then see, as libpq would inside the server).
    pub env: Vec<(String, String)>,
    /// The PostgreSQL install (default: [`install_for`] the kind).
    pub install: Install,
}

impl ClusterSpec {
    pub fn new(kind: Kind, name: &str) -> Self {
        ClusterSpec {
            kind,
            name: name.to_string(),
            extra_conf: Vec::new(),
            hba: Vec::new(),
            env: Vec::new(),
            install: install_for(kind).clone(),
        }
    }
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }
    pub fn conf(mut self, line: &str) -> Self {
        self.extra_conf.push(line.to_string());
        self
    }
    pub fn hba(mut self, line: &str) -> Self {
        self.hba.push(line.to_string());
        self
    }
}

/// A PostgreSQL cluster started by the harness. Dropping a private cluster stops it
/// (immediate) and removes its data directory unless the thread is panicking.
#[derive(Debug)]
pub struct Cluster {
    name: String,
    kind: Kind,
    port: Mutex<u16>,
    dir: PathBuf,
    datadir: PathBuf,
    sockdir: PathBuf,
    logfile: PathBuf,
    private: bool,
    env: Vec<(String, String)>,
    install: Install,
}

static SOURCE: OnceLock<Result<Cluster, String>> = OnceLock::new();
static TARGET: OnceLock<Result<Cluster, String>> = OnceLock::new();

fn shared(
    cell: &'static OnceLock<Result<Cluster, String>>,
    kind: Kind,
    name: &str,
) -> &'static Cluster {
    let r = cell.get_or_init(|| {
        std::panic::catch_unwind(|| Cluster::create(ClusterSpec::new(kind, name), false)).map_err(
            |e| {
                e.downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "unknown panic".into())
            },
        )
    });
    match r {
        Ok(c) => c,
        Err(msg) => panic!("the shared {name} cluster could not be started: {msg}"),
    }
}

/// The source cluster shared by the tests of this binary (started on first use).
pub fn source() -> &'static Cluster {
    shared(&SOURCE, Kind::Source, "source")
}

/// The target cluster shared by the tests of this binary (started on first use).
pub fn target() -> &'static Cluster {
    shared(&TARGET, Kind::Target, "target")
}

/// Fails fast and clearly when livesync is to be preloaded but is not installed.
fn check_livesync_installed(install: &Install) {
    if !livesync_preloaded() {
        return;
    }
    let so = install.host_path(Path::new(&format!(
        "/usr/lib/postgresql/{}/lib/livesync.so",
        install.major
    )));
    assert!(
        so.exists(),
        "livesync is not installed for PostgreSQL {} ({} is missing): run `PG={} make install` \
         first, or set LIVESYNC_E2E_PRELOAD=timescaledb to run only the tests that do not need \
         livesync",
        install.major,
        so.display(),
        install.major
    );
}

impl Cluster {
    /// A cluster of this test only (for tests that stop, restart or kill the server).
    pub fn new_private(kind: Kind, name: &str) -> Cluster {
        Cluster::create(ClusterSpec::new(kind, name), true)
    }

    /// A private cluster with extra configuration.
    pub fn new_private_with(spec: ClusterSpec) -> Cluster {
        Cluster::create(spec, true)
    }

    /// A physical standby of `primary` (private to the test), made by `pg_basebackup -R`
    /// and streaming through the physical slot `slot`, which this creates on the primary;
    /// `conf` lines are added to its configuration. Started.
    pub fn new_standby(primary: &Cluster, name: &str, slot: &str, conf: &[&str]) -> Cluster {
        let install = primary.install.clone();
        let name = unique_name(name);
        let dir = run_dir().join(&name);
        fs::create_dir_all(&dir).unwrap();
        install.chown(&dir);
        let datadir = dir.join("data");
        let sockdir = dir.join("sock");
        fs::create_dir_all(&sockdir).unwrap();
        install.chown(&sockdir);
        let logfile = dir.join("server.log");
        let port = free_port();
        primary.exec(
            "postgres",
            &format!("SELECT pg_create_physical_replication_slot('{slot}', true)"),
        );
        let mut bb = install.server("pg_basebackup");
        bb.arg("-D")
            .arg(&datadir)
            .args(["-R", "-X", "stream", "--no-sync", "-S", slot, "-d"])
            // dbname in primary_conninfo: the standby's slot sync worker needs one.
            .arg(format!(
                "host={} port={} user=postgres dbname=postgres",
                primary.sockdir.display(),
                primary.port()
            ));
        run_checked(bb, &format!("pg_basebackup of {} for {name}", primary.name));
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(datadir.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(
            f,
            "\n# --- standby {name} ---\nport = {port}\nunix_socket_directories = '{}'\n{}",
            sockdir.display(),
            conf.join("\n")
        )
        .unwrap();
        Cluster::start_registered(Cluster {
            name,
            kind: primary.kind,
            port: Mutex::new(port),
            dir,
            datadir,
            sockdir,
            logfile,
            private: true,
            env: primary.env.clone(),
            install,
        })
    }

    /// Registers `c` for the cleanup at exit, then starts it.
    fn start_registered(c: Cluster) -> Cluster {
        REGISTRY.lock().unwrap().push(Registered {
            name: c.name.clone(),
            datadir: c.datadir.clone(),
            logfile: c.logfile.clone(),
        });
        c.start();
        c
    }

    /// `pg_ctl promote` (waits until the server accepts writes).
    pub fn promote(&self) {
        let mut cmd = self.install.server("pg_ctl");
        cmd.args(["promote", "-w", "-t", "60", "-D"])
            .arg(&self.datadir);
        run_checked(cmd, &format!("pg_ctl promote of {}", self.name));
    }

    fn create(spec: ClusterSpec, private: bool) -> Cluster {
        if spec.kind == Kind::Target {
            check_livesync_installed(&spec.install);
        }
        let t0 = Instant::now();
        let name = if private {
            unique_name(&spec.name)
        } else {
            spec.name.clone()
        };
        let dir = run_dir().join(&name);
        fs::create_dir_all(&dir).unwrap();
        spec.install.chown(&dir);
        let datadir = dir.join("data");
        let sockdir = dir.join("sock");
        fs::create_dir_all(&sockdir).unwrap();
        spec.install.chown(&sockdir);
        let logfile = dir.join("server.log");
        let port = free_port();

        let mut initdb = spec.install.server("initdb");
        initdb
            .arg("-D")
            .arg(&datadir)
            .args(["--auth=trust", "-E", "UTF8", "--locale=C", "-U", "postgres"])
            .args(["--no-sync", "--no-instructions"]);
        run_checked(initdb, &format!("initdb for cluster {name}"));

        let mut conf = vec![
            "# --- livesync e2e harness ---".to_string(),
            "listen_addresses = '127.0.0.1'".into(),
            format!("port = {port}"),
            format!("unix_socket_directories = '{}'", sockdir.display()),
            // Test speed only; every other setting that shapes behaviour stays at
            // PostgreSQL's default unless a test sets it (on its own cluster or database).
            "fsync = off".into(),
            "lc_messages = 'C'".into(),
            "timezone = 'UTC'".into(),
            "log_line_prefix = '%m [%p] %b %q%u@%d '".into(),
            "log_timezone = 'UTC'".into(),
            "wal_level = logical".into(),
        ];
        match spec.kind {
            Kind::Source => conf.extend([
                // Capacity for the tests of one binary running in parallel against one
                // source: their syncs' walsenders, copy connections and slots.
                "max_connections = 200".to_string(),
                "max_replication_slots = 40".to_string(),
                "max_wal_senders = 40".into(),
                // logical_decoding_work_mem stays at its default (64MB), as users run it:
                // large transactions arrive whole, at commit. Tests about streaming set it
                // on their own database ([`Db::stream_large_transactions`]).
            ]),
            Kind::Target => {
                conf.extend([
                    format!("shared_preload_libraries = '{}'", target_preload()),
                    // Capacity for the syncs of parallel tests (each needs an apply worker
                    // and copy workers); the lock table and everything else stay default.
                    "max_worker_processes = 64".into(),
                    "max_replication_slots = 20".into(),
                    "max_wal_senders = 20".into(),
                    "timescaledb.telemetry_level = off".into(),
                    // Assumed GUC (seconds); low so ADD/DROP TABLE tests are quick. Harmless
                    // if livesync does not define it (placeholder or warning).
                    "livesync.publication_refresh_interval = 1".into(),
                ]);
                let mut gucs: Vec<(String, String)> = std::env::vars()
                    .filter_map(|(k, v)| {
                        k.strip_prefix("LIVESYNC_E2E_GUC_")
                            .map(|n| (format!("livesync.{}", n.to_lowercase()), v))
                    })
                    .collect();
                gucs.sort();
                for (k, v) in gucs {
                    conf.push(format!("{k} = '{}'", v.replace('\'', "''")));
                }
                if let Ok(extra) = std::env::var("LIVESYNC_E2E_TARGET_CONF") {
                    conf.extend(
                        extra
                            .split([';', '\n'])
                            .filter(|l| !l.trim().is_empty())
                            .map(String::from),
                    );
                }
            }
        }
        conf.extend(spec.extra_conf.iter().cloned());
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(datadir.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(f, "\n{}", conf.join("\n")).unwrap();
        if !spec.hba.is_empty() {
            let hba_path = datadir.join("pg_hba.conf");
            let old = fs::read_to_string(&hba_path).unwrap();
            fs::write(&hba_path, format!("{}\n{old}", spec.hba.join("\n"))).unwrap();
        }

        let c = Cluster::start_registered(Cluster {
            name,
            kind: spec.kind,
            port: Mutex::new(port),
            dir,
            datadir,
            sockdir,
            logfile,
            private,
            env: spec.env.clone(),
            install: spec.install.clone(),
        });
        eprintln!(
            "[e2e] cluster {} ({:?}, PostgreSQL {}) up on 127.0.0.1:{} in {:.1}s, log {}",
            c.name,
            c.kind,
            c.install.major,
            c.port(),
            t0.elapsed().as_secs_f64(),
            c.logfile.display()
        );
        c
    }

    /// Run this (stopped) cluster's data directory with another install of the same
    /// major from its next start on: an upgrade of the software under it.
    pub fn set_install(&mut self, install: Install) {
        assert_eq!(install.major, self.install.major, "same major only");
        self.install = install;
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn kind(&self) -> Kind {
        self.kind
    }
    /// The PostgreSQL install this cluster runs on.
    pub fn install(&self) -> &Install {
        &self.install
    }
    /// Its PostgreSQL major version.
    pub fn major(&self) -> u32 {
        self.install.major
    }
    pub fn port(&self) -> u16 {
        *self.port.lock().unwrap()
    }
    pub fn datadir(&self) -> &Path {
        &self.datadir
    }
    pub fn sockdir(&self) -> &Path {
        &self.sockdir
    }
    pub fn logfile(&self) -> &Path {
        &self.logfile
    }
    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.logfile, lines)
    }

    /// Starts the server (waits until it accepts connections). Retries on a port clash and
    /// while the shared memory of killed processes is still attached.
    pub fn start(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut cmd = self.install.server("pg_ctl");
            cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
            cmd.arg("start")
                .args(["-w", "-t", "60", "-D"])
                .arg(&self.datadir)
                .arg("-l")
                .arg(&self.logfile);
            let out = cmd.output().expect("run pg_ctl start");
            if out.status.success() {
                return;
            }
            let log = self.log_tail(30);
            let retry_port =
                log.contains("could not bind") || log.contains("Address already in use");
            let retry_shm = log.contains("is still in use") || log.contains("lock file");
            if Instant::now() < deadline && (retry_port || retry_shm) {
                if retry_port {
                    let port = free_port();
                    *self.port.lock().unwrap() = port;
                    self.append_conf(&format!("port = {port}"));
                }
                thread::sleep(Duration::from_millis(500));
                continue;
            }
            panic!(
                "pg_ctl start of cluster {} failed ({}):\n{}{}\n----- server log tail -----\n{log}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    /// Appends a line to postgresql.conf (takes effect at the next start or reload).
    pub fn append_conf(&self, line: &str) {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(self.datadir.join("postgresql.conf"))
            .expect("open postgresql.conf");
        writeln!(f, "{line}").unwrap();
    }

    /// pg_ctl stop -m mode (waits).
    pub fn stop(&self, mode: StopMode) {
        let mut cmd = self.install.server("pg_ctl");
        cmd.arg("stop")
            .args(["-w", "-t", "60", "-m", mode.as_str(), "-D"])
            .arg(&self.datadir);
        run_checked(
            cmd,
            &format!("pg_ctl stop -m {} of cluster {}", mode.as_str(), self.name),
        );
    }

    /// Stops with `mode`, then starts again (after immediate mode: crash recovery).
    pub fn restart(&self, mode: StopMode) {
        self.stop(mode);
        self.start();
    }

    /// True when the postmaster of this cluster is running.
    pub fn is_running(&self) -> bool {
        read_postmaster_pid(&self.datadir).is_some_and(|p| pid_alive(p) && is_postgres_process(p))
    }

    /// The postmaster's pid.
    pub fn postmaster_pid(&self) -> Option<i32> {
        read_postmaster_pid(&self.datadir)
    }

    /// kill -9 of the postmaster (its children notice and exit; `start()` retries until they
    /// have).
    pub fn kill9_postmaster(&self) {
        let pid = self.postmaster_pid().expect("no postmaster.pid");
        kill9(pid);
        wait_until(
            Duration::from_secs(10),
            "killed postmaster to be gone",
            || !pid_alive(pid),
        );
    }

    /// Waits until the server accepts connections and queries (e.g. after crash recovery).
    pub fn wait_ready(&self, timeout: Duration) {
        wait_until(
            timeout,
            &format!("cluster {} to accept connections", self.name),
            || {
                self.try_client("postgres")
                    .and_then(|mut c| c.simple_query("SELECT 1").map(|_| ()))
                    .is_ok()
            },
        );
    }

    /// Client configuration over the unix socket, as superuser `postgres`.
    pub fn config(&self, db: &str) -> Config {
        let mut cfg = Config::new();
        cfg.host_path(&self.sockdir)
            .port(self.port())
            .user("postgres")
            .dbname(db)
            .application_name("livesync-e2e")
            .options(&format!("-c statement_timeout={STATEMENT_TIMEOUT}"))
            .connect_timeout(Duration::from_secs(10));
        cfg
    }

    pub fn try_client(&self, db: &str) -> Result<Client, postgres::Error> {
        self.config(db).connect(NoTls)
    }

    /// A connection to `db` (panics with the server log tail if it fails).
    pub fn client(&self, db: &str) -> Client {
        self.try_client(db).unwrap_or_else(|e| {
            panic!(
                "connect to {}/{db}: {}\n{}",
                self.name,
                err_text(&e),
                self.log_tail(20)
            )
        })
    }

    /// Runs SQL (may hold several statements) in `db`, panicking on error.
    pub fn exec(&self, db: &str, sql: &str) {
        self.client(db)
            .batch_execute(sql)
            .unwrap_or_else(|e| panic!("on {}/{db}: {sql}\n-> {}", self.name, err_text(&e)));
    }

    /// First column of the single row `sql` returns.
    pub fn query_one<T: FromSqlOwned>(&self, db: &str, sql: &str) -> T {
        let row = self
            .client(db)
            .query_one(sql, &[])
            .unwrap_or_else(|e| panic!("on {}/{db}: {sql}\n-> {}", self.name, err_text(&e)));
        row.get(0)
    }

    /// URI conninfo over TCP, e.g. `postgres://postgres@127.0.0.1:5999/db`.
    pub fn uri(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port())
    }

    /// key=value conninfo over TCP, e.g. `host=127.0.0.1 port=5999 dbname=db user=postgres`.
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} dbname={db} user=postgres",
            self.port()
        )
    }

    /// URI for another user/password.
    pub fn uri_as(&self, user: &str, password: Option<&str>, db: &str) -> String {
        match password {
            Some(p) => format!("postgres://{user}:{p}@127.0.0.1:{}/{db}", self.port()),
            None => format!("postgres://{user}@127.0.0.1:{}/{db}", self.port()),
        }
    }

    /// Handle on a database of this cluster.
    pub fn db(&self, name: &str) -> Db<'_> {
        Db {
            cluster: self,
            name: name.to_string(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.private {
            return;
        }
        if self.is_running() {
            let mut cmd = self.install.server("pg_ctl");
            cmd.arg("stop")
                .args(["-w", "-t", "30", "-m", "immediate", "-D"])
                .arg(&self.datadir);
            let _ = cmd.output();
        }
        if !thread::panicking() && std::env::var_os("LIVESYNC_E2E_KEEP").is_none() {
            let _ = fs::remove_dir_all(&self.datadir);
            if let Ok(mut l) = REGISTRY.lock() {
                l.retain(|r| r.datadir != self.datadir);
            }
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Databases
// ---------------------------------------------------------------------------------------------

/// Creates a database named `<prefix>_<n>`, unique in this process. On a TARGET cluster it
/// also runs `CREATE EXTENSION timescaledb; CREATE EXTENSION livesync;`.
pub fn fresh_db(cluster: &Cluster, prefix: &str) -> String {
    fresh_db_opts(cluster, prefix, true)
}

/// Like [`fresh_db`]; `with_livesync = false` skips `CREATE EXTENSION livesync` on a target.
pub fn fresh_db_opts(cluster: &Cluster, prefix: &str, with_livesync: bool) -> String {
    let name = unique_name(prefix);
    cluster.exec("postgres", &format!("CREATE DATABASE {name}"));
    if cluster.kind() == Kind::Target {
        cluster.exec(
            &name,
            "SET client_min_messages = warning; CREATE EXTENSION timescaledb",
        );
        if with_livesync {
            if let Err(e) = cluster
                .client(&name)
                .batch_execute("CREATE EXTENSION livesync")
            {
                panic!(
                    "CREATE EXTENSION livesync failed in {}/{name}: {}\n(is livesync installed \
                     with `cargo pgrx install` and in shared_preload_libraries? \
                     LIVESYNC_E2E_PRELOAD={})\n{}",
                    cluster.name(),
                    err_text(&e),
                    target_preload(),
                    cluster.log_tail(20)
                );
            }
        }
    }
    name
}

/// A database of a cluster: a cluster reference plus a database name.
#[derive(Clone, Debug)]
pub struct Db<'a> {
    pub cluster: &'a Cluster,
    pub name: String,
}

impl<'a> Db<'a> {
    /// A fresh database (see [`fresh_db`]).
    pub fn fresh(cluster: &'a Cluster, prefix: &str) -> Db<'a> {
        Db {
            cluster,
            name: fresh_db(cluster, prefix),
        }
    }
    /// A fresh database; on a target without `CREATE EXTENSION livesync`.
    pub fn fresh_without_livesync(cluster: &'a Cluster, prefix: &str) -> Db<'a> {
        Db {
            cluster,
            name: fresh_db_opts(cluster, prefix, false),
        }
    }
    pub fn client(&self) -> Client {
        self.cluster.client(&self.name)
    }
    pub fn try_client(&self) -> Result<Client, postgres::Error> {
        self.cluster.try_client(&self.name)
    }
    /// On a source database: `logical_decoding_work_mem = 64kB` for the walsenders that
    /// connect to it from now on, so that any transaction over 64 kB is streamed before it
    /// commits (for the tests of livesync's spooling of in-progress transactions).
    pub fn stream_large_transactions(&self) {
        self.cluster.exec(
            "postgres",
            &format!(
                "ALTER DATABASE {} SET logical_decoding_work_mem = '64kB'",
                self.name
            ),
        );
    }
    pub fn exec(&self, sql: &str) {
        self.cluster.exec(&self.name, sql)
    }
    pub fn query_one<T: FromSqlOwned>(&self, sql: &str) -> T {
        self.cluster.query_one(&self.name, sql)
    }
    pub fn uri(&self) -> String {
        self.cluster.uri(&self.name)
    }
    pub fn conninfo(&self) -> String {
        self.cluster.conninfo(&self.name)
    }
    pub fn config(&self) -> Config {
        self.cluster.config(&self.name)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// "SQLSTATE: message (DETAIL: ..) (HINT: ..)" of a postgres error, or its Display.
pub fn err_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => {
            let mut s = format!("{} {}: {}", d.severity(), d.code().code(), d.message());
            if let Some(x) = d.detail() {
                let _ = write!(s, "\nDETAIL: {x}");
            }
            if let Some(x) = d.hint() {
                let _ = write!(s, "\nHINT: {x}");
            }
            s
        }
        None => format!("{e}"),
    }
}

/// The SQLSTATE of an error (`None` when it is not a server error, e.g. a lost connection).
pub fn sqlstate(e: &postgres::Error) -> Option<String> {
    e.code().map(|c| c.code().to_string())
}

// ---------------------------------------------------------------------------------------------
// Waiting and comparing
// ---------------------------------------------------------------------------------------------

/// Polls `f` every 100 ms until it returns true; on timeout panics with `what` and the log
/// tails of every cluster of this process.
pub fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                all_log_tails(40)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// `(row count, md5 of all rows as text, sorted)`: equal on two tables iff they hold the same
/// multiset of rows (same column order and types assumed).
pub fn table_checksum(client: &mut Client, table: &str) -> (i64, String) {
    let sql = format!(
        // The alias must not collide with a column name, or `alias::text` means the column.
        "SELECT count(*)::int8, md5(coalesce(string_agg(_livesync_row_::text, E'\\n' \
         ORDER BY _livesync_row_::text), '')) FROM {table} _livesync_row_"
    );
    let row = client
        .query_one(sql.as_str(), &[])
        .unwrap_or_else(|e| panic!("checksum of {table}: {}", err_text(&e)));
    (row.get(0), row.get(1))
}

fn rows_as_text(client: &mut Client, table: &str) -> Vec<String> {
    client
        .query(
            format!("SELECT _livesync_row_::text FROM {table} _livesync_row_ ORDER BY 1").as_str(),
            &[],
        )
        .unwrap_or_else(|e| panic!("rows of {table}: {}", err_text(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Rows with how often they occur.
pub type RowCounts<'a> = Vec<(&'a str, i64)>;

/// Up to 10 rows of `a` that `b` lacks or holds another number of times, and the same the
/// other way round, each as (row, count): what a failed table comparison reports.
pub fn multiset_differences<'a>(
    a: &'a [String],
    b: &'a [String],
) -> (RowCounts<'a>, RowCounts<'a>) {
    fn count(v: &[String]) -> std::collections::BTreeMap<&str, i64> {
        let mut m = std::collections::BTreeMap::<&str, i64>::new();
        for r in v {
            *m.entry(r.as_str()).or_default() += 1;
        }
        m
    }
    let (am, bm) = (count(a), count(b));
    let only = |x: &std::collections::BTreeMap<&'a str, i64>,
                y: &std::collections::BTreeMap<&'a str, i64>| {
        x.iter()
            .filter(|(k, n)| y.get(*k) != Some(n))
            .take(10)
            .map(|(k, n)| (*k, *n))
            .collect::<Vec<_>>()
    };
    (only(&am, &bm), only(&bm, &am))
}

/// Panics (with a sample of the differing rows) unless `table` holds the same rows on both.
pub fn assert_tables_equal(src: &Db, tgt: &Db, table: &str) {
    let (mut s, mut t) = (src.client(), tgt.client());
    let a = table_checksum(&mut s, table);
    let b = table_checksum(&mut t, table);
    if a == b {
        return;
    }
    let sr = rows_as_text(&mut s, table);
    let tr = rows_as_text(&mut t, table);
    let (only_src, only_tgt) = multiset_differences(&sr, &tr);
    panic!(
        "table {table} differs: source {}/{} has {} rows, target {}/{} has {} rows\n\
         source rows missing or with another multiplicity on the target (row, count): {only_src:?}\n\
         target rows missing or with another multiplicity on the source (row, count): {only_tgt:?}\n{}",
        src.cluster.name(),
        src.name,
        a.0,
        tgt.cluster.name(),
        tgt.name,
        b.0,
        all_log_tails(30)
    );
}

/// Panics if `key` (a column list, e.g. `"id"` or `"device, ts"`) is not unique in `table`.
pub fn assert_no_duplicates(db: &Db, table: &str, key: &str) {
    let dups: i64 = db.query_one(&format!(
        "SELECT count(*)::int8 FROM (SELECT {key} FROM {table} GROUP BY {key} HAVING count(*) > 1) d"
    ));
    assert_eq!(
        dups, 0,
        "{dups} duplicated keys ({key}) in {}/{table}",
        db.name
    );
}

/// `SELECT count(*) FROM ONLY table` (rows in a hypertable's root).
pub fn count_only(db: &Db, table: &str) -> i64 {
    db.query_one(&format!("SELECT count(*)::int8 FROM ONLY {table}"))
}

/// Number of chunks of a hypertable.
pub fn chunk_count(db: &Db, table: &str) -> i64 {
    db.query_one(&format!(
        "SELECT count(*)::int8 FROM show_chunks('{table}')"
    ))
}

// ---------------------------------------------------------------------------------------------
// livesync API wrappers and views
// ---------------------------------------------------------------------------------------------

/// Calls `livesync_start(source => .., publication => .., subscription => .., copy_data => ..)`
/// (arguments left out when `None`, so the defaults apply).
pub fn try_livesync_start(
    tgt: &Db,
    source: &str,
    publication: &str,
    subscription: Option<&str>,
    copy_data: Option<bool>,
) -> Result<(), postgres::Error> {
    let mut c = tgt.try_client()?;
    match (subscription, copy_data) {
        (None, None) => c.execute(
            "SELECT livesync_start(source => $1, publication => $2)",
            &[&source, &publication],
        ),
        (Some(s), None) => c.execute(
            "SELECT livesync_start(source => $1, publication => $2, subscription => $3)",
            &[&source, &publication, &s],
        ),
        (None, Some(cd)) => c.execute(
            "SELECT livesync_start(source => $1, publication => $2, copy_data => $3)",
            &[&source, &publication, &cd],
        ),
        (Some(s), Some(cd)) => c.execute(
            "SELECT livesync_start(source => $1, publication => $2, subscription => $3, \
             copy_data => $4)",
            &[&source, &publication, &s, &cd],
        ),
    }
    .map(|_| ())
}

/// Starts a sync (panics on error) and returns a guard that drops it when the test ends, so a
/// failing test does not leave slots on the shared source.
pub fn start_sync(tgt: &Db, source: &str, publication: &str, subscription: &str) -> SyncGuard {
    start_sync_opts(tgt, source, publication, subscription, None)
}

/// [`start_sync`] with `copy_data`.
pub fn start_sync_opts(
    tgt: &Db,
    source: &str,
    publication: &str,
    subscription: &str,
    copy_data: Option<bool>,
) -> SyncGuard {
    if let Err(e) = try_livesync_start(tgt, source, publication, Some(subscription), copy_data) {
        panic!(
            "livesync_start(source => {source:?}, publication => {publication:?}, subscription => \
             {subscription:?}, copy_data => {copy_data:?}) failed: {}\n{}",
            err_text(&e),
            all_log_tails(30)
        );
    }
    SyncGuard::new(tgt, subscription)
}

/// `SELECT livesync_stop($1)` (panics on error).
pub fn livesync_stop(tgt: &Db, subscription: &str) {
    tgt.client()
        .execute("SELECT livesync_stop($1)", &[&subscription])
        .unwrap_or_else(|e| panic!("livesync_stop({subscription}): {}", err_text(&e)));
}

/// `SELECT livesync_drop($1)` (panics on error).
pub fn livesync_drop(tgt: &Db, subscription: &str) {
    tgt.client()
        .execute("SELECT livesync_drop($1)", &[&subscription])
        .unwrap_or_else(|e| panic!("livesync_drop({subscription}): {}", err_text(&e)));
}

/// Drops a sync on drop (best effort, errors ignored): keeps the shared source's slots free
/// when a test fails midway.
pub struct SyncGuard {
    cfg: Config,
    subscription: String,
}

impl SyncGuard {
    pub fn new(tgt: &Db, subscription: &str) -> SyncGuard {
        SyncGuard {
            cfg: tgt.config(),
            subscription: subscription.to_string(),
        }
    }
    pub fn name(&self) -> &str {
        &self.subscription
    }
}

impl Drop for SyncGuard {
    fn drop(&mut self) {
        let mut cfg = self.cfg.clone();
        cfg.connect_timeout(Duration::from_secs(3))
            .options("-c statement_timeout=20s");
        if let Ok(mut c) = cfg.connect(NoTls) {
            let _ = c.execute(
                "SELECT livesync_drop(subname::text) FROM livesync.subscription WHERE subname = $1",
                &[&self.subscription],
            );
        }
    }
}

/// One row of `livesync.subscription_rel`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RelState {
    pub schemaname: String,
    pub tablename: String,
    pub rrelid: u32,
    pub state: char,
    pub lsn: Option<String>,
}

impl RelState {
    /// `schema.table`
    pub fn qualified(&self) -> String {
        format!("{}.{}", self.schemaname, self.tablename)
    }
}

/// The rows of `livesync.subscription_rel` for a sync, sorted by schema and table.
pub fn try_sub_rels(tgt: &Db, subscription: &str) -> Result<Vec<RelState>, postgres::Error> {
    let rows = tgt.try_client()?.query(
        "SELECT schemaname::text, tablename::text, rrelid, state::text, lsn::text \
         FROM livesync.subscription_rel WHERE subname = $1 ORDER BY 1, 2",
        &[&subscription],
    )?;
    Ok(rows
        .iter()
        .map(|r| RelState {
            schemaname: r.get(0),
            tablename: r.get(1),
            rrelid: r.get(2),
            state: r.get::<_, String>(3).chars().next().unwrap_or('?'),
            lsn: r.get(4),
        })
        .collect())
}

pub fn sub_rels(tgt: &Db, subscription: &str) -> Vec<RelState> {
    try_sub_rels(tgt, subscription)
        .unwrap_or_else(|e| panic!("reading livesync.subscription_rel: {}", err_text(&e)))
}

/// One row of `livesync.subscription`.
#[derive(Clone, Debug)]
pub struct SubInfo {
    pub enabled: bool,
    pub publication: String,
    pub pid: Option<i32>,
    pub received_lsn: Option<String>,
    pub applied_lsn: Option<String>,
    pub lag_bytes: Option<String>,
    pub last_error: Option<String>,
}

pub fn try_sub_info(tgt: &Db, subscription: &str) -> Result<Option<SubInfo>, postgres::Error> {
    let rows = tgt.try_client()?.query(
        "SELECT enabled, publication::text, pid::int4, received_lsn::text, applied_lsn::text, \
         lag_bytes::text, last_error::text FROM livesync.subscription WHERE subname = $1",
        &[&subscription],
    )?;
    Ok(rows.first().map(|r| SubInfo {
        enabled: r.get(0),
        publication: r.get(1),
        pid: r.get(2),
        received_lsn: r.get(3),
        applied_lsn: r.get(4),
        lag_bytes: r.get(5),
        last_error: r.get(6),
    }))
}

/// The `livesync.subscription` row of a sync, if any.
pub fn sub_info(tgt: &Db, subscription: &str) -> Option<SubInfo> {
    try_sub_info(tgt, subscription)
        .unwrap_or_else(|e| panic!("reading livesync.subscription: {}", err_text(&e)))
}

fn describe_sync(tgt: &Db, subscription: &str) -> String {
    format!(
        "livesync.subscription: {:?}\nlivesync.subscription_rel: {:?}",
        try_sub_info(tgt, subscription).map_err(|e| err_text(&e)),
        try_sub_rels(tgt, subscription).map_err(|e| err_text(&e))
    )
}

/// Waits (60 s) until the sync lists at least one table and every table is in `state`.
pub fn wait_for_sync_state(tgt: &Db, subscription: &str, state: char) {
    let what = format!("all tables of sync {subscription} in state '{state}'");
    wait_until_or(
        SYNC_TIMEOUT,
        &what,
        || describe_sync(tgt, subscription),
        || {
            try_sub_rels(tgt, subscription)
                .map(|rels| !rels.is_empty() && rels.iter().all(|r| r.state == state))
                .unwrap_or(false)
        },
    );
}

/// Waits (60 s) until the sync lists exactly `tables` (`schema.table`), all in `state`.
pub fn wait_for_tables(tgt: &Db, subscription: &str, tables: &[&str], state: char) {
    let want: BTreeSet<String> = tables.iter().map(|s| s.to_string()).collect();
    let what = format!("sync {subscription} to list exactly {want:?}, all in state '{state}'");
    wait_until_or(
        SYNC_TIMEOUT,
        &what,
        || describe_sync(tgt, subscription),
        || match try_sub_rels(tgt, subscription) {
            Ok(rels) => {
                let got: BTreeSet<String> = rels.iter().map(|r| r.qualified()).collect();
                got == want && rels.iter().all(|r| r.state == state)
            }
            Err(_) => false,
        },
    );
}

/// Like [`wait_until`], adding `context()` to the panic message.
pub fn wait_until_or(
    timeout: Duration,
    what: &str,
    context: impl Fn() -> String,
    mut f: impl FnMut() -> bool,
) {
    let start = Instant::now();
    loop {
        if f() {
            return;
        }
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}\n{}",
                context(),
                all_log_tails(40)
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// The source's current WAL position (text).
pub fn current_lsn(src: &Db) -> String {
    src.query_one("SELECT pg_current_wal_lsn()::text")
}

/// Waits (60 s) until every table of the sync is 'r' and its `applied_lsn` has reached the
/// source's current WAL position: the target then holds everything committed on the source
/// before this call.
pub fn wait_caught_up(src: &Db, tgt: &Db, subscription: &str) {
    wait_for_sync_state(tgt, subscription, 'r');
    wait_applied(src, tgt, subscription, SYNC_TIMEOUT);
}

/// Waits (up to `timeout`) until `livesync.subscription.applied_lsn` reaches the source's
/// current WAL position, taken when called.
pub fn wait_applied(src: &Db, tgt: &Db, subscription: &str, timeout: Duration) {
    let lsn = current_lsn(src);
    let what = format!("sync {subscription} to apply the source up to {lsn}");
    wait_until_or(
        timeout,
        &what,
        || describe_sync(tgt, subscription),
        || {
            let Ok(mut c) = tgt.try_client() else {
                return false;
            };
            c.query_one(
                "SELECT coalesce(applied_lsn >= $1::text::pg_lsn, false) FROM livesync.subscription \
                 WHERE subname = $2",
                &[&lsn, &subscription],
            )
            .map(|r| r.get::<_, bool>(0))
            .unwrap_or(false)
        },
    );
}

/// [`wait_caught_up`], then [`assert_tables_equal`] for every table.
pub fn assert_synced(src: &Db, tgt: &Db, subscription: &str, tables: &[&str]) {
    wait_caught_up(src, tgt, subscription);
    for t in tables {
        assert_tables_equal(src, tgt, t);
    }
}

/// Replication slots on a cluster whose names start with `prefix` (literally, no LIKE
/// wildcards).
pub fn slots_on_source(src: &Cluster, prefix: &str) -> Vec<String> {
    src.client("postgres")
        .query(
            "SELECT slot_name::text FROM pg_replication_slots WHERE starts_with(slot_name::text, $1) \
             ORDER BY 1",
            &[&prefix],
        )
        .expect("query pg_replication_slots")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `(pid, backend_type)` of the livesync processes connected to a database (the launcher,
/// which is connected to none, is not listed).
pub fn livesync_backends(tgt: &Db) -> Vec<(i32, String)> {
    tgt.client()
        .query(
            "SELECT pid, backend_type FROM pg_stat_activity \
             WHERE backend_type LIKE '%livesync%' AND datname = $1 ORDER BY 1",
            &[&tgt.name],
        )
        .expect("query pg_stat_activity")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Copies table definitions from source to target the way users do:
/// `pg_dump --schema-only ... | psql`. `tables` empty = the whole database.
pub fn copy_schema(src: &Db, tgt: &Db, tables: &[&str]) {
    // Each side's own programs: pg_dump must be as new as the source, and psql knows the
    // meta-commands of pg_dump's own major.
    let mut dump = src.cluster.install().client("pg_dump");
    dump.args([
        "--schema-only",
        "--no-publications",
        "--no-subscriptions",
        "--no-owner",
    ])
    .args(["--no-privileges", "-d"])
    .arg(src.uri());
    for t in tables {
        dump.arg("-t").arg(t);
    }
    let out = dump.stderr(Stdio::inherit()).output().expect("run pg_dump");
    assert!(out.status.success(), "pg_dump of {} failed", src.name);
    let mut script = String::from_utf8(out.stdout).expect("pg_dump output is UTF-8");
    if tgt.cluster.major() < 17 {
        // pg_dump 17+ sets transaction_timeout, which older servers do not know.
        script = script
            .lines()
            .filter(|l| !l.starts_with("SET transaction_timeout"))
            .collect::<Vec<_>>()
            .join("\n");
    }
    let mut psql = src.cluster.install().client("psql");
    psql.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(tgt.uri())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = psql.spawn().expect("run psql");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let res = child.wait_with_output().unwrap();
    assert!(
        res.status.success(),
        "psql loading the schema into {} failed: {}",
        tgt.name,
        String::from_utf8_lossy(&res.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// Background writer
// ---------------------------------------------------------------------------------------------

/// What a background writer did.
#[derive(Clone, Copy, Debug, Default)]
pub struct WriterStats {
    pub inserts: u64,
    pub updates: u64,
    pub deletes: u64,
}

impl WriterStats {
    pub fn total(&self) -> u64 {
        self.inserts + self.updates + self.deletes
    }
}

/// A thread that writes to a source table until stopped.
pub struct BackgroundWriter {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<Result<WriterStats, String>>>,
    what: String,
}

/// The DDL of the table shape [`BackgroundWriter::kv`] writes to.
pub fn kv_table_ddl(table: &str) -> String {
    format!("CREATE TABLE {table} (id bigint PRIMARY KEY, v bigint NOT NULL, payload text)")
}

/// SQL that fills a kv table with ids `1..=n`.
pub fn kv_fill_sql(table: &str, n: i64) -> String {
    format!("INSERT INTO {table} SELECT g, g * 10, md5(g::text) FROM generate_series(1, {n}) g")
}

impl BackgroundWriter {
    /// Inserts (ids from `next_id` up), updates and deletes (random ids below the next insert
    /// id) on a table shaped like [`kv_table_ddl`], in single statements and in small
    /// transactions, until stopped.
    pub fn kv(db: &Db, table: &str, next_id: i64) -> BackgroundWriter {
        let table = table.to_string();
        let mut next = next_id;
        let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ (next_id as u64);
        let mut stats = WriterStats::default();
        let ins = format!(
            "INSERT INTO {table} (id, v, payload) VALUES ($1::int8, $1::int8 * 10, md5($1::int8::text))"
        );
        let upd =
            format!("UPDATE {table} SET v = v + 1, payload = md5(random()::text) WHERE id = $1");
        let del = format!("DELETE FROM {table} WHERE id = $1");
        Self::spawn_with_stats(db, &format!("kv writer on {table}"), move |c, i, out| {
            let ops = if i % 10 == 9 { 5 } else { 1 };
            let mut tx = c.transaction()?;
            for _ in 0..ops {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let pick = (rng % 100) as u32;
                let target = 1 + (rng / 100) as i64 % next.max(2);
                if pick < 50 {
                    tx.execute(ins.as_str(), &[&next])?;
                    next += 1;
                    stats.inserts += 1;
                } else if pick < 85 {
                    tx.execute(upd.as_str(), &[&target])?;
                    stats.updates += 1;
                } else {
                    tx.execute(del.as_str(), &[&target])?;
                    stats.deletes += 1;
                }
            }
            tx.commit()?;
            *out = stats;
            Ok(())
        })
    }

    /// Runs `op(client, iteration)` in a loop (with a 2 ms pause) until stopped; counts
    /// iterations as inserts in the stats.
    pub fn spawn<F>(db: &Db, what: &str, mut op: F) -> BackgroundWriter
    where
        F: FnMut(&mut Client, u64) -> Result<(), postgres::Error> + Send + 'static,
    {
        let mut n = 0;
        Self::spawn_with_stats(db, what, move |c, i, out| {
            op(c, i)?;
            n += 1;
            out.inserts = n;
            Ok(())
        })
    }

    fn spawn_with_stats<F>(db: &Db, what: &str, mut op: F) -> BackgroundWriter
    where
        F: FnMut(&mut Client, u64, &mut WriterStats) -> Result<(), postgres::Error>
            + Send
            + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = db.config();
        let stop2 = stop.clone();
        let what2 = what.to_string();
        let handle = thread::spawn(move || {
            let mut c = cfg
                .connect(NoTls)
                .map_err(|e| format!("{what2}: connect: {e}"))?;
            let mut stats = WriterStats::default();
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                op(&mut c, i, &mut stats).map_err(|e| format!("{what2}: {}", err_text(&e)))?;
                i += 1;
                thread::sleep(Duration::from_millis(2));
            }
            Ok(stats)
        });
        BackgroundWriter {
            stop,
            handle: Some(handle),
            what: what.to_string(),
        }
    }

    /// Stops the writer and returns what it did (panics if it failed or did nothing).
    pub fn stop(mut self) -> WriterStats {
        self.stop.store(true, Ordering::Relaxed);
        let res = self
            .handle
            .take()
            .unwrap()
            .join()
            .expect("background writer panicked");
        let stats = res.unwrap_or_else(|e| panic!("background writer failed: {e}"));
        assert!(stats.total() > 0, "{} did nothing", self.what);
        stats
    }
}

impl Drop for BackgroundWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Small helpers for tests
// ---------------------------------------------------------------------------------------------

/// Asserts that `f` fails with a server error whose SQLSTATE is one of `codes` (a code of two
/// characters matches a whole class, e.g. "08"), and returns the error text.
pub fn assert_sqlstate(res: Result<(), postgres::Error>, codes: &[&str], what: &str) -> String {
    let e = match res {
        Ok(()) => panic!("{what}: expected an ERROR with SQLSTATE in {codes:?}, but it succeeded"),
        Err(e) => e,
    };
    let text = err_text(&e);
    let code = sqlstate(&e)
        .unwrap_or_else(|| panic!("{what}: expected a server ERROR, got a client error: {text}"));
    assert!(
        !code.starts_with("00") && !code.starts_with("01") && !code.starts_with("02"),
        "{what}: SQLSTATE {code} is not an error class"
    );
    assert!(
        codes.iter().any(|c| code.starts_with(c)),
        "{what}: expected SQLSTATE in {codes:?}, got {text}"
    );
    text
}

/// The set of distinct strings in a list (convenience for assertions).
pub fn set_of<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> HashSet<String> {
    items.into_iter().map(Into::into).collect()
}

// ---------------------------------------------------------------------------------------------
// Fault injection: a TCP proxy, walsenders, a writer that survives a source restart
// ---------------------------------------------------------------------------------------------

struct ProxyConn {
    client: std::net::TcpStream,
    upstream: std::net::TcpStream,
    /// Pump threads of this connection that have finished (0..=2).
    done: Arc<AtomicU64>,
}

struct ProxyShared {
    cut: AtomicBool,
    stop: AtomicBool,
    conns: Mutex<Vec<ProxyConn>>,
    accepted: AtomicU64,
    refused: AtomicU64,
}

impl ProxyShared {
    fn close_all(&self) {
        let mut conns = self.conns.lock().unwrap();
        for c in conns.drain(..) {
            let _ = c.client.shutdown(std::net::Shutdown::Both);
            let _ = c.upstream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// A test-controlled TCP proxy on 127.0.0.1 in front of a server port: [`TcpProxy::cut`]
/// closes every current connection and refuses new ones (accepts and closes them at once)
/// until [`TcpProxy::restore`]. Plain std threads; at most 64 connections at a time; stops
/// (closing everything) when dropped.
pub struct TcpProxy {
    port: u16,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

impl TcpProxy {
    const MAX_CONNS: usize = 64;

    pub fn start(upstream_port: u16) -> TcpProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("proxy: bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let shared = Arc::new(ProxyShared {
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let sh = shared.clone();
        let accept = thread::spawn(move || {
            while !sh.stop.load(Ordering::SeqCst) {
                let (client, _) = match listener.accept() {
                    Ok(x) => x,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                    Err(_) => {
                        thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                let _ = client.set_nonblocking(false);
                let mut conns = sh.conns.lock().unwrap();
                conns.retain(|c| c.done.load(Ordering::SeqCst) < 2);
                if sh.cut.load(Ordering::SeqCst) || conns.len() >= Self::MAX_CONNS {
                    sh.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let upstream = match std::net::TcpStream::connect_timeout(
                    &std::net::SocketAddr::from(([127, 0, 0, 1], upstream_port)),
                    Duration::from_secs(5),
                ) {
                    Ok(u) => u,
                    Err(_) => {
                        sh.refused.fetch_add(1, Ordering::SeqCst);
                        let _ = client.shutdown(std::net::Shutdown::Both);
                        continue;
                    }
                };
                let _ = client.set_nodelay(true);
                let _ = upstream.set_nodelay(true);
                let done = Arc::new(AtomicU64::new(0));
                for (from, to) in [
                    (client.try_clone(), upstream.try_clone()),
                    (upstream.try_clone(), client.try_clone()),
                ] {
                    let (Ok(mut from), Ok(mut to)) = (from, to) else {
                        done.fetch_add(1, Ordering::SeqCst);
                        continue;
                    };
                    let done = done.clone();
                    thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = from.shutdown(std::net::Shutdown::Both);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                        done.fetch_add(1, Ordering::SeqCst);
                    });
                }
                sh.accepted.fetch_add(1, Ordering::SeqCst);
                conns.push(ProxyConn {
                    client,
                    upstream,
                    done,
                });
            }
            sh.close_all();
        });
        TcpProxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every current connection and refuses new ones until [`TcpProxy::restore`].
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// (connections passed through, connections refused) so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.shared.accepted.load(Ordering::SeqCst),
            self.shared.refused.load(Ordering::SeqCst),
        )
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        self.shared.close_all();
    }
}

/// `active_pid` of a replication slot on a cluster (the walsender streaming it), if active.
pub fn slot_active_pid(src: &Cluster, slot: &str) -> Option<i32> {
    src.client("postgres")
        .query(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .expect("query pg_replication_slots")
        .first()
        .and_then(|r| r.get::<_, Option<i32>>(0))
}

/// `livesync.subscription.last_error` of a sync (None: no row or no error).
pub fn last_error(tgt: &Db, subscription: &str) -> Option<String> {
    try_sub_info(tgt, subscription)
        .ok()
        .flatten()
        .and_then(|i| i.last_error)
}

/// Waits until `livesync.subscription.last_error` of the sync is set and satisfies `ok`;
/// returns it.
pub fn wait_for_last_error(
    tgt: &Db,
    subscription: &str,
    timeout: Duration,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let mut seen = None;
    wait_until_or(
        timeout,
        &format!("livesync.subscription.last_error of {subscription} to {what}"),
        || describe_sync(tgt, subscription),
        || {
            seen = last_error(tgt, subscription).filter(|e| ok(e));
            seen.is_some()
        },
    );
    seen.unwrap()
}

/// True for errors that mean the connection is gone (server shutdown, terminated backend,
/// connection failure) rather than a problem with the statement.
pub fn is_connection_error(e: &postgres::Error) -> bool {
    match sqlstate(e) {
        None => true,
        Some(c) => c.starts_with("08") || c.starts_with("57P") || c == "25P03",
    }
}

impl BackgroundWriter {
    /// Like [`BackgroundWriter::spawn`], but survives the source going away: after a
    /// connection error it reconnects (retrying every 100 ms) and goes on with the next
    /// iteration. `op` must not depend on whether an earlier iteration committed (an iteration
    /// cut by a crash may or may not have). Other errors end the writer as usual. Counts
    /// successful iterations as inserts and interrupted ones as deletes in the stats.
    pub fn spawn_reconnecting<F>(db: &Db, what: &str, mut op: F) -> BackgroundWriter
    where
        F: FnMut(&mut Client, u64) -> Result<(), postgres::Error> + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let cfg = db.config();
        let stop2 = stop.clone();
        let what2 = what.to_string();
        let handle = thread::spawn(move || {
            let mut stats = WriterStats::default();
            let mut client: Option<Client> = None;
            let mut i = 0u64;
            while !stop2.load(Ordering::Relaxed) {
                let c = match client.as_mut() {
                    Some(c) if !c.is_closed() => c,
                    _ => match cfg.connect(NoTls) {
                        Ok(c) => client.insert(c),
                        Err(_) => {
                            client = None;
                            thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                    },
                };
                let res = op(c, i);
                i += 1;
                match res {
                    Ok(()) => stats.inserts += 1,
                    Err(e) if is_connection_error(&e) || c.is_closed() => {
                        stats.deletes += 1;
                        client = None;
                    }
                    Err(e) => return Err(format!("{what2}: {}", err_text(&e))),
                }
                thread::sleep(Duration::from_millis(2));
            }
            Ok(stats)
        });
        BackgroundWriter {
            stop,
            handle: Some(handle),
            what: what.to_string(),
        }
    }
}

/// Percentile (0..=100) of a list of samples (nearest rank; NaN when empty).
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Seconds from an environment variable, or `default`.
pub fn env_secs(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

// ---- TLS test material ----------------------------------------------------------------

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Test TLS material in `dir`: `ca.crt`, a server certificate it signed (`server.crt`,
/// `server.key`; SAN localhost and 127.0.0.1) and an unrelated `otherca.crt`, readable by
/// the `postgres` OS user. Needs the `openssl` command.
pub fn make_test_certs(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for (name, cn) in [("ca", "livesync e2e CA"), ("otherca", "some other CA")] {
        let subj = format!("/CN={cn}");
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        let mut a: Vec<&str> = vec!["req", "-x509"];
        a.extend(ec);
        a.extend([
            "-days",
            "30",
            "-subj",
            &subj,
            "-keyout",
            &key,
            "-out",
            &crt,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(dir, &a);
    }
    let mut a: Vec<&str> = vec!["req"];
    a.extend(ec);
    a.extend([
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    openssl(dir, &a);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-out",
            "server.crt",
            "-extfile",
            "ext.cnf",
        ],
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["ca.crt", "otherca.crt", "server.crt"] {
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    // The source's server reads its key, which must be its own user's (the uid of a
    // chroot's `postgres` is not this machine's).
    source_install().chown(dir);
    for e in std::fs::read_dir(dir).unwrap() {
        source_install().chown(&e.unwrap().path());
    }
}

// ---- the kv + ins fixture of the restart and fault tests ---------------------------------

/// The target's `ins` has no key, so a change applied twice shows up as a duplicate row
/// instead of an error.
pub const INS_TARGET_DDL: &str = "CREATE TABLE ins (id bigint, payload text)";

/// Source: `kv` (5000 rows) and `ins` (`ins_rows` rows), publication `analytics` for both;
/// target: the same tables, `ins` without a key.
pub fn setup_kv_ins(src: &Db, tgt: &Db, ins_rows: i64) {
    src.exec(&format!(
        "{}; {}; CREATE TABLE ins (id bigint PRIMARY KEY, payload text); \
         INSERT INTO ins SELECT g, md5(g::text) FROM generate_series(1, {ins_rows}) g; \
         CREATE PUBLICATION analytics FOR TABLE kv, ins",
        kv_table_ddl("kv"),
        kv_fill_sql("kv", 5_000)
    ));
    tgt.exec(&format!("{}; {INS_TARGET_DDL}", kv_table_ddl("kv")));
}

/// Inserts ids from `first` up into `ins`, one per statement.
pub fn ins_writer(src: &Db, first: i64) -> BackgroundWriter {
    BackgroundWriter::spawn(src, "ins writer", move |c, i| {
        c.execute(
            "INSERT INTO ins VALUES ($1::int8, md5($1::int8::text))",
            &[&(first + i as i64)],
        )
        .map(|_| ())
    })
}

/// [`assert_synced`] for `kv` and `ins`, and no duplicate ids in either.
pub fn assert_kv_ins_synced(src: &Db, tgt: &Db, sub: &str) {
    assert_synced(src, tgt, sub, &["kv", "ins"]);
    assert_no_duplicates(tgt, "ins", "id");
    assert_no_duplicates(tgt, "kv", "id");
}

/// `livesync.subscription.last_error` of a sync (None: no error, or no such sync).
pub fn sub_last_error(tgt: &Db, sub: &str) -> Option<String> {
    try_sub_info(tgt, sub)
        .ok()
        .flatten()
        .and_then(|i| i.last_error)
}

/// Waits (`timeout`) until `livesync.subscription.last_error` of the sync satisfies `ok`;
/// returns it. On a timeout, says which errors it saw meanwhile, and `describe()`.
pub fn wait_sub_error(
    tgt: &Db,
    sub: &str,
    timeout: Duration,
    what: &str,
    describe: impl Fn() -> String,
    ok: impl Fn(&str) -> bool,
) -> String {
    let seen = std::cell::RefCell::new(Vec::<String>::new());
    let mut found = None;
    wait_until_or(
        timeout,
        &format!("livesync.subscription.last_error of {sub} to report {what}"),
        || format!("errors seen meanwhile: {:?}\n{}", seen.borrow(), describe()),
        || match sub_last_error(tgt, sub) {
            Some(e) if ok(&e) => {
                found = Some(e);
                true
            }
            Some(e) => {
                let mut seen = seen.borrow_mut();
                if !seen.contains(&e) {
                    seen.push(e);
                }
                false
            }
            None => false,
        },
    );
    found.unwrap()
}
