//! Issue 10, item 9: `ALTER EXTENSION livesync UPDATE` from every released version, with a
//! running sync, loses nothing.
//!
//! Each released version is built from this repository's git history into a PostgreSQL
//! prefix of its own (`scripts/old-version.sh`). A private target runs it: a sync copies and
//! streams. The target stops, the source keeps writing, and the target starts again on this
//! build (the system's install, as a package upgrade leaves it). Until `ALTER EXTENSION
//! livesync UPDATE` the sync waits; after it, the sync goes on from where it stopped, and
//! the upgraded catalog is the same as a fresh install's.
//!
//! Only on this machine's PostgreSQL (15): the old versions are built for it. The scripts
//! under test are the same SQL for every major; the other majors run every other test.

use std::process::Command;
use std::time::Duration;

use livesync_e2e::*;

const LONG: Duration = Duration::from_secs(120);

/// Every released version before the current one.
const RELEASED: &[&str] = &["0.1.0", "0.2.0", "0.3.0", "0.4.0"];

/// The install of PostgreSQL 15 whose livesync is `version` (built on first use).
fn old_install(version: &str) -> Install {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/old-version.sh");
    let out = Command::new("bash")
        .arg(&script)
        .args([version, "15"])
        .output()
        .expect("run scripts/old-version.sh");
    assert!(
        out.status.success(),
        "scripts/old-version.sh {version} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Install::host_at(15, bin.into())
}

/// What defines livesync's SQL objects in a database, one line each: the columns of its
/// tables (type, default, NOT NULL), its views' definitions, its indexes, its functions
/// (signature, result, C symbol, SECURITY DEFINER, settings, ACL) and its tables' ACLs.
fn catalog_facts(db: &Db) -> Vec<String> {
    let rows = db
        .client()
        .query(
            "SELECT 'column ' || n.nspname || '.' || c.relname || '.' || a.attname || ' ' \
                    || format_type(a.atttypid, a.atttypmod) || ' default ' \
                    || coalesce(pg_get_expr(d.adbin, d.adrelid), '-') || ' not null ' || a.attnotnull \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
               JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
               LEFT JOIN pg_attrdef d ON d.adrelid = c.oid AND d.adnum = a.attnum \
              WHERE n.nspname IN ('livesync', '_ts_live_sync') AND c.relkind IN ('r', 'v') \
             UNION ALL \
             SELECT 'view ' || n.nspname || '.' || c.relname || ' ' || pg_get_viewdef(c.oid) \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname IN ('livesync', '_ts_live_sync') AND c.relkind = 'v' \
             UNION ALL \
             SELECT 'acl ' || n.nspname || '.' || c.relname || ' ' || coalesce(c.relacl::text, '-') \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE n.nspname IN ('livesync', '_ts_live_sync') AND c.relkind IN ('r', 'v') \
             UNION ALL \
             SELECT 'constraint ' || c.relname || ' ' || pg_get_constraintdef(k.oid) \
               FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'livesync' \
             UNION ALL \
             SELECT 'index ' || regexp_replace(pg_get_indexdef(i.indexrelid), ' INDEX \\S+ ON ', ' INDEX ON ') \
               FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid \
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'livesync' \
             UNION ALL \
             SELECT 'function ' || p.oid::regprocedure || ' returns ' || pg_get_function_result(p.oid) \
                    || ' symbol ' || p.prosrc || ' definer ' || p.prosecdef \
                    || ' config ' || coalesce(array_to_string(p.proconfig, ','), '-') \
                    || ' acl ' || coalesce(p.proacl::text, '-') \
                    || ' defaults ' || coalesce(pg_get_expr(p.proargdefaults, 0), '-') \
                    || ' volatile ' || p.provolatile::text || ' strict ' || p.proisstrict::text \
                    || ' parallel ' || p.proparallel::text || ' language ' || (SELECT lanname FROM pg_language l WHERE l.oid = p.prolang) \
               FROM pg_proc p JOIN pg_depend dep ON dep.objid = p.oid \
                AND dep.classid = 'pg_proc'::regclass AND dep.deptype = 'e' \
               JOIN pg_extension e ON e.oid = dep.refobjid AND e.extname = 'livesync' \
             ORDER BY 1",
            &[],
        )
        .expect("read livesync's catalog");
    rows.iter().map(|r| r.get(0)).collect()
}

fn extversion(db: &Db) -> String {
    db.query_one("SELECT extversion::text FROM pg_extension WHERE extname = 'livesync'")
}

/// Start a sync with the arguments every version has.
fn start(tgt: &Db, src: &Db, sub: &str) {
    tgt.client()
        .execute("SELECT livesync_start($1, 'p', $2)", &[&src.uri(), &sub])
        .unwrap_or_else(|e| panic!("livesync_start: {}", err_text(&e)));
}

fn synced(src: &Db, tgt: &Db, sub: &str) {
    wait_until_or(
        LONG,
        &format!("every table of sync {sub} in state 'r'"),
        || {
            format!(
                "{:?}\n{}",
                try_sub_rels(tgt, sub).map_err(|e| err_text(&e)),
                all_log_tails(20)
            )
        },
        || {
            try_sub_rels(tgt, sub)
                .map(|r| r.len() == 2 && r.iter().all(|x| x.state == 'r'))
                .unwrap_or(false)
        },
    );
    wait_applied(src, tgt, sub, LONG);
    assert_tables_equal(src, tgt, "kv");
    assert_tables_equal(src, tgt, "metrics");
}

/// A sync from `src` on the old version: copied, then streaming.
fn before_the_upgrade(src: &Db, tgt: &Db, sub: &str, version: &str) {
    assert_eq!(
        extversion(tgt),
        version,
        "the old install did not install {version}"
    );
    let ddl = "CREATE TABLE kv (id int PRIMARY KEY, v text); \
               CREATE TABLE metrics (ts timestamptz NOT NULL, dev int NOT NULL, x float8, \
                                     PRIMARY KEY (dev, ts))";
    src.exec(ddl);
    tgt.exec(ddl);
    tgt.exec("SELECT create_hypertable('metrics', 'ts', chunk_time_interval => interval '1 day')");
    src.exec(
        "INSERT INTO kv SELECT g, 'v' || g FROM generate_series(1, 2000) g; \
         INSERT INTO metrics SELECT '2026-01-01'::timestamptz + g * interval '1 hour', g % 3, g \
           FROM generate_series(1, 500) g; \
         CREATE PUBLICATION p FOR TABLE kv, metrics",
    );
    let g = SyncGuard::new(tgt, sub);
    start(tgt, src, sub);
    synced(src, tgt, sub);
    src.exec(
        "UPDATE kv SET v = 'before the upgrade' WHERE id <= 100; DELETE FROM kv WHERE id > 1900",
    );
    synced(src, tgt, sub);
    // The sync stays; the guard of the upgraded target drops it.
    std::mem::forget(g);
}

fn upgrade_from(version: &str) {
    if target_install().major != 15 || source_install().major != 15 {
        // The released versions are built for this machine's PostgreSQL only (see the
        // module header).
        eprintln!("[e2e] upgrade tests run on PostgreSQL 15 only");
        return;
    }
    let mut spec = ClusterSpec::new(Kind::Target, &format!("upg{}", version.replace('.', "")));
    spec.install = old_install(version);
    let mut cluster = Cluster::new_private_with(spec);
    let src = Db::fresh(source(), "upg_src");
    let sub = format!("upg_{}", version.replace('.', "_"));
    let tgt_name = {
        let tgt = Db::fresh(&cluster, "upg_tgt");
        before_the_upgrade(&src, &tgt, &sub, version);
        tgt.name.clone()
    };

    // The package upgrade: the server stops, gets the new library, starts again. The source
    // writes meanwhile.
    cluster.stop(StopMode::Fast);
    src.exec(
        "INSERT INTO kv SELECT g, 'while down' FROM generate_series(3001, 3500) g; \
         UPDATE kv SET v = 'while down' WHERE id BETWEEN 101 AND 200; \
         DELETE FROM kv WHERE id BETWEEN 201 AND 250; \
         INSERT INTO metrics SELECT '2026-03-01'::timestamptz + g * interval '1 hour', 7, g \
           FROM generate_series(1, 100) g",
    );
    cluster.set_install(target_install().clone());
    cluster.start();
    let tgt = cluster.db(&tgt_name);
    let _g = SyncGuard::new(&tgt, &sub);
    // Until the catalog is updated, the sync waits (and says why), applying nothing.
    wait_until_or(
        LONG,
        "the apply worker to wait for ALTER EXTENSION livesync UPDATE",
        || cluster.log_tail(30),
        || {
            cluster
                .log_tail(200)
                .contains("ALTER EXTENSION livesync UPDATE")
        },
    );
    assert_eq!(
        tgt.query_one::<i64>("SELECT count(*)::int8 FROM kv WHERE id > 3000"),
        0,
        "changes were applied before the catalog was updated"
    );

    tgt.exec("ALTER EXTENSION livesync UPDATE");
    let current: String = tgt.query_one(
        "SELECT default_version::text FROM pg_available_extensions WHERE name = 'livesync'",
    );
    assert_ne!(current, version);
    assert_eq!(extversion(&tgt), current);
    synced(&src, &tgt, &sub);
    src.exec(
        "UPDATE kv SET v = 'after the upgrade' WHERE id % 7 = 0; DELETE FROM kv WHERE id % 11 = 0",
    );
    synced(&src, &tgt, &sub);
    // The new version's columns work on the upgraded sync.
    let (errors, lag): (i64, f64) = {
        let row = tgt
            .client()
            .query_one(
                "SELECT apply_error_count, lag_seconds FROM livesync.subscription WHERE subname = $1",
                &[&sub],
            )
            .unwrap_or_else(|e| panic!("livesync.subscription: {}", err_text(&e)));
        (row.get(0), row.get(1))
    };
    assert_eq!(errors, 0);
    // (The shared source writes for other tests too: a few seconds of lag may show.)
    assert!(
        (0.0..60.0).contains(&lag),
        "lag_seconds {lag} of a sync that just caught up"
    );

    // The same catalog as a fresh install of the current version.
    let fresh = Db::fresh(&cluster, "upg_fresh");
    assert_eq!(extversion(&fresh), current);
    let (upgraded, installed) = (catalog_facts(&tgt), catalog_facts(&fresh));
    let only_upgraded: Vec<&String> = upgraded.iter().filter(|f| !installed.contains(f)).collect();
    let only_fresh: Vec<&String> = installed.iter().filter(|f| !upgraded.contains(f)).collect();
    assert!(
        only_upgraded.is_empty() && only_fresh.is_empty(),
        "upgraded from {version} differs from a fresh {current}:\nonly upgraded: {only_upgraded:#?}\nonly fresh: {only_fresh:#?}"
    );
    assert!(upgraded.len() > 100, "too few catalog facts: {upgraded:#?}");
}

#[test]
fn upgrade_from_0_1_0_with_a_running_sync() {
    upgrade_from(RELEASED[0]);
}

#[test]
fn upgrade_from_0_2_0_with_a_running_sync() {
    upgrade_from(RELEASED[1]);
}

#[test]
fn upgrade_from_0_3_0_with_a_running_sync() {
    upgrade_from(RELEASED[2]);
}

#[test]
fn upgrade_from_0_4_0_with_a_running_sync() {
    upgrade_from(RELEASED[3]);
}
