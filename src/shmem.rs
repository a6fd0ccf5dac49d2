//! Shared memory: which syncs should run, which livesync processes are alive (apply,
//! table-sync and copy workers), which slice of a copy each loader has claimed, and live
//! progress for the views.
//!
//! This is livesync's equivalent of PostgreSQL's `LogicalRepCtx`. The durable truth is the
//! catalog (`livesync.sync`); shared memory only mirrors it so that the launcher, which is
//! connected to no database, knows what to start. It is rebuilt after a server (re)start by
//! the launcher's per-database probes, and kept current by `livesync_start/stop/drop`
//! through commit callbacks.
//!
//! Every process that registers here removes itself in a `before_shmem_exit` callback; a
//! process killed with SIGKILL makes the postmaster reinitialise shared memory anyway.

use pgrx::lwlock::PgLwLock;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::shmem::PGRXSharedMemory;
use std::sync::atomic::{AtomicBool, Ordering};

pub const MAX_SYNCS: usize = 64;
pub const MAX_TABLE_WORKERS: usize = 128;

/// One sync (subscription) that the launcher knows of.
#[derive(Copy, Clone, Default, Debug)]
pub struct SyncSlot {
    pub in_use: bool,
    pub dboid: u32,
    pub subid: i32,
    /// The catalog says `enabled` (mirrored at commit of start/stop/drop).
    pub enabled: bool,
    /// A `livesync_stop`/`livesync_drop` is in progress: start nothing for this sync.
    pub stopping: bool,
    /// The apply worker's pid, 0 when none runs.
    pub apply_pid: i32,
    /// Consecutive failed runs of the apply worker (for the launcher's backoff).
    pub failures: u32,
    /// Unix time in ms before which the launcher must not start the apply worker.
    pub not_before_ms: i64,
    /// Highest source LSN received (XLogData or keepalive).
    pub received_lsn: u64,
    /// Every change of the source up to here is committed on the target (or had nothing
    /// published).
    pub applied_lsn: u64,
    /// The source's WAL end as last reported by it.
    pub source_end_lsn: u64,
    /// Unix time in ms of the last message from the source.
    pub last_msg_ms: i64,
    /// The source commit time (PostgreSQL timestamp) of the last transaction applied;
    /// 0 when unknown.
    pub last_commit_ts: i64,
    /// The apply worker's stream met a type that may not come in binary form
    /// (`Error::TextStream`): ask the source for text from now on.
    pub text_only: bool,
}

/// One running table-sync worker.
#[derive(Copy, Clone, Default, Debug)]
pub struct TableWorkerSlot {
    pub in_use: bool,
    pub dboid: u32,
    pub subid: i32,
    pub relid: u32,
    pub pid: i32,
    /// A copy worker helping the table's table-sync worker load slices (not the one that
    /// owns the table's state).
    pub helper: bool,
    /// The slice this worker loads now (`slice` is valid while `loading`): no other worker
    /// of the table may take it.
    pub loading: bool,
    pub slice: i32,
    /// Rows and bytes (of the source's COPY data) loaded into the current slice and not yet
    /// committed: `livesync.subscription_rel` adds them to the committed parts while the
    /// table is in state d.
    pub rows_copied: u64,
    pub bytes_copied: u64,
}

#[derive(Copy, Clone, Debug)]
pub struct Registry {
    pub launcher_pid: i32,
    /// The launcher has probed every database since shared memory was (re)initialised.
    pub probed: bool,
    pub syncs: [SyncSlot; MAX_SYNCS],
    pub tables: [TableWorkerSlot; MAX_TABLE_WORKERS],
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            launcher_pid: 0,
            probed: false,
            syncs: [SyncSlot::default(); MAX_SYNCS],
            tables: [TableWorkerSlot::default(); MAX_TABLE_WORKERS],
        }
    }
}

// SAFETY: Registry is plain old data (no pointers, no heap), so it may live in shared memory.
unsafe impl PGRXSharedMemory for Registry {}

pub static REGISTRY: PgLwLock<Registry> = unsafe { PgLwLock::new(c"livesync_registry") };

/// Set in `_PG_init` when loaded through `shared_preload_libraries`.
static PRELOADED: AtomicBool = AtomicBool::new(false);

pub fn init() {
    pgrx::pg_shmem_init!(REGISTRY);
    PRELOADED.store(true, Ordering::Relaxed);
}

/// Was livesync loaded by `shared_preload_libraries` (so shared memory and the launcher exist)?
pub fn available() -> bool {
    PRELOADED.load(Ordering::Relaxed)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Registry {
    pub fn sync(&self, dboid: u32, subid: i32) -> Option<&SyncSlot> {
        self.syncs
            .iter()
            .find(|s| s.in_use && s.dboid == dboid && s.subid == subid)
    }

    pub fn sync_mut(&mut self, dboid: u32, subid: i32) -> Option<&mut SyncSlot> {
        self.syncs
            .iter_mut()
            .find(|s| s.in_use && s.dboid == dboid && s.subid == subid)
    }

    /// The slot of this sync, created if missing. None when every slot is taken.
    pub fn sync_entry(&mut self, dboid: u32, subid: i32) -> Option<&mut SyncSlot> {
        let idx = self
            .syncs
            .iter()
            .position(|s| s.in_use && s.dboid == dboid && s.subid == subid)
            .or_else(|| self.syncs.iter().position(|s| !s.in_use))?;
        let s = &mut self.syncs[idx];
        if !s.in_use {
            *s = SyncSlot {
                in_use: true,
                dboid,
                subid,
                ..Default::default()
            };
        }
        Some(s)
    }

    /// Could [`Registry::sync_entry`] find or make a slot for this sync (None: a new one)?
    pub fn has_room_for(&self, dboid: u32, subid: Option<i32>) -> bool {
        subid.is_some_and(|id| self.sync(dboid, id).is_some())
            || self.syncs.iter().any(|s| !s.in_use)
    }

    /// How many syncs (running or stopped) live in database `dboid`.
    pub fn syncs_in(&self, dboid: u32) -> usize {
        self.syncs
            .iter()
            .filter(|s| s.in_use && s.dboid == dboid)
            .count()
    }

    /// Forget every sync of a database that no longer exists.
    pub fn forget_database(&mut self, dboid: u32) {
        for s in self
            .syncs
            .iter_mut()
            .filter(|s| s.in_use && s.dboid == dboid)
        {
            *s = SyncSlot::default();
        }
    }

    pub fn forget_sync(&mut self, dboid: u32, subid: i32) {
        if let Some(s) = self.sync_mut(dboid, subid) {
            *s = SyncSlot::default();
        }
    }

    /// Pids of every process working for this sync (apply first, then table-sync workers).
    pub fn pids_of(&self, dboid: u32, subid: i32) -> Vec<i32> {
        let mut pids = Vec::new();
        if let Some(s) = self.sync(dboid, subid) {
            if s.apply_pid > 0 {
                pids.push(s.apply_pid);
            }
        }
        pids.extend(
            self.tables
                .iter()
                .filter(|t| t.in_use && t.dboid == dboid && t.subid == subid && t.pid > 0)
                .map(|t| t.pid),
        );
        pids
    }

    /// The table-sync worker of a table (not its helpers).
    pub fn table_worker(&self, dboid: u32, subid: i32, relid: u32) -> Option<&TableWorkerSlot> {
        self.tables.iter().find(|t| {
            t.in_use && !t.helper && t.dboid == dboid && t.subid == subid && t.relid == relid
        })
    }

    /// Is a slice of this table being loaded by a live worker?
    pub fn slice_taken(&self, dboid: u32, subid: i32, relid: u32, slice: i32) -> bool {
        self.tables.iter().any(|t| {
            t.in_use
                && t.loading
                && t.slice == slice
                && t.dboid == dboid
                && t.subid == subid
                && t.relid == relid
        })
    }

    /// Copy workers helping with this table now.
    pub fn helpers_of(&self, dboid: u32, subid: i32, relid: u32) -> usize {
        self.tables
            .iter()
            .filter(|t| {
                t.in_use && t.helper && t.dboid == dboid && t.subid == subid && t.relid == relid
            })
            .count()
    }

    pub fn table_workers_of(&self, dboid: u32, subid: i32) -> usize {
        self.tables
            .iter()
            .filter(|t| t.in_use && t.dboid == dboid && t.subid == subid)
            .count()
    }
}

/// Wake the launcher (its SIGUSR1 handler sets its latch).
pub fn wake_launcher() {
    let pid = REGISTRY.share().launcher_pid;
    if pid > 0 {
        // SAFETY: kill(2) with a pid read from shared memory; a stale pid gets a harmless
        // SIGUSR1 at worst, which every PostgreSQL process handles.
        unsafe {
            libc_kill(pid, pg_sys::SIGUSR1 as i32);
        }
    }
}

/// Send SIGTERM to a process (a livesync worker).
pub fn terminate(pid: i32) {
    if pid > 0 {
        // SAFETY: as in wake_launcher; SIGTERM asks a background worker to exit.
        unsafe {
            libc_kill(pid, pg_sys::SIGTERM as i32);
        }
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}
