//! livesync's configuration parameters (`livesync.*` GUCs).

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

pub static MAX_SYNC_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(4);
pub static REFRESH_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(10);
pub static MAX_RETRY_INTERVAL: GucSetting<i32> = GucSetting::<i32>::new(60);
pub static APPLY_BATCH_ROWS: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static APPLY_BATCH_MS: GucSetting<i32> = GucSetting::<i32>::new(200);
pub static MAX_COPY_WORKERS: GucSetting<i32> = GucSetting::<i32>::new(2);
pub static COPY_SLICE_MB: GucSetting<i32> = GucSetting::<i32>::new(256);
pub static BINARY_COPY: GucSetting<bool> = GucSetting::<bool>::new(true);

pub fn init() {
    GucRegistry::define_int_guc(
        c"livesync.max_sync_workers_per_subscription",
        c"Maximum number of table-sync workers (parallel initial copies) per sync.",
        c"",
        &MAX_SYNC_WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"livesync.publication_refresh_interval",
        c"Seconds between checks of the source publication for added or dropped tables.",
        c"",
        &REFRESH_INTERVAL,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"livesync.max_retry_interval",
        c"Upper bound, in seconds, of the backoff before a failed worker is restarted.",
        c"",
        &MAX_RETRY_INTERVAL,
        1,
        3600,
        GucContext::Sighup,
        GucFlags::UNIT_S,
    );
    GucRegistry::define_int_guc(
        c"livesync.apply_batch_rows",
        c"Changes applied in one target transaction before it commits (it always ends on a source commit).",
        c"",
        &APPLY_BATCH_ROWS,
        1,
        1_000_000,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"livesync.apply_batch_delay",
        c"Milliseconds a target transaction may stay open to group several source transactions.",
        c"",
        &APPLY_BATCH_MS,
        0,
        10_000,
        GucContext::Sighup,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"livesync.max_copy_workers_per_table",
        c"Maximum number of workers loading slices of one table's initial copy at once.",
        c"They count towards livesync.max_sync_workers_per_subscription and max_worker_processes.",
        &MAX_COPY_WORKERS,
        1,
        64,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"livesync.copy_slice_size",
        c"A table larger than this is copied in slices of about this size, loaded in parallel.",
        c"Slices are ranges of the source table's leading key column, each committed on its own.",
        &COPY_SLICE_MB,
        1,
        1 << 20,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
    GucRegistry::define_bool_guc(
        c"livesync.binary_copy",
        c"Copy tables in COPY's binary format, and stream changes in pgoutput's binary format, where the types allow it.",
        c"Copies: both sides have the same built-in type for every column, one whose binary form means the same on both. Changes: PostgreSQL 14+ sources whose published columns all have such types (read when the apply worker starts). Both: only from a source no newer than the target. Off: always the text format.",
        &BINARY_COPY,
        GucContext::Sighup,
        GucFlags::default(),
    );
}
