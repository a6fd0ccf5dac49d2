//! The launcher: one static background worker per server (registered in `_PG_init`).
//!
//! After every (re)start of shared memory it probes each database once (a short-lived
//! "livesync probe" worker per database reads that database's enabled syncs into shared
//! memory), then keeps every enabled sync's apply worker running, waiting
//! 1, 2, 4 ... seconds (capped by `livesync.max_retry_interval`) before restarting one that
//! keeps failing. `livesync_start` wakes it up. Model: PostgreSQL's `launcher.c`.

use crate::catalog;
use crate::shmem::{self, REGISTRY};
use crate::worker;
use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BackgroundWorkerStatus, DynamicBackgroundWorker,
    SignalWakeFlags,
};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::time::Duration;

pub fn register() {
    BackgroundWorkerBuilder::new("livesync launcher")
        .set_type("livesync launcher")
        .set_library("livesync")
        .set_function("livesync_launcher_main")
        .enable_spi_access()
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

/// Connectable databases, read straight from pg_database (the launcher is connected to no
/// database, so it cannot run SQL).
fn databases() -> Vec<u32> {
    database_oids(true)
}

/// Databases in pg_database: connectable ones only, or all.
fn database_oids(connectable_only: bool) -> Vec<u32> {
    let mut out = Vec::new();
    // SAFETY: a catalog heap scan inside a transaction, as autovacuum's get_database_list.
    unsafe {
        pg_sys::StartTransactionCommand();
        let rel = pg_sys::table_open(pg_sys::DatabaseRelationId, pg_sys::AccessShareLock as i32);
        let scan = pg_sys::table_beginscan_catalog(rel, 0, std::ptr::null_mut());
        loop {
            let tup = pg_sys::heap_getnext(scan, pg_sys::ScanDirection::ForwardScanDirection);
            if tup.is_null() {
                break;
            }
            let form = pg_sys::heap_tuple_get_struct::<pg_sys::FormData_pg_database>(tup);
            if !connectable_only || ((*form).datallowconn && !(*form).datistemplate) {
                out.push((*form).oid.to_u32());
            }
        }
        pg_sys::table_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        pg_sys::CommitTransactionCommand();
    }
    out
}

#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_launcher_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    BackgroundWorker::connect_worker_to_spi(None, None);
    // SAFETY: our own pid.
    REGISTRY.exclusive().launcher_pid = unsafe { pg_sys::MyProcPid };
    log!("livesync launcher started");

    let mut handles: HashMap<(u32, i32), DynamicBackgroundWorker> = HashMap::new();
    // Consecutive failures to start an apply worker for want of a worker slot.
    let mut no_worker_slots = 0u32;
    loop {
        if worker::check_interrupts().is_err() {
            break;
        }
        if !REGISTRY.share().probed {
            probe_all();
        }
        start_apply_workers(&mut handles, &mut no_worker_slots);
        if worker::wait_latch(1000).is_err() {
            break;
        }
    }
    REGISTRY.exclusive().launcher_pid = 0;
}

fn probe_all() {
    for db in databases() {
        if worker::check_interrupts().is_err() {
            return;
        }
        let name = format!("livesync probe for database {db}");
        match worker::launch(
            &name,
            "livesync probe",
            "livesync_probe_main",
            db as i64,
            "",
        ) {
            Some(h) => {
                let _ = h.wait_for_shutdown();
            }
            None => {
                log!("livesync launcher: could not start a probe worker; will retry");
                return;
            }
        }
    }
    REGISTRY.exclusive().probed = true;
}

fn start_apply_workers(
    handles: &mut HashMap<(u32, i32), DynamicBackgroundWorker>,
    no_worker_slots: &mut u32,
) {
    handles.retain(|_, h| matches!(h.pid(), Ok(_) | Err(BackgroundWorkerStatus::NotYetStarted)));
    let now = shmem::now_ms();
    let mut wanted: Vec<(u32, i32)> = {
        let reg = REGISTRY.share();
        reg.syncs
            .iter()
            .filter(|s| {
                s.in_use && s.enabled && !s.stopping && s.apply_pid == 0 && now >= s.not_before_ms
            })
            .map(|s| (s.dboid, s.subid))
            .filter(|key| !handles.contains_key(key))
            .collect()
    };
    if wanted.is_empty() {
        return;
    }
    // About to start workers: not for databases that no longer exist.
    let existing = database_oids(false);
    wanted.retain(|&(db, _)| {
        let exists = existing.contains(&db);
        if !exists {
            log!("livesync launcher: database {db} no longer exists; forgetting its syncs");
            REGISTRY.exclusive().forget_database(db);
        }
        exists
    });
    for key in wanted {
        let (db, subid) = key;
        let arg = ((db as i64) << 32) | (subid as u32 as i64);
        let name = format!("livesync apply worker for sync {subid} in database {db}");
        match worker::launch(
            &name,
            "livesync apply worker",
            "livesync_apply_main",
            arg,
            "",
        ) {
            Some(h) => {
                handles.insert(key, h);
                *no_worker_slots = 0;
            }
            None => {
                // Every background worker slot is taken: back off (1, 2, 4 ... s), and say
                // so once until a worker starts again.
                *no_worker_slots += 1;
                let misses = *no_worker_slots;
                let mut reg = REGISTRY.exclusive();
                if let Some(s) = reg.sync_mut(db, subid) {
                    s.not_before_ms = now + worker::backoff_ms(misses);
                }
                drop(reg);
                if misses == 1 {
                    worker::warn_no_worker_slots("an apply worker");
                }
            }
        }
    }
}

/// Probe entry point: record this database's syncs in shared memory.
#[pg_guard]
#[no_mangle]
pub extern "C-unwind" fn livesync_probe_main(arg: pg_sys::Datum) {
    let db = arg.value() as u32;
    worker::attach(db);
    let syncs = match worker::xact(|| {
        if !catalog::extension_installed()? {
            return Ok(Vec::new());
        }
        Ok(catalog::sync_states()?)
    }) {
        Ok(syncs) => syncs,
        Err(e) => {
            warning!("livesync probe of database {db} failed, its syncs do not run until the next server restart: {e}");
            return;
        }
    };
    // Every sync, stopped ones too: DROP DATABASE counts them.
    let mut reg = REGISTRY.exclusive();
    for (subid, subname, enabled) in &syncs {
        match reg.sync_entry(db, *subid) {
            Some(slot) => slot.enabled = *enabled,
            None => {
                warning!(
                    "livesync: no room in shared memory for subscription \"{subname}\" of database {db} (at most {} per server); it does not run",
                    shmem::MAX_SYNCS
                );
                break;
            }
        }
    }
}
