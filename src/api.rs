//! The SQL API (see shared/API.md): `livesync_start` with its options, `livesync_alter`,
//! `livesync_stop`, `livesync_drop`, `livesync_resync`, `livesync_skip`,
//! `livesync_sync_sequences`; the status functions behind the views; and the hook that
//! makes `DROP EXTENSION livesync` clean up.
//!
//! Each function validates synchronously and raises a clear ERROR (SQLSTATE, message,
//! hint) before changing anything; catalog rows are written in the caller's transaction
//! and mirrored into shared memory only when that transaction commits.

use crate::catalog;
use crate::error::{Error, OrRaise, Result};
use crate::lsn;
use crate::remote;
use crate::shmem::{self, REGISTRY};
use crate::source::{ConnInfo, Connection};
use crate::worker;
use pgrx::callbacks::{register_xact_callback, PgXactCallbackEvent};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;
use std::time::{Duration, Instant};

/// Subscription names become slot names on the source: keep them simple and short enough
/// for the `_sync_<oid>` suffix of table-sync slots, and never equal to a table-sync slot
/// name of another sync (`a_sync_123` would be one of the sync `a`'s).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    let owner_of_such_a_slot = name
        .rfind("_sync_")
        .map(|i| &name[..i])
        .filter(|other| remote::is_slot_of(name, other));
    if let (true, Some(other)) = (ok, owner_of_such_a_slot) {
        return Err(Error::user(
            Code::ERRCODE_INVALID_NAME,
            format!("invalid subscription name \"{name}\""),
        )
        .detail(format!(
            "Slots named \"<sync>_sync_<digits>\" are the table-sync slots of another sync (here \"{other}\")."
        ))
        .hint("Choose a name that does not end in _sync_ followed by digits."));
    }
    if ok {
        Ok(())
    } else {
        Err(Error::user(Code::ERRCODE_INVALID_NAME, format!("invalid subscription name \"{name}\""))
            .detail("The name becomes the replication slot's name on the source.")
            .hint("Use 1 to 40 lowercase letters, digits and underscores, e.g. 'livesync' or 'analytics_sync'."))
    }
}

fn required<'a>(value: Option<&'a str>, what: &str) -> Result<&'a str> {
    match value {
        Some(v) if !v.trim().is_empty() => Ok(v),
        Some(_) => Err(Error::user(
            Code::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("{what} must not be empty"),
        )
        .hint(format!("Pass a non-empty {what}."))),
        None => Err(Error::user(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            format!("{what} must not be NULL"),
        )
        .hint(format!("Pass a non-NULL {what}."))),
    }
}

/// The SQL API works when the library is preloaded and the catalog in this database is of
/// the library's version (after a new library, `ALTER EXTENSION livesync UPDATE` comes
/// first; `DROP EXTENSION` works either way).
fn require_preload() -> Result<()> {
    if !shmem::available() {
        return Err(Error::user(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "livesync must be loaded via shared_preload_libraries",
        )
        .hint("Add livesync to shared_preload_libraries in postgresql.conf (e.g. shared_preload_libraries = 'timescaledb,livesync') and restart the server."));
    }
    let installed = catalog::installed_version()?.unwrap_or_default();
    if installed != catalog::LIBRARY_VERSION {
        return Err(Error::VersionMismatch {
            installed,
            library: catalog::LIBRARY_VERSION.into(),
        });
    }
    Ok(())
}

/// This server's system identifier (as IDENTIFY_SYSTEM reports it).
fn system_identifier() -> u64 {
    // SAFETY: reads a value fixed at startup.
    unsafe { pg_sys::GetSystemIdentifier() }
}

fn dboid() -> u32 {
    // SAFETY: MyDatabaseId is set once the backend is connected.
    unsafe { pg_sys::MyDatabaseId }.to_u32()
}

fn parse_conninfo(source: &str) -> Result<ConnInfo> {
    ConnInfo::parse(source)
        .map_err(|e| Error::from_source("invalid connection string for the source", e))
}

/// Connect to the source as a replication client and check it can serve a sync.
async fn connect_checked(info: &ConnInfo) -> Result<Connection> {
    let mut conn = Connection::connect(info, true, "livesync")
        .await
        .map_err(|e| Error::from_source("could not connect to the source", e))?;
    remote::check_wal_level(&mut conn).await?;
    Ok(conn)
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
#[allow(clippy::too_many_arguments)]
fn livesync_start(
    source: Option<&str>,
    publication: Option<&str>,
    subscription: default!(Option<&str>, "'livesync'"),
    copy_data: default!(Option<bool>, true),
    table_map: default!(Option<pgrx::JsonB>, "NULL"),
    create_tables: default!(Option<bool>, false),
    add_columns: default!(Option<bool>, false),
    disable_on_error: default!(Option<bool>, false),
) {
    let Some(copy_data) = copy_data else {
        Error::user(Code::ERRCODE_NULL_VALUE_NOT_ALLOWED, "copy_data must not be NULL")
            .hint("Pass copy_data => true to copy existing rows first, or false to stream only new changes.")
            .raise()
    };
    let options = OptionArgs {
        table_map: table_map.map(|j| j.0),
        create_tables,
        add_columns,
        disable_on_error,
    };
    start(source, publication, subscription, copy_data, options).or_raise()
}

/// The options of `livesync_start` and `livesync_alter` as given (None: not given, or NULL).
struct OptionArgs {
    table_map: Option<serde_json::Value>,
    create_tables: Option<bool>,
    add_columns: Option<bool>,
    disable_on_error: Option<bool>,
}

impl OptionArgs {
    /// `base` with what is given here; a table map is checked first.
    fn applied_to(&self, base: &catalog::SyncOptions) -> Result<catalog::SyncOptions> {
        let mut o = base.clone();
        if let Some(map) = &self.table_map {
            let text = map.to_string();
            crate::tablemap::TableMap::parse(&text).map_err(|e| {
                Error::user(Code::ERRCODE_INVALID_PARAMETER_VALUE, format!("invalid table_map: {e}"))
                    .hint("Pass a JSON array of entries such as {\"source\": {\"schema\": \"public\", \"table\": \"metrics\"}, \"target\": {\"schema\": \"analytics\", \"table\": \"metrics_raw\"}}, or {\"source\": {\"schema\": \"public\"}, \"target\": {\"schema\": \"analytics\"}} for a whole schema.")
            })?;
            o.table_map = text;
        }
        if let Some(v) = self.create_tables {
            o.create_tables = v;
        }
        if let Some(v) = self.add_columns {
            o.add_columns = v;
        }
        if let Some(v) = self.disable_on_error {
            o.disable_on_error = v;
        }
        Ok(o)
    }

    /// For resuming a stopped sync: what differs from `livesync_start`'s defaults.
    fn non_defaults(self) -> OptionArgs {
        OptionArgs {
            table_map: self.table_map,
            create_tables: self.create_tables.filter(|v| *v),
            add_columns: self.add_columns.filter(|v| *v),
            disable_on_error: self.disable_on_error.filter(|v| *v),
        }
    }
}

fn start(
    source: Option<&str>,
    publication: Option<&str>,
    subscription: Option<&str>,
    copy_data: bool,
    options: OptionArgs,
) -> Result<()> {
    require_preload()?;
    let name = required(subscription, "subscription")?;
    validate_name(name)?;
    let source = required(source, "source")?;
    let publication = required(publication, "publication")?;
    if publication.len() > 63 {
        return Err(Error::user(
            Code::ERRCODE_NAME_TOO_LONG,
            format!("publication name is too long ({} bytes)", publication.len()),
        )
        .hint("PostgreSQL names are at most 63 bytes: pass the publication's name as the source shows it in pg_publication."));
    }
    let info = parse_conninfo(source)?;
    let db = dboid();

    let existing = catalog::sync_by_name(name)?;
    if let Some(row) = &existing {
        if row.enabled {
            return Err(Error::user(
                Code::ERRCODE_DUPLICATE_OBJECT,
                format!("livesync subscription \"{name}\" already exists and is running"),
            )
            .hint(format!("Stop it first with SELECT livesync_stop('{name}'), or choose another subscription name.")));
        }
        if row.source != source || row.publication != publication {
            return Err(Error::user(
                Code::ERRCODE_DUPLICATE_OBJECT,
                format!("livesync subscription \"{name}\" already exists with another source or publication"),
            )
            .hint(format!("Resume it with its original arguments, or drop it with SELECT livesync_drop('{name}') first.")));
        }
    }

    if !REGISTRY
        .share()
        .has_room_for(db, existing.as_ref().map(|row| row.subid))
    {
        return Err(Error::user(
            Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
            format!(
                "cannot start livesync subscription \"{name}\": this server already has {} livesync subscriptions",
                shmem::MAX_SYNCS
            ),
        )
        .detail("livesync keeps every subscription of the server, running or stopped, in shared memory.")
        .hint("Drop subscriptions that are no longer needed with SELECT livesync_drop(...), in the database that holds them."));
    }
    let rt = worker::runtime();
    let mut conn = worker::block_on(&rt, connect_checked(&info))??;
    let subid = match existing {
        Some(row) => {
            // Resuming: options given (other than the defaults) replace the stored ones.
            let o = options.non_defaults().applied_to(&row.options)?;
            if o != row.options {
                catalog::set_options(row.subid, &o)?;
            }
            catalog::set_enabled(row.subid, true)?;
            row.subid
        }
        None => {
            let pub_exists =
                worker::block_on(&rt, remote::publication_exists(&mut conn, publication))??;
            // A source in this very server (another database of it, or this one): creating
            // a logical slot waits for every transaction with an xid to end, ours included,
            // so the sync's worker creates the slot instead, as it does when the
            // publication does not exist yet. (Native CREATE SUBSCRIPTION hangs there.)
            let same_server = worker::block_on(&rt, remote::system_identifier(&mut conn))??
                == system_identifier().to_string();
            let create_now = pub_exists && !same_server;
            let o = options.applied_to(&catalog::SyncOptions {
                table_map: "[]".into(),
                ..Default::default()
            })?;
            let subid = catalog::insert_sync(name, source, publication, copy_data, create_now, &o)?;
            if create_now {
                // The main slot is created last, when the transaction commits, as the one
                // thing that cannot be rolled back: an error before that, or a ROLLBACK of
                // the caller's transaction, leaves nothing behind on the source; an error
                // creating it aborts the transaction. (CREATE SUBSCRIPTION refuses to run
                // in a transaction block instead; this works in one.)
                let (slot, info) = (name.to_string(), info.clone());
                at_pre_commit(move || {
                    let rt = worker::runtime();
                    worker::block_on(&rt, async {
                        let mut conn = connect_checked(&info).await?;
                        remote::create_main_slot(&mut conn, &slot).await?;
                        conn.close().await;
                        Ok::<(), Error>(())
                    })?
                });
            } else if pub_exists {
                pgrx::notice!(
                    "the source is this server: the sync's worker creates replication slot \"{name}\" once this transaction commits"
                );
            } else {
                pgrx::notice!(
                    "publication \"{publication}\" does not exist on the source yet; livesync will wait for it"
                );
            }
            subid
        }
    };
    let _ = worker::block_on(&rt, conn.close());

    register_xact_callback(PgXactCallbackEvent::Commit, move || {
        let mut reg = REGISTRY.exclusive();
        if let Some(slot) = reg.sync_entry(db, subid) {
            slot.enabled = true;
            slot.stopping = false;
            slot.failures = 0;
            slot.not_before_ms = 0;
        }
        drop(reg);
        shmem::wake_launcher();
    });
    Ok(())
}

fn find_sync(subscription: Option<&str>) -> Result<catalog::SyncRow> {
    let name = required(subscription, "subscription")?;
    catalog::sync_by_name(name)?.ok_or_else(|| {
        Error::user(
            Code::ERRCODE_UNDEFINED_OBJECT,
            format!("livesync subscription \"{name}\" does not exist"),
        )
        .hint("SELECT subname FROM livesync.subscription lists the existing ones.")
    })
}

/// Signal every process of the sync to exit and wait until they have. Until the caller's
/// transaction ends, the launcher starts nothing for it.
fn stop_workers(subid: i32) -> Result<()> {
    let db = dboid();
    {
        let mut reg = REGISTRY.exclusive();
        if let Some(s) = reg.sync_mut(db, subid) {
            s.stopping = true;
        }
    }
    register_xact_callback(PgXactCallbackEvent::Abort, move || {
        if let Some(s) = REGISTRY.exclusive().sync_mut(db, subid) {
            s.stopping = false;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let pids = REGISTRY.share().pids_of(db, subid);
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::user(
                Code::ERRCODE_LOCK_NOT_AVAILABLE,
                format!("livesync workers {pids:?} did not exit within 60 s"),
            )
            .hint("Look at the server log for what they are doing, then try again."));
        }
        pids.into_iter().for_each(shmem::terminate);
        std::thread::sleep(Duration::from_millis(20));
        worker::check_interrupts()?;
    }
}

/// Change an existing sync, running or stopped, without a re-copy (as `ALTER SUBSCRIPTION`).
/// NULL leaves a setting as it is. A new `source` (rotated credentials, a new host name) is
/// checked like `livesync_start` checks it, must still hold the sync's slot, and is used
/// from the next connection on: running workers reconnect once the change commits.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn livesync_alter(
    subscription: Option<&str>,
    source: default!(Option<&str>, "NULL"),
    table_map: default!(Option<pgrx::JsonB>, "NULL"),
    create_tables: default!(Option<bool>, "NULL"),
    add_columns: default!(Option<bool>, "NULL"),
    disable_on_error: default!(Option<bool>, "NULL"),
) {
    let options = OptionArgs {
        table_map: table_map.map(|j| j.0),
        create_tables,
        add_columns,
        disable_on_error,
    };
    alter(subscription, source, options).or_raise()
}

fn alter(subscription: Option<&str>, source: Option<&str>, options: OptionArgs) -> Result<()> {
    require_preload()?;
    let row = find_sync(subscription)?;
    let o = options.applied_to(&row.options)?;
    if o != row.options {
        catalog::set_options(row.subid, &o)?;
        // Running workers restart with the new options once they are committed (the apply
        // worker points tables at their new targets as it starts).
        restart_workers_at_commit(row.subid);
    }
    let Some(source) = source else {
        return Ok(());
    };
    let source = required(Some(source), "source")?;
    let info = parse_conninfo(source)?;
    let rt = worker::runtime();
    let slot = row.subname.clone();
    let slot_created = row.slot_created;
    worker::block_on(&rt, async move {
        let mut conn = connect_checked(&info).await?;
        if slot_created && !remote::slot_exists(&mut conn, &slot).await? {
            return Err(Error::user(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!("replication slot \"{slot}\" does not exist on the new source"),
            )
            .hint("The new connection string must reach the same source server, which holds the sync's slot; to sync from another server, drop this sync and start a new one."));
        }
        conn.close().await;
        Ok(())
    })??;
    catalog::set_source(row.subid, source)?;
    // Running workers reconnect with the new string once it is committed.
    restart_workers_at_commit(row.subid);
    Ok(())
}

/// Once the caller's transaction commits, end the sync's running workers: the launcher
/// starts the apply worker again at once (its backoff reset), and it reads the catalog
/// afresh.
fn restart_workers_at_commit(subid: i32) {
    let db = dboid();
    register_xact_callback(PgXactCallbackEvent::Commit, move || {
        let pids = {
            let mut reg = REGISTRY.exclusive();
            if let Some(s) = reg.sync_mut(db, subid) {
                s.failures = 0;
                s.not_before_ms = 0;
            }
            reg.pids_of(db, subid)
        };
        pids.into_iter().for_each(shmem::terminate);
        shmem::wake_launcher();
    });
}

/// Empty one target table and copy it again while the sync's other tables keep
/// streaming (every table of the sync that syncs into it: the chunks of a source
/// hypertable, or tables a map sends there). Behind `livesync_resync(text, regclass)`.
fn resync(subscription: Option<&str>, target_table: Option<pg_sys::Oid>) -> Result<()> {
    require_preload()?;
    let row = find_sync(subscription)?;
    let Some(table) = target_table else {
        return Err(Error::user(
            Code::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "target_table must not be NULL",
        )
        .hint("Pass the target table, e.g. 'public.metrics'::regclass."));
    };
    let rels = catalog::rels_into(row.subid, table)?;
    let name = relation_name(table)?;
    if rels.is_empty() {
        return Err(Error::user(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!(
                "table \"{name}\" is not a target of livesync subscription \"{}\"",
                row.subname
            ),
        )
        .hint(format!(
            "SELECT schemaname, tablename FROM livesync.subscription_rel WHERE subname = '{}' lists its target tables.",
            row.subname
        )));
    }
    let others = catalog::other_syncs_into(row.subid, table)?;
    if !others.is_empty() {
        return Err(Error::user(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!(
                "table \"{name}\" is also a target of livesync subscription(s) {}",
                others.join(", ")
            ),
        )
        .detail("Emptying it would remove their rows too, and only this sync would copy its rows again.")
        .hint("Empty the table and copy it again from every sync that writes into it: stop them, TRUNCATE it, then drop and start each sync again."));
    }
    // The workers stop (the apply worker must not apply to the table meanwhile, a
    // table-sync worker of it must not load on); the launcher starts them again once
    // this commits, and the tables are copied anew.
    stop_workers(row.subid)?;
    crate::apply::truncate_as_owner(table)?;
    for r in &rels {
        catalog::resync_rel(row.subid, r.rrelid)?;
    }
    let db = dboid();
    let subid = row.subid;
    register_xact_callback(PgXactCallbackEvent::Commit, move || {
        if let Some(s) = REGISTRY.exclusive().sync_mut(db, subid) {
            s.stopping = false;
            s.failures = 0;
            s.not_before_ms = 0;
        }
        shmem::wake_launcher();
    });
    pgrx::notice!(
        "table \"{name}\" was emptied; {} of the sync will copy it again",
        if rels.len() == 1 {
            "a table-sync worker".to_string()
        } else {
            format!("{} table-sync workers", rels.len())
        }
    );
    Ok(())
}

fn relation_name(oid: pg_sys::Oid) -> Result<String> {
    Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.format('%s.%s', n.nspname, c.relname) FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
          WHERE c.oid OPERATOR(pg_catalog.=) $1",
        &[oid.into()],
    )?
    .ok_or_else(|| {
        Error::user(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("relation with OID {} does not exist", oid.to_u32()),
        )
    })
}

/// Skip the one source transaction that finishes at `lsn` (as `ALTER SUBSCRIPTION ...
/// SKIP (lsn = ...)`); NULL clears a skip not yet done. Behind `livesync_skip(text, pg_lsn)`.
fn skip(subscription: Option<&str>, lsn: Option<&str>) -> Result<()> {
    require_preload()?;
    let row = find_sync(subscription)?;
    let lsn = lsn.map(|l| lsn::parse(l).unwrap_or(0));
    if let Some(l) = lsn {
        if l == 0 {
            return Err(Error::user(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                "invalid WAL location (LSN) 0/0",
            )
            .hint("Pass the LSN the error names after \"finished at\" in livesync.subscription.last_error."));
        }
        let origin: Option<String> = Spi::get_one_with_args(
            "SELECT remote_lsn::pg_catalog.text FROM pg_catalog.pg_replication_origin_status \
              WHERE external_id OPERATOR(pg_catalog.=) $1",
            &[catalog::apply_origin_name(dboid(), row.subid)
                .as_str()
                .into()],
        )
        .unwrap_or(None);
        let applied = origin.and_then(|s| lsn::parse(&s)).unwrap_or(0);
        if l <= applied {
            return Err(Error::user(
                Code::ERRCODE_INVALID_PARAMETER_VALUE,
                format!(
                    "skip WAL location (LSN {}) must be greater than the sync's position {}",
                    lsn::format(l),
                    lsn::format(applied)
                ),
            )
            .hint("Everything up to that position is already applied: there is nothing to skip there."));
        }
    }
    catalog::set_skip_lsn(row.subid, lsn)?;
    restart_workers_at_commit(row.subid);
    Ok(())
}

/// Set every target sequence that belongs to a synced table (owned by one of its columns,
/// or used in a column default) to its source counterpart's value: for a cutover.
#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn livesync_sync_sequences(subscription: default!(Option<&str>, "'livesync'")) -> i32 {
    sync_sequences(subscription).or_raise()
}

fn sync_sequences(subscription: Option<&str>) -> Result<i32> {
    require_preload()?;
    let row = find_sync(subscription)?;
    let rels = catalog::rels(row.subid)?;
    let info = parse_conninfo(&row.source)?;
    let rt = worker::runtime();
    let mut conn = worker::block_on(&rt, Connection::connect(&info, false, "livesync"))?
        .map_err(|e| Error::from_source("could not connect to the source", e))?;
    let mut set = 0;
    let mut seen: Vec<(String, String)> = Vec::new();
    for r in &rels {
        if seen.contains(&(r.srcschema.clone(), r.srcname.clone())) {
            continue;
        }
        seen.push((r.srcschema.clone(), r.srcname.clone()));
        let target = crate::sequences::of_table(&r.schemaname, &r.tablename)?;
        if target.is_empty() {
            continue;
        }
        let source = worker::block_on(
            &rt,
            remote::sequence_values(&mut conn, &r.srcschema, &r.srcname),
        )??;
        for (column, seq) in &target {
            if let Some(v) = source.iter().find(|v| &v.column == column) {
                crate::sequences::set(seq, v.last_value, v.is_called)?;
                set += 1;
            }
        }
    }
    let _ = worker::block_on(&rt, conn.close());
    Ok(set)
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn livesync_stop(subscription: default!(Option<&str>, "'livesync'")) {
    stop(subscription).or_raise()
}

fn stop(subscription: Option<&str>) -> Result<()> {
    require_preload()?;
    let row = find_sync(subscription)?;
    catalog::set_enabled(row.subid, false)?;
    stop_workers(row.subid)?;
    let (db, subid) = (dboid(), row.subid);
    register_xact_callback(PgXactCallbackEvent::Commit, move || {
        if let Some(s) = REGISTRY.exclusive().sync_mut(db, subid) {
            s.enabled = false;
            s.stopping = false;
        }
    });
    Ok(())
}

#[pg_extern(volatile, parallel_unsafe)]
#[search_path(pg_catalog, pg_temp)]
fn livesync_drop(
    subscription: default!(Option<&str>, "'livesync'"),
    drop_slots: default!(Option<bool>, true),
) {
    drop_sync(subscription, drop_slots.unwrap_or(true)).or_raise()
}

fn drop_sync(subscription: Option<&str>, drop_slots: bool) -> Result<()> {
    require_preload()?;
    let row = find_sync(subscription)?;
    drop_one(&row, drop_slots)
}

/// Stop the sync, forget it, drop its slots on the source. The catalog work comes first,
/// so that an error there rolls everything back before anything irreversible happened; a
/// source that cannot be reached is an ERROR whose hint says how to forget the sync anyway.
fn drop_one(row: &catalog::SyncRow, drop_slots: bool) -> Result<()> {
    stop_workers(row.subid)?;
    let db = dboid();
    drop_origins(db, row.subid)?;
    catalog::delete_sync(row.subid)?;
    if drop_slots {
        // At commit: a ROLLBACK keeps the sync and its slots.
        let row = row.clone();
        at_pre_commit(move || {
            drop_remote_slots(&row).map_err(|e| {
                match e {
                    Error::User { .. } => e,
                    other => Error::user(Code::ERRCODE_CONNECTION_FAILURE, other.to_string()),
                }
                .hint(format!(
                    "To forget the sync without dropping its slots, call SELECT livesync_drop('{}', drop_slots => false) and drop slots named '{}' and '{}_sync_<digits>' on the source yourself.",
                    row.subname, row.subname, row.subname
                ))
            })
        });
    }
    forget_at_commit(db, row.subid);
    Ok(())
}

/// Run `f` just before the caller's transaction commits; an error there is an ERROR that
/// aborts the transaction. For what cannot be undone on the source (creating or dropping
/// slots): a transaction that rolls back never does it.
fn at_pre_commit(f: impl FnOnce() -> Result<()> + 'static) {
    let f = std::panic::AssertUnwindSafe(f);
    register_xact_callback(PgXactCallbackEvent::PreCommit, move || {
        let f = f;
        (f.0)().or_raise()
    });
}

/// Once the dropping transaction commits, take the sync out of shared memory too.
fn forget_at_commit(db: u32, subid: i32) {
    register_xact_callback(PgXactCallbackEvent::Commit, move || {
        REGISTRY.exclusive().forget_sync(db, subid);
    });
}

fn drop_remote_slots(row: &catalog::SyncRow) -> Result<()> {
    let info = parse_conninfo(&row.source)?;
    let rt = worker::runtime();
    worker::block_on(&rt, async {
        let mut conn = Connection::connect(&info, true, "livesync")
            .await
            .map_err(|e| {
                Error::from_source(
                    "could not connect to the source to drop replication slots",
                    e,
                )
            })?;
        for slot in remote::slots_of(&mut conn, &row.subname).await? {
            remote::drop_slot(&mut conn, &slot).await?;
        }
        conn.close().await;
        Ok::<(), Error>(())
    })?
}

/// Drop the replication origins of a sync (the apply one and any table-sync ones).
fn drop_origins(db: u32, subid: i32) -> Result<()> {
    let prefix = catalog::apply_origin_name(db, subid);
    Spi::run_with_args(
        "SELECT pg_catalog.pg_replication_origin_drop(roname) FROM pg_catalog.pg_replication_origin \
          WHERE roname OPERATOR(pg_catalog.=) $1 \
             OR roname OPERATOR(pg_catalog.~~) ($1 OPERATOR(pg_catalog.||) '\\_%')",
        &[prefix.as_str().into()],
    )?;
    Ok(())
}

/// Functions behind the views, in schema `livesync`.
#[pg_schema]
mod livesync {
    use super::*;

    /// Live state of this database's syncs (behind `livesync.subscription`): progress
    /// from shared memory, and from the replication origin when no worker runs.
    /// SECURITY DEFINER, so roles that may read the view need no access to
    /// `pg_replication_origin_status` or `livesync.sync`; it exposes no connection string.
    #[pg_extern(name = "_status", volatile, security_definer)]
    #[search_path(pg_catalog)]
    #[allow(clippy::type_complexity)]
    fn status() -> TableIterator<
        'static,
        (
            name!(subid, i32),
            name!(pid, Option<i32>),
            name!(received_lsn, Option<String>),
            name!(applied_lsn, Option<String>),
            name!(source_end_lsn, Option<String>),
            name!(last_msg_time, Option<pgrx::datum::TimestampWithTimeZone>),
            name!(last_commit_time, Option<pgrx::datum::TimestampWithTimeZone>),
        ),
    > {
        let db = dboid();
        let syncs = catalog::all_syncs().or_raise();
        let mut rows = Vec::with_capacity(syncs.len());
        for sync in syncs {
            let origin: Option<String> = Spi::get_one_with_args(
                "SELECT remote_lsn::pg_catalog.text FROM pg_catalog.pg_replication_origin_status WHERE external_id OPERATOR(pg_catalog.=) $1",
                &[catalog::apply_origin_name(db, sync.subid).as_str().into()],
            )
            .unwrap_or(None);
            let origin = origin.and_then(|s| lsn::parse(&s)).unwrap_or(0);
            let live = if shmem::available() {
                REGISTRY.share().sync(db, sync.subid).copied()
            } else {
                None
            };
            let l = |v: u64| (v > 0).then(|| lsn::format(v));
            rows.push(match live {
                Some(s) => (
                    sync.subid,
                    (s.apply_pid > 0).then_some(s.apply_pid),
                    l(s.received_lsn),
                    // While a worker runs, only what it published after a commit
                    // returned: the origin's position moves inside the commit, a moment
                    // before the applied rows become visible to other sessions.
                    if s.apply_pid > 0 {
                        l(s.applied_lsn)
                    } else {
                        l(s.applied_lsn.max(origin))
                    },
                    l(s.source_end_lsn),
                    (s.last_msg_ms > 0)
                        .then(|| {
                            pgrx::datum::TimestampWithTimeZone::try_from(unix_ms_to_pg(
                                s.last_msg_ms,
                            ))
                            .ok()
                        })
                        .flatten(),
                    (s.last_commit_ts != 0)
                        .then(|| {
                            pgrx::datum::TimestampWithTimeZone::try_from(s.last_commit_ts).ok()
                        })
                        .flatten(),
                ),
                None => (sync.subid, None, None, l(origin), None, None, None),
            });
        }
        TableIterator::new(rows)
    }

    /// The copies under way in this database (behind `livesync.subscription_rel`): rows
    /// and bytes loaded so far, from shared memory. Counts only.
    #[pg_extern(name = "_copy_progress", volatile)]
    #[search_path(pg_catalog)]
    fn copy_progress() -> TableIterator<
        'static,
        (
            name!(subid, i32),
            name!(rrelid, pg_sys::Oid),
            name!(rows_copied, i64),
            name!(bytes_copied, i64),
            name!(loaders, i32),
        ),
    > {
        // Per table: what its loaders have loaded and not yet committed, and how many
        // loaders work on it now.
        let db = dboid();
        let mut per_table: Vec<(i32, u32, i64, i64, i32)> = Vec::new();
        if shmem::available() {
            for t in REGISTRY
                .share()
                .tables
                .iter()
                .filter(|t| t.in_use && t.dboid == db)
            {
                let loading = i32::from(t.loading);
                match per_table
                    .iter_mut()
                    .find(|p| p.0 == t.subid && p.1 == t.relid)
                {
                    Some(p) => {
                        p.2 += t.rows_copied as i64;
                        p.3 += t.bytes_copied as i64;
                        p.4 += loading;
                    }
                    None => per_table.push((
                        t.subid,
                        t.relid,
                        t.rows_copied as i64,
                        t.bytes_copied as i64,
                        loading,
                    )),
                }
            }
        }
        TableIterator::new(
            per_table
                .into_iter()
                .map(|(s, r, rows, bytes, n)| (s, pg_sys::Oid::from(r), rows, bytes, n)),
        )
    }

    fn unix_ms_to_pg(ms: i64) -> i64 {
        // PostgreSQL timestamps count microseconds from 2000-01-01.
        ms * 1000 - 946_684_800_000_000
    }

    /// `livesync_resync(text, regclass)` (a SQL wrapper gives it its argument types).
    #[pg_extern(name = "_resync", volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn resync_fn(subscription: Option<&str>, target_table: Option<pg_sys::Oid>) {
        super::resync(subscription, target_table).or_raise()
    }

    /// `livesync_skip(text, pg_lsn)`, with the LSN as text.
    #[pg_extern(name = "_skip", volatile, parallel_unsafe)]
    #[search_path(pg_catalog, pg_temp)]
    fn skip_fn(subscription: Option<&str>, lsn: Option<&str>) {
        super::skip(subscription, lsn).or_raise()
    }

    /// The connection string with any password removed, for display.
    #[pg_extern(name = "_redact", immutable, strict)]
    fn redact(source: &str) -> String {
        ConnInfo::parse(source)
            .map(|i| i.redacted())
            .unwrap_or_else(|_| "(invalid connection string)".into())
    }
}

// ---- DROP EXTENSION livesync ----------------------------------------------------------

static mut PREV_UTILITY_HOOK: pg_sys::ProcessUtility_hook_type = None;

pub fn install_utility_hook() {
    // SAFETY: _PG_init runs once per process on the main thread; we chain the previous hook.
    unsafe {
        PREV_UTILITY_HOOK = pg_sys::ProcessUtility_hook;
        pg_sys::ProcessUtility_hook = Some(utility_hook);
    }
}

/// Is this statement `DROP EXTENSION ... livesync ...`?
///
/// # Safety
/// `pstmt` must be a valid PlannedStmt.
unsafe fn drops_livesync(pstmt: *mut pg_sys::PlannedStmt) -> bool {
    let node = (*pstmt).utilityStmt;
    if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_DropStmt {
        return false;
    }
    let drop = node as *mut pg_sys::DropStmt;
    if (*drop).removeType != pg_sys::ObjectType::OBJECT_EXTENSION {
        return false;
    }
    let list = (*drop).objects;
    if list.is_null() {
        return false;
    }
    (0..(*list).length as usize).any(|i| {
        let s = (*(*list).elements.add(i)).ptr_value as *mut pg_sys::String;
        !s.is_null()
            && (*s).type_ == pg_sys::NodeTag::T_String
            && std::ffi::CStr::from_ptr((*s).sval).to_bytes() == b"livesync"
    })
}

thread_local! {
    /// The syncs a `DROP EXTENSION livesync` under way has stopped; their slots and
    /// origins are dropped once the statement has succeeded.
    static DROPPING: std::cell::RefCell<Vec<catalog::SyncRow>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// May the current user drop the livesync extension? (Owner or superuser, as PostgreSQL
/// itself checks once the statement runs.)
fn may_drop_extension() -> bool {
    // SAFETY: catalog lookups on the main thread inside a transaction.
    unsafe {
        let ext = pg_sys::get_extension_oid(c"livesync".as_ptr(), true);
        ext != pg_sys::InvalidOid && crate::pgver::extension_ownercheck(ext, pg_sys::GetUserId())
    }
}

/// Before `DROP EXTENSION livesync` runs: stop every sync's workers. Returns whether the
/// statement is such a drop (then `after_drop_extension` must follow its success).
///
/// Nothing irreversible happens here: if the statement fails (not the owner, objects that
/// depend on the extension, ...), the transaction aborts, the stop is undone and the
/// launcher starts the workers again. Runs under `pg_guard`, so a Rust error or panic
/// here becomes an ordinary PostgreSQL ERROR.
#[pg_guard]
unsafe extern "C-unwind" fn before_utility(pstmt: *mut pg_sys::PlannedStmt) -> bool {
    refuse_dropping_database_with_syncs(pstmt);
    if !drops_livesync(pstmt)
        || !catalog::extension_installed().unwrap_or(false)
        || !may_drop_extension()
    {
        return false;
    }
    let syncs = worker::with_pinned_search_path(catalog::all_syncs).or_raise();
    for row in &syncs {
        stop_workers(row.subid).or_raise();
    }
    DROPPING.with(|d| *d.borrow_mut() = syncs);
    true
}

/// `DROP DATABASE` of a database that holds livesync subscriptions (running or stopped) is
/// refused, as PostgreSQL refuses it while the database has subscriptions, `WITH (FORCE)`
/// included: their slots on the source would be left behind, holding WAL there forever.
///
/// # Safety
/// `pstmt` must be a valid PlannedStmt.
unsafe fn refuse_dropping_database_with_syncs(pstmt: *mut pg_sys::PlannedStmt) {
    let node = (*pstmt).utilityStmt;
    if node.is_null() || (*node).type_ != pg_sys::NodeTag::T_DropdbStmt || !shmem::available() {
        return;
    }
    let stmt = node as *mut pg_sys::DropdbStmt;
    let db = pg_sys::get_database_oid((*stmt).dbname, true);
    if db == pg_sys::InvalidOid {
        return;
    }
    let n = REGISTRY.share().syncs_in(db.to_u32());
    if n == 0 {
        return;
    }
    let name = std::ffi::CStr::from_ptr((*stmt).dbname).to_string_lossy();
    Error::user(
        Code::ERRCODE_OBJECT_IN_USE,
        format!("database \"{name}\" is being used by livesync subscriptions"),
    )
    .detail(format!(
        "There {} {n} livesync subscription{} in the database.",
        if n == 1 { "is" } else { "are" },
        if n == 1 { "" } else { "s" }
    ))
    .hint(format!(
        "Connect to database \"{name}\" and drop them, with SELECT livesync_drop(...) or DROP EXTENSION livesync, which also drop their replication slots on the source."
    ))
    .raise()
}

/// After `DROP EXTENSION livesync` succeeded: drop the stopped syncs' replication origins
/// and their slots on the source. A source that cannot be reached is a WARNING naming the
/// slots left behind, as dropping the extension must stay possible when the source is gone.
#[pg_guard]
unsafe extern "C-unwind" fn after_drop_extension() {
    let syncs = DROPPING.with(|d| std::mem::take(&mut *d.borrow_mut()));
    let db = dboid();
    for row in &syncs {
        // Transactional: an error here still rolls the whole DROP back, slots untouched.
        worker::with_pinned_search_path(|| drop_origins(db, row.subid)).or_raise();
    }
    for row in &syncs {
        forget_at_commit(db, row.subid);
    }
    // The slots go when the transaction commits (a ROLLBACK keeps them).
    at_pre_commit(move || {
        for row in &syncs {
            if let Err(e) = drop_remote_slots(row) {
                pgrx::warning!(
                    "could not drop the replication slots of livesync subscription \"{}\" on the source: {e}; drop slots named '{}' and '{}_sync_<digits>' there yourself",
                    row.subname,
                    row.subname,
                    row.subname
                );
            }
        }
        Ok(())
    });
}

unsafe extern "C-unwind" {
    /// The server's `standard_ProcessUtility`, called directly. pgrx's own binding wraps
    /// the call in its FFI guard, which turns an ERROR into a Rust panic and back into a
    /// new ERROR: that loses the error's position, its schema/table/column/constraint
    /// fields, and appends a Rust backtrace to DETAIL. Every utility statement run on the
    /// target (COPY, CREATE ...) passes through this hook, so its errors must not change.
    #[link_name = "standard_ProcessUtility"]
    fn standard_process_utility(
        pstmt: *mut pg_sys::PlannedStmt,
        query_string: *const core::ffi::c_char,
        read_only_tree: bool,
        context: pg_sys::ProcessUtilityContext::Type,
        params: pg_sys::ParamListInfo,
        query_env: *mut pg_sys::QueryEnvironment,
        dest: *mut pg_sys::DestReceiver,
        qc: *mut pg_sys::QueryCompletion,
    );
}

/// The ProcessUtility hook. Deliberately not `#[pg_guard]`: this frame owns nothing that
/// needs dropping, so an ERROR raised by the statement itself (or by `before_utility`)
/// longjmps through it untouched, exactly as through a C hook, and reaches the client with
/// every field intact.
#[allow(clippy::too_many_arguments)]
unsafe extern "C-unwind" fn utility_hook(
    pstmt: *mut pg_sys::PlannedStmt,
    query_string: *const core::ffi::c_char,
    read_only_tree: bool,
    context: pg_sys::ProcessUtilityContext::Type,
    params: pg_sys::ParamListInfo,
    query_env: *mut pg_sys::QueryEnvironment,
    dest: *mut pg_sys::DestReceiver,
    qc: *mut pg_sys::QueryCompletion,
) {
    let dropping_livesync = before_utility(pstmt);
    let next = PREV_UTILITY_HOOK.unwrap_or(standard_process_utility);
    next(
        pstmt,
        query_string,
        read_only_tree,
        context,
        params,
        query_env,
        dest,
        qc,
    );
    if dropping_livesync {
        after_drop_extension();
    }
}

#[cfg(test)]
mod tests {
    use super::validate_name;
    #[test]
    fn names() {
        for ok in ["livesync", "a", "sync_2", &"x".repeat(40)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        assert!(validate_name("x_sync_eu").is_ok());
        assert!(validate_name("x_sync_2eu").is_ok());
        for bad in [
            "x_sync_123",
            "",
            "Mixed",
            "has space",
            "quo\"te",
            "dash-ed",
            &"x".repeat(41),
            "é",
        ] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
