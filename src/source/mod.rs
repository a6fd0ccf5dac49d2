//! The source connection: a small PostgreSQL client for the *source* server, written on
//! tokio + `postgres-protocol` + `bytes` + rustls, with no pgrx or `pg_sys` dependency.
//!
//! It owns:
//! * [`ConnInfo`]: parsing libpq connection strings (URI and key=value) with libpq's defaults
//!   (service file, `PG*` environment variables, the OS user), passfile lookup, redaction for
//!   messages;
//! * [`Connection`]: startup (TCP or Unix socket, TCP keepalives, `sslmode`, CRLs, TLS versions,
//!   `requirepeer`, trust / cleartext / md5 / SCRAM-SHA-256(-PLUS) authentication with
//!   `channel_binding`, `target_session_attrs`, an empty `search_path`, optional
//!   `replication=database`), the simple-query
//!   protocol, `COPY ... TO STDOUT` streaming ([`CopyOut`]) and the CopyBoth replication stream
//!   ([`ReplMessage`], standby status updates);
//! * [`SourceError`]: every error this module returns.
//!
//! Everything is meant to run on a tokio `current_thread` runtime driven with `block_on` from a
//! backend's latch loop: [`Connection::next_replication_message`] is cancel-safe, and
//! [`Connection::raw_fd`] / [`Connection::has_buffered_message`] let the caller wait on the
//! socket with `WaitLatchOrSocket` without missing data already read into our buffers.

mod conn;
mod conninfo;
mod proto;
mod sha2;
mod tls;

pub use conn::{Connection, CopyOut, Row};
pub use conninfo::{
    ChannelBinding, ConnInfo, Env, HostSpec, MapEnv, ProcessEnv, SslMode, TargetSessionAttrs,
    TlsVersion, DEFAULT_CONNECT_TIMEOUT_SECS, FIXED_STARTUP_PARAMS, KNOWN_KEYS,
};
pub use proto::{pg_now_micros, PG_EPOCH_OFFSET_MICROS};

use bytes::Bytes;

/// An ErrorResponse from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerError {
    /// Non-localized severity (`ERROR`, `FATAL`, `PANIC`).
    pub severity: String,
    /// SQLSTATE, e.g. `28P01`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Every error of the source connection.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Malformed connection string; the message says what is wrong.
    #[error("invalid connection string: {0}")]
    InvalidConnInfo(String),
    /// DNS, TCP or socket failure (refused, unreachable, ...).
    #[error("could not connect to {target}: {msg}")]
    Connect { target: String, msg: String },
    /// `connect_timeout` expired during connect, TLS handshake or authentication.
    #[error("timeout expired after {secs} s while connecting to {target}")]
    Timeout { target: String, secs: u64 },
    /// Client-side authentication failure (e.g. no password supplied, unsupported method).
    /// Errors the server reports during authentication stay [`SourceError::Server`].
    #[error("authentication failed: {0}")]
    Auth(String),
    /// TLS handshake failure, refused certificate, SSL required but not offered, ...
    #[error("SSL error: {0}")]
    Tls(String),
    /// An ErrorResponse.
    #[error("{0}")]
    Server(ServerError),
    /// An unexpected or malformed message.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("could not communicate with the source server: {0}")]
    Io(#[from] std::io::Error),
    /// The server ended the replication stream (CopyDone); the connection is usable again
    /// once [`Connection::end_replication`] returned.
    #[error("the source server ended the replication stream")]
    StreamEnded,
    /// The server closed the connection.
    #[error("the source server closed the connection unexpectedly")]
    Closed,
}

impl SourceError {
    /// The SQLSTATE of a server error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            SourceError::Server(e) => Some(&e.code),
            _ => None,
        }
    }

    /// The server error, if this is one.
    pub fn server_error(&self) -> Option<&ServerError> {
        match self {
            SourceError::Server(e) => Some(e),
            _ => None,
        }
    }

    /// True for errors after which the connection cannot be used any more.
    /// (A `Server` error with severity `ERROR` leaves the connection usable.)
    pub fn is_fatal(&self) -> bool {
        match self {
            SourceError::Server(e) => e.severity != "ERROR",
            SourceError::InvalidConnInfo(_) => false,
            _ => true,
        }
    }
}

/// A message of the CopyBoth replication stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplMessage {
    /// `'w'`: WAL data (for logical replication: one pgoutput message).
    XLogData {
        wal_start: u64,
        wal_end: u64,
        /// Server clock, PostgreSQL-epoch microseconds.
        send_time: i64,
        data: Bytes,
    },
    /// `'k'`: primary keepalive.
    Keepalive {
        wal_end: u64,
        send_time: i64,
        reply_requested: bool,
    },
}
