//! Parsing of libpq connection strings into [`ConnInfo`].
//!
//! Both forms libpq accepts are understood:
//!
//! * URIs: `postgres[ql]://[user[:password]@][host[:port][,host[:port]...]][/dbname][?key=value&...]`
//!   with percent-decoding everywhere, `[::1]` IPv6 literals and `ssl=true`;
//! * `key=value` strings, values optionally in single quotes, with backslash escapes.
//!
//! Every keyword libpq 15 knows is accepted; an unknown keyword is an error, as in libpq.
//! Keywords that do not apply to this client (GSSAPI, CRLs, ...) are accepted and ignored,
//! except where ignoring them would silently weaken security (`gssencmode=require`,
//! `channel_binding=require`, `service`, `requirepeer`): those are rejected.
//!
//! The password is never part of [`ConnInfo::redacted`] nor of the `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::SourceError;

/// Default connect timeout when the connection string has none.
pub const DEFAULT_CONNECT_TIMEOUT_SECS: u64 = 10;

/// Every keyword libpq 15 knows.
const KNOWN_KEYS: &[&str] = &[
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
    fn parse(s: &str) -> Result<SslMode, SourceError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => {
                return Err(invalid(format!(
                    "invalid sslmode value: \"{s}\" (expected disable, allow, prefer, require, verify-ca or verify-full)"
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

/// A parsed libpq connection string.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Servers to try in order (at least one).
    pub hosts: Vec<HostSpec>,
    pub dbname: String,
    pub user: String,
    password: Option<String>,
    /// Explicit `passfile`; otherwise `$PGPASSFILE` or `~/.pgpass` is consulted as libpq does.
    pub passfile: Option<PathBuf>,
    pub sslmode: SslMode,
    pub sslrootcert: Option<PathBuf>,
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    /// `sslsni` (default on).
    pub sslsni: bool,
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
    /// Accepted and recorded, not enforced (every server is acceptable).
    pub target_session_attrs: Option<String>,
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConnInfo({})", self.redacted())
    }
}

fn invalid(msg: impl Into<String>) -> SourceError {
    SourceError::InvalidConnInfo(msg.into())
}

impl ConnInfo {
    /// Parses a libpq connection string (URI or key=value).
    pub fn parse(s: &str) -> Result<ConnInfo, SourceError> {
        let pairs = if s.starts_with("postgresql://") || s.starts_with("postgres://") {
            parse_uri(s)?
        } else {
            parse_kv(s)?
        };
        Self::from_pairs(pairs)
    }

    /// Builds from (keyword, value) pairs; later values win, as in libpq.
    fn from_pairs(pairs: Vec<(String, String)>) -> Result<ConnInfo, SourceError> {
        let mut opts: Vec<(String, String)> = Vec::new();
        for (k, v) in pairs {
            if !KNOWN_KEYS.contains(&k.as_str()) {
                return Err(invalid(format!("invalid connection option \"{k}\"")));
            }
            opts.retain(|(ok, _)| ok != &k);
            opts.push((k, v));
        }
        // libpq treats an empty value as "not set" for nearly every keyword.
        let get = |k: &str| -> Option<String> {
            opts.iter()
                .find(|(ok, _)| ok == k)
                .map(|(_, v)| v.clone())
                .filter(|v| !v.is_empty())
        };

        if get("service").is_some() {
            return Err(invalid(
                "the \"service\" connection option is not supported",
            ));
        }
        if get("requirepeer").is_some() {
            return Err(invalid(
                "the \"requirepeer\" connection option is not supported",
            ));
        }
        match get("gssencmode").as_deref() {
            None | Some("disable") | Some("prefer") => {}
            Some("require") => {
                return Err(invalid(
                    "gssencmode \"require\" is not supported (no GSSAPI support)",
                ))
            }
            Some(v) => return Err(invalid(format!("invalid gssencmode value: \"{v}\""))),
        }
        match get("channel_binding").as_deref() {
            None | Some("disable") | Some("prefer") => {}
            Some("require") => return Err(invalid("channel_binding \"require\" is not supported")),
            Some(v) => return Err(invalid(format!("invalid channel_binding value: \"{v}\""))),
        }

        let user = match get("user") {
            Some(u) => u,
            None => std::env::var("USER")
                .ok()
                .or_else(|| std::env::var("LOGNAME").ok())
                .filter(|u| !u.is_empty())
                .ok_or_else(|| invalid("no user name given and none could be determined"))?,
        };
        let dbname = get("dbname").unwrap_or_else(|| user.clone());

        let hosts = build_hosts(get("host"), get("hostaddr"), get("port"))?;

        let sslmode = match get("sslmode") {
            Some(m) => SslMode::parse(&m)?,
            None => SslMode::Prefer,
        };
        let sslsni = match get("sslsni").as_deref() {
            None => true,
            Some(v) => parse_bool("sslsni", v)?,
        };
        let connect_timeout = match get("connect_timeout") {
            None => None,
            Some(v) => {
                let t: i64 = v.trim().parse().map_err(|_| {
                    invalid(format!(
                        "invalid integer value \"{v}\" for connection option \"connect_timeout\""
                    ))
                })?;
                Some(t.max(0) as u64)
            }
        };
        let keepalives = match get("keepalives").as_deref() {
            None => true,
            Some(v) => parse_int::<i64>("keepalives", v)? != 0,
        };
        let tls_version = |k: &str| -> Result<(), SourceError> {
            match get(k).as_deref() {
                None | Some("TLSv1") | Some("TLSv1.1") | Some("TLSv1.2") | Some("TLSv1.3") => {
                    Ok(())
                }
                Some(v) => Err(invalid(format!("invalid {k} value: \"{v}\""))),
            }
        };
        tls_version("ssl_min_protocol_version")?;
        tls_version("ssl_max_protocol_version")?;
        if let Some(t) = get("target_session_attrs") {
            if !matches!(
                t.as_str(),
                "any" | "read-write" | "read-only" | "primary" | "standby" | "prefer-standby"
            ) {
                return Err(invalid(format!(
                    "invalid target_session_attrs value: \"{t}\""
                )));
            }
        }

        Ok(ConnInfo {
            hosts,
            dbname,
            user,
            password: get("password"),
            passfile: get("passfile").map(PathBuf::from),
            sslmode,
            sslrootcert: get("sslrootcert").map(PathBuf::from),
            sslcert: get("sslcert").map(PathBuf::from),
            sslkey: get("sslkey").map(PathBuf::from),
            sslsni,
            connect_timeout,
            application_name: get("application_name"),
            fallback_application_name: get("fallback_application_name"),
            options: get("options"),
            keepalives,
            keepalives_idle: get("keepalives_idle")
                .map(|v| parse_int("keepalives_idle", &v))
                .transpose()?,
            keepalives_interval: get("keepalives_interval")
                .map(|v| parse_int("keepalives_interval", &v))
                .transpose()?,
            keepalives_count: get("keepalives_count")
                .map(|v| parse_int("keepalives_count", &v))
                .transpose()?,
            tcp_user_timeout_ms: get("tcp_user_timeout")
                .map(|v| parse_int("tcp_user_timeout", &v))
                .transpose()?,
            target_session_attrs: get("target_session_attrs"),
        })
    }

    /// The password given in the connection string, if any (the passfile is consulted at
    /// connect time, see [`ConnInfo::password_for`]).
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// The password to use for `host`: the explicit one, else a matching passfile line.
    pub fn password_for(&self, host: &HostSpec) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let file = match &self.passfile {
            Some(p) => p.clone(),
            None => match std::env::var_os("PGPASSFILE") {
                Some(p) => PathBuf::from(p),
                None => PathBuf::from(std::env::var_os("HOME")?).join(".pgpass"),
            },
        };
        // libpq ignores a passfile that is group or world accessible.
        let meta = std::fs::metadata(&file).ok()?;
        {
            use std::os::unix::fs::PermissionsExt;
            if !meta.is_file() || meta.permissions().mode() & 0o077 != 0 {
                return None;
            }
        }
        let text = std::fs::read_to_string(&file).ok()?;
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

fn parse_bool(key: &str, v: &str) -> Result<bool, SourceError> {
    match v {
        "1" | "on" | "true" | "yes" => Ok(true),
        "0" | "off" | "false" | "no" => Ok(false),
        _ => Err(invalid(format!(
            "invalid value \"{v}\" for connection option \"{key}\""
        ))),
    }
}

fn parse_int<T: std::str::FromStr>(key: &str, v: &str) -> Result<T, SourceError> {
    v.trim().parse().map_err(|_| {
        invalid(format!(
            "invalid integer value \"{v}\" for connection option \"{key}\""
        ))
    })
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

    fn p(s: &str) -> ConnInfo {
        ConnInfo::parse(s).unwrap_or_else(|e| panic!("parse {s:?}: {e}"))
    }

    fn err(s: &str) -> String {
        match ConnInfo::parse(s) {
            Ok(c) => panic!("expected error for {s:?}, got {c:?}"),
            Err(SourceError::InvalidConnInfo(m)) => m,
            Err(e) => panic!("unexpected error kind {e:?}"),
        }
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
        let c = p("  host=h\tuser=u\n options='-c search_path=x'  ");
        assert_eq!(c.options.as_deref(), Some("-c search_path=x"));
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
    fn kv_accepts_known_ignored_keys() {
        let c = p(
            "host=h user=u sslcompression=0 sslcrl=/x krbsrvname=pg gsslib=gssapi \
                   gssencmode=prefer channel_binding=prefer target_session_attrs=read-write \
                   fallback_application_name=f client_encoding=UTF8 replication=database",
        );
        assert_eq!(c.fallback_application_name.as_deref(), Some("f"));
        assert_eq!(c.target_session_attrs.as_deref(), Some("read-write"));
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
        let c = p("postgresql://u@h/db?options=-c%20search_path%3Dfoo");
        assert_eq!(c.options.as_deref(), Some("-c search_path=foo"));
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
}
