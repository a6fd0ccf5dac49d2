//! livesync's processes, and what they share.
//!
//! - [`launcher`]: one per server; starts each enabled sync's apply worker, with backoff.
//! - [`apply`]: one per sync; streams the main slot and applies changes.
//! - [`tablesync`]: one per table being copied; plans and loads the copy, catches up, hands
//!   over.
//! - copy workers ([`loader`]): up to `livesync.max_copy_workers_per_table - 1` per table
//!   being copied; load slices of its copy next to the table-sync worker.
//!
//! This module owns the bridge between PostgreSQL's single-threaded backend and the tokio
//! runtime that drives the source connection: every Postgres call stays on the backend's
//! thread; source I/O runs on a `current_thread` runtime driven with short `block_on`
//! slices, between which we honour SIGTERM (workers) or query cancel (SQL functions).

pub mod apply;
pub mod copyread;
pub mod launcher;
pub mod loader;
pub mod spool;
pub mod stream;
pub mod tablesync;

use crate::error::{Error, Result};
use pgrx::bgworkers::{BackgroundWorkerBuilder, DynamicBackgroundWorker};
use pgrx::pg_sys::panic::CaughtError;
use pgrx::prelude::*;
use std::future::Future;
use std::time::Duration;

/// How long one `block_on` slice may run before we look at interrupts again.
const SLICE: Duration = Duration::from_millis(100);

/// The tokio runtime of a worker (or of a copy reader thread): current_thread, so the
/// backend's own thread drives the connections. Threads it may start anyway (tokio's
/// blocking pool, for DNS lookups) block every signal first.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(block_signals_in_this_thread)
        .build()
        .expect("could not create the tokio runtime")
}

/// Block every signal in the calling thread. PostgreSQL's signal handlers (SIGTERM,
/// SIGALRM for timeouts, SIGUSR1 for interrupts, ...) assume they interrupt the backend's
/// own thread; run on another thread, they would race with it.
fn block_signals_in_this_thread() {
    // SAFETY: changes only this thread's mask.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &all_signals(), std::ptr::null_mut()) };
}

fn all_signals() -> libc::sigset_t {
    // SAFETY: sigfillset initialises the zeroed local set it is given.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        all
    }
}

/// Start a thread that never runs PostgreSQL's signal handlers: every signal is blocked in
/// the calling thread while the new one is created (it inherits that mask), then the
/// caller's mask is restored. Such a thread must make no PostgreSQL calls either.
pub fn spawn_without_signals<F: FnOnce() + Send + 'static>(
    name: String,
    f: F,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    // SAFETY: changes only this thread's mask; `old` receives it and is put back unchanged.
    unsafe {
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, &all_signals(), &mut old);
        let spawned = std::thread::Builder::new().name(name).spawn(f);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        spawned
    }
}

fn in_bgworker() -> bool {
    // SAFETY: reads a backend-global pointer, set before any of our code runs.
    unsafe { !pg_sys::MyBgworkerEntry.is_null() }
}

/// Has this background worker been asked to exit (SIGTERM)?
pub fn shutdown_requested() -> bool {
    // SAFETY: sig_atomic_t flags written only by signal handlers.
    unsafe {
        std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
            || std::ptr::read_volatile(&raw const pg_sys::ShutdownRequestPending) != 0
    }
}

/// Set up a livesync worker's signals and connect it to database `dboid`, with its
/// session's `search_path` pinned before any SQL runs.
///
/// SIGTERM gets PostgreSQL's own `die` handler, as PostgreSQL's apply and table-sync
/// workers have: it sets the latch and `ProcDiePending`, so a worker waiting on a user's
/// lock or running a long statement stops at PostgreSQL's next interrupt check (FATAL
/// "terminating background worker ... due to administrator command"), not only when our
/// own loop looks at the flag. `livesync_stop`, `pg_terminate_backend` and a fast shutdown
/// are therefore prompt.
pub fn attach(dboid: u32) {
    use pgrx::bgworkers::{BackgroundWorker, SignalWakeFlags};
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    // SAFETY: replaces our SIGTERM handler with the server's; called on the main thread
    // before any other work.
    unsafe {
        crate::pgver::pqsignal(libc::SIGTERM, Some(server_die));
    }
    BackgroundWorker::connect_worker_to_spi_by_oid(Some(pg_sys::Oid::from(dboid)), None);
    pin_search_path();
    pin_client_encoding();
}

/// The session's `client_encoding` is UTF8, whatever the database or role settings say:
/// values come from the source in UTF8 (the source connection always asks for it), and
/// COPY FROM reads its text in the client encoding (`textrecv` its binary text too), so
/// that is what converts them into the database's encoding. A database whose
/// `client_encoding` is LATIN1 would otherwise get each byte of "é" as a character of its
/// own.
fn pin_client_encoding() {
    // In a transaction of its own (the conversion functions are looked up in the
    // catalog); a session-level SET, kept after the commit.
    let r = xact(|| {
        set_session_guc(
            c"client_encoding",
            c"UTF8",
            pg_sys::GucAction::GUC_ACTION_SET,
        );
        Ok(())
    });
    if let Err(e) = r {
        pgrx::warning!("livesync: could not set client_encoding to UTF8: {e}");
    }
}

unsafe extern "C-unwind" {
    /// The server's SIGTERM handler for backends (`die` in postgres.c), called as a signal
    /// handler: pgrx's own binding wraps it in a Rust function, which a handler must not be.
    #[link_name = "die"]
    fn server_die(signal: core::ffi::c_int);
}

/// `search_path = pg_catalog, pg_temp`, whatever the database or role settings say
/// (PostgreSQL's own workers use an empty one): a function or operator a user planted in
/// another schema is never picked up by livesync's SQL.
const PINNED_SEARCH_PATH: &std::ffi::CStr = c"pg_catalog, pg_temp";

fn set_pinned_search_path(action: pg_sys::GucAction::Type) {
    // search_path's check hook only parses the list (no catalog access), so this works
    // outside a transaction too.
    set_session_guc(c"search_path", PINNED_SEARCH_PATH, action);
}

/// `SET name = value` in this session (`action`: GUC_ACTION_SET for the session,
/// GUC_ACTION_SAVE for the current GUC nest level); an invalid value is an ERROR.
pub fn set_session_guc(
    name: &std::ffi::CStr,
    value: &std::ffi::CStr,
    action: pg_sys::GucAction::Type,
) {
    // SAFETY: main thread; both strings outlive the call (the GUC copies the value).
    unsafe {
        pg_sys::set_config_option(
            name.as_ptr(),
            value.as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            action,
            true,
            0,
            false,
        );
    }
}

/// Pin `search_path` for the rest of this worker's session (see [`PINNED_SEARCH_PATH`]).
fn pin_search_path() {
    set_pinned_search_path(pg_sys::GucAction::GUC_ACTION_SET);
}

/// Run `f` with `search_path` pinned in the caller's session, as a function with
/// `SET search_path` would: for livesync's SQL that runs inside a user's statement (the
/// DROP EXTENSION hook). Restored when `f` returns or the transaction ends.
pub fn with_pinned_search_path<R>(f: impl FnOnce() -> R) -> R {
    // SAFETY: the GUC nest level pairs with AtEOXact_GUC below, or with transaction abort
    // if `f` raises an ERROR; both restore the previous value.
    let level = unsafe { pg_sys::NewGUCNestLevel() };
    set_pinned_search_path(pg_sys::GucAction::GUC_ACTION_SAVE);
    let r = f();
    // SAFETY: pairs with NewGUCNestLevel above.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    r
}

/// Look at interrupts: a worker returns `Terminated` on SIGTERM; a SQL function raises
/// the usual "canceling statement" ERROR on cancel.
pub fn check_interrupts() -> Result<()> {
    if in_bgworker() {
        if shutdown_requested() {
            return Err(Error::Terminated);
        }
        // Everything else PostgreSQL may ask of a process, above all absorbing
        // ProcSignalBarriers (DROP DATABASE waits for every process to do so).
        pg_sys::check_for_interrupts!();
        // SAFETY: reads the flag the SIGHUP handler sets.
        if unsafe { std::ptr::read_volatile(&raw const pg_sys::ConfigReloadPending) } != 0 {
            // SAFETY: called on the backend's main thread, outside any critical section.
            unsafe {
                pg_sys::ConfigReloadPending = 0;
                pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
            }
        }
    } else {
        pg_sys::check_for_interrupts!();
    }
    Ok(())
}

/// Run `fut` to completion on `rt`, looking at interrupts every 100 ms.
pub fn block_on<F: Future>(rt: &tokio::runtime::Runtime, fut: F) -> Result<F::Output> {
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Ok(v) = rt.block_on(async { tokio::time::timeout(SLICE, &mut fut).await }) {
            return Ok(v);
        }
        check_interrupts()?;
    }
}

/// Sleep on the latch for up to `ms`, waking early when it is set.
pub fn wait_latch(ms: i64) -> Result<()> {
    // SAFETY: WaitLatch on our own latch from the main thread, as every worker does.
    unsafe {
        let rc = pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            ms.max(0) as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        if rc & pg_sys::WL_LATCH_SET as i32 != 0 {
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
    check_interrupts()
}

/// Sleep on the latch and a socket: returns when the socket is readable, the latch is set,
/// or `ms` passed.
pub fn wait_latch_or_socket(fd: std::os::fd::RawFd, ms: i64) -> Result<()> {
    // SAFETY: as wait_latch; `fd` is the open socket of our source connection.
    unsafe {
        let rc = pg_sys::WaitLatchOrSocket(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET
                | pg_sys::WL_SOCKET_READABLE
                | pg_sys::WL_TIMEOUT
                | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            fd,
            ms.max(0) as _,
            pg_sys::PG_WAIT_EXTENSION,
        );
        if rc & pg_sys::WL_LATCH_SET as i32 != 0 {
            pg_sys::ResetLatch(pg_sys::MyLatch);
        }
    }
    check_interrupts()
}

/// Start a transaction (with a snapshot, for SPI).
pub fn begin() {
    // SAFETY: main thread, no transaction open (callers pair begin with commit/abort).
    unsafe {
        pg_sys::SetCurrentStatementStartTimestamp();
        pg_sys::StartTransactionCommand();
        pg_sys::PushActiveSnapshot(pg_sys::GetTransactionSnapshot());
    }
}

pub fn commit() {
    // SAFETY: pairs with begin().
    unsafe {
        if pg_sys::ActiveSnapshotSet() {
            pg_sys::PopActiveSnapshot();
        }
        pg_sys::CommitTransactionCommand();
    }
    // Hand this process's table statistics (rows written, index scans...) to the
    // cumulative statistics system, as PostgreSQL's apply worker does after its commits; a
    // background worker is never idle in PostgresMain, where a backend does it. Rate-limited
    // inside (once a second at most).
    if in_bgworker() {
        // SAFETY: outside any transaction, on the main thread.
        unsafe {
            pg_sys::pgstat_report_stat(false);
        }
    }
}

pub fn in_transaction() -> bool {
    // SAFETY: reads transaction state.
    unsafe { pg_sys::IsTransactionState() }
}

/// Run `f` in its own transaction: commit on Ok, abort on Err or ERROR (the ERROR becomes
/// an `Err`, so the caller decides what to do).
pub fn xact<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    begin();
    let r = catch(f);
    if r.is_ok() {
        commit();
    } else {
        abort();
    }
    r
}

/// Abort whatever transaction is open (after an error).
///
/// The session's replication-origin position is forgotten first, as PostgreSQL's
/// `replorigin_reset()` does on its apply worker's error path: a transaction that failed at
/// COMMIT (a deferred trigger, a serialization failure) had it set, and the next commit of
/// this session (recording the error, say) would otherwise carry it into the origin and
/// skip the changes that never committed.
pub fn abort() {
    reset_origin_position();
    // SAFETY: AbortCurrentTransaction is safe in any transaction state, idle included.
    unsafe {
        pg_sys::AbortCurrentTransaction();
    }
}

/// Clear the position the next commit would record in this session's replication origin.
pub fn reset_origin_position() {
    // SAFETY: plain writes of backend-global variables on the main thread.
    unsafe {
        pg_sys::replorigin_session_origin_lsn = 0;
        pg_sys::replorigin_session_origin_timestamp = 0;
    }
}

/// Run `f`, turning a PostgreSQL ERROR (or a panic) raised inside it into an `Err`.
pub fn catch<R>(f: impl FnOnce() -> Result<R>) -> Result<R> {
    PgTryBuilder::new(std::panic::AssertUnwindSafe(f))
        .catch_others(|e| {
            let r = match &e {
                CaughtError::PostgresError(r) | CaughtError::ErrorReport(r) => r,
                CaughtError::RustPanic { ereport, .. } => ereport,
            };
            let mut err = Error::user(r.sql_error_code(), r.message().to_string());
            if let Some(d) = r.detail() {
                err = err.detail(d.to_string());
            }
            if let Some(h) = r.hint() {
                err = err.hint(h.to_string());
            }
            Err(err)
        })
        .execute()
}

/// Start a dynamic background worker of livesync's library.
pub fn launch(
    name: &str,
    kind: &str,
    function: &str,
    arg: i64,
    extra: &str,
) -> Option<DynamicBackgroundWorker> {
    BackgroundWorkerBuilder::new(name)
        .set_type(kind)
        .set_library("livesync")
        .set_function(function)
        .enable_spi_access()
        .set_argument(arg.into_datum())
        .set_extra(extra)
        // SAFETY: reads our own pid.
        .set_notify_pid(unsafe { pg_sys::MyProcPid })
        .load_dynamic()
        .ok()
}

/// The WARNING for a worker that could not start because every background worker slot of
/// the server is taken (said once, then retried with backoff).
pub fn warn_no_worker_slots(what: &str) {
    Error::user(
        PgSqlErrorCode::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
        format!("livesync could not start {what}: no background worker slot is free"),
    )
    .detail("livesync retries with a growing delay.")
    .hint("Raise max_worker_processes (a server restart is needed), or lower livesync.max_sync_workers_per_subscription.")
    .report(PgLogLevel::WARNING);
}

/// Backoff before restart number `failures` (1, 2, 4, ... seconds, capped by the GUC).
pub fn backoff_ms(failures: u32) -> i64 {
    let cap = crate::gucs::MAX_RETRY_INTERVAL.get().max(1) as i64 * 1000;
    (1000i64 << failures.saturating_sub(1).min(20)).min(cap)
}

/// Set this process's `application_name` (shown in pg_stat_activity).
pub fn set_application_name(name: &str) {
    let sql = format!(
        "SELECT pg_catalog.set_config('application_name', {}, false)",
        pgrx::spi::quote_literal(name)
    );
    let _ = xact(|| Ok(Spi::run(&sql)?));
}
