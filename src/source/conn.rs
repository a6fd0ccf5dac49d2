//! [`Connection`]: startup, authentication, simple query, COPY OUT and CopyBoth streaming.
//!
//! All reads go through one `BytesMut` read buffer owned by the connection; a message is only
//! removed from it once it is complete, so every read path is cancel-safe. Writes go through a
//! write buffer, so a write interrupted by cancellation is completed by the next one.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{
    ChannelBinding, ScramSha256, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::conninfo::{
    passwd_entry, ChannelBinding as CbMode, ConnInfo, HostSpec, SslMode, TargetSessionAttrs,
    FIXED_STARTUP_PARAMS,
};
use super::proto::{self, Frame, Reader};
use super::{tls, ReplMessage, ServerError, SourceError};

/// How much we pull from the socket without waiting, after a read, at most.
const DRAIN_LIMIT: usize = 4 << 20;

/// Receive pacing of a replication stream from a source on the same host
/// ([`Connection::paced`]). The walsender sends every pgoutput message with a `send()` of
/// its own, and TCP_NODELAY is on: while our receive window is open, each message leaves
/// as a packet of its own, and over loopback the sender's CPU also pays for the packet's
/// arrival at our end. Once the window is full, its sends only queue, and the queue leaves
/// in segments of tens of kB when we next read. Measured with 300 000 single-row INSERT
/// transactions over loopback: 160 to 300 bytes a packet and 6.3 to 7 walsender CPU
/// seconds with a window the kernel may grow (to megabytes: it is never full for a reader
/// as fast as ours), 6 to 28 kB a packet and 3.8 to 4.2 s with this one.
///
/// SO_RCVBUF of a paced stream. Linux doubles it for its bookkeeping, which makes it the
/// 128 kB a socket starts with under the default `net.ipv4.tcp_rmem`: what setting it
/// does is stop the kernel from growing it. The window it allows holds two of the sender's
/// segments (a sender sends segments of at most half the largest window it was offered),
/// so the sender never waits on its persist timer for room for one. Half of it (32 kB,
/// session 18, 4 alternating rounds each way in one run) drained no faster.
///
/// Only on the same host: there a window's worth arrives at once, as one or two segments.
/// Over a network it arrives a packet at a time, so a reader that found the socket empty
/// between two of them would sleep with the window half used, and a round trip of 1 ms
/// would cap a 64 kB window at 64 MB/s.
const PACED_RCVBUF: usize = 64 * 1024;
/// A read of a paced stream that brought at least this much found the window full: the
/// sender has more queued behind it (over TLS, counted in decrypted bytes: a little less).
const PACED_FULL_READ: usize = 32 * 1024;

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Tcp(s) => Some(s),
            Stream::Unix(_) => None,
            Stream::Tls(s) => Some(s.get_ref().0),
        }
    }

    fn raw_fd(&self) -> RawFd {
        match self {
            Stream::Tcp(s) => s.as_raw_fd(),
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Tls(s) => s.get_ref().0.as_raw_fd(),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Ready for a new command.
    Idle,
    /// Messages up to ReadyForQuery must be read (and discarded) before the next command,
    /// e.g. after a [`CopyOut`] was dropped early.
    Draining,
    /// Inside CopyBoth (after START_REPLICATION).
    CopyBoth,
}

/// One result row of a simple query, all values in text form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    columns: Arc<[String]>,
    values: Vec<Option<String>>,
}

impl Row {
    /// The value of column `idx` (`None` for NULL or out of range).
    pub fn get(&self, idx: usize) -> Option<&str> {
        self.values.get(idx).and_then(|v| v.as_deref())
    }

    /// The value of the first column called `name` (`None` for NULL or no such column).
    pub fn get_by_name(&self, name: &str) -> Option<&str> {
        let idx = self.columns.iter().position(|c| c == name)?;
        self.get(idx)
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// True when column `idx` is NULL (or out of range).
    pub fn is_null(&self, idx: usize) -> bool {
        self.get(idx).is_none()
    }
}

/// A connection to the source server.
pub struct Connection {
    stream: Stream,
    rbuf: BytesMut,
    wbuf: BytesMut,
    params: HashMap<String, String>,
    pid: i32,
    secret_key: i32,
    state: State,
    target: String,
    tls: bool,
    /// Over TLS: the `tls-server-end-point` channel binding data of the server's certificate,
    /// or why there is none.
    end_point: Option<Result<Vec<u8>, String>>,
    /// A replication stream whose receive window we keep small ([`PACED_RCVBUF`]).
    paced: bool,
    /// Bytes the last read of the socket brought (with what it drained without waiting;
    /// over TLS, decrypted bytes).
    last_read: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum TlsAttempt {
    /// No SSLRequest.
    Plain,
    /// SSLRequest; plain if the server says 'N'.
    Try,
    /// SSLRequest; error if the server says 'N'.
    Required,
}

fn connect_err(target: &str, msg: impl Into<String>) -> SourceError {
    SourceError::Connect {
        target: target.to_string(),
        msg: msg.into(),
    }
}

impl Connection {
    /// Full startup, bounded by `connect_timeout` (default 10 s) per host. Hosts of a
    /// multi-host connection string are tried in order, and a server that does not match
    /// `target_session_attrs` is left for the next host, as libpq does (`prefer-standby`: a
    /// first round wants a standby, a second takes any server); the last error is returned.
    pub async fn connect(
        info: &ConnInfo,
        replication: bool,
        application_name: &str,
    ) -> Result<Connection, SourceError> {
        let timeout = info.connect_timeout();
        let rounds: &[TargetSessionAttrs] = match info.target_session_attrs {
            TargetSessionAttrs::PreferStandby => {
                &[TargetSessionAttrs::Standby, TargetSessionAttrs::Any]
            }
            _ => std::slice::from_ref(&info.target_session_attrs),
        };
        let mut last_err = None;
        for &want in rounds {
            for host in &info.hosts {
                let fut = async {
                    let mut c =
                        Self::connect_host(info, host, replication, application_name).await?;
                    match c.session_mismatch(want).await? {
                        None => Ok(c),
                        Some(why) => {
                            c.close().await;
                            Err(connect_err(&host.display(), why))
                        }
                    }
                };
                let res = match timeout {
                    Some(d) => match tokio::time::timeout(d, fut).await {
                        Ok(r) => r,
                        Err(_) => Err(SourceError::Timeout {
                            target: host.display(),
                            secs: d.as_secs(),
                        }),
                    },
                    None => fut.await,
                };
                match res {
                    Ok(c) => return Ok(c),
                    Err(e) => last_err = Some(e),
                }
            }
        }
        Err(last_err.unwrap_or_else(|| SourceError::InvalidConnInfo("no host given".into())))
    }

    /// Why this server does not match `want` (libpq's messages), `None` if it does. Uses the
    /// `default_transaction_read_only` and `in_hot_standby` the server reported at startup,
    /// and asks (`SHOW transaction_read_only`, `pg_is_in_recovery()`) when it did not report
    /// them. Both work on a `replication=database` connection too.
    async fn session_mismatch(
        &mut self,
        want: TargetSessionAttrs,
    ) -> Result<Option<&'static str>, SourceError> {
        let reported = |c: &Connection, k: &str| c.parameter(k).map(|v| v == "on");
        Ok(match want {
            TargetSessionAttrs::Any | TargetSessionAttrs::PreferStandby => None,
            TargetSessionAttrs::ReadWrite | TargetSessionAttrs::ReadOnly => {
                let read_only = match (
                    reported(self, "default_transaction_read_only"),
                    reported(self, "in_hot_standby"),
                ) {
                    (Some(a), Some(b)) => a || b,
                    _ => self.query_bool("SHOW transaction_read_only").await?,
                };
                match (want, read_only) {
                    (TargetSessionAttrs::ReadWrite, true) => Some("session is read-only"),
                    (TargetSessionAttrs::ReadOnly, false) => Some("session is not read-only"),
                    _ => None,
                }
            }
            TargetSessionAttrs::Primary | TargetSessionAttrs::Standby => {
                let standby = match reported(self, "in_hot_standby") {
                    Some(b) => b,
                    None => {
                        self.query_bool("SELECT pg_catalog.pg_is_in_recovery()")
                            .await?
                    }
                };
                match (want, standby) {
                    (TargetSessionAttrs::Primary, true) => Some("server is in hot standby mode"),
                    (TargetSessionAttrs::Standby, false) => {
                        Some("server is not in hot standby mode")
                    }
                    _ => None,
                }
            }
        })
    }

    /// A one-value boolean query (`on`/`t` are true).
    async fn query_bool(&mut self, sql: &str) -> Result<bool, SourceError> {
        let rows = self.simple_query(sql).await?;
        match rows.first().and_then(|r| r.get(0)) {
            Some(v) => Ok(v == "on" || v == "t"),
            None => Err(SourceError::Protocol(format!(
                "\"{sql}\" returned no value"
            ))),
        }
    }

    async fn connect_host(
        info: &ConnInfo,
        host: &HostSpec,
        replication: bool,
        app: &str,
    ) -> Result<Connection, SourceError> {
        // SSL is never attempted over Unix-domain sockets (as libpq).
        if host.is_unix() {
            return Self::attempt(info, host, replication, app, TlsAttempt::Plain).await;
        }
        match info.sslmode {
            SslMode::Disable => {
                Self::attempt(info, host, replication, app, TlsAttempt::Plain).await
            }
            SslMode::Allow => {
                match Self::attempt(info, host, replication, app, TlsAttempt::Plain).await {
                    // The server may insist on SSL (pg_hba hostssl): retry with it, as libpq.
                    Err(SourceError::Server(e)) => {
                        Self::attempt(info, host, replication, app, TlsAttempt::Try)
                            .await
                            .map_err(|_| SourceError::Server(e))
                    }
                    r => r,
                }
            }
            SslMode::Prefer => {
                match Self::attempt(info, host, replication, app, TlsAttempt::Try).await {
                    // The server may refuse SSL connections (pg_hba hostnossl): retry without.
                    Err(SourceError::Server(e)) => {
                        match Self::attempt(info, host, replication, app, TlsAttempt::Plain).await {
                            Ok(c) => Ok(c),
                            Err(_) => Err(SourceError::Server(e)),
                        }
                    }
                    r => r,
                }
            }
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                Self::attempt(info, host, replication, app, TlsAttempt::Required).await
            }
        }
    }

    async fn open_socket(info: &ConnInfo, host: &HostSpec) -> Result<Stream, SourceError> {
        let target = host.display();
        if host.is_unix() {
            let path = host.socket_path();
            let s = UnixStream::connect(&path)
                .await
                .map_err(|e| connect_err(&target, e.to_string()))?;
            if let Some(want) = &info.requirepeer {
                check_peer(&s, want).map_err(|m| connect_err(&target, m))?;
            }
            return Ok(Stream::Unix(s));
        }
        let addrs: Vec<SocketAddr> = if let Some(a) = &host.hostaddr {
            let ip: std::net::IpAddr = a.parse().map_err(|_| {
                SourceError::InvalidConnInfo(format!("could not parse network address \"{a}\""))
            })?;
            vec![SocketAddr::new(ip, host.port)]
        } else if let Ok(ip) = host.host.parse::<std::net::IpAddr>() {
            vec![SocketAddr::new(ip, host.port)]
        } else {
            tokio::net::lookup_host((host.host.as_str(), host.port))
                .await
                .map_err(|e| {
                    connect_err(
                        &target,
                        format!(
                            "could not translate host name \"{}\" to address: {e}",
                            host.host
                        ),
                    )
                })?
                .collect()
        };
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    configure_keepalive(&s, info);
                    return Ok(Stream::Tcp(s));
                }
                Err(e) => last = Some(format!("{e} (address {addr})")),
            }
        }
        Err(connect_err(
            &target,
            last.unwrap_or_else(|| format!("host name \"{}\" has no address", host.host)),
        ))
    }

    async fn attempt(
        info: &ConnInfo,
        host: &HostSpec,
        replication: bool,
        app: &str,
        tls_attempt: TlsAttempt,
    ) -> Result<Connection, SourceError> {
        let target = host.display();
        let mut stream = Self::open_socket(info, host).await?;
        let mut tls_on = false;
        let mut end_point = None;
        if tls_attempt != TlsAttempt::Plain {
            let config = tls::client_config(info)?;
            let mut req = BytesMut::new();
            frontend::ssl_request(&mut req);
            stream.write_all(&req).await?;
            stream.flush().await?;
            // Exactly one byte: nothing may be read past it before the handshake.
            let mut answer = [0u8; 1];
            match stream.read_exact(&mut answer).await {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(SourceError::Closed)
                }
                Err(e) => return Err(e.into()),
            }
            match answer[0] {
                b'S' => {
                    let Stream::Tcp(tcp) = stream else {
                        unreachable!("SSL is only attempted over TCP")
                    };
                    let name = tls::server_name(&host.host, info.sslsni, info.sslmode)?;
                    let connector = tokio_rustls::TlsConnector::from(config);
                    let tls = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| SourceError::Tls(tls::describe_tls_error(&e)))?;
                    end_point = Some(
                        match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
                            Some(cert) => tls::server_end_point(cert.as_ref()),
                            None => Err("the server sent no certificate".to_string()),
                        },
                    );
                    stream = Stream::Tls(Box::new(tls));
                    tls_on = true;
                }
                b'N' => {
                    if tls_attempt == TlsAttempt::Required {
                        return Err(SourceError::Tls(
                            "server does not support SSL, but SSL was required".into(),
                        ));
                    }
                }
                b'E' => {
                    return Err(SourceError::Protocol(
                        "server sent an error response during SSL exchange".into(),
                    ))
                }
                other => {
                    return Err(SourceError::Protocol(format!(
                        "received invalid response to SSL negotiation: \"{}\"",
                        proto::printable(other)
                    )))
                }
            }
        }

        let mut conn = Connection {
            stream,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            params: HashMap::new(),
            pid: 0,
            secret_key: 0,
            state: State::Idle,
            target,
            tls: tls_on,
            end_point,
            paced: false,
            last_read: 0,
        };
        conn.startup(info, host, replication, app).await?;
        Ok(conn)
    }

    async fn startup(
        &mut self,
        info: &ConnInfo,
        host: &HostSpec,
        replication: bool,
        app: &str,
    ) -> Result<(), SourceError> {
        let app_name = info
            .application_name
            .as_deref()
            .or(if app.is_empty() { None } else { Some(app) })
            .or(info.fallback_application_name.as_deref());
        // The fixed settings (an empty search_path, no timeouts, our formats) come after
        // `options` in the server's processing, so they win; the parser refuses `options`
        // that set them.
        let mut params: Vec<(&str, &str)> = vec![("user", &info.user), ("database", &info.dbname)];
        params.extend(FIXED_STARTUP_PARAMS.iter().copied());
        if let Some(a) = app_name {
            params.push(("application_name", a));
        }
        if let Some(o) = info.options.as_deref() {
            params.push(("options", o));
        }
        if replication {
            params.push(("replication", "database"));
        }
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)?;
        self.flush().await?;

        let mut password: Option<String> = None;
        let get_password = |password: &mut Option<String>| -> Result<Vec<u8>, SourceError> {
            if password.is_none() {
                *password = info.password_for(host);
            }
            password.clone().map(String::into_bytes).ok_or_else(|| {
                SourceError::Auth(format!(
                    "no password supplied for user \"{}\" (the server requested password authentication)",
                    info.user
                ))
            })
        };
        let mut scram: Option<ScramSha256> = None;
        // SCRAM-SHA-256-PLUS was chosen / the server's final SCRAM message was verified.
        let mut scram_plus = false;
        let mut scram_done = false;
        let cb = info.channel_binding;

        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'R' => {
                    let mut r = Reader::new(f.body);
                    let code = r.i32()?;
                    // libpq's check_expected_areq: with channel_binding=require only SASL may
                    // authenticate us (no password may be sent another way).
                    if cb == CbMode::Require && !matches!(code, 0 | 10 | 11 | 12) {
                        return Err(SourceError::Auth(
                            "channel binding required but not supported by server's authentication request".into(),
                        ));
                    }
                    match code {
                        0 => {
                            if scram.is_some() && !scram_done {
                                return Err(SourceError::Auth(
                                    "the server reported success before completing SCRAM authentication".into(),
                                ));
                            }
                            if cb == CbMode::Require && !(scram_done && scram_plus) {
                                return Err(SourceError::Auth(
                                    "channel binding required, but server authenticated client without channel binding".into(),
                                ));
                            }
                        }
                        3 => {
                            let pw = get_password(&mut password)?;
                            frontend::password_message(&pw, &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        5 => {
                            let salt = r.bytes(4)?;
                            let pw = get_password(&mut password)?;
                            let hash = md5_hash(
                                info.user.as_bytes(),
                                &pw,
                                [salt[0], salt[1], salt[2], salt[3]],
                            );
                            frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        10 => {
                            let mut mechs = Vec::new();
                            loop {
                                let m = r.cstr()?;
                                if m.is_empty() {
                                    break;
                                }
                                mechs.push(m);
                            }
                            let (mech, binding) = self.choose_sasl(&mechs, cb)?;
                            scram_plus = mech == SCRAM_SHA_256_PLUS;
                            let pw = get_password(&mut password)?;
                            let s = ScramSha256::new(&pw, binding);
                            frontend::sasl_initial_response(mech, s.message(), &mut self.wbuf)?;
                            self.flush().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                SourceError::Protocol("unexpected SASL continue message".into())
                            })?;
                            s.update(&r.rest()).map_err(|e| {
                                SourceError::Auth(format!("SCRAM authentication failed: {e}"))
                            })?;
                            frontend::sasl_response(s.message(), &mut self.wbuf)?;
                            self.flush().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                SourceError::Protocol("unexpected SASL final message".into())
                            })?;
                            s.finish(&r.rest()).map_err(|e| {
                                SourceError::Auth(format!(
                                    "SCRAM authentication failed: invalid server signature: {e}"
                                ))
                            })?;
                            scram_done = true;
                        }
                        2 => return Err(unsupported_auth("Kerberos V5")),
                        7 | 8 => return Err(unsupported_auth("GSSAPI")),
                        9 => return Err(unsupported_auth("SSPI")),
                        n => return Err(unsupported_auth(&format!("request {n}"))),
                    }
                }
                b'S' => self.handle_parameter_status(f.body)?,
                b'K' => {
                    let mut r = Reader::new(f.body);
                    self.pid = r.i32()?;
                    self.secret_key = r.i32()?;
                }
                b'Z' => return Ok(()),
                b'E' => return Err(SourceError::Server(proto::parse_error_fields(f.body)?)),
                b'N' | b'v' => {}
                t => return Err(unexpected(t, "during startup")),
            }
        }
    }

    /// libpq's `pg_SASL_init` choice: SCRAM-SHA-256-PLUS with `tls-server-end-point` when the
    /// server offers it over TLS and `channel_binding` is not `disable`, else SCRAM-SHA-256
    /// with the GS2 flag `y` (we could bind, the server cannot) or `n`.
    fn choose_sasl(
        &self,
        mechs: &[String],
        cb: CbMode,
    ) -> Result<(&'static str, ChannelBinding), SourceError> {
        let plus_offered = mechs.iter().any(|m| m == SCRAM_SHA_256_PLUS);
        if plus_offered && !self.tls {
            // Perhaps SSL was stripped by a proxy: the server would refuse us anyway.
            return Err(SourceError::Auth(
                "server offered SCRAM-SHA-256-PLUS authentication over a non-SSL connection".into(),
            ));
        }
        let mut no_binding_why = None;
        if plus_offered && cb != CbMode::Disable {
            match &self.end_point {
                Some(Ok(data)) => {
                    return Ok((
                        SCRAM_SHA_256_PLUS,
                        ChannelBinding::tls_server_end_point(data.clone()),
                    ))
                }
                Some(Err(why)) => no_binding_why = Some(why.clone()),
                None => {}
            }
        }
        if cb == CbMode::Require {
            return Err(SourceError::Auth(match no_binding_why {
                Some(why) => format!("channel binding is required, but {why}"),
                None if !self.tls => {
                    "channel binding is required, but the connection does not use SSL".into()
                }
                None => "channel binding is required, but server did not offer an authentication method that supports channel binding".into(),
            }));
        }
        if !mechs.iter().any(|m| m == SCRAM_SHA_256) {
            return Err(SourceError::Auth(format!(
                "none of the server's SASL authentication mechanisms are supported (server offers: {})",
                mechs.join(", ")
            )));
        }
        // "y" tells a server that cannot bind that we could; a server offering -PLUS would
        // take "y" as a downgrade attack, so when we cannot or may not bind: "n".
        let binding = if self.tls && cb != CbMode::Disable && !plus_offered {
            ChannelBinding::unrequested()
        } else {
            ChannelBinding::unsupported()
        };
        Ok((SCRAM_SHA_256, binding))
    }

    /// A server parameter reported by ParameterStatus (`server_version`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    /// The backend's process id.
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// The secret key of BackendKeyData (for a cancel request).
    pub fn secret_key(&self) -> i32 {
        self.secret_key
    }

    /// True when the connection is TLS-encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The server connected to, for messages (`host "h" port 5432`).
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Simple-query protocol. Returns the rows of the last result set that had a
    /// RowDescription (empty if none). An ErrorResponse becomes [`SourceError::Server`] once
    /// ReadyForQuery arrived, so the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, SourceError> {
        self.ensure_idle().await?;
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        self.state = State::Draining;

        let mut result: Vec<Row> = Vec::new();
        let mut current: Option<(Arc<[String]>, Vec<Row>)> = None;
        let mut error: Option<ServerError> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'T' => current = Some((parse_row_description(f.body)?, Vec::new())),
                b'D' => {
                    let (cols, rows) = current.as_mut().ok_or_else(|| {
                        SourceError::Protocol("DataRow without RowDescription".into())
                    })?;
                    rows.push(parse_data_row(cols.clone(), f.body)?);
                }
                b'C' | b'I' => {
                    if let Some((_, rows)) = current.take() {
                        result = rows;
                    }
                }
                b'E' => error = Some(proto::parse_error_fields(f.body)?),
                b'G' => {
                    frontend::copy_fail(
                        "COPY FROM STDIN is not supported by this client",
                        &mut self.wbuf,
                    )?;
                    self.flush().await?;
                }
                b'H' | b'd' | b'c' => {} // COPY TO STDOUT through simple_query: data discarded
                b'W' => {
                    self.state = State::CopyBoth;
                    return Err(SourceError::Protocol(
                        "the command started a replication stream: use start_replication".into(),
                    ));
                }
                b'Z' => {
                    self.state = State::Idle;
                    return match error {
                        Some(e) => Err(SourceError::Server(e)),
                        None => Ok(result),
                    };
                }
                b'S' => self.handle_parameter_status(f.body)?,
                b'N' | b'A' => {}
                t => return Err(unexpected(t, "in a query response")),
            }
        }
    }

    /// Runs `COPY ... TO STDOUT` (simple query) and returns a reader of its data.
    pub async fn copy_out(&mut self, sql: &str) -> Result<CopyOut<'_>, SourceError> {
        self.ensure_idle().await?;
        frontend::query(sql, &mut self.wbuf)?;
        self.flush().await?;
        self.state = State::Draining;
        let mut error: Option<ServerError> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'H' if error.is_none() => {
                    return Ok(CopyOut {
                        conn: self,
                        done: false,
                        error: None,
                    })
                }
                b'E' => error = Some(proto::parse_error_fields(f.body)?),
                b'Z' => {
                    self.state = State::Idle;
                    return Err(match error {
                        Some(e) => SourceError::Server(e),
                        None => {
                            SourceError::Protocol("the query did not start a COPY TO STDOUT".into())
                        }
                    });
                }
                b'G' => {
                    frontend::copy_fail(
                        "COPY FROM STDIN is not supported by this client",
                        &mut self.wbuf,
                    )?;
                    self.flush().await?;
                }
                b'W' => {
                    self.state = State::CopyBoth;
                    return Err(SourceError::Protocol(
                        "the command started a replication stream: use start_replication".into(),
                    ));
                }
                b'S' => self.handle_parameter_status(f.body)?,
                _ => {} // row results of preceding statements, notices: ignored
            }
        }
    }

    /// Sends a `START_REPLICATION` command and waits for CopyBothResponse.
    pub async fn start_replication(&mut self, command: &str) -> Result<(), SourceError> {
        self.ensure_idle().await?;
        frontend::query(command, &mut self.wbuf)?;
        self.flush().await?;
        self.state = State::Draining;
        let mut error: Option<ServerError> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'W' => {
                    self.state = State::CopyBoth;
                    self.pace_if_local();
                    return Ok(());
                }
                b'E' => error = Some(proto::parse_error_fields(f.body)?),
                b'Z' => {
                    self.state = State::Idle;
                    return Err(match error {
                        Some(e) => SourceError::Server(e),
                        None => SourceError::Protocol(
                            "the command did not start a replication stream".into(),
                        ),
                    });
                }
                b'S' => self.handle_parameter_status(f.body)?,
                _ => {}
            }
        }
    }

    /// Next XLogData or primary keepalive of the replication stream. Cancel-safe.
    pub async fn next_replication_message(&mut self) -> Result<ReplMessage, SourceError> {
        if self.state != State::CopyBoth {
            return Err(SourceError::Protocol(
                "not in replication streaming mode".into(),
            ));
        }
        loop {
            while let Some(f) = proto::take_frame(&mut self.rbuf)? {
                match f.tag {
                    b'd' => {
                        if let Some(m) = proto::parse_copy_both_payload(f.body)? {
                            return Ok(m);
                        }
                    }
                    b'N' => {}
                    b'S' => self.handle_parameter_status(f.body)?,
                    b'E' => {
                        self.state = State::Draining;
                        return Err(SourceError::Server(proto::parse_error_fields(f.body)?));
                    }
                    b'c' => {
                        // Server ended the stream: acknowledge; C/Z follow.
                        self.state = State::Draining;
                        frontend::copy_done(&mut self.wbuf);
                        let _ = self.flush().await;
                        return Err(SourceError::StreamEnded);
                    }
                    t => return Err(unexpected(t, "in the replication stream")),
                }
            }
            self.fill().await?;
        }
    }

    /// Sends a standby status update ('r'); the clock is now, in PostgreSQL-epoch microseconds.
    pub async fn send_standby_status(
        &mut self,
        write: u64,
        flush: u64,
        apply: u64,
        reply_requested: bool,
    ) -> Result<(), SourceError> {
        if self.state != State::CopyBoth {
            return Err(SourceError::Protocol(
                "not in replication streaming mode".into(),
            ));
        }
        proto::standby_status_update(
            &mut self.wbuf,
            write,
            flush,
            apply,
            proto::pg_now_micros(),
            reply_requested,
        );
        self.flush().await
    }

    /// Ends the replication stream from our side (CopyDone) and waits until the server is
    /// ready for commands again; data still in flight is discarded.
    pub async fn end_replication(&mut self) -> Result<(), SourceError> {
        if self.state == State::CopyBoth {
            frontend::copy_done(&mut self.wbuf);
            self.flush().await?;
            self.state = State::Draining;
        }
        self.ensure_idle().await
    }

    /// The next replication message if it is already buffered whole, without touching the
    /// socket (no runtime, no timer: the fast path of a stream that is behind). None: read
    /// with [`Connection::next_replication_message`] (also for anything but data and
    /// keepalives, which it handles).
    pub fn next_buffered_message(&mut self) -> Result<Option<ReplMessage>, SourceError> {
        if self.state != State::CopyBoth {
            return Ok(None);
        }
        while self.rbuf.first() == Some(&b'd') {
            let Some(f) = proto::take_frame(&mut self.rbuf)? else {
                return Ok(None);
            };
            if let Some(m) = proto::parse_copy_both_payload(f.body)? {
                return Ok(Some(m));
            }
        }
        Ok(None)
    }

    /// True when complete, unread protocol messages are already buffered (the caller must not
    /// wait on the socket before reading them).
    pub fn has_buffered_message(&self) -> bool {
        !matches!(proto::complete_frame_len(&self.rbuf), Ok(None))
    }

    /// A replication stream from a source on this host (TCP to a loopback address, or to
    /// the address the connection comes from) gets a small receive window, so the
    /// walsender's messages queue behind it and leave together instead of a packet each
    /// ([`PACED_RCVBUF`]). Decided once, when the stream starts: the peer of a connection
    /// does not move.
    fn pace_if_local(&mut self) {
        let Some(tcp) = self.stream.tcp() else {
            return;
        };
        let local = match (tcp.peer_addr(), tcp.local_addr()) {
            (Ok(peer), Ok(me)) => same_host(peer.ip(), me.ip()),
            _ => false,
        };
        self.paced = local
            && socket2::SockRef::from(tcp)
                .set_recv_buffer_size(PACED_RCVBUF)
                .is_ok();
    }

    /// The replication stream's receive window is kept small ([`PACED_RCVBUF`]): a reader
    /// that waits for the walsender's messages to gather should first take what
    /// [`Connection::source_has_more`] says is ready.
    pub fn paced(&self) -> bool {
        self.paced
    }

    /// The source has more of the stream ready for us: bytes wait in the socket, or the
    /// last read filled the window, so more is queued behind it at the sender.
    pub fn source_has_more(&self) -> bool {
        self.last_read >= PACED_FULL_READ
            || bytes_queued(self.stream.raw_fd()).is_some_and(|n| n > 0)
    }

    /// No bytes wait in the socket (the kernel says so): the source has sent nothing we
    /// have not read.
    pub fn socket_empty(&self) -> bool {
        bytes_queued(self.stream.raw_fd()) == Some(0)
    }

    /// The socket's file descriptor (for `WaitLatchOrSocket`).
    pub fn raw_fd(&self) -> RawFd {
        self.stream.raw_fd()
    }

    /// Sends Terminate and closes the socket (best effort).
    pub async fn close(mut self) {
        frontend::terminate(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            let _ = self.flush().await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    // ---- internals ----

    fn handle_parameter_status(&mut self, body: Bytes) -> Result<(), SourceError> {
        let mut r = Reader::new(body);
        let k = r.cstr()?;
        let v = r.cstr()?;
        self.params.insert(k, v);
        Ok(())
    }

    /// Reads and discards messages until ReadyForQuery if a previous command was left
    /// unfinished.
    async fn ensure_idle(&mut self) -> Result<(), SourceError> {
        match self.state {
            State::Idle => Ok(()),
            State::CopyBoth => Err(SourceError::Protocol(
                "the connection is streaming replication data: call end_replication first".into(),
            )),
            State::Draining => loop {
                let f = self.read_frame().await?;
                match f.tag {
                    b'Z' => {
                        self.state = State::Idle;
                        return Ok(());
                    }
                    b'S' => self.handle_parameter_status(f.body)?,
                    b'c' => {
                        // A server CopyDone while we drain after end_replication: fine.
                    }
                    _ => {}
                }
            },
        }
    }

    async fn read_frame(&mut self) -> Result<Frame, SourceError> {
        loop {
            if let Some(f) = proto::take_frame(&mut self.rbuf)? {
                return Ok(f);
            }
            self.fill().await?;
        }
    }

    /// Reads more bytes into the read buffer (cancel-safe), then whatever else is available
    /// without waiting, so no decrypted TLS data stays hidden inside rustls.
    async fn fill(&mut self) -> Result<(), SourceError> {
        if self.rbuf.capacity() - self.rbuf.len() < 8192 {
            self.rbuf.reserve(64 * 1024);
        }
        let n = self.stream.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            return Err(SourceError::Closed);
        }
        self.last_read = n + self.drain_available();
        Ok(())
    }

    /// Reads what is available without waiting; returns how many bytes.
    fn drain_available(&mut self) -> usize {
        use std::future::Future;
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut total = 0;
        while self.rbuf.len() < DRAIN_LIMIT {
            if self.rbuf.capacity() - self.rbuf.len() < 8192 {
                self.rbuf.reserve(64 * 1024);
            }
            // `read_buf` is cancel-safe, so dropping the future while pending loses nothing.
            let fut = self.stream.read_buf(&mut self.rbuf);
            let mut fut = std::pin::pin!(fut);
            match fut.as_mut().poll(&mut cx) {
                Poll::Ready(Ok(n)) if n > 0 => total += n,
                _ => break, // pending, EOF or error: the next real read reports it
            }
        }
        total
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        while !self.wbuf.is_empty() {
            let n = self.stream.write_buf(&mut self.wbuf).await?;
            if n == 0 {
                return Err(SourceError::Closed);
            }
        }
        self.stream.flush().await?;
        Ok(())
    }
}

/// The data of a `COPY ... TO STDOUT`, chunk by chunk (one CopyData message each).
pub struct CopyOut<'a> {
    conn: &'a mut Connection,
    done: bool,
    error: Option<ServerError>,
}

impl CopyOut<'_> {
    /// The next CopyData payload, `None` once the COPY has finished (after ReadyForQuery).
    /// An error of the server during the COPY is returned after ReadyForQuery, so the
    /// connection stays usable. Cancel-safe.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, SourceError> {
        if self.done {
            return Ok(None);
        }
        loop {
            let f = self.conn.read_frame().await?;
            match f.tag {
                b'd' => return Ok(Some(f.body)),
                b'c' | b'C' | b'N' => {}
                b'S' => self.conn.handle_parameter_status(f.body)?,
                b'E' => self.error = Some(proto::parse_error_fields(f.body)?),
                b'Z' => {
                    self.done = true;
                    self.conn.state = State::Idle;
                    return match self.error.take() {
                        Some(e) => Err(SourceError::Server(e)),
                        None => Ok(None),
                    };
                }
                t => return Err(unexpected(t, "in COPY data")),
            }
        }
    }
}

fn unsupported_auth(what: &str) -> SourceError {
    SourceError::Auth(format!("authentication method {what} is not supported"))
}

fn unexpected(tag: u8, when: &str) -> SourceError {
    SourceError::Protocol(format!(
        "unexpected message type \"{}\" {when}",
        proto::printable(tag)
    ))
}

fn parse_row_description(body: Bytes) -> Result<Arc<[String]>, SourceError> {
    let mut r = Reader::new(body);
    let n = r.i16()?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        cols.push(r.cstr()?);
        // table oid, column attnum, type oid, type size, type modifier, format code
        r.bytes(4 + 2 + 4 + 2 + 4 + 2)?;
    }
    Ok(cols.into())
}

fn parse_data_row(columns: Arc<[String]>, body: Bytes) -> Result<Row, SourceError> {
    let mut r = Reader::new(body);
    let n = r.i16()?;
    let mut values = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = r.i32()?;
        if len < 0 {
            values.push(None);
        } else {
            let b = r.bytes(len as usize)?;
            values.push(Some(String::from_utf8_lossy(&b).into_owned()));
        }
    }
    Ok(Row { columns, values })
}

/// libpq's `requirepeer`: the server's end of the Unix socket must belong to OS user `want`.
fn check_peer(s: &UnixStream, want: &str) -> Result<(), String> {
    let uid = s
        .peer_cred()
        .map_err(|e| format!("could not get peer credentials: {e}"))?
        .uid();
    let name = passwd_entry(uid)
        .map(|(n, _)| n)
        .ok_or_else(|| format!("local user with ID {uid} does not exist"))?;
    if name != want {
        return Err(format!(
            "requirepeer specifies \"{want}\", but actual peer user name is \"{name}\""
        ));
    }
    Ok(())
}

/// Bytes waiting to be read in a socket (FIONREAD); None if the kernel would not say.
fn bytes_queued(fd: RawFd) -> Option<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD on a socket descriptor, into a c_int.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    (rc == 0).then_some(n as usize)
}

/// A TCP peer on this host: a loopback address, or the address our end has (IPv4 written
/// as IPv6, `::ffff:127.0.0.1`, counts as IPv4).
fn same_host(peer: std::net::IpAddr, me: std::net::IpAddr) -> bool {
    let peer = peer.to_canonical();
    peer.is_loopback() || peer == me.to_canonical()
}

fn configure_keepalive(s: &TcpStream, info: &ConnInfo) {
    let sock = socket2::SockRef::from(s);
    if !info.keepalives {
        let _ = sock.set_keepalive(false);
        return;
    }
    let mut ka = socket2::TcpKeepalive::new();
    if let Some(t) = info.keepalives_idle {
        ka = ka.with_time(Duration::from_secs(t));
    }
    if let Some(t) = info.keepalives_interval {
        ka = ka.with_interval(Duration::from_secs(t));
    }
    if let Some(c) = info.keepalives_count {
        ka = ka.with_retries(c);
    }
    let _ = sock.set_tcp_keepalive(&ka);
    if let Some(ms) = info.tcp_user_timeout_ms {
        let _ = sock.set_tcp_user_timeout(Some(Duration::from_millis(ms)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4000))]

        /// Row parsing on arbitrary bytes: errors, never panics or over-allocates.
        #[test]
        fn row_parsing_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            if let Ok(cols) = parse_row_description(Bytes::from(bytes.clone())) {
                let _ = parse_data_row(cols, Bytes::from(bytes.clone()));
            }
            let _ = parse_data_row(Arc::from(Vec::<String>::new()), Bytes::from(bytes));
        }
    }

    /// A connection in CopyBoth over one end of a socket pair (the test plays the server).
    fn copy_both_over(sock: UnixStream) -> Connection {
        conn_over(Stream::Unix(sock), State::CopyBoth)
    }

    fn conn_over(stream: Stream, state: State) -> Connection {
        Connection {
            stream,
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            params: HashMap::new(),
            pid: 0,
            secret_key: 0,
            state,
            target: "test".into(),
            tls: false,
            end_point: None,
            paced: false,
            last_read: 0,
        }
    }

    /// XLogData messages of 130 bytes, at least `bytes` of them.
    fn xlogdata(bytes: usize) -> BytesMut {
        let mut wire = BytesMut::new();
        while wire.len() < bytes {
            wire.put_u8(b'd');
            wire.put_u32(4 + 1 + 24 + 100);
            wire.put_u8(b'w');
            wire.put_u64(1);
            wire.put_u64(2);
            wire.put_i64(3);
            wire.put_slice(&[b'x'; 100]);
        }
        wire
    }

    /// Plays a walsender on a thread of its own: reads one query, answers
    /// CopyBothResponse, then writes each burst it is sent.
    fn fake_walsender<S: std::io::Read + std::io::Write + Send + 'static>(
        mut s: S,
    ) -> (
        std::sync::mpsc::Sender<BytesMut>,
        std::thread::JoinHandle<()>,
    ) {
        let (tx, rx) = std::sync::mpsc::channel::<BytesMut>();
        let t = std::thread::spawn(move || {
            let mut head = [0u8; 5];
            s.read_exact(&mut head).unwrap();
            assert_eq!(head[0], b'Q');
            let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
            let mut query = vec![0u8; len - 4];
            s.read_exact(&mut query).unwrap();
            s.write_all(b"W\0\0\0\x07\0\0\0").unwrap();
            while let Ok(b) = rx.recv() {
                s.write_all(&b).unwrap();
            }
        });
        (tx, t)
    }

    #[test]
    fn same_host_is_loopback_or_our_own_address() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert!(same_host(ip("127.0.0.1"), ip("127.0.0.1")));
        assert!(same_host(ip("127.0.0.5"), ip("10.0.0.1")));
        assert!(same_host(ip("::1"), ip("::1")));
        assert!(same_host(ip("::ffff:127.0.0.1"), ip("::ffff:127.0.0.1")));
        assert!(same_host(ip("10.0.0.1"), ip("10.0.0.1")));
        assert!(same_host(ip("::ffff:10.0.0.1"), ip("10.0.0.1")));
        assert!(!same_host(ip("10.0.0.2"), ip("10.0.0.1")));
        assert!(!same_host(ip("fe80::2"), ip("fe80::1")));
        assert!(!same_host(ip("::ffff:10.0.0.2"), ip("::ffff:10.0.0.1")));
    }

    /// Bytes waiting in a socket.
    fn queued(fd: RawFd) -> usize {
        bytes_queued(fd).expect("FIONREAD")
    }

    /// A replication stream from a source on this host keeps its small receive window
    /// (the kernel would grow it to megabytes for a reader this fast), and says whether
    /// more is ready: after a read of a window's worth, or while bytes wait in the socket,
    /// yes; after a short read of all there was, no. From a Unix socket it is not
    /// paced (nor over TCP to another host: `same_host_is_loopback_or_our_own_address`).
    #[test]
    fn a_local_streams_window_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (tx, server) = fake_walsender(listener.accept().unwrap().0);
            let mut conn = conn_over(Stream::Tcp(client), State::Idle);
            conn.start_replication("START_REPLICATION SLOT s LOGICAL 0/0")
                .await
                .unwrap();
            assert!(conn.paced());
            let fd = conn.raw_fd();

            // 4 MB in one write, more than the window holds: once the bytes waiting in the
            // socket stop growing, the window is full; one read takes it all, and says the
            // sender has more.
            let burst = xlogdata(4 << 20);
            let total = burst.len();
            tx.send(burst).unwrap();
            let mut waiting = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                let now = queued(fd);
                if now > 0 && now == waiting {
                    break;
                }
                waiting = now;
            }
            conn.fill().await.unwrap();
            assert!(conn.last_read >= waiting, "{} of {waiting}", conn.last_read);
            assert!(conn.source_has_more(), "a full window of {waiting} bytes");
            // Bytes in the socket, whatever the last read brought: more.
            let mut got = conn.last_read;
            conn.rbuf.clear();
            while queued(fd) == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            conn.last_read = 0;
            assert!(conn.source_has_more());
            while got < total {
                conn.fill().await.unwrap();
                got += conn.last_read;
                conn.rbuf.clear();
            }
            assert_eq!(got, total);
            // A read that took a window's worth says more is ready, even with the socket
            // empty at that moment: a burst that fits the window, read at once.
            let fits = xlogdata(PACED_FULL_READ + 1000);
            let len = fits.len();
            tx.send(fits).unwrap();
            for _ in 0..500 {
                if queued(fd) == len {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(queued(fd), len, "a window under {len} bytes");
            conn.fill().await.unwrap();
            conn.rbuf.clear();
            assert_eq!((conn.last_read, queued(fd)), (len, 0));
            assert!(conn.source_has_more());
            let rcvbuf = socket2::SockRef::from(conn.stream.tcp().unwrap())
                .recv_buffer_size()
                .unwrap();
            assert!(rcvbuf <= 2 * PACED_RCVBUF, "SO_RCVBUF grew to {rcvbuf}");

            // One message, read whole, nothing behind it: nothing more is ready.
            tx.send(xlogdata(1)).unwrap();
            conn.fill().await.unwrap();
            assert_eq!(conn.last_read, 130);
            assert!(!conn.source_has_more());
            drop(tx);
            server.join().unwrap();

            // A Unix socket: no window to pace.
            let (client, server_end) = std::os::unix::net::UnixStream::pair().unwrap();
            client.set_nonblocking(true).unwrap();
            let (tx, server) = fake_walsender(server_end);
            let mut conn = conn_over(
                Stream::Unix(UnixStream::from_std(client).unwrap()),
                State::Idle,
            );
            conn.start_replication("START_REPLICATION SLOT s LOGICAL 0/0")
                .await
                .unwrap();
            assert!(!conn.paced());
            drop(tx);
            server.join().unwrap();
        });
    }

    #[test]
    fn replication_read_is_cancel_safe() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, mut server) = UnixStream::pair().unwrap();
            let mut conn = copy_both_over(client);
            // Server: 50 XLogData messages of growing size, dribbled out in small pieces with
            // pauses, so most 1 ms timeouts hit in the middle of a message.
            let mut wire = BytesMut::new();
            for i in 0..50u64 {
                let payload: Vec<u8> = (0..(i * 97 % 700 + 1)).map(|j| (i + j) as u8).collect();
                wire.put_u8(b'd');
                wire.put_u32((4 + 1 + 24 + payload.len()) as u32);
                wire.put_u8(b'w');
                wire.put_u64(i);
                wire.put_u64(i + 1);
                wire.put_i64(-(i as i64));
                wire.put_slice(&payload);
                if i % 10 == 0 {
                    wire.put_slice(b"N\0\0\0\x05\0"); // NoticeResponse, skipped
                    wire.put_u8(b'd');
                    wire.put_u32(4 + 18);
                    wire.put_u8(b'k');
                    wire.put_u64(i);
                    wire.put_i64(7);
                    wire.put_u8(1);
                }
            }
            let wire = wire.freeze();
            let writer = tokio::spawn(async move {
                for piece in wire.chunks(37) {
                    server.write_all(piece).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                server
            });
            let mut got = 0u64;
            let mut keepalives = 0;
            let mut timeouts = 0;
            while got < 50 {
                match tokio::time::timeout(
                    Duration::from_millis(1),
                    conn.next_replication_message(),
                )
                .await
                {
                    Err(_) => timeouts += 1,
                    Ok(Ok(ReplMessage::XLogData {
                        wal_start,
                        wal_end,
                        send_time,
                        data,
                    })) => {
                        assert_eq!(wal_start, got);
                        assert_eq!(wal_end, got + 1);
                        assert_eq!(send_time, -(got as i64));
                        let want: Vec<u8> =
                            (0..(got * 97 % 700 + 1)).map(|j| (got + j) as u8).collect();
                        assert_eq!(&data[..], &want[..]);
                        got += 1;
                    }
                    Ok(Ok(ReplMessage::Keepalive {
                        wal_end,
                        send_time,
                        reply_requested,
                    })) => {
                        assert_eq!(wal_end, got - 1);
                        assert_eq!(send_time, 7);
                        assert!(reply_requested);
                        keepalives += 1;
                    }
                    Ok(Err(e)) => panic!("{e}"),
                }
            }
            assert_eq!(keepalives, 5);
            assert!(timeouts > 100, "only {timeouts} cancellations");
            assert!(!conn.has_buffered_message());
            // Peer closes: Closed.
            drop(writer.await.unwrap());
            assert!(matches!(
                conn.next_replication_message().await,
                Err(SourceError::Closed)
            ));
        });
    }

    #[test]
    fn has_buffered_message_sees_complete_frames_only() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (client, _server) = UnixStream::pair().unwrap();
            let mut conn = copy_both_over(client);
            assert!(!conn.has_buffered_message());
            conn.rbuf.put_slice(&[b'd', 0, 0, 0, 6, b'k']);
            assert!(!conn.has_buffered_message());
            conn.rbuf.put_u8(0);
            assert!(conn.has_buffered_message());
        });
    }

    #[test]
    fn row_access() {
        let mut body = BytesMut::new();
        body.put_i16(2);
        body.put_slice(b"a\0");
        body.put_slice(&[0u8; 18]);
        body.put_slice(b"b\0");
        body.put_slice(&[0u8; 18]);
        let cols = parse_row_description(body.freeze()).unwrap();
        assert_eq!(&*cols, &["a".to_string(), "b".to_string()]);
        let mut d = BytesMut::new();
        d.put_i16(2);
        d.put_i32(-1);
        d.put_i32(3);
        d.put_slice(b"xyz");
        let row = parse_data_row(cols.clone(), d.clone().freeze()).unwrap();
        assert_eq!(row.len(), 2);
        assert_eq!(row.get(0), None);
        assert!(row.is_null(0));
        assert_eq!(row.get(1), Some("xyz"));
        assert_eq!(row.get_by_name("b"), Some("xyz"));
        assert_eq!(row.get_by_name("c"), None);
        assert_eq!(row.get(5), None);
        // Truncated rows are errors, never panics.
        for cut in 0..d.len() {
            let r = parse_data_row(cols.clone(), Bytes::copy_from_slice(&d[..cut]));
            assert!(r.is_err(), "cut {cut}");
        }
    }

    fn idle_over(
        sock: UnixStream,
        tls: bool,
        end_point: Option<Result<Vec<u8>, String>>,
    ) -> Connection {
        let mut c = copy_both_over(sock);
        c.state = State::Idle;
        c.tls = tls;
        c.end_point = end_point;
        c
    }

    /// The GS2 header the client-first message of a choice starts with.
    fn gs2(choice: (&'static str, ChannelBinding)) -> (&'static str, String) {
        let s = ScramSha256::new(b"pw", choice.1);
        let msg = String::from_utf8(s.message().to_vec()).unwrap();
        let header = msg.split(",,").next().unwrap().to_string();
        (choice.0, header)
    }

    #[test]
    fn sasl_choice_follows_libpq() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let both = vec![SCRAM_SHA_256_PLUS.to_string(), SCRAM_SHA_256.to_string()];
            let plain = vec![SCRAM_SHA_256.to_string()];
            let plus = (SCRAM_SHA_256_PLUS, "p=tls-server-end-point".to_string());
            let y = (SCRAM_SHA_256, "y".to_string());
            let n = (SCRAM_SHA_256, "n".to_string());
            let (a, _b) = UnixStream::pair().unwrap();
            let tls_ok = idle_over(a, true, Some(Ok(vec![1, 2, 3])));
            let choose = |c: &Connection, m: &[String], cb| c.choose_sasl(m, cb).map(gs2);
            // TLS, hash available.
            assert_eq!(choose(&tls_ok, &both, CbMode::Prefer).unwrap(), plus);
            assert_eq!(choose(&tls_ok, &both, CbMode::Require).unwrap(), plus);
            assert_eq!(choose(&tls_ok, &both, CbMode::Disable).unwrap(), n);
            assert_eq!(choose(&tls_ok, &plain, CbMode::Prefer).unwrap(), y);
            assert_eq!(choose(&tls_ok, &plain, CbMode::Disable).unwrap(), n);
            let e = choose(&tls_ok, &plain, CbMode::Require).unwrap_err();
            assert!(
                e.to_string().contains("channel binding is required, but server did not offer an authentication method that supports channel binding"),
                "{e}"
            );
            // TLS, no hash for this certificate.
            let (a, _b2) = UnixStream::pair().unwrap();
            let tls_nohash = idle_over(a, true, Some(Err("no hash for OID 9".into())));
            assert_eq!(choose(&tls_nohash, &both, CbMode::Prefer).unwrap(), n);
            let e = choose(&tls_nohash, &both, CbMode::Require).unwrap_err();
            assert!(
                e.to_string()
                    .contains("channel binding is required, but no hash for OID 9"),
                "{e}"
            );
            // No TLS.
            let (a, _b3) = UnixStream::pair().unwrap();
            let plain_conn = idle_over(a, false, None);
            let e = choose(&plain_conn, &both, CbMode::Prefer).unwrap_err();
            assert!(e.to_string().contains("over a non-SSL connection"), "{e}");
            assert_eq!(choose(&plain_conn, &plain, CbMode::Prefer).unwrap(), n);
            let e = choose(&plain_conn, &plain, CbMode::Require).unwrap_err();
            assert!(e.to_string().contains("does not use SSL"), "{e}");
            let e = choose(&plain_conn, &["OTHER".to_string()], CbMode::Prefer).unwrap_err();
            assert!(e.to_string().contains("none of the server's SASL"), "{e}");
        });
    }

    /// Plays a server answering one simple query with one row of one value.
    async fn answer_one_query(mut server: UnixStream, value: &str) -> String {
        let mut head = [0u8; 5];
        server.read_exact(&mut head).await.unwrap();
        assert_eq!(head[0], b'Q');
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        server.read_exact(&mut body).await.unwrap();
        let sql = String::from_utf8(body[..body.len() - 1].to_vec()).unwrap();
        let mut w = BytesMut::new();
        let mut t = BytesMut::new();
        t.put_i16(1);
        t.put_slice(b"v\0");
        t.put_slice(&[0u8; 18]);
        w.put_u8(b'T');
        w.put_u32(4 + t.len() as u32);
        w.put_slice(&t);
        w.put_u8(b'D');
        w.put_u32(4 + 2 + 4 + value.len() as u32);
        w.put_i16(1);
        w.put_i32(value.len() as i32);
        w.put_slice(value.as_bytes());
        w.put_u8(b'C');
        w.put_u32(4 + 5);
        w.put_slice(b"SHOW\0");
        w.put_slice(b"Z\0\0\0\x05I");
        server.write_all(&w).await.unwrap();
        sql
    }

    #[test]
    fn session_attrs_from_reports_or_queries() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use TargetSessionAttrs::*;
            // Reported by the server (PostgreSQL 14+): no query.
            let (a, _b) = UnixStream::pair().unwrap();
            let mut c = idle_over(a, false, None);
            for (dtro, hot, want, res) in [
                ("on", "off", ReadWrite, Some("session is read-only")),
                ("off", "on", ReadWrite, Some("session is read-only")),
                ("off", "off", ReadWrite, None),
                ("on", "off", ReadOnly, None),
                ("off", "off", ReadOnly, Some("session is not read-only")),
                ("on", "off", Primary, None),
                ("off", "on", Primary, Some("server is in hot standby mode")),
                (
                    "off",
                    "off",
                    Standby,
                    Some("server is not in hot standby mode"),
                ),
                ("off", "on", Standby, None),
                ("on", "on", Any, None),
            ] {
                c.params
                    .insert("default_transaction_read_only".into(), dtro.into());
                c.params.insert("in_hot_standby".into(), hot.into());
                assert_eq!(
                    c.session_mismatch(want).await.unwrap(),
                    res,
                    "{dtro} {hot} {want:?}"
                );
            }
            // Not reported: asked.
            for (want, value, sql, res) in [
                (
                    ReadWrite,
                    "on",
                    "SHOW transaction_read_only",
                    Some("session is read-only"),
                ),
                (ReadWrite, "off", "SHOW transaction_read_only", None),
                (
                    ReadOnly,
                    "off",
                    "SHOW transaction_read_only",
                    Some("session is not read-only"),
                ),
                (
                    Standby,
                    "f",
                    "SELECT pg_catalog.pg_is_in_recovery()",
                    Some("server is not in hot standby mode"),
                ),
                (Primary, "f", "SELECT pg_catalog.pg_is_in_recovery()", None),
            ] {
                let (a, server) = UnixStream::pair().unwrap();
                let mut c = idle_over(a, false, None);
                let srv = tokio::spawn(answer_one_query(server, value));
                assert_eq!(c.session_mismatch(want).await.unwrap(), res, "{want:?}");
                assert_eq!(srv.await.unwrap(), sql);
            }
        });
    }
}
