//! The differences between the PostgreSQL majors livesync builds for (15, 17, 18): the one
//! place that names them with `#[cfg(feature = "pgNN")]`. Everything else calls these
//! functions and builds unchanged for every major.
//!
//! (What differs between *source* servers is decided at run time from the source's
//! `server_version_num`; see `remote`.)

use pgrx::pg_sys;

/// Does `role` own the extension `ext` (or is it a superuser)?
///
/// # Safety
/// A catalog lookup: on the main thread, inside a transaction.
pub unsafe fn extension_ownercheck(ext: pg_sys::Oid, role: pg_sys::Oid) -> bool {
    #[cfg(feature = "pg15")]
    {
        pg_sys::pg_extension_ownercheck(ext, role)
    }
    #[cfg(not(feature = "pg15"))]
    {
        // PostgreSQL 16 folded the per-catalog ownerchecks into object_ownercheck.
        pg_sys::object_ownercheck(pg_sys::ExtensionRelationId, ext, role)
    }
}

/// Install `handler` for `signo` with PostgreSQL's `pqsignal` (restart flags, blocked
/// signals during the handler, as every backend handler gets).
///
/// # Safety
/// Installs a signal handler: `handler` must be async-signal-safe.
pub unsafe fn pqsignal(signo: core::ffi::c_int, handler: pg_sys::pqsigfunc) {
    #[cfg(not(feature = "pg18"))]
    {
        pg_sys::pqsignal(signo, handler);
    }
    #[cfg(feature = "pg18")]
    {
        // PostgreSQL 18: `pqsignal` is a macro for the backend's `pqsignal_be`.
        pg_sys::pqsignal_be(signo, handler);
    }
}
