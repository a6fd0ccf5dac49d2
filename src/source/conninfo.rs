//! Parsing of libpq connection strings into [`ConnInfo`], with libpq's defaults.
//!
//! Both forms libpq accepts are understood:
//!
//! * URIs: `postgres[ql]://[user[:password]@][host[:port][,host[:port]...]][/dbname][?key=value&...]`
//!   with percent-decoding everywhere, `[::1]` IPv6 literals and `ssl=true`;
//! * `key=value` strings, values optionally in single quotes, with backslash escapes.
//!
//! A connection string means what libpq (15) makes of it in the process that runs this client,
//! i.e. inside the target's PostgreSQL server, as the OS user that runs it. Every value not
//! given in the string comes, in this order, from the service named by `service` (or
//! `PGSERVICE`) in `pg_service.conf`, from the keyword's environment variable (`PGHOST`,
//! `PGUSER`, `PGSSLMODE`, ...) and from libpq's built-in default (the user defaults to the name
//! of the OS user). The environment is read through [`Env`], so tests can inject one.
//!
//! Every keyword libpq 15 knows is accepted by the parser, an unknown keyword is an error, as
//! in libpq. No keyword is accepted and then silently ignored: each is honoured or rejected
//! with a message saying why, see [`KNOWN_KEYS`]. The only exceptions are the GSSAPI-only
//! keywords `krbsrvname` and `gsslib`: this client has no GSSAPI, refuses GSSAPI
//! authentication requests and rejects `gssencmode=require`, so they cannot change anything.
//!
//! The password is never part of [`ConnInfo::redacted`] nor of the `Debug` output.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SourceError;

/// Default connect timeout when the connection string has none.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;

/// Every keyword libpq 15 knows, and what this client does with it:
///
/// | keyword | treatment |
/// |---|---|
/// | `host`, `hostaddr`, `port` | hosts tried in order (multi-host lists) |
/// | `dbname`, `user`, `password`, `passfile` | honoured (`.pgpass` as libpq) |
/// | `channel_binding` | `disable`, `prefer` (default), `require`: SCRAM-SHA-256-PLUS with `tls-server-end-point` |
/// | `connect_timeout` | per host, default 10 s |
/// | `client_encoding` | must be UTF8 (the client always talks UTF8); anything else is rejected |
/// | `options` | sent; may not set what the client sets itself ([`FIXED_STARTUP_PARAMS`], `application_name`) |
/// | `application_name`, `fallback_application_name` | honoured |
/// | `keepalives*`, `tcp_user_timeout` | honoured (TCP) |
/// | `sslmode`, `sslcert`, `sslkey`, `sslrootcert`, `sslsni` | honoured |
/// | `sslcrl`, `sslcrldir` | CRLs checked for the whole chain (needs certificate verification) |
/// | `ssl_min_protocol_version`, `ssl_max_protocol_version` | honoured within TLSv1.2..TLSv1.3; a maximum below TLSv1.2 is rejected |
/// | `sslcompression` | `0` honoured, `1` rejected (rustls has no TLS compression) |
/// | `sslpassword` | rejected (encrypted client keys cannot be read) |
/// | `requirepeer` | checked on Unix-domain sockets (peer credentials), as libpq |
/// | `gssencmode` | `disable`/`prefer` (no GSSAPI: plain), `require` rejected |
/// | `krbsrvname`, `gsslib` | ignored: GSSAPI-only, and GSSAPI is never used (see the module doc) |
/// | `service` | `pg_service.conf` lookup as libpq |
/// | `target_session_attrs` | all six values, checked per host as libpq |
/// | `replication` | rejected: livesync chooses the mode of each connection |
pub const KNOWN_KEYS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "service",
    "target_session_attrs",
    "replication",
];

/// The environment variable libpq 15 takes each keyword's default from (`PGSERVICE` is
/// handled with the service file, as in libpq, since it must be known first).
const ENV_VARS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("hostaddr", "PGHOSTADDR"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("channel_binding", "PGCHANNELBINDING"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("client_encoding", "PGCLIENTENCODING"),
    ("options", "PGOPTIONS"),
    ("application_name", "PGAPPNAME"),
    ("sslmode", "PGSSLMODE"),
    ("sslcompression", "PGSSLCOMPRESSION"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcrl", "PGSSLCRL"),
    ("sslcrldir", "PGSSLCRLDIR"),
    ("sslsni", "PGSSLSNI"),
    ("requirepeer", "PGREQUIREPEER"),
    ("ssl_min_protocol_version", "PGSSLMINPROTOCOLVERSION"),
    ("ssl_max_protocol_version", "PGSSLMAXPROTOCOLVERSION"),
    ("gssencmode", "PGGSSENCMODE"),
    ("krbsrvname", "PGKRBSRVNAME"),
    ("gsslib", "PGGSSLIB"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
];

/// Settings every connection to the source sends in its startup packet. Startup parameters
/// take precedence over `ALTER ROLE` / `ALTER DATABASE` settings on the source:
///
/// * `search_path` is empty, so no object a user created on the source (a function or
///   operator in `public`, ...) is picked up by livesync's queries instead of the built-in one;
/// * a copy may take hours and a walsender idles between commands: timeouts set on the source
///   must not cut them;
/// * the formats livesync parses.
pub const FIXED_STARTUP_PARAMS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("search_path", ""),
    ("statement_timeout", "0"),
    ("lock_timeout", "0"),
    ("idle_in_transaction_session_timeout", "0"),
    ("idle_session_timeout", "0"),
];

/// Where libpq takes its defaults from: the environment of the process, the OS user it runs
/// as and that user's home directory. [`ProcessEnv`] is the real one; tests use [`MapEnv`].
pub trait Env {
    /// An environment variable (`None` when unset or not valid UTF-8).
    fn var(&self, name: &str) -> Option<String>;
    /// The name of the OS user the process runs as (libpq's default user name).
    fn os_user(&self) -> Option<String>;
    /// The home directory, for `~/.pgpass`, `~/.pg_service.conf` and `~/.postgresql/`:
    /// `$HOME`, else the OS user's home directory (libpq 15's `pqGetHomeDirectory`).
    fn home_dir(&self) -> Option<PathBuf>;
    /// libpq's compiled-in `SYSCONFDIR`, the directory of the system-wide `pg_service.conf`
    /// when `PGSYSCONFDIR` is not set.
    fn default_sysconfdir(&self) -> PathBuf;
}

/// The real environment of this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var_os(name).and_then(|v| v.into_string().ok())
    }

    fn os_user(&self) -> Option<String> {
        passwd_entry(effective_uid()).map(|(name, _)| name)
    }

    fn home_dir(&self) -> Option<PathBuf> {
        match self.var("HOME") {
            Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
            _ => passwd_entry(effective_uid()).map(|(_, dir)| dir),
        }
    }

    /// libpq's `SYSCONFDIR` is fixed when libpq is built; this crate does not link libpq, so
    /// it takes the first existing directory of the usual builds: PGDG Debian/Ubuntu packages
    /// (`/etc/postgresql-common`), PGDG RPMs (`/etc/sysconfig/pgsql`), source builds
    /// (`/usr/local/pgsql/etc`). `PGSYSCONFDIR` overrides it, as in libpq.
    fn default_sysconfdir(&self) -> PathBuf {
        const CANDIDATES: &[&str] = &[
            "/etc/postgresql-common",
            "/etc/sysconfig/pgsql",
            "/usr/local/pgsql/etc",
        ];
        CANDIDATES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_dir())
            .unwrap_or_else(|| PathBuf::from(CANDIDATES[2]))
    }
}

/// An injected environment: variables, OS user, its home directory (used when `HOME` is not
/// among the variables) and the default sysconfdir.
#[derive(Debug, Clone, Default)]
pub struct MapEnv {
    pub vars: HashMap<String, String>,
    pub os_user: Option<String>,
    pub passwd_home: Option<PathBuf>,
    pub sysconfdir: PathBuf,
}

impl MapEnv {
    /// No variables, no OS user, no home directory, sysconfdir `/nonexistent`.
    pub fn new() -> MapEnv {
        MapEnv {
            sysconfdir: PathBuf::from("/nonexistent"),
            ..MapEnv::default()
        }
    }

    pub fn with_var(mut self, name: &str, value: impl Into<String>) -> MapEnv {
        self.vars.insert(name.to_string(), value.into());
        self
    }

    pub fn with_os_user(mut self, user: &str) -> MapEnv {
        self.os_user = Some(user.to_string());
        self
    }

    pub fn with_passwd_home(mut self, dir: impl Into<PathBuf>) -> MapEnv {
        self.passwd_home = Some(dir.into());
        self
    }

    pub fn with_sysconfdir(mut self, dir: impl Into<PathBuf>) -> MapEnv {
        self.sysconfdir = dir.into();
        self
    }
}

impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.vars.get(name).cloned()
    }

    fn os_user(&self) -> Option<String> {
        self.os_user.clone()
    }

    fn home_dir(&self) -> Option<PathBuf> {
        match self.vars.get("HOME") {
            Some(h) if !h.is_empty() => Some(PathBuf::from(h)),
            _ => self.passwd_home.clone(),
        }
    }

    fn default_sysconfdir(&self) -> PathBuf {
        self.sysconfdir.clone()
    }
}

/// The effective user id of this process.
pub(super) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Name and home directory of the user `uid` from the password database (NSS included).
pub(super) fn passwd_entry(uid: u32) -> Option<(String, PathBuf)> {
    use std::ffi::{CStr, OsStr};
    use std::os::unix::ffi::OsStrExt;
    let mut buf: Vec<libc::c_char> = vec![0; 4096];
    // SAFETY: an all-zero passwd is a valid value of this plain C struct.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    loop {
        // SAFETY: every pointer is valid for the call and buf.len() is its real size.
        let rc =
            unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        break;
    }
    if result.is_null() || pwd.pw_name.is_null() {
        return None;
    }
    // SAFETY: on success pw_name and pw_dir point to NUL-terminated strings inside buf.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }
        .to_str()
        .ok()?
        .to_string();
    let dir = if pwd.pw_dir.is_null() {
        PathBuf::new()
    } else {
        // SAFETY: as above.
        PathBuf::from(OsStr::from_bytes(
            unsafe { CStr::from_ptr(pwd.pw_dir) }.to_bytes(),
        ))
    };
    Some((name, dir))
}

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str, from: &str) -> Result<SslMode, SourceError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(invalid(format!(
                    "invalid sslmode value: \"{s}\"{from} (expected disable, allow, prefer, require, verify-ca or verify-full)"
                )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// libpq's `channel_binding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelBinding {
    /// Never use channel binding.
    Disable,
    /// Use SCRAM-SHA-256-PLUS when the server offers it over TLS (the default).
    Prefer,
    /// Fail unless the server is authenticated with SCRAM-SHA-256-PLUS.
    Require,
}

impl ChannelBinding {
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Prefer => "prefer",
            ChannelBinding::Require => "require",
        }
    }
}

/// libpq's `target_session_attrs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetSessionAttrs {
    Any,
    ReadWrite,
    ReadOnly,
    Primary,
    Standby,
    /// Standby if any host is one, else any.
    PreferStandby,
}

impl TargetSessionAttrs {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetSessionAttrs::Any => "any",
            TargetSessionAttrs::ReadWrite => "read-write",
            TargetSessionAttrs::ReadOnly => "read-only",
            TargetSessionAttrs::Primary => "primary",
            TargetSessionAttrs::Standby => "standby",
            TargetSessionAttrs::PreferStandby => "prefer-standby",
        }
    }
}

/// A TLS protocol version of `ssl_min_protocol_version` / `ssl_max_protocol_version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    V1_0,
    V1_1,
    V1_2,
    V1_3,
}

impl TlsVersion {
    fn parse(key: &str, v: &str, from: &str) -> Result<TlsVersion, SourceError> {
        Ok(match v {
            "TLSv1" => TlsVersion::V1_0,
            "TLSv1.1" => TlsVersion::V1_1,
            "TLSv1.2" => TlsVersion::V1_2,
            "TLSv1.3" => TlsVersion::V1_3,
            _ => {
                return Err(invalid(format!(
                "invalid {key} value: \"{v}\"{from} (expected TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3)"
            )))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TlsVersion::V1_0 => "TLSv1",
            TlsVersion::V1_1 => "TLSv1.1",
            TlsVersion::V1_2 => "TLSv1.2",
            TlsVersion::V1_3 => "TLSv1.3",
        }
    }
}

/// One server to try: what to connect to and what name to verify/look up in the passfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSpec {
    /// Host name, IP address, or Unix-socket directory (starts with `/`).
    pub host: String,
    /// Numeric address to connect to instead of resolving `host` (libpq's `hostaddr`).
    pub hostaddr: Option<String>,
    pub port: u16,
}

impl HostSpec {
    /// True when this is a Unix-domain socket directory.
    pub fn is_unix(&self) -> bool {
        self.hostaddr.is_none() && self.host.starts_with('/')
    }

    /// Path of the Unix socket, `<dir>/.s.PGSQL.<port>`.
    pub fn socket_path(&self) -> PathBuf {
        Path::new(&self.host).join(format!(".s.PGSQL.{}", self.port))
    }

    /// `host "h" port 5432` (plus `hostaddr` when given), for messages.
    pub fn display(&self) -> String {
        match &self.hostaddr {
            Some(a) if a != &self.host && !self.host.is_empty() => {
                format!("host \"{}\" (address {}) port {}", self.host, a, self.port)
            }
            Some(a) => format!("host \"{}\" port {}", a, self.port),
            None if self.is_unix() => format!("socket \"{}\"", self.socket_path().display()),
            None => format!("host \"{}\" port {}", self.host, self.port),
        }
    }
}

/// A parsed libpq connection string, with every default resolved.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Servers to try in order (at least one).
    pub hosts: Vec<HostSpec>,
    pub dbname: String,
    pub user: String,
    password: Option<String>,
    /// The password file: `passfile`, `PGPASSFILE` or `~/.pgpass`.
    pub passfile: Option<PathBuf>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    /// Certificate revocation list file (`sslcrl`). When neither it nor `sslcrldir` is given,
    /// `~/.postgresql/root.crl` is used if it exists, as libpq.
    pub sslcrl: Option<PathBuf>,
    /// Directory of CRL files (`sslcrldir`).
    pub sslcrldir: Option<PathBuf>,
    /// `sslsni` (default on).
    pub sslsni: bool,
    /// `ssl_min_protocol_version` (default TLSv1.2, as libpq).
    pub ssl_min_protocol_version: TlsVersion,
    /// `ssl_max_protocol_version` (`None`: the highest supported).
    pub ssl_max_protocol_version: Option<TlsVersion>,
    pub channel_binding: ChannelBinding,
    /// OS user name the server must run as (Unix-domain sockets only, as libpq).
    pub requirepeer: Option<String>,
    /// `connect_timeout` in seconds; `None` means the default (10 s), `Some(0)` no limit.
    pub connect_timeout: Option<u64>,
    pub application_name: Option<String>,
    pub fallback_application_name: Option<String>,
    /// Passed as the `options` startup parameter.
    pub options: Option<String>,
    pub keepalives: bool,
    pub keepalives_idle: Option<u64>,
    pub keepalives_interval: Option<u64>,
    pub keepalives_count: Option<u32>,
    pub tcp_user_timeout_ms: Option<u64>,
    pub target_session_attrs: TargetSessionAttrs,
    /// The home directory the defaults of `~/.postgresql/*` are taken from.
    pub home_dir: Option<PathBuf>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({})", self.redacted())
    }
}

fn invalid(msg: impl Into<String>) -> SourceError {
    SourceError::InvalidConnInfo(msg.into())
}

/// Where an option's value came from, for messages.
#[derive(Debug, Clone)]
enum Origin {
    Given,
    Service(PathBuf),
    Env(&'static str),
}

/// The options collected so far: the string's, then the service file's, then the
/// environment's, each only where none was set before.
#[derive(Default)]
struct Opts(Vec<(String, String, Origin)>);

impl Opts {
    fn has(&self, k: &str) -> bool {
        self.0.iter().any(|(ok, _, _)| ok == k)
    }

    fn set(&mut self, k: String, v: String, o: Origin) {
        self.0.retain(|(ok, _, _)| ok != &k);
        self.0.push((k, v, o));
    }

    fn set_default(&mut self, k: &str, v: String, o: Origin) {
        if !self.has(k) {
            self.0.push((k.to_string(), v, o));
        }
    }

    /// The value, `None` when unset or empty (libpq treats an empty value as "not set" for
    /// nearly every keyword).
    fn get(&self, k: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(ok, _, _)| ok == k)
            .map(|(_, v, _)| v.clone())
            .filter(|v| !v.is_empty())
    }

    /// ` (from ...)` when the value was not in the connection string, for messages.
    fn from(&self, k: &str) -> String {
        match self.0.iter().find(|(ok, _, _)| ok == k).map(|(_, _, o)| o) {
            Some(Origin::Env(var)) => format!(" (from environment variable {var})"),
            Some(Origin::Service(p)) => format!(" (from service file \"{}\")", p.display()),
            _ => String::new(),
        }
    }

    fn parse<T: std::str::FromStr>(&self, k: &str) -> Result<Option<T>, SourceError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => v.trim().parse().map(Some).map_err(|_| {
                invalid(format!(
                    "invalid integer value \"{v}\" for connection option \"{k}\"{}",
                    self.from(k)
                ))
            }),
        }
    }
}

impl ConnInfo {
    /// Parses a libpq connection string (URI or key=value), taking defaults from this
    /// process's environment and OS user, as libpq would here.
    pub fn parse(s: &str) -> Result<ConnInfo, SourceError> {
        Self::parse_with_env(s, &ProcessEnv)
    }

    /// [`ConnInfo::parse`] with the defaults taken from `env`.
    pub fn parse_with_env(s: &str, env: &dyn Env) -> Result<ConnInfo, SourceError> {
        let pairs = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            parse_uri(s)?
        } else {
            parse_kv(s)?
        };
        Self::from_pairs(pairs, env)
    }

    /// Builds from (keyword, value) pairs (later values win, as in libpq), then fills in the
    /// defaults as libpq's `conninfo_add_defaults` does.
    fn from_pairs(pairs: Vec<(String, String)>, env: &dyn Env) -> Result<ConnInfo, SourceError> {
        let mut opts = Opts::default();
        for (k, v) in pairs {
            if !KNOWN_KEYS.contains(&k.as_str()) {
                return Err(invalid(format!("invalid connection option \"{k}\"")));
            }
            opts.set(k, v, Origin::Given);
        }

        // The service file first (PGSERVICE only when the string names none), then the
        // environment: neither overrides a value given before.
        let service = if opts.has("service") {
            opts.get("service")
        } else {
            env.var("PGSERVICE").filter(|s| !s.is_empty())
        };
        if let Some(name) = &service {
            let (file, entries) = lookup_service(name, env)?;
            for (k, v) in entries {
                opts.set_default(&k, v, Origin::Service(file.clone()));
            }
        }
        for (k, var) in ENV_VARS {
            if let Some(v) = env.var(var) {
                opts.set_default(k, v, Origin::Env(var));
            }
        }

        // Rejected keywords.
        let unsupported = |k: &str, why: &str| -> Result<(), SourceError> {
            match opts.get(k) {
                Some(_) => Err(invalid(format!(
                    "connection option \"{k}\"{} is not supported: {why}",
                    opts.from(k)
                ))),
                None => Ok(()),
            }
        };
        unsupported(
            "replication",
            "livesync chooses the replication mode of each connection itself",
        )?;
        unsupported(
            "sslpassword",
            "encrypted client keys cannot be read, use a key file without a passphrase",
        )?;
        match opts.get("sslcompression").as_deref() {
            None | Some("0") => {}
            Some("1") => {
                return Err(invalid(format!(
                    "sslcompression=1{} is not supported: this client has no TLS compression",
                    opts.from("sslcompression")
                )))
            }
            Some(v) => {
                return Err(invalid(format!(
                    "invalid sslcompression value: \"{v}\"{} (expected 0 or 1)",
                    opts.from("sslcompression")
                )))
            }
        }
        // gssencmode=prefer is what libpq does without GSSAPI credentials: no GSS encryption.
        // krbsrvname and gsslib are deliberately not looked at: they only configure GSSAPI,
        // which this client never uses (GSSAPI authentication requests are refused and
        // gssencmode=require is rejected), so they cannot change what happens.
        match opts.get("gssencmode").as_deref() {
            None | Some("disable") | Some("prefer") => {}
            Some("require") => {
                return Err(invalid(format!(
                    "gssencmode \"require\"{} is not supported: this client has no GSSAPI support",
                    opts.from("gssencmode")
                )))
            }
            Some(v) => {
                return Err(invalid(format!(
                    "invalid gssencmode value: \"{v}\"{} (expected disable, prefer or require)",
                    opts.from("gssencmode")
                )))
            }
        }
        if let Some(enc) = opts.get("client_encoding") {
            // The client always talks UTF8 (PostgreSQL's spelling rules: case and
            // punctuation do not matter).
            let norm: String = enc
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            if norm != "utf8" && norm != "unicode" {
                return Err(invalid(format!(
                    "client_encoding \"{enc}\"{} is not supported: connections to the source always use UTF8",
                    opts.from("client_encoding")
                )));
            }
        }
        if let Some(o) = opts.get("options") {
            check_options(&o, &opts.from("options"))?;
        }

        let channel_binding = match opts.get("channel_binding").as_deref() {
            None | Some("prefer") => ChannelBinding::Prefer,
            Some("disable") => ChannelBinding::Disable,
            Some("require") => ChannelBinding::Require,
            Some(v) => {
                return Err(invalid(format!(
                "invalid channel_binding value: \"{v}\"{} (expected disable, prefer or require)",
                opts.from("channel_binding")
            )))
            }
        };
        let target_session_attrs = match opts.get("target_session_attrs").as_deref() {
            None | Some("any") => TargetSessionAttrs::Any,
            Some("read-write") => TargetSessionAttrs::ReadWrite,
            Some("read-only") => TargetSessionAttrs::ReadOnly,
            Some("primary") => TargetSessionAttrs::Primary,
            Some("standby") => TargetSessionAttrs::Standby,
            Some("prefer-standby") => TargetSessionAttrs::PreferStandby,
            Some(v) => {
                return Err(invalid(format!(
                    "invalid target_session_attrs value: \"{v}\"{} (expected any, read-write, read-only, primary, standby or prefer-standby)",
                    opts.from("target_session_attrs")
                )))
            }
        };

        let user = match opts.get("user") {
            Some(u) => u,
            None => env.os_user().filter(|u| !u.is_empty()).ok_or_else(|| {
                invalid(format!(
                    "no user name given and the name of the OS user (id {}) could not be looked up",
                    effective_uid()
                ))
            })?,
        };
        let dbname = opts.get("dbname").unwrap_or_else(|| user.clone());

        let hosts = build_hosts(opts.get("host"), opts.get("hostaddr"), opts.get("port"))?;

        let sslmode = match opts.get("sslmode") {
            Some(m) => SslMode::parse(&m, &opts.from("sslmode"))?,
            None => SslMode::Prefer,
        };
        if channel_binding == ChannelBinding::Require && sslmode == SslMode::Disable {
            return Err(invalid(
                "channel_binding \"require\" cannot be used with sslmode \"disable\": channel binding needs SSL",
            ));
        }
        let sslsni = match opts.get("sslsni").as_deref() {
            None => true,
            Some(v) => parse_bool("sslsni", v)?,
        };
        let tls_version = |k: &str| -> Result<Option<TlsVersion>, SourceError> {
            opts.get(k)
                .map(|v| TlsVersion::parse(k, &v, &opts.from(k)))
                .transpose()
        };
        let ssl_min_protocol_version =
            tls_version("ssl_min_protocol_version")?.unwrap_or(TlsVersion::V1_2);
        let ssl_max_protocol_version = tls_version("ssl_max_protocol_version")?;
        if let Some(max) = ssl_max_protocol_version {
            if max < TlsVersion::V1_2 {
                return Err(invalid(format!(
                    "ssl_max_protocol_version \"{}\"{} is not supported: only TLSv1.2 and TLSv1.3 are available",
                    max.as_str(),
                    opts.from("ssl_max_protocol_version")
                )));
            }
            if max < ssl_min_protocol_version {
                return Err(invalid(format!(
                    "invalid SSL protocol version range: ssl_min_protocol_version \"{}\" is above ssl_max_protocol_version \"{}\"",
                    ssl_min_protocol_version.as_str(),
                    max.as_str()
                )));
            }
        }
        let connect_timeout = opts
            .parse::<i64>("connect_timeout")?
            .map(|t| t.max(0) as u64);
        let keepalives = opts.parse::<i64>("keepalives")?.is_none_or(|v| v != 0);
        let home_dir = env.home_dir();
        let passfile = opts
            .get("passfile")
            .map(PathBuf::from)
            .or_else(|| home_dir.as_ref().map(|h| h.join(".pgpass")));

        Ok(ConnInfo {
            hosts,
            dbname,
            user,
            password: opts.get("password"),
            passfile,
            sslmode,
            sslrootcert: opts.get("sslrootcert").map(PathBuf::from),
            sslcert: opts.get("sslcert").map(PathBuf::from),
            sslkey: opts.get("sslkey").map(PathBuf::from),
            sslcrl: opts.get("sslcrl").map(PathBuf::from),
            sslcrldir: opts.get("sslcrldir").map(PathBuf::from),
            sslsni,
            ssl_min_protocol_version,
            ssl_max_protocol_version,
            channel_binding,
            requirepeer: opts.get("requirepeer"),
            connect_timeout,
            application_name: opts.get("application_name"),
            fallback_application_name: opts.get("fallback_application_name"),
            options: opts.get("options"),
            keepalives,
            keepalives_idle: opts.parse("keepalives_idle")?,
            keepalives_interval: opts.parse("keepalives_interval")?,
            keepalives_count: opts.parse("keepalives_count")?,
            tcp_user_timeout_ms: opts.parse("tcp_user_timeout")?,
            target_session_attrs,
            home_dir,
        })
    }

    /// The password given in the connection string (or the service file, or PGPASSWORD), if
    /// any; the passfile is consulted at connect time, see [`ConnInfo::password_for`].
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The password to use for `host`: the explicit one, else a matching passfile line.
    pub fn password_for(&self, host: &HostSpec) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let file = self.passfile.as_ref()?;
        // libpq ignores a passfile that is group or world accessible.
        let meta = std::fs::metadata(file).ok()?;
        {
            use std::os::unix::fs::PermissionsExt;
            if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
                return None;
            }
        }
        let text = std::fs::read_to_string(file).ok()?;
        let pwhost = if host.host.is_empty() || host.host.starts_with('/') {
            "localhost"
        } else {
            host.host.as_str()
        };
        lookup_pgpass(
            &text,
            pwhost,
            &host.port.to_string(),
            &self.dbname,
            &self.user,
        )
    }

    /// A file in `~/.postgresql/` (the home directory libpq would use), for TLS defaults.
    pub fn home_file(&self, rel: &str) -> Option<PathBuf> {
        self.home_dir
            .as_ref()
            .map(|h| h.join(".postgresql").join(rel))
    }

    /// The effective connect timeout (`None` = wait forever, as `connect_timeout=0`).
    /// As libpq, values of 1 are raised to 2 seconds.
    pub fn connect_timeout(&self) -> Option<Duration> {
        match self.connect_timeout {
            None => Some(Duration::from_secs(DEFAULT_CONNECT_TIMEOUT_SECS)),
            Some(0) => None,
            Some(n) => Some(Duration::from_secs(n.max(2))),
        }
    }

    /// The connection string in key=value form with the password masked, for logs and errors.
    pub fn redacted(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        let mut push = |k: &str, v: &str| parts.push(format!("{k}={}", quote_value(v)));
        push(
            "host",
            &self
                .hosts
                .iter()
                .map(|h| h.host.as_str())
                .collect::<Vec<_>>()
                .join(","),
        );
        if self.hosts.iter().any(|h| h.hostaddr.is_some()) {
            push(
                "hostaddr",
                &self
                    .hosts
                    .iter()
                    .map(|h| h.hostaddr.as_deref().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        push(
            "port",
            &self
                .hosts
                .iter()
                .map(|h| h.port.to_string())
                .collect::<Vec<_>>()
                .join(","),
        );
        push("dbname", &self.dbname);
        push("user", &self.user);
        if self.password.is_some() {
            parts.push("password=********".to_string());
        }
        let mut push_opt = |k: &str, v: Option<&str>| {
            if let Some(v) = v {
                parts.push(format!("{k}={}", quote_value(v)));
            }
        };
        push_opt("sslmode", Some(self.sslmode.as_str()));
        push_opt(
            "sslrootcert",
            self.sslrootcert.as_deref().and_then(Path::to_str),
        );
        push_opt("sslcert", self.sslcert.as_deref().and_then(Path::to_str));
        push_opt("sslcrl", self.sslcrl.as_deref().and_then(Path::to_str));
        push_opt(
            "sslcrldir",
            self.sslcrldir.as_deref().and_then(Path::to_str),
        );
        if self.ssl_min_protocol_version != TlsVersion::V1_2 {
            push_opt(
                "ssl_min_protocol_version",
                Some(self.ssl_min_protocol_version.as_str()),
            );
        }
        push_opt(
            "ssl_max_protocol_version",
            self.ssl_max_protocol_version.map(TlsVersion::as_str),
        );
        if self.channel_binding != ChannelBinding::Prefer {
            push_opt("channel_binding", Some(self.channel_binding.as_str()));
        }
        if self.target_session_attrs != TargetSessionAttrs::Any {
            push_opt(
                "target_session_attrs",
                Some(self.target_session_attrs.as_str()),
            );
        }
        push_opt("requirepeer", self.requirepeer.as_deref());
        push_opt("application_name", self.application_name.as_deref());
        push_opt("options", self.options.as_deref());
        let ct = self.connect_timeout.map(|t| t.to_string());
        push_opt("connect_timeout", ct.as_deref());
        parts.join(" ")
    }

    /// The server(s) to connect to, for messages: `host "h" port 5432`.
    pub fn display_target(&self) -> String {
        self.hosts
            .iter()
            .map(HostSpec::display)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Rejects `options` that set what every connection sets itself in its startup packet
/// ([`FIXED_STARTUP_PARAMS`] and `application_name`): the startup parameter would silently
/// win. Follows the server's `pg_split_opts` (whitespace separates, backslash escapes) and
/// its switches `-c name=value`, `-cname=value`, `--name=value` and `-e` (DateStyle).
fn check_options(options: &str, from: &str) -> Result<(), SourceError> {
    let mut args: Vec<String> = Vec::new();
    let mut cur = String::new();
    let mut in_arg = false;
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            if in_arg {
                args.push(std::mem::take(&mut cur));
                in_arg = false;
            }
            continue;
        }
        in_arg = true;
        if c == '\\' {
            if let Some(n) = chars.next() {
                cur.push(n);
            }
        } else {
            cur.push(c);
        }
    }
    if in_arg {
        args.push(cur);
    }
    let fixed = |name: &str| -> Option<&'static str> {
        let norm = name.replace('-', "_").to_ascii_lowercase();
        FIXED_STARTUP_PARAMS
            .iter()
            .map(|(k, _)| *k)
            .chain(std::iter::once("application_name"))
            .find(|k| k.to_ascii_lowercase() == norm)
    };
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let setting = if a == "-c" {
            i += 1;
            args.get(i).map(String::as_str)
        } else if let Some(rest) = a.strip_prefix("--") {
            Some(rest)
        } else if let Some(rest) = a.strip_prefix("-c") {
            Some(rest)
        } else if a == "-e" {
            Some("DateStyle=euro")
        } else {
            None
        };
        if let Some(s) = setting {
            let name = s.split_once('=').map_or(s, |(n, _)| n);
            if let Some(k) = fixed(name) {
                return Err(invalid(format!(
                    "options{from} may not set \"{k}\": every connection to the source sets it itself{}",
                    if k == "search_path" {
                        " (to an empty search_path)"
                    } else {
                        ""
                    }
                )));
            }
        }
        i += 1;
    }
    Ok(())
}

/// libpq 15's `parseServiceInfo`: the group `[name]` of `PGSERVICEFILE` (else
/// `~/.pg_service.conf` if it exists), else of `PGSYSCONFDIR/pg_service.conf` (else the
/// default sysconfdir's). Returns the file and the group's (keyword, value) pairs in order.
fn lookup_service(
    name: &str,
    env: &dyn Env,
) -> Result<(PathBuf, Vec<(String, String)>), SourceError> {
    let first = match env.var("PGSERVICEFILE") {
        // An explicit service file must exist.
        Some(f) => Some(PathBuf::from(f)),
        None => env
            .home_dir()
            .map(|h| h.join(".pg_service.conf"))
            .filter(|p| p.exists()),
    };
    if let Some(path) = first {
        if let Some(entries) = read_service_file(&path, name)? {
            return Ok((path, entries));
        }
    }
    let dir = env
        .var("PGSYSCONFDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| env.default_sysconfdir());
    let path = dir.join("pg_service.conf");
    if path.exists() {
        if let Some(entries) = read_service_file(&path, name)? {
            return Ok((path, entries));
        }
    }
    Err(invalid(format!(
        "definition of service \"{name}\" not found"
    )))
}

fn read_service_file(
    path: &Path,
    name: &str,
) -> Result<Option<Vec<(String, String)>>, SourceError> {
    let bytes = std::fs::read(path).map_err(|e| {
        invalid(format!(
            "service file \"{}\" not found ({e})",
            path.display()
        ))
    })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        invalid(format!(
            "service file \"{}\" is not valid UTF-8",
            path.display()
        ))
    })?;
    parse_service_file(&text, path, name)
}

/// libpq 15's `parseServiceFile`: `None` when the file has no group `[name]`. Lines are not
/// trimmed except for leading blanks and the line end (as libpq: `host = x` is a syntax
/// error), `#` starts a comment line, the first value of a keyword in the group counts, and an
/// unknown keyword or a nested `service` is an error.
fn parse_service_file(
    text: &str,
    path: &Path,
    name: &str,
) -> Result<Option<Vec<(String, String)>>, SourceError> {
    let mut found = false;
    let mut out: Vec<(String, String)> = Vec::new();
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.trim_end_matches(['\r', '\n']).trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix('[') {
            if found {
                break;
            }
            found = rest.starts_with(name) && rest[name.len()..].starts_with(']');
            continue;
        }
        if !found {
            continue;
        }
        let syntax = || {
            invalid(format!(
                "syntax error in service file \"{}\", line {}",
                path.display(),
                i + 1
            ))
        };
        let (k, v) = line.split_once('=').ok_or_else(syntax)?;
        if k == "service" {
            return Err(invalid(format!(
                "nested service specifications not supported in service file \"{}\", line {}",
                path.display(),
                i + 1
            )));
        }
        if !KNOWN_KEYS.contains(&k) {
            return Err(syntax());
        }
        if !out.iter().any(|(ok, _)| ok == k) {
            out.push((k.to_string(), v.to_string()));
        }
    }
    Ok(found.then_some(out))
}

fn parse_bool(key: &str, v: &str) -> Result<bool, SourceError> {
    match v {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(invalid(format!(
            "invalid value \"{v}\" for connection option \"{key}\""
        ))),
    }
}

fn default_host() -> String {
    if Path::new("/var/run/postgresql").is_dir() {
        "/var/run/postgresql".to_string()
    } else {
        "/tmp".to_string()
    }
}

fn build_hosts(
    host: Option<String>,
    hostaddr: Option<String>,
    port: Option<String>,
) -> Result<Vec<HostSpec>, SourceError> {
    let split = |s: &Option<String>| -> Vec<String> {
        match s {
            Some(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
            None => Vec::new(),
        }
    };
    let hosts = split(&host);
    let addrs = split(&hostaddr);
    let ports = split(&port);
    let n = hosts.len().max(addrs.len()).max(1);
    if !hosts.is_empty() && !addrs.is_empty() && hosts.len() != addrs.len() {
        return Err(invalid(format!(
            "could not match {} host names to {} hostaddr values",
            hosts.len(),
            addrs.len()
        )));
    }
    if ports.len() > 1 && ports.len() != n {
        return Err(invalid(format!(
            "could not match {} port numbers to {} hosts",
            ports.len(),
            n
        )));
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let p = if ports.is_empty() {
            ""
        } else if ports.len() == 1 {
            &ports[0]
        } else {
            &ports[i]
        };
        let port: u16 = if p.is_empty() {
            5432
        } else {
            match p.parse::<u16>() {
                Ok(v) if v > 0 => v,
                _ => return Err(invalid(format!("invalid port number: \"{p}\""))),
            }
        };
        let addr = addrs.get(i).filter(|a| !a.is_empty()).cloned();
        if let Some(a) = &addr {
            if a.parse::<std::net::IpAddr>().is_err() {
                return Err(invalid(format!("could not parse network address \"{a}\"")));
            }
        }
        let h = hosts.get(i).filter(|h| !h.is_empty()).cloned();
        let h = match (h, &addr) {
            (Some(h), _) => h,
            (None, Some(a)) => a.clone(),
            (None, None) => default_host(),
        };
        out.push(HostSpec {
            host: h,
            hostaddr: addr,
            port,
        });
    }
    Ok(out)
}

/// Quotes a value for key=value output when needed.
fn quote_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// libpq's `conninfo_parse`: `key = value` pairs separated by whitespace.
fn parse_kv(s: &str) -> Result<Vec<(String, String)>, SourceError> {
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    let mut out = Vec::new();
    let n = chars.len();
    loop {
        while i < n && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= n {
            break;
        }
        let start = i;
        while i < n && !chars[i].is_whitespace() && chars[i] != '=' {
            i += 1;
        }
        let key: String = chars[start..i].iter().collect();
        while i < n && chars[i].is_whitespace() {
            i += 1;
        }
        if i >= n || chars[i] != '=' {
            return Err(invalid(format!(
                "missing \"=\" after \"{key}\" in connection info string"
            )));
        }
        i += 1;
        while i < n && chars[i].is_whitespace() {
            i += 1;
        }
        let mut val = String::new();
        if i < n && chars[i] == '\'' {
            i += 1;
            let mut closed = false;
            while i < n {
                match chars[i] {
                    '\\' => {
                        i += 1;
                        if i < n {
                            val.push(chars[i]);
                            i += 1;
                        }
                    }
                    '\'' => {
                        i += 1;
                        closed = true;
                        break;
                    }
                    c => {
                        val.push(c);
                        i += 1;
                    }
                }
            }
            if !closed {
                return Err(invalid(
                    "unterminated quoted string in connection info string",
                ));
            }
        } else {
            while i < n && !chars[i].is_whitespace() {
                if chars[i] == '\\' {
                    i += 1;
                    if i < n {
                        val.push(chars[i]);
                        i += 1;
                    }
                } else {
                    val.push(chars[i]);
                    i += 1;
                }
            }
        }
        out.push((key, val));
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Result<String, SourceError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = |c: u8| (c as char).to_digit(16);
            match (
                b.get(i + 1).copied().and_then(hex),
                b.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    let v = (h * 16 + l) as u8;
                    if v == 0 {
                        return Err(invalid(format!(
                            "forbidden value %00 in percent-encoded value: \"{s}\""
                        )));
                    }
                    out.push(v);
                    i += 3;
                }
                _ => return Err(invalid(format!("invalid percent-encoded token: \"{s}\""))),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| invalid(format!("percent-encoded value is not valid UTF-8: \"{s}\"")))
}

/// libpq's `conninfo_uri_parse`.
fn parse_uri(uri: &str) -> Result<Vec<(String, String)>, SourceError> {
    let rest = uri
        .strip_prefix("postgresql://")
        .or_else(|| uri.strip_prefix("postgres://"))
        .ok_or_else(|| invalid(format!("invalid URI: \"{uri}\"")))?;
    let mut out: Vec<(String, String)> = Vec::new();

    // Split off the query first so '@', '/' inside parameters do not confuse us.
    let (before_q, query) = match rest.find('?') {
        Some(p) => (&rest[..p], Some(&rest[p + 1..])),
        None => (rest, None),
    };
    // The authority ends at the first '/'. (A '/' can't be in user/password unencoded.)
    let (authority, path) = match before_q.find('/') {
        Some(p) => (&before_q[..p], Some(&before_q[p + 1..])),
        None => (before_q, None),
    };
    let (userinfo, hostpart) = match authority.rfind('@') {
        Some(p) => (Some(&authority[..p]), &authority[p + 1..]),
        None => (None, authority),
    };
    if let Some(ui) = userinfo {
        let (u, p) = match ui.find(':') {
            Some(i) => (&ui[..i], Some(&ui[i + 1..])),
            None => (ui, None),
        };
        if !u.is_empty() {
            out.push(("user".into(), percent_decode(u)?));
        }
        if let Some(p) = p {
            out.push(("password".into(), percent_decode(p)?));
        }
    }

    // Host list.
    let mut hosts = Vec::new();
    let mut ports = Vec::new();
    let mut any_port = false;
    if !hostpart.is_empty() {
        for spec in split_hosts(hostpart, uri)? {
            let (h, p) = spec;
            if p.is_some() {
                any_port = true;
            }
            hosts.push(percent_decode(&h)?);
            ports.push(p.unwrap_or_default());
        }
        if hosts.iter().any(|h| !h.is_empty()) {
            out.push(("host".into(), hosts.join(",")));
        }
        if any_port {
            out.push(("port".into(), ports.join(",")));
        }
    }
    if let Some(db) = path {
        if !db.is_empty() {
            out.push(("dbname".into(), percent_decode(db)?));
        }
    }
    if let Some(q) = query {
        for kv in q.split('&') {
            if kv.is_empty() {
                continue;
            }
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                invalid(format!(
                    "missing key/value separator \"=\" in URI query parameter: \"{kv}\""
                ))
            })?;
            if v.contains('=') {
                return Err(invalid(format!(
                    "extra key/value separator \"=\" in URI query parameter: \"{kv}\""
                )));
            }
            let k = percent_decode(k)?;
            let v = percent_decode(v)?;
            if k == "ssl" && v == "true" {
                out.push(("sslmode".into(), "require".into()));
                continue;
            }
            if !KNOWN_KEYS.contains(&k.as_str()) {
                return Err(invalid(format!("invalid URI query parameter: \"{k}\"")));
            }
            out.push((k, v));
        }
    }
    Ok(out)
}

/// Splits `h1:p1,[::1]:p2,h3` into (host, port) pairs (still percent-encoded).
fn split_hosts(s: &str, uri: &str) -> Result<Vec<(String, Option<String>)>, SourceError> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        let host;
        if i < b.len() && b[i] == b'[' {
            let end = s[i..].find(']').ok_or_else(|| {
                invalid(format!(
                    "end of string reached when looking for matching \"]\" in IPv6 host address in URI: \"{uri}\""
                ))
            })? + i;
            host = s[i + 1..end].to_string();
            if host.is_empty() {
                return Err(invalid(format!(
                    "IPv6 host address may not be empty in URI: \"{uri}\""
                )));
            }
            i = end + 1;
            if i < b.len() && b[i] != b':' && b[i] != b',' {
                return Err(invalid(format!(
                    "unexpected character \"{}\" at position {} in URI (expected \":\" or \"/\"): \"{uri}\"",
                    b[i] as char,
                    i + 1
                )));
            }
        } else {
            let end = s[i..].find([':', ',']).map(|p| p + i).unwrap_or(s.len());
            host = s[i..end].to_string();
            i = end;
        }
        let mut port = None;
        if i < b.len() && b[i] == b':' {
            let end = s[i + 1..].find(',').map(|p| p + i + 1).unwrap_or(s.len());
            port = Some(s[i + 1..end].to_string());
            i = end;
        }
        out.push((host, port));
        if i < b.len() && b[i] == b',' {
            i += 1;
            continue;
        }
        break;
    }
    Ok(out)
}

/// Finds the password for (host, port, db, user) in `.pgpass` text.
fn lookup_pgpass(text: &str, host: &str, port: &str, db: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Split on unescaped ':' into 5 fields; the last keeps everything, unescaped.
        let mut fields: Vec<String> = Vec::with_capacity(5);
        let mut cur = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            match c {
                '\\' => {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut cur)),
                c => cur.push(c),
            }
        }
        fields.push(cur);
        if fields.len() != 5 {
            continue;
        }
        let m = |pat: &str, v: &str| pat == "*" || pat == v;
        if m(&fields[0], host) && m(&fields[1], port) && m(&fields[2], db) && m(&fields[3], user) {
            return Some(fields[4].clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fixed environment: no variables, OS user "osuser", no home directory.
    fn env() -> MapEnv {
        MapEnv::new().with_os_user("osuser")
    }

    fn pe(s: &str, env: &MapEnv) -> ConnInfo {
        ConnInfo::parse_with_env(s, env).unwrap_or_else(|e| panic!("parse {s:?}: {e}"))
    }

    fn p(s: &str) -> ConnInfo {
        pe(s, &env())
    }

    fn erre(s: &str, env: &MapEnv) -> String {
        match ConnInfo::parse_with_env(s, env) {
            Ok(c) => panic!("expected error for {s:?}, got {c:?}"),
            Err(SourceError::InvalidConnInfo(m)) => m,
            Err(e) => panic!("unexpected error kind {e:?}"),
        }
    }

    fn err(s: &str) -> String {
        erre(s, &env())
    }

    #[test]
    fn kv_basic() {
        let c = p("host=h port=5433 dbname=db user=u password=secret sslmode=require");
        assert_eq!(c.hosts.len(), 1);
        assert_eq!(c.hosts[0].host, "h");
        assert_eq!(c.hosts[0].port, 5433);
        assert_eq!(c.dbname, "db");
        assert_eq!(c.user, "u");
        assert_eq!(c.password(), Some("secret"));
        assert_eq!(c.sslmode, SslMode::Require);
    }

    #[test]
    fn kv_defaults() {
        let c = p("host=h user=alice");
        assert_eq!(c.hosts[0].port, 5432);
        assert_eq!(c.dbname, "alice");
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert!(c.keepalives);
        assert!(c.sslsni);
        assert_eq!(c.connect_timeout(), Some(Duration::from_secs(10)));
        assert_eq!(c.password(), None);
    }

    #[test]
    fn kv_quoting_and_escapes() {
        let c = p(r"user = 'my user' password='it\'s a \\ secret' dbname=a\ b host=h");
        assert_eq!(c.user, "my user");
        assert_eq!(c.password(), Some(r"it's a \ secret"));
        assert_eq!(c.dbname, "a b");
        let c = p("user=u password='' host=h");
        assert_eq!(c.password(), None);
        let c = p("  host=h\tuser=u\n options='-c work_mem=8MB'  ");
        assert_eq!(c.options.as_deref(), Some("-c work_mem=8MB"));
    }

    #[test]
    fn kv_errors() {
        assert!(err("host").contains("missing \"=\" after \"host\""));
        assert!(err("host=h user='abc").contains("unterminated quoted string"));
        assert_eq!(err("host=h foo=bar"), "invalid connection option \"foo\"");
        assert!(err("host=h user=u port=abc").contains("invalid port number"));
        assert!(err("host=h user=u port=70000").contains("invalid port number"));
        assert!(err("host=h user=u sslmode=bogus").contains("invalid sslmode value"));
        assert!(err("host=h user=u connect_timeout=x").contains("connect_timeout"));
        assert!(err("host=h user=u keepalives_idle=x").contains("keepalives_idle"));
        assert!(err("host=a,b port=1,2,3 user=u").contains("could not match 3 port numbers"));
        assert!(err("host=h user=u service=foo").contains("service"));
        assert!(err("host=h user=u gssencmode=require").contains("gssencmode"));
        assert!(err("host=h user=u hostaddr=not-an-ip").contains("network address"));
        assert!(err("host=h user=u target_session_attrs=x").contains("target_session_attrs"));
    }

    #[test]
    fn kv_accepts_known_harmless_keys() {
        let c = p(
            "host=h user=u sslcompression=0 sslcrl=/x krbsrvname=pg gsslib=gssapi \
                   gssencmode=prefer channel_binding=prefer target_session_attrs=read-write \
                   fallback_application_name=f client_encoding=UTF8 replication=",
        );
        assert_eq!(c.fallback_application_name.as_deref(), Some("f"));
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::ReadWrite);
        assert_eq!(c.sslcrl.as_deref(), Some(Path::new("/x")));
    }

    #[test]
    fn kv_last_value_wins() {
        let c = p("host=a host=b user=u");
        assert_eq!(c.hosts[0].host, "b");
    }

    #[test]
    fn kv_multi_host_and_hostaddr() {
        let c = p("host=a,b,c port=1,2,3 user=u");
        let v: Vec<_> = c.hosts.iter().map(|h| (h.host.as_str(), h.port)).collect();
        assert_eq!(v, vec![("a", 1), ("b", 2), ("c", 3)]);
        let c = p("host=a,b port=7 user=u");
        assert!(c.hosts.iter().all(|h| h.port == 7));
        let c = p("host=db.example hostaddr=127.0.0.1 user=u");
        assert_eq!(c.hosts[0].host, "db.example");
        assert_eq!(c.hosts[0].hostaddr.as_deref(), Some("127.0.0.1"));
        assert!(!c.hosts[0].is_unix());
        let c = p("hostaddr=::1 user=u");
        assert_eq!(c.hosts[0].host, "::1");
    }

    #[test]
    fn unix_socket() {
        let c = p("host=/var/run/postgresql port=5433 user=u");
        assert!(c.hosts[0].is_unix());
        assert_eq!(
            c.hosts[0].socket_path(),
            PathBuf::from("/var/run/postgresql/.s.PGSQL.5433")
        );
        assert!(c
            .display_target()
            .contains("/var/run/postgresql/.s.PGSQL.5433"));
    }

    #[test]
    fn connect_timeout_semantics() {
        assert_eq!(p("host=h user=u connect_timeout=0").connect_timeout(), None);
        assert_eq!(
            p("host=h user=u connect_timeout=1").connect_timeout(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            p("host=h user=u connect_timeout=30").connect_timeout(),
            Some(Duration::from_secs(30))
        );
    }

    #[test]
    fn uri_full() {
        let c = p("postgres://us%40er:p%40ss%3Aw@db.example.com:6543/my%20db?sslmode=verify-full&application_name=x");
        assert_eq!(c.user, "us@er");
        assert_eq!(c.password(), Some("p@ss:w"));
        assert_eq!(c.hosts[0].host, "db.example.com");
        assert_eq!(c.hosts[0].port, 6543);
        assert_eq!(c.dbname, "my db");
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.application_name.as_deref(), Some("x"));
    }

    #[test]
    fn uri_variants() {
        let c = p("postgresql://u@h");
        assert_eq!(c.hosts[0].host, "h");
        assert_eq!(c.hosts[0].port, 5432);
        assert_eq!(c.dbname, "u");
        let c = p("postgresql://u@h/");
        assert_eq!(c.dbname, "u");
        let c = p("postgresql://u@[::1]:5433/db");
        assert_eq!(c.hosts[0].host, "::1");
        assert_eq!(c.hosts[0].port, 5433);
        let c = p("postgresql://u@[2001:db8::1]/db");
        assert_eq!(c.hosts[0].host, "2001:db8::1");
        let c = p("postgresql://u@h1:1,h2:2,[::1]:3/db");
        let v: Vec<_> = c.hosts.iter().map(|h| (h.host.as_str(), h.port)).collect();
        assert_eq!(v, vec![("h1", 1), ("h2", 2), ("::1", 3)]);
        let c = p("postgresql://u@h1,h2:6000/db");
        assert_eq!(c.hosts[0].port, 5432);
        assert_eq!(c.hosts[1].port, 6000);
        let c = p("postgresql://%2Ftmp%2Fsock/db?user=u");
        assert!(c.hosts[0].is_unix());
        assert_eq!(c.hosts[0].host, "/tmp/sock");
        let c = p("postgresql:///db?host=/tmp&user=u&port=5439");
        assert_eq!(c.hosts[0].host, "/tmp");
        assert_eq!(c.hosts[0].port, 5439);
        let c = p("postgresql://u@h/db?ssl=true");
        assert_eq!(c.sslmode, SslMode::Require);
        let c = p("postgres://u:@h/db");
        assert_eq!(c.password(), None);
        let c = p("postgresql://u@h/db?options=-c%20work_mem%3D8MB");
        assert_eq!(c.options.as_deref(), Some("-c work_mem=8MB"));
    }

    #[test]
    fn uri_errors() {
        assert!(err("postgresql://u@h/db?foo=bar").contains("invalid URI query parameter: \"foo\""));
        assert!(err("postgresql://u@h/db?sslmode").contains("missing key/value separator"));
        assert!(err("postgresql://u@h/db?a=b=c").contains("extra key/value separator"));
        assert!(err("postgresql://u@[::1/db").contains("matching \"]\""));
        assert!(err("postgresql://u@[]/db").contains("may not be empty"));
        assert!(err("postgresql://u@h:x/db").contains("invalid port number"));
        assert!(err("postgresql://u%zz@h/db").contains("invalid percent-encoded token"));
        assert!(err("postgresql://u%00@h/db").contains("%00"));
        assert!(err("postgresql://u@[::1]x/db").contains("unexpected character"));
    }

    #[test]
    fn redaction_never_shows_password() {
        for s in [
            "host=h user=u password=Sup3rS3cretPw",
            "postgres://u:Sup3rS3cretPw@h/db",
            "postgres://u:Sup3rS3cretPw@h/db?password=Sup3rS3cretPw",
        ] {
            let c = p(s);
            let r = c.redacted();
            assert!(!r.contains("Sup3rS3cretPw"), "{r}");
            assert!(r.contains("password=********"), "{r}");
            assert!(!format!("{c:?}").contains("Sup3rS3cretPw"));
            assert!(!c.display_target().contains("Sup3rS3cretPw"));
        }
        let c = p("host=h user=u");
        assert!(!c.redacted().contains("password"));
        assert_eq!(
            p("host=h port=1 user=u dbname='a b'").redacted(),
            "host=h port=1 dbname='a b' user=u sslmode=prefer"
        );
    }

    #[test]
    fn redacted_roundtrips() {
        let c = p("host=h,i port=1,2 user='x y' dbname=d options='-c a=b' sslmode=require");
        let again = p(&c.redacted());
        assert_eq!(c, again);
    }

    #[test]
    fn display_target_format() {
        assert_eq!(p("host=h user=u").display_target(), "host \"h\" port 5432");
        assert_eq!(
            p("host=h hostaddr=127.0.0.1 port=1 user=u").display_target(),
            "host \"h\" (address 127.0.0.1) port 1"
        );
    }

    #[test]
    fn pgpass_lookup() {
        let text = "# comment\n\
                    other:5432:*:*:nope\n\
                    h:5432:db:u:pw1\n\
                    *:*:*:u:pw\\:with\\\\colon\n";
        assert_eq!(
            lookup_pgpass(text, "h", "5432", "db", "u").as_deref(),
            Some("pw1")
        );
        assert_eq!(
            lookup_pgpass(text, "x", "1", "db", "u").as_deref(),
            Some("pw:with\\colon")
        );
        assert_eq!(lookup_pgpass(text, "x", "1", "db", "v"), None);
        let text = "h\\:x:*:*:*:p:w\n";
        assert_eq!(
            lookup_pgpass(text, "h:x", "1", "d", "u").as_deref(),
            Some("p:w")
        );
    }

    #[test]
    fn passfile_used_only_without_password() {
        let dir = std::env::temp_dir().join(format!("livesync_pgpass_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pgpass");
        std::fs::write(&f, "localhost:5433:db:u:frompass\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = p(&format!(
            "host=/tmp port=5433 dbname=db user=u passfile={}",
            f.display()
        ));
        assert_eq!(c.password_for(&c.hosts[0]).as_deref(), Some("frompass"));
        let c = p(&format!(
            "host=/tmp port=5433 dbname=db user=u password=explicit passfile={}",
            f.display()
        ));
        assert_eq!(c.password_for(&c.hosts[0]).as_deref(), Some("explicit"));
        // World-readable passfiles are ignored, as in libpq.
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = p(&format!(
            "host=/tmp port=5433 dbname=db user=u passfile={}",
            f.display()
        ));
        assert_eq!(c.password_for(&c.hosts[0]), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A fresh directory for one test.
    fn tmpdir(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("livesync_conninfo_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn env_supplies_every_default() {
        let e = env()
            .with_var("PGHOST", "envhost1,envhost2")
            .with_var("PGHOSTADDR", "10.0.0.1,10.0.0.2")
            .with_var("PGPORT", "6001")
            .with_var("PGDATABASE", "envdb")
            .with_var("PGUSER", "envuser")
            .with_var("PGPASSWORD", "envpw")
            .with_var("PGPASSFILE", "/env/pgpass")
            .with_var("PGCHANNELBINDING", "disable")
            .with_var("PGCONNECT_TIMEOUT", "7")
            .with_var("PGCLIENTENCODING", "utf-8")
            .with_var("PGOPTIONS", "-c work_mem=9MB")
            .with_var("PGAPPNAME", "envapp")
            .with_var("PGSSLMODE", "verify-full")
            .with_var("PGSSLCOMPRESSION", "0")
            .with_var("PGSSLCERT", "/env/c.crt")
            .with_var("PGSSLKEY", "/env/c.key")
            .with_var("PGSSLROOTCERT", "/env/root.crt")
            .with_var("PGSSLCRL", "/env/root.crl")
            .with_var("PGSSLCRLDIR", "/env/crls")
            .with_var("PGSSLSNI", "0")
            .with_var("PGREQUIREPEER", "pgowner")
            .with_var("PGSSLMINPROTOCOLVERSION", "TLSv1.3")
            .with_var("PGSSLMAXPROTOCOLVERSION", "TLSv1.3")
            .with_var("PGGSSENCMODE", "disable")
            .with_var("PGKRBSRVNAME", "kerb")
            .with_var("PGGSSLIB", "gssapi")
            .with_var("PGTARGETSESSIONATTRS", "read-write");
        let c = pe("", &e);
        let v: Vec<_> = c
            .hosts
            .iter()
            .map(|h| (h.host.as_str(), h.hostaddr.as_deref(), h.port))
            .collect();
        assert_eq!(
            v,
            vec![
                ("envhost1", Some("10.0.0.1"), 6001),
                ("envhost2", Some("10.0.0.2"), 6001)
            ]
        );
        assert_eq!(c.dbname, "envdb");
        assert_eq!(c.user, "envuser");
        assert_eq!(c.password(), Some("envpw"));
        assert_eq!(c.passfile.as_deref(), Some(Path::new("/env/pgpass")));
        assert_eq!(c.channel_binding, ChannelBinding::Disable);
        assert_eq!(c.connect_timeout(), Some(Duration::from_secs(7)));
        assert_eq!(c.options.as_deref(), Some("-c work_mem=9MB"));
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslcert.as_deref(), Some(Path::new("/env/c.crt")));
        assert_eq!(c.sslkey.as_deref(), Some(Path::new("/env/c.key")));
        assert_eq!(c.sslrootcert.as_deref(), Some(Path::new("/env/root.crt")));
        assert_eq!(c.sslcrl.as_deref(), Some(Path::new("/env/root.crl")));
        assert_eq!(c.sslcrldir.as_deref(), Some(Path::new("/env/crls")));
        assert!(!c.sslsni);
        assert_eq!(c.requirepeer.as_deref(), Some("pgowner"));
        assert_eq!(c.ssl_min_protocol_version, TlsVersion::V1_3);
        assert_eq!(c.ssl_max_protocol_version, Some(TlsVersion::V1_3));
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::ReadWrite);

        // The connection string wins over the environment, keyword by keyword.
        let c = pe(
            "host=h hostaddr=127.0.0.1 port=1 dbname=d user=u password=p sslmode=disable \
             application_name=a target_session_attrs=any channel_binding=prefer \
             ssl_min_protocol_version=TLSv1.2 ssl_max_protocol_version=TLSv1.3 sslsni=1 \
             requirepeer=other connect_timeout=0 passfile=/given",
            &e,
        );
        assert_eq!(c.hosts.len(), 1);
        assert_eq!((c.hosts[0].host.as_str(), c.hosts[0].port), ("h", 1));
        assert_eq!((c.dbname.as_str(), c.user.as_str()), ("d", "u"));
        assert_eq!(c.password(), Some("p"));
        assert_eq!(c.sslmode, SslMode::Disable);
        assert_eq!(c.application_name.as_deref(), Some("a"));
        assert_eq!(c.target_session_attrs, TargetSessionAttrs::Any);
        assert_eq!(c.channel_binding, ChannelBinding::Prefer);
        assert_eq!(c.ssl_min_protocol_version, TlsVersion::V1_2);
        assert!(c.sslsni);
        assert_eq!(c.requirepeer.as_deref(), Some("other"));
        assert_eq!(c.connect_timeout(), None);
        assert_eq!(c.passfile.as_deref(), Some(Path::new("/given")));
        // ... also in a URI.
        let e = e.with_var("PGHOSTADDR", "");
        let c = pe("postgresql://uriuser@urihost:2/uridb", &e);
        assert_eq!(c.user, "uriuser");
        assert_eq!(c.dbname, "uridb");
        assert_eq!((c.hosts[0].host.as_str(), c.hosts[0].port), ("urihost", 2));
        // An empty variable counts as unset; an empty value in the string blocks the
        // variable (libpq: the option is set, to nothing) and means the built-in default.
        let e = env()
            .with_var("PGPORT", "")
            .with_var("PGHOST", "envhost")
            .with_var("PGSSLMODE", "require");
        let c = pe("sslmode=''", &e);
        assert_eq!(c.hosts[0].port, 5432);
        assert_eq!(c.hosts[0].host, "envhost");
        assert_eq!(c.sslmode, SslMode::Prefer);
    }

    #[test]
    fn environment_values_are_validated_and_named() {
        let m = erre("host=h user=u", &env().with_var("PGSSLMODE", "bogus"));
        assert!(
            m.contains("invalid sslmode value: \"bogus\" (from environment variable PGSSLMODE)"),
            "{m}"
        );
        let m = erre("host=h user=u", &env().with_var("PGCONNECT_TIMEOUT", "x"));
        assert!(m.contains("PGCONNECT_TIMEOUT"), "{m}");
        let m = erre(
            "host=h user=u",
            &env().with_var("PGCLIENTENCODING", "LATIN1"),
        );
        assert!(m.contains("client_encoding \"LATIN1\""), "{m}");
        assert!(m.contains("PGCLIENTENCODING"), "{m}");
        let m = erre("host=h user=u", &env().with_var("PGGSSENCMODE", "require"));
        assert!(m.contains("gssencmode \"require\""), "{m}");
        let m = erre(
            "host=h user=u",
            &env().with_var("PGOPTIONS", "-c search_path=x"),
        );
        assert!(m.contains("PGOPTIONS") && m.contains("search_path"), "{m}");
        let m = erre(
            "host=h user=u",
            &env().with_var("PGSSLMAXPROTOCOLVERSION", "TLSv1.1"),
        );
        assert!(m.contains("PGSSLMAXPROTOCOLVERSION"), "{m}");
    }

    #[test]
    fn os_user_is_the_default_user() {
        // No user anywhere: the OS user, and the database defaults to it.
        let c = pe("host=/var/run/postgresql", &env());
        assert_eq!(c.user, "osuser");
        assert_eq!(c.dbname, "osuser");
        let c = pe("host=/var/run/postgresql dbname=app", &env());
        assert_eq!((c.user.as_str(), c.dbname.as_str()), ("osuser", "app"));
        // PGUSER comes before the OS user; $USER / $LOGNAME are not libpq's.
        let e = env()
            .with_var("PGUSER", "pguser")
            .with_var("USER", "nope")
            .with_var("LOGNAME", "nope");
        assert_eq!(pe("host=h", &e).user, "pguser");
        assert_eq!(pe("host=h", &env().with_var("USER", "nope")).user, "osuser");
        // No OS user name: a clear error.
        let m = erre("host=h dbname=app", &MapEnv::new());
        assert!(m.starts_with("no user name given"), "{m}");
        // The real resolver: the name of the effective OS user, as `id -un` says.
        let out = std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap();
        let me = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert_eq!(ProcessEnv.os_user().as_deref(), Some(me.as_str()));
        assert!(!me.is_empty());
    }

    #[test]
    fn home_directory_defaults() {
        // $HOME first, else the OS user's home directory.
        let e = env().with_passwd_home("/home/pw");
        let c = pe("host=h", &e);
        assert_eq!(c.passfile.as_deref(), Some(Path::new("/home/pw/.pgpass")));
        assert_eq!(
            c.home_file("root.crt").as_deref(),
            Some(Path::new("/home/pw/.postgresql/root.crt"))
        );
        let e = e.with_var("HOME", "/home/env");
        let c = pe("host=h", &e);
        assert_eq!(c.passfile.as_deref(), Some(Path::new("/home/env/.pgpass")));
        let c = pe("host=h", &e.clone().with_var("PGPASSFILE", "/pf"));
        assert_eq!(c.passfile.as_deref(), Some(Path::new("/pf")));
        assert_eq!(pe("host=h", &env()).passfile, None);
        // The real resolver agrees with $HOME when it is set.
        if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            assert_eq!(ProcessEnv.home_dir(), Some(PathBuf::from(h)));
        }
    }

    const SERVICES: &str = "# services for tests\n\
        [other]\n\
        host=otherhost\n\
        \n\
          [svc]\r\n\
        host=svchost\r\n\
        port=6100\n\
        dbname=svcdb\n\
        # a comment inside\n\
        user=svcuser\n\
        user=ignored-second-value\n\
        password=svc pw \n\
        options=-c work_mem=5MB\n\
        sslmode=require\n\
        [svc2]\n\
        host=svc2host\n";

    #[test]
    fn service_file_parsing() {
        let f = Path::new("/f");
        let g = parse_service_file(SERVICES, f, "svc").unwrap().unwrap();
        let want: Vec<(String, String)> = [
            ("host", "svchost"),
            ("port", "6100"),
            ("dbname", "svcdb"),
            ("user", "svcuser"),
            ("password", "svc pw "),
            ("options", "-c work_mem=5MB"),
            ("sslmode", "require"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(g, want);
        assert_eq!(
            parse_service_file(SERVICES, f, "svc2").unwrap().unwrap(),
            vec![("host".to_string(), "svc2host".to_string())]
        );
        // "[sv]" is not "[svc]" and vice versa.
        assert_eq!(parse_service_file(SERVICES, f, "sv").unwrap(), None);
        assert_eq!(parse_service_file(SERVICES, f, "nope").unwrap(), None);
        // Errors only count inside the wanted group.
        let bad = "[a]\nhost = x\n[b]\nhost=y\n";
        assert!(parse_service_file(bad, f, "b").unwrap().is_some());
        let m = match parse_service_file(bad, f, "a") {
            Err(SourceError::InvalidConnInfo(m)) => m,
            r => panic!("{r:?}"),
        };
        assert_eq!(m, "syntax error in service file \"/f\", line 2");
        for (text, want) in [
            (
                "[a]\nnokey\n",
                "syntax error in service file \"/f\", line 2",
            ),
            (
                "[a]\nbogus=1\n",
                "syntax error in service file \"/f\", line 2",
            ),
            (
                "[a]\n\nservice=b\n",
                "nested service specifications not supported in service file \"/f\", line 3",
            ),
        ] {
            match parse_service_file(text, f, "a") {
                Err(SourceError::InvalidConnInfo(m)) => assert_eq!(m, want),
                r => panic!("{text:?}: {r:?}"),
            }
        }
    }

    #[test]
    fn service_lookup_and_precedence() {
        let d = tmpdir("service");
        let file = d.join("services.conf");
        std::fs::write(&file, SERVICES).unwrap();
        let e = env()
            .with_var("PGSERVICEFILE", file.to_str().unwrap())
            .with_var("PGPORT", "7000")
            .with_var("PGAPPNAME", "envapp");
        // Values of the service fill what the string does not give; the string wins; the
        // service wins over the environment; the environment fills the rest.
        let c = pe("service=svc dbname=explicit", &e);
        assert_eq!(c.hosts[0].host, "svchost");
        assert_eq!(c.hosts[0].port, 6100);
        assert_eq!(c.dbname, "explicit");
        assert_eq!(c.user, "svcuser");
        assert_eq!(c.password(), Some("svc pw "));
        assert_eq!(c.options.as_deref(), Some("-c work_mem=5MB"));
        assert_eq!(c.sslmode, SslMode::Require);
        assert_eq!(c.application_name.as_deref(), Some("envapp"));
        // An empty value in the string also keeps the service's value out.
        let c = pe("service=svc host='' port=''", &e);
        assert_eq!(c.hosts[0].port, 5432);
        assert_ne!(c.hosts[0].host, "svchost");
        // PGSERVICE when the string names no service, and in a URI.
        let c = pe("", &e.clone().with_var("PGSERVICE", "svc2"));
        assert_eq!(c.hosts[0].host, "svc2host");
        let c = pe(
            "postgresql:///db?service=svc",
            &e.clone().with_var("PGSERVICE", "svc2"),
        );
        assert_eq!(
            (c.hosts[0].host.as_str(), c.dbname.as_str()),
            ("svchost", "db")
        );
        // Unknown service: an error.
        assert_eq!(
            erre("service=nope", &e),
            "definition of service \"nope\" not found"
        );
        // A PGSERVICEFILE that does not exist: an error.
        let m = erre(
            "service=svc",
            &env().with_var("PGSERVICEFILE", d.join("missing").to_str().unwrap()),
        );
        assert!(m.starts_with("service file \""), "{m}");
        assert!(m.contains("not found"), "{m}");

        // ~/.pg_service.conf, then PGSYSCONFDIR/pg_service.conf, then the default sysconfdir.
        let home = d.join("home");
        let sys = d.join("sys");
        let defsys = d.join("defsys");
        for dir in [&home, &sys, &defsys] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(home.join(".pg_service.conf"), "[a]\nhost=fromhome\n").unwrap();
        std::fs::write(
            sys.join("pg_service.conf"),
            "[a]\nhost=fromsys\n[b]\nhost=fromsys_b\n",
        )
        .unwrap();
        std::fs::write(defsys.join("pg_service.conf"), "[c]\nhost=fromdefsys\n").unwrap();
        let e = env()
            .with_var("HOME", home.to_str().unwrap())
            .with_var("PGSYSCONFDIR", sys.to_str().unwrap())
            .with_sysconfdir(&defsys);
        assert_eq!(pe("service=a", &e).hosts[0].host, "fromhome");
        assert_eq!(pe("service=b", &e).hosts[0].host, "fromsys_b");
        assert_eq!(
            erre("service=c", &e),
            "definition of service \"c\" not found"
        );
        let e = env().with_passwd_home(&home).with_sysconfdir(&defsys);
        assert_eq!(pe("service=a", &e).hosts[0].host, "fromhome");
        assert_eq!(pe("service=c", &e).hosts[0].host, "fromdefsys");
        // PGSERVICEFILE replaces ~/.pg_service.conf.
        let e = e.with_var("PGSERVICEFILE", file.to_str().unwrap());
        assert_eq!(
            erre("service=a", &e),
            "definition of service \"a\" not found"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn channel_binding_values() {
        assert_eq!(p("host=h user=u").channel_binding, ChannelBinding::Prefer);
        for (v, want) in [
            ("disable", ChannelBinding::Disable),
            ("prefer", ChannelBinding::Prefer),
            ("require", ChannelBinding::Require),
        ] {
            assert_eq!(
                p(&format!("host=h user=u channel_binding={v}")).channel_binding,
                want
            );
        }
        assert!(err("host=h user=u channel_binding=yes")
            .contains("invalid channel_binding value: \"yes\""));
        assert_eq!(
            err("host=h user=u channel_binding=require sslmode=disable"),
            "channel_binding \"require\" cannot be used with sslmode \"disable\": channel binding needs SSL"
        );
    }

    #[test]
    fn target_session_attrs_values() {
        assert_eq!(
            p("host=h user=u").target_session_attrs,
            TargetSessionAttrs::Any
        );
        for t in [
            TargetSessionAttrs::Any,
            TargetSessionAttrs::ReadWrite,
            TargetSessionAttrs::ReadOnly,
            TargetSessionAttrs::Primary,
            TargetSessionAttrs::Standby,
            TargetSessionAttrs::PreferStandby,
        ] {
            let c = p(&format!(
                "host=h user=u target_session_attrs={}",
                t.as_str()
            ));
            assert_eq!(c.target_session_attrs, t);
        }
        assert!(err("host=h user=u target_session_attrs=master")
            .contains("invalid target_session_attrs value: \"master\""));
    }

    #[test]
    fn tls_version_range() {
        let c = p("host=h user=u");
        assert_eq!(c.ssl_min_protocol_version, TlsVersion::V1_2);
        assert_eq!(c.ssl_max_protocol_version, None);
        let c = p("host=h user=u ssl_min_protocol_version=TLSv1.3");
        assert_eq!(c.ssl_min_protocol_version, TlsVersion::V1_3);
        // A minimum below what rustls has is satisfied by what it has.
        let c = p("host=h user=u ssl_min_protocol_version=TLSv1 ssl_max_protocol_version=TLSv1.2");
        assert_eq!(c.ssl_min_protocol_version, TlsVersion::V1_0);
        assert_eq!(c.ssl_max_protocol_version, Some(TlsVersion::V1_2));
        for max in ["TLSv1", "TLSv1.1"] {
            assert_eq!(
                err(&format!("host=h user=u ssl_min_protocol_version=TLSv1 ssl_max_protocol_version={max}")),
                format!("ssl_max_protocol_version \"{max}\" is not supported: only TLSv1.2 and TLSv1.3 are available")
            );
        }
        assert!(err("host=h user=u ssl_max_protocol_version=TLSv1.1")
            .starts_with("ssl_max_protocol_version \"TLSv1.1\" is not supported"));
        assert!(err(
            "host=h user=u ssl_min_protocol_version=TLSv1.3 ssl_max_protocol_version=TLSv1.2"
        )
        .starts_with("invalid SSL protocol version range"));
        assert!(err("host=h user=u ssl_min_protocol_version=SSLv3")
            .contains("invalid ssl_min_protocol_version value: \"SSLv3\""));
    }

    #[test]
    fn rejected_keywords_say_why() {
        assert_eq!(
            err("host=h user=u replication=database"),
            "connection option \"replication\" is not supported: livesync chooses the replication mode of each connection itself"
        );
        assert!(err("host=h user=u sslpassword=x").starts_with(
            "connection option \"sslpassword\" is not supported: encrypted client keys"
        ));
        assert!(
            err("host=h user=u sslcompression=1").starts_with("sslcompression=1 is not supported")
        );
        assert!(err("host=h user=u sslcompression=yes").contains("invalid sslcompression value"));
        assert!(err("host=h user=u gssencmode=require")
            .starts_with("gssencmode \"require\" is not supported"));
        assert!(err("host=h user=u gssencmode=x").contains("invalid gssencmode value"));
        assert!(err("host=h user=u client_encoding=LATIN1")
            .starts_with("client_encoding \"LATIN1\" is not supported"));
        for enc in ["UTF8", "utf-8", "Unicode"] {
            p(&format!("host=h user=u client_encoding={enc}"));
        }
        // GSSAPI-only keywords are harmless: no GSSAPI is ever used.
        p("host=h user=u krbsrvname=x gsslib=gssapi gssencmode=disable");
    }

    #[test]
    fn options_may_not_override_fixed_settings() {
        for o in [
            "-c search_path=evil",
            "-csearch_path=evil",
            "--search_path=evil",
            "--search-path=evil",
            "-c SEARCH_PATH=evil",
            "-c work_mem=1MB -c\\ search_path=x",
            "-c statement_timeout=5s",
            "-c lock_timeout=1",
            "-c idle_session_timeout=1",
            "-c idle_in_transaction_session_timeout=1",
            "-c datestyle=German",
            "-e",
            "-c application_name=x",
            "-c client_encoding=LATIN1",
            "-c bytea_output=escape",
            "-c extra_float_digits=0",
            "-c intervalstyle=iso_8601",
        ] {
            let m = err(&format!("host=h user=u options='{o}'"));
            assert!(m.starts_with("options may not set \""), "{o}: {m}");
        }
        assert!(err("host=h user=u options='-c search_path=x'").contains("empty search_path"));
        let c = p("host=h user=u options='-c work_mem=1MB --geqo=off -c search_path_x=1'");
        assert_eq!(
            c.options.as_deref(),
            Some("-c work_mem=1MB --geqo=off -c search_path_x=1")
        );
    }

    #[test]
    fn new_keywords_are_kept_and_round_trip() {
        let c = p(
            "host=/s user=u sslcrl=/c.crl sslcrldir=/crls ssl_min_protocol_version=TLSv1.3 \
                   channel_binding=require target_session_attrs=prefer-standby requirepeer=pg \
                   ssl_max_protocol_version=TLSv1.3",
        );
        assert_eq!(c.sslcrl.as_deref(), Some(Path::new("/c.crl")));
        assert_eq!(c.sslcrldir.as_deref(), Some(Path::new("/crls")));
        assert_eq!(c.requirepeer.as_deref(), Some("pg"));
        let r = c.redacted();
        for part in [
            "sslcrl=/c.crl",
            "sslcrldir=/crls",
            "ssl_min_protocol_version=TLSv1.3",
            "ssl_max_protocol_version=TLSv1.3",
            "channel_binding=require",
            "target_session_attrs=prefer-standby",
            "requirepeer=pg",
        ] {
            assert!(r.contains(part), "{r}");
        }
        assert_eq!(p(&r), c);
    }

    #[test]
    fn every_known_keyword_is_handled() {
        // Each keyword with a valid value parses (honoured or harmless); the rejected ones
        // fail with a message naming them. A keyword added to KNOWN_KEYS without a decision
        // here fails this test.
        let ok = [
            ("host", "h"),
            ("hostaddr", "127.0.0.1"),
            ("port", "5"),
            ("dbname", "d"),
            ("user", "u"),
            ("password", "p"),
            ("passfile", "/p"),
            ("channel_binding", "require"),
            ("connect_timeout", "3"),
            ("client_encoding", "UTF8"),
            ("options", "-c work_mem=1MB"),
            ("application_name", "a"),
            ("fallback_application_name", "f"),
            ("keepalives", "1"),
            ("keepalives_idle", "1"),
            ("keepalives_interval", "1"),
            ("keepalives_count", "1"),
            ("tcp_user_timeout", "1"),
            ("sslmode", "require"),
            ("sslcompression", "0"),
            ("sslcert", "/c"),
            ("sslkey", "/k"),
            ("sslrootcert", "/r"),
            ("sslcrl", "/l"),
            ("sslcrldir", "/ld"),
            ("sslsni", "0"),
            ("requirepeer", "pg"),
            ("ssl_min_protocol_version", "TLSv1.2"),
            ("ssl_max_protocol_version", "TLSv1.3"),
            ("gssencmode", "prefer"),
            ("krbsrvname", "k"),
            ("gsslib", "gssapi"),
            ("target_session_attrs", "read-only"),
        ];
        let rejected = [
            ("sslpassword", "x"),
            ("replication", "database"),
            ("service", "nonexistent-service"),
        ];
        for k in KNOWN_KEYS {
            let in_ok = ok.iter().any(|(o, _)| o == k);
            let in_rej = rejected.iter().any(|(o, _)| o == k);
            assert!(in_ok != in_rej, "keyword {k} has no decision in this test");
        }
        for (k, v) in ok {
            let c = p(&format!("user=u {k}='{v}'"));
            // Spot checks that the value was taken, not dropped.
            match k {
                "keepalives_idle" => assert_eq!(c.keepalives_idle, Some(1)),
                "keepalives_interval" => assert_eq!(c.keepalives_interval, Some(1)),
                "keepalives_count" => assert_eq!(c.keepalives_count, Some(1)),
                "tcp_user_timeout" => assert_eq!(c.tcp_user_timeout_ms, Some(1)),
                "fallback_application_name" => {
                    assert_eq!(c.fallback_application_name.as_deref(), Some("f"))
                }
                "sslsni" => assert!(!c.sslsni),
                _ => {}
            }
        }
        for (k, v) in rejected {
            let m = err(&format!("user=u {k}={v}"));
            assert!(m.contains(k), "{k}: {m}");
        }
    }
}
