//! livesync's one error type, and its conversion into a PostgreSQL error report.
//!
//! Code below the SQL functions and worker loops returns `Result<_, Error>`; only those
//! boundaries turn an [`Error`] into `ereport` with an SQLSTATE, a message in PostgreSQL's
//! style (lowercase, no trailing period), and a hint that tells the user what to do.

use crate::pgoutput::DecodeError;
use crate::source::SourceError;
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error with everything the user needs: SQLSTATE, message, detail, hint.
    #[error("{msg}")]
    User {
        code: Code,
        msg: String,
        detail: Option<String>,
        hint: Option<String>,
    },
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error("could not decode a change from the source: {0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Spi(#[from] pgrx::spi::SpiError),
    #[error("could not spool a streamed transaction: {0}")]
    Spool(#[from] std::io::Error),
    /// Changes may have been lost on the source side (slot dropped, invalidated or moved):
    /// the sync disables itself rather than continue with a gap.
    #[error("{msg}")]
    NeedsResync { msg: String },
    /// A stream of binary values (`crate::binval`) met a column whose type may not come
    /// in binary form: the apply worker starts again at once, asking for text.
    #[error("column \"{column}\" of source relation \"{rel}\" has type {type_oid} on the source, which livesync does not read in binary form: the stream restarts with values in text")]
    TextStream {
        rel: String,
        column: String,
        type_oid: u32,
    },
    /// The worker was asked to stop (SIGTERM) while waiting.
    #[error("terminated")]
    Terminated,
    /// The extension's SQL objects in this database are of another version than the
    /// library: workers wait for `ALTER EXTENSION livesync UPDATE`.
    #[error("livesync {installed} is installed in this database, but the server runs the livesync {library} library")]
    VersionMismatch { installed: String, library: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub const RESYNC_HINT: &str = "A full resync is needed: SELECT livesync_drop(...), empty the target tables, then SELECT livesync_start(...) again.";

impl Error {
    pub fn user(code: Code, msg: impl Into<String>) -> Self {
        Error::User {
            code,
            msg: msg.into(),
            detail: None,
            hint: None,
        }
    }

    /// Something livesync itself got wrong (XX000).
    pub fn internal(msg: impl Into<String>) -> Self {
        Error::user(Code::ERRCODE_INTERNAL_ERROR, msg)
    }

    pub fn hint(mut self, h: impl Into<String>) -> Self {
        if let Error::User { hint, .. } = &mut self {
            *hint = Some(h.into());
        }
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        if let Error::User { detail, .. } = &mut self {
            *detail = Some(d.into());
        }
        self
    }

    /// A failure to reach or use the source, phrased for `livesync_start` and the workers.
    pub fn from_source(what: &str, e: SourceError) -> Self {
        let hint = match &e {
            SourceError::InvalidConnInfo(_) => {
                "Pass a libpq connection string, e.g. 'postgres://user:password@host:5432/db' or 'host=h dbname=db user=u'."
            }
            SourceError::Timeout { .. } | SourceError::Connect { .. } | SourceError::Io(_) | SourceError::Closed => {
                "Check that the source server is running and reachable from the target, and that host and port are right."
            }
            SourceError::Tls(_) => "Check sslmode, sslrootcert and the source server's certificate.",
            SourceError::Auth(_) => "Check the user name and password in the connection string.",
            SourceError::Server(s) if s.code == "28P01" || s.code == "28000" => {
                "Check the user name and password in the connection string, and the source's pg_hba.conf."
            }
            SourceError::Server(s) if s.code == "42501" => {
                "The source role needs the REPLICATION attribute: ALTER ROLE ... WITH REPLICATION on the source."
            }
            _ => "See the source server's log for details.",
        };
        let code = match &e {
            SourceError::InvalidConnInfo(_) => Code::ERRCODE_SYNTAX_ERROR,
            SourceError::Server(s) if s.code == "42501" => Code::ERRCODE_INSUFFICIENT_PRIVILEGE,
            SourceError::Server(s) if s.code == "28P01" || s.code == "28000" => {
                Code::ERRCODE_INVALID_PASSWORD
            }
            _ => Code::ERRCODE_CONNECTION_FAILURE,
        };
        let detail = match &e {
            SourceError::Server(s) => s.detail.clone(),
            _ => None,
        };
        let mut err = Error::user(code, format!("{what}: {}", bounded(&e.to_string()))).hint(hint);
        if let Some(d) = detail {
            err = err.detail(d);
        }
        err
    }

    fn parts(&self) -> (Code, String, Option<String>, Option<String>) {
        match self {
            Error::User {
                code,
                msg,
                detail,
                hint,
            } => (*code, msg.clone(), detail.clone(), hint.clone()),
            Error::Source(e) => {
                let Error::User {
                    code,
                    msg,
                    detail,
                    hint,
                } = Error::from_source("source connection failed", clone_source(e))
                else {
                    unreachable!()
                };
                (code, msg, detail, hint)
            }
            Error::Decode(_) => (
                Code::ERRCODE_PROTOCOL_VIOLATION,
                self.to_string(),
                None,
                None,
            ),
            Error::Spi(_) => (Code::ERRCODE_INTERNAL_ERROR, self.to_string(), None, None),
            Error::Spool(e)
                if e
                    .get_ref()
                    .is_some_and(|i| i.is::<crate::worker::spool::TempFileLimit>()) =>
            {
                (
                    Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                    self.to_string(),
                    None,
                    Some(
                        "A large source transaction is spooled to temporary files until it commits on the source: raise temp_file_limit for the sync's database (ALTER DATABASE ... SET temp_file_limit), or split the transaction on the source. The sync retries by itself."
                            .to_string(),
                    ),
                )
            }
            Error::Spool(_) => (
                Code::ERRCODE_IO_ERROR,
                self.to_string(),
                None,
                Some(
                    "Large source transactions are spooled to base/pgsql_tmp in the target's data directory: check its free space and permissions. The sync retries by itself."
                        .to_string(),
                ),
            ),
            Error::Terminated => (Code::ERRCODE_ADMIN_SHUTDOWN, self.to_string(), None, None),
            Error::TextStream { .. } => (
                Code::ERRCODE_FEATURE_NOT_SUPPORTED,
                self.to_string(),
                None,
                Some("Nothing is lost: the changes are read again from the last commit, and values stay in text for this sync until the server restarts or the sync is dropped.".into()),
            ),
            Error::VersionMismatch { .. } => (
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                self.to_string(),
                None,
                Some("Run ALTER EXTENSION livesync UPDATE in this database; the sync resumes by itself, with nothing lost.".into()),
            ),
            Error::NeedsResync { msg } => (
                Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
                msg.clone(),
                None,
                Some(RESYNC_HINT.to_string()),
            ),
        }
    }

    /// The SQLSTATE it is reported with.
    pub fn code(&self) -> Code {
        self.parts().0
    }

    /// Raise as a PostgreSQL ERROR (does not return).
    pub fn raise(self) -> ! {
        self.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }

    /// The message and, when there is one, the hint, for a status column (`last_error`):
    /// what a person reading the view needs to act.
    pub fn summary(&self) -> String {
        let (_, msg, _, hint) = self.parts();
        match hint {
            Some(h) => format!("{msg} (HINT: {h})"),
            None => msg,
        }
    }

    /// Report at `level` (LOG/WARNING return; ERROR does not).
    pub fn report(&self, level: PgLogLevel) {
        let (code, msg, detail, hint) = self.parts();
        let mut r = ErrorReport::new(code, msg, "livesync");
        if let Some(d) = detail {
            r = r.set_detail(d);
        }
        if let Some(h) = hint {
            r = r.set_hint(h);
        }
        r.report(level);
    }
}

/// Messages may quote user input (a malformed connection string): keep them readable.
fn bounded(msg: &str) -> String {
    const MAX: usize = 300;
    if msg.len() <= MAX {
        return msg.to_string();
    }
    let mut end = MAX;
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} bytes in all)", &msg[..end], msg.len())
}

fn clone_source(e: &SourceError) -> SourceError {
    match e {
        SourceError::Server(s) => SourceError::Server(s.clone()),
        other => SourceError::Protocol(other.to_string()),
    }
}

/// Raise `Err` as a PostgreSQL ERROR; pass `Ok` through.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T, E: Into<Error>> OrRaise<T> for std::result::Result<T, E> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.into().raise(),
        }
    }
}
