//! Issue 10: operating a sync (API.md's optional arguments of `livesync_start` and the calls
//! built on them), on this binary's shared source and target clusters, plus one private
//! source with TimescaleDB:
//!
//! - `table_map`: a table mapped to another schema and name, a schema mapped to another
//!   schema, a table entry winning over its schema's entry, a target that names only a
//!   schema, a mapped hypertable target, a map given later through `livesync_alter`, and bad
//!   maps (SQLSTATE 22023);
//! - `create_tables`: a published table missing on the target is created from the source's
//!   definition (as a hypertable where its map entry says so); without it the table reports
//!   the missing table and syncs once the user creates it, while the others stream;
//! - TimescaleDB as the source: a hypertable's chunks (`_timescaledb_internal`) flow into the
//!   target's hypertable of the same name, also chunks created while the sync runs;
//! - `add_columns`: a column the source gained is added on the target; without it only that
//!   table waits, with an error that names the column and the option;
//! - `livesync_resync`, `livesync_sync_sequences`, `livesync_skip`, `disable_on_error`, and the
//!   counters and times of `livesync.subscription`.
//!
//! Every test works in databases of its own and uses a sync name no other test of this binary
//! uses (slots are global on the shared source). Waits are generous (120 s); nothing asserts
//! on timing.

use std::collections::BTreeSet;
use std::sync::OnceLock;
use std::thread::sleep;
use std::time::Duration;

use livesync_e2e::postgres::Client;
use livesync_e2e::*;

/// Generous timeout for the waits of this binary (tests run two at a time on a small machine).
const LONG: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Creates the same DDL on source and target.
fn ddl_both(src: &Db, tgt: &Db, ddl: &str) {
    src.exec(ddl);
    tgt.exec(ddl);
}

/// A JSON text as an SQL `jsonb` literal.
fn jsonb(json: &str) -> String {
    format!("'{}'::jsonb", json.replace('\'', "''"))
}

/// `livesync_start(source => <src>, publication => .., subscription => .., <options>)`, where
/// `options` is SQL for more named arguments (`create_tables => true, table_map => ...`).
fn try_start_with(
    tgt: &Db,
    src: &Db,
    publication: &str,
    sub: &str,
    options: &str,
) -> Result<(), postgres::Error> {
    let sep = if options.is_empty() { "" } else { ", " };
    let sql = format!(
        "SELECT livesync_start(source => $1, publication => $2, subscription => $3{sep}{options})"
    );
    tgt.try_client()?
        .execute(sql.as_str(), &[&src.uri(), &publication, &sub])
        .map(|_| ())
}

/// [`try_start_with`], panicking on error; the guard drops the sync when the test ends.
fn start_with(tgt: &Db, src: &Db, publication: &str, sub: &str, options: &str) -> SyncGuard {
    if let Err(e) = try_start_with(tgt, src, publication, sub, options) {
        panic!(
            "livesync_start(publication => {publication:?}, subscription => {sub:?}, {options}) \
             failed: {}\n{}",
            err_text(&e),
            all_log_tails(30)
        );
    }
    SyncGuard::new(tgt, sub)
}

/// One row of `livesync.subscription_rel`, with the table's name on both sides.
#[derive(Clone, Debug)]
struct Rel {
    /// `schemaname.tablename`: the table on the target.
    target: String,
    /// `srcschema.srcname`: the table on the source.
    source: String,
    srcschema: String,
    state: char,
    lsn: Option<String>,
    last_error: Option<String>,
}

fn try_rels(tgt: &Db, sub: &str) -> Result<Vec<Rel>, postgres::Error> {
    let rows = tgt.try_client()?.query(
        "SELECT schemaname::text, tablename::text, srcschema::text, srcname::text, state::text, \
                lsn::text, last_error::text \
           FROM livesync.subscription_rel WHERE subname = $1 ORDER BY 1, 2, 3, 4",
        &[&sub],
    )?;
    Ok(rows
        .iter()
        .map(|r| Rel {
            target: format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)),
            source: format!("{}.{}", r.get::<_, String>(2), r.get::<_, String>(3)),
            srcschema: r.get(2),
            state: r.get::<_, String>(4).chars().next().unwrap_or('?'),
            lsn: r.get(5),
            last_error: r.get(6),
        })
        .collect())
}

fn rels(tgt: &Db, sub: &str) -> Vec<Rel> {
    try_rels(tgt, sub)
        .unwrap_or_else(|e| panic!("reading livesync.subscription_rel: {}", err_text(&e)))
}

/// The counters of `livesync.subscription`.
#[derive(Clone, Debug, Default)]
struct Counters {
    apply_error_count: i64,
    copy_error_count: i64,
    insert_exists: i64,
    update_missing: i64,
    delete_missing: i64,
}

fn try_counters(tgt: &Db, sub: &str) -> Result<Option<Counters>, postgres::Error> {
    let rows = tgt.try_client()?.query(
        "SELECT apply_error_count::int8, copy_error_count::int8, insert_exists::int8, \
                update_missing::int8, delete_missing::int8 \
           FROM livesync.subscription WHERE subname = $1",
        &[&sub],
    )?;
    Ok(rows.first().map(|r| Counters {
        apply_error_count: r.get(0),
        copy_error_count: r.get(1),
        insert_exists: r.get(2),
        update_missing: r.get(3),
        delete_missing: r.get(4),
    }))
}

/// Waits (120 s) until the sync's counters satisfy `ok`; returns them.
fn wait_counters(tgt: &Db, sub: &str, what: &str, ok: impl Fn(&Counters) -> bool) -> Counters {
    let mut seen = None;
    wait_until_or(
        LONG,
        &format!("the counters of sync {sub} to show {what}"),
        || describe(tgt, sub),
        || {
            seen = try_counters(tgt, sub).ok().flatten().filter(|c| ok(c));
            seen.is_some()
        },
    );
    seen.unwrap()
}

fn describe(tgt: &Db, sub: &str) -> String {
    format!(
        "livesync.subscription: {:?}\ncounters: {:?}\nlivesync.subscription_rel: {:#?}",
        try_sub_info(tgt, sub).map_err(|e| err_text(&e)),
        try_counters(tgt, sub).map_err(|e| err_text(&e)),
        try_rels(tgt, sub).map_err(|e| err_text(&e)),
    )
}

/// Waits (120 s) until the sync lists exactly these `(source, target)` tables
/// (`schema.table` each), all in `state`.
fn wait_mapped(tgt: &Db, sub: &str, want: &[(&str, &str)], state: char) {
    let want: BTreeSet<String> = want.iter().map(|(s, t)| format!("{s} -> {t}")).collect();
    wait_until_or(
        LONG,
        &format!("sync {sub} to list exactly {want:?}, all in state '{state}'"),
        || describe(tgt, sub),
        || match try_rels(tgt, sub) {
            Ok(rels) => {
                let got: BTreeSet<String> = rels
                    .iter()
                    .map(|r| format!("{} -> {}", r.source, r.target))
                    .collect();
                got == want && rels.iter().all(|r| r.state == state)
            }
            Err(_) => false,
        },
    );
}

/// Waits (120 s) until the sync lists exactly these tables (same name on both sides), all in
/// `state`.
fn wait_tables(tgt: &Db, sub: &str, tables: &[&str], state: char) {
    let pairs: Vec<(&str, &str)> = tables.iter().map(|t| (*t, *t)).collect();
    wait_mapped(tgt, sub, &pairs, state);
}

/// Waits (120 s) until every table is 'r' and `applied_lsn` reached the source's current WAL
/// position.
fn caught_up(src: &Db, tgt: &Db, sub: &str) {
    wait_until_or(
        LONG,
        &format!("every table of sync {sub} in state 'r'"),
        || describe(tgt, sub),
        || {
            try_rels(tgt, sub)
                .map(|r| !r.is_empty() && r.iter().all(|x| x.state == 'r'))
                .unwrap_or(false)
        },
    );
    wait_applied(src, tgt, sub, LONG);
}

/// Caught up (120 s), then every table equal (same name on both sides).
fn synced(src: &Db, tgt: &Db, sub: &str, tables: &[&str]) {
    caught_up(src, tgt, sub);
    for t in tables {
        assert_tables_equal(src, tgt, t);
    }
}

/// `last_error` of the table whose source is `source` (`schema.table`).
fn rel_error(tgt: &Db, sub: &str, source: &str) -> Option<String> {
    try_rels(tgt, sub)
        .ok()?
        .into_iter()
        .find(|r| r.source == source)
        .and_then(|r| r.last_error)
}

/// Waits (120 s) until the `last_error` of the table whose source is `source` satisfies
/// `ok`; returns it.
fn wait_rel_error(
    tgt: &Db,
    sub: &str,
    source: &str,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let mut found = None;
    wait_until_or(
        LONG,
        &format!("subscription_rel.last_error of {source} in sync {sub} to report {what}"),
        || describe(tgt, sub),
        || {
            found = rel_error(tgt, sub, source).filter(|e| ok(e));
            found.is_some()
        },
    );
    found.unwrap()
}

fn rows_text(c: &mut Client, query: &str) -> Vec<String> {
    c.query(
        format!("SELECT t::text FROM {query} t ORDER BY 1").as_str(),
        &[],
    )
    .unwrap_or_else(|e| panic!("rows of {query}: {}", err_text(&e)))
    .iter()
    .map(|r| r.get(0))
    .collect()
}

/// Compares `src_query` on the source with `tgt_query` on the target (table names or
/// parenthesised subqueries) by order-independent checksums; panics with the differing rows.
fn assert_same(src: &Db, tgt: &Db, src_query: &str, tgt_query: &str) {
    let (mut s, mut t) = (src.client(), tgt.client());
    let a = table_checksum(&mut s, src_query);
    let b = table_checksum(&mut t, tgt_query);
    if a == b {
        return;
    }
    let (sr, tr) = (rows_text(&mut s, src_query), rows_text(&mut t, tgt_query));
    let (only_src, only_tgt) = multiset_differences(&sr, &tr);
    panic!(
        "source {src_query} ({} rows) and target {tgt_query} ({} rows) differ\n\
         source rows missing or with another multiplicity on the target: {only_src:?}\n\
         target rows missing or with another multiplicity on the source: {only_tgt:?}\n{}",
        a.0,
        b.0,
        all_log_tails(30)
    );
}

fn count(db: &Db, sql_from: &str) -> i64 {
    db.query_one(&format!("SELECT count(*)::int8 FROM {sql_from}"))
}

/// Waits (120 s) until `SELECT count(*) FROM <sql_from>` on the target is `n`.
fn wait_count(tgt: &Db, sub: &str, sql_from: &str, n: i64) {
    wait_until_or(
        LONG,
        &format!("{n} rows in {sql_from} on the target"),
        || describe(tgt, sub),
        || count(tgt, sql_from) == n,
    );
}

/// Asserts that a call failed with a server ERROR (any SQLSTATE of an error class); returns
/// the error text.
fn assert_server_error(res: Result<u64, postgres::Error>, what: &str) -> String {
    let e = match res {
        Ok(_) => panic!("{what}: expected an ERROR, but it succeeded"),
        Err(e) => e,
    };
    let text = err_text(&e);
    let code = sqlstate(&e)
        .unwrap_or_else(|| panic!("{what}: expected a server ERROR, got a client error: {text}"));
    assert!(
        !code.starts_with("00") && !code.starts_with("01") && !code.starts_with("02"),
        "{what}: SQLSTATE {code} is not an error class: {text}"
    );
    text
}

/// `attname type [NOT NULL]` of every column of a table, in order.
fn column_defs(db: &Db, table: &str) -> String {
    db.query_one(&format!(
        "SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod) \
                           || CASE WHEN attnotnull THEN ' NOT NULL' ELSE '' END, ', ' \
                           ORDER BY attnum) \
           FROM pg_attribute WHERE attrelid = '{table}'::regclass AND attnum > 0 \
            AND NOT attisdropped"
    ))
}

/// `column=default` of every column default of a table that is not a sequence's `nextval`.
fn plain_defaults(db: &Db, table: &str) -> Option<String> {
    db.query_one(&format!(
        "SELECT string_agg(a.attname || '=' || pg_get_expr(d.adbin, d.adrelid), ', ' \
                           ORDER BY a.attnum) \
           FROM pg_attrdef d \
           JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
          WHERE d.adrelid = '{table}'::regclass \
            AND pg_get_expr(d.adbin, d.adrelid) NOT LIKE 'nextval(%'"
    ))
}

/// `column=default` of every column default of a table that is a sequence's `nextval`.
fn sequence_defaults(db: &Db, table: &str) -> Option<String> {
    db.query_one(&format!(
        "SELECT string_agg(a.attname || '=' || pg_get_expr(d.adbin, d.adrelid), ', ' \
                           ORDER BY a.attnum) \
           FROM pg_attrdef d \
           JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum \
          WHERE d.adrelid = '{table}'::regclass \
            AND pg_get_expr(d.adbin, d.adrelid) LIKE 'nextval(%'"
    ))
}

/// The definition of a table's primary key (`PRIMARY KEY (id)`), if it has one.
fn primary_key(db: &Db, table: &str) -> Option<String> {
    db.query_one(&format!(
        "SELECT (SELECT pg_get_constraintdef(oid) FROM pg_constraint \
                  WHERE conrelid = '{table}'::regclass AND contype = 'p')"
    ))
}

/// `column:Time|Space:<interval = 1 day>:<partitions>` of each dimension of a hypertable.
fn dimensions(db: &Db, schema: &str, table: &str) -> Vec<String> {
    db.client()
        .query(
            "SELECT column_name::text || ':' || dimension_type::text || ':' \
                    || coalesce((time_interval = interval '1 day')::text, '-') || ':' \
                    || coalesce(num_partitions::text, '-') \
               FROM timescaledb_information.dimensions \
              WHERE hypertable_schema = $1 AND hypertable_name = $2 \
              ORDER BY dimension_number",
            &[&schema, &table],
        )
        .unwrap_or_else(|e| panic!("dimensions of {schema}.{table}: {}", err_text(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

fn is_hypertable(db: &Db, schema: &str, table: &str) -> bool {
    db.client()
        .query_one(
            "SELECT count(*)::int8 FROM timescaledb_information.hypertables \
              WHERE hypertable_schema = $1 AND hypertable_name = $2",
            &[&schema, &table],
        )
        .unwrap_or_else(|e| panic!("hypertables: {}", err_text(&e)))
        .get::<_, i64>(0)
        == 1
}

/// Every table of a database that belongs neither to an extension nor is a TimescaleDB chunk
/// (`schema.table`, sorted): the tables a user (or livesync's `create_tables`) made.
fn user_tables(db: &Db) -> Vec<String> {
    db.client()
        .query(
            "SELECT n.nspname::text || '.' || c.relname::text \
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
              WHERE c.relkind IN ('r', 'p') \
                AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
                AND NOT EXISTS (SELECT 1 FROM pg_depend d \
                                 WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid \
                                   AND d.deptype = 'e') \
                AND NOT EXISTS (SELECT 1 FROM timescaledb_information.chunks ch \
                                 WHERE ch.chunk_schema = n.nspname \
                                   AND ch.chunk_name = c.relname) \
              ORDER BY 1",
            &[],
        )
        .unwrap_or_else(|e| panic!("tables of {}: {}", db.name, err_text(&e)))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// `last_value/is_called` of a sequence.
fn sequence_state(db: &Db, seq: &str) -> String {
    db.query_one(&format!(
        "SELECT last_value::text || '/' || is_called::text FROM {seq}"
    ))
}

/// The LSN right after `finished at ` in an error message (`0/1A2B3C4`).
fn lsn_after_finished_at(err: &str) -> Option<String> {
    const MARK: &str = "finished at ";
    let rest = &err[err.find(MARK)? + MARK.len()..];
    let lsn: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || *c == '/')
        .collect();
    let (hi, lo) = lsn.split_once('/')?;
    (!hi.is_empty() && !lo.is_empty() && !lo.contains('/')).then_some(lsn)
}

/// `lag_seconds` and whether `last_commit_time` is set, of a sync.
fn lag_and_commit_time(tgt: &Db, sub: &str) -> Option<(Option<f64>, bool)> {
    let mut c = tgt.try_client().ok()?;
    c.query_opt(
        "SELECT lag_seconds::float8, last_commit_time IS NOT NULL \
           FROM livesync.subscription WHERE subname = $1",
        &[&sub],
    )
    .ok()
    .flatten()
    .map(|r| (r.get(0), r.get(1)))
}

// ---------------------------------------------------------------------------------------------
// table_map
// ---------------------------------------------------------------------------------------------

/// A table mapped to another schema and name, a schema mapped to another schema (with one of
/// its tables mapped elsewhere by a table entry, which wins), a target naming only a schema,
/// and an unmapped table: the copy and later inserts, updates (also of keys) and deletes land
/// in the mapped tables, the same-named tables on the target stay untouched, and
/// `subscription_rel` names the target in `schemaname`/`tablename` and the source in
/// `srcschema`/`srcname`.
#[test]
fn table_map_sends_tables_and_schemas_to_other_names() {
    let src = Db::fresh(source(), "map_src");
    let tgt = Db::fresh(target(), "map_tgt");
    let defs = [
        (
            "metrics",
            "(id bigint PRIMARY KEY, ts timestamptz NOT NULL, v float8)",
        ),
        ("devices", "(id int PRIMARY KEY, name text)"),
        (
            "events",
            "(id bigint PRIMARY KEY, kind text, at timestamptz)",
        ),
        (
            "orders",
            "(id bigint PRIMARY KEY, amount numeric(12,2), customer int)",
        ),
        ("customers", "(id int PRIMARY KEY, name text)"),
    ];
    let def = |t: &str| defs.iter().find(|(n, _)| *n == t).unwrap().1;
    src.exec(&format!(
        "CREATE SCHEMA sales; \
         CREATE TABLE public.metrics {}; CREATE TABLE public.devices {}; \
         CREATE TABLE public.events {}; CREATE TABLE sales.orders {}; \
         CREATE TABLE sales.customers {}; \
         INSERT INTO public.metrics SELECT g, '2026-01-01'::timestamptz + g * interval '1 min', g \
           FROM generate_series(1, 3000) g; \
         INSERT INTO public.devices SELECT g, 'dev ' || g FROM generate_series(1, 50) g; \
         INSERT INTO public.events SELECT g, 'k' || (g % 5), '2026-01-01'::timestamptz + g * interval '1 h' \
           FROM generate_series(1, 300) g; \
         INSERT INTO sales.orders SELECT g, g * 1.25, g % 40 FROM generate_series(1, 500) g; \
         INSERT INTO sales.customers SELECT g, 'cust ' || g FROM generate_series(1, 40) g; \
         CREATE PUBLICATION p FOR TABLE public.metrics, public.devices, public.events, \
                                      sales.orders, sales.customers",
        def("metrics"),
        def("devices"),
        def("events"),
        def("orders"),
        def("customers"),
    ));
    // The mapped targets, and decoys with the source's names that must stay empty.
    tgt.exec(&format!(
        "CREATE SCHEMA analytics; CREATE SCHEMA sales_copy; CREATE SCHEMA crm; \
         CREATE SCHEMA archive; CREATE SCHEMA sales; \
         CREATE TABLE analytics.metrics_raw {}; CREATE TABLE public.devices {}; \
         CREATE TABLE archive.events {}; CREATE TABLE sales_copy.orders {}; \
         CREATE TABLE crm.clients {}; \
         CREATE TABLE public.metrics {}; CREATE TABLE public.events {}; \
         CREATE TABLE sales.orders {}; CREATE TABLE sales.customers {}",
        def("metrics"),
        def("devices"),
        def("events"),
        def("orders"),
        def("customers"),
        def("metrics"),
        def("events"),
        def("orders"),
        def("customers"),
    ));
    let map = r#"[
        {"source": {"schema": "public", "table": "metrics"},
         "target": {"schema": "analytics", "table": "metrics_raw"}},
        {"source": {"schema": "sales"}, "target": {"schema": "sales_copy"}},
        {"source": {"schema": "sales", "table": "customers"},
         "target": {"schema": "crm", "table": "clients"}},
        {"source": {"schema": "public", "table": "events"}, "target": {"schema": "archive"}}
    ]"#;
    let sub = "map_tables";
    let _g = start_with(
        &tgt,
        &src,
        "p",
        sub,
        &format!("table_map => {}", jsonb(map)),
    );
    let pairs = [
        ("public.metrics", "analytics.metrics_raw"),
        ("public.devices", "public.devices"),
        ("public.events", "archive.events"),
        ("sales.orders", "sales_copy.orders"),
        ("sales.customers", "crm.clients"),
    ];
    wait_mapped(&tgt, sub, &pairs, 'r');
    // The new trailing columns: the publication, and the target again.
    let odd: i64 = tgt
        .client()
        .query_one(
            "SELECT count(*)::int8 FROM livesync.subscription_rel WHERE subname = $1 \
               AND (pubname IS DISTINCT FROM 'p' OR target_schema IS DISTINCT FROM schemaname \
                    OR target_table IS DISTINCT FROM tablename)",
            &[&sub],
        )
        .unwrap_or_else(|e| panic!("pubname/target_schema/target_table: {}", err_text(&e)))
        .get(0);
    assert_eq!(
        odd,
        0,
        "pubname/target_schema/target_table disagree: {}",
        describe(&tgt, sub)
    );

    src.exec(
        "INSERT INTO public.metrics SELECT g, '2026-02-01'::timestamptz + g * interval '1 s', -g \
           FROM generate_series(3001, 3100) g; \
         UPDATE public.metrics SET v = -v WHERE id % 10 = 0; \
         DELETE FROM public.metrics WHERE id % 17 = 0; \
         UPDATE public.metrics SET id = id + 100000 WHERE id % 101 = 0; \
         INSERT INTO public.devices VALUES (51, 'new'); UPDATE public.devices SET name = 'x' WHERE id < 5; \
         DELETE FROM public.devices WHERE id = 7; \
         INSERT INTO public.events VALUES (301, 'late', now()); \
         UPDATE public.events SET kind = 'changed' WHERE id % 3 = 0; DELETE FROM public.events WHERE id < 10; \
         INSERT INTO sales.orders SELECT g, g, 1 FROM generate_series(501, 550) g; \
         UPDATE sales.orders SET amount = amount * 2 WHERE customer = 3; \
         DELETE FROM sales.orders WHERE id % 9 = 0; UPDATE sales.orders SET id = -id WHERE id = 100; \
         INSERT INTO sales.customers VALUES (41, 'cust 41'); \
         UPDATE sales.customers SET name = upper(name) WHERE id % 2 = 0; \
         DELETE FROM sales.customers WHERE id = 1",
    );
    src.exec("BEGIN; INSERT INTO sales.customers VALUES (42, 'in a tx'); UPDATE public.metrics SET v = 0 WHERE id = 1; COMMIT");
    caught_up(&src, &tgt, sub);
    for (s, t) in pairs {
        assert_same(&src, &tgt, s, t);
    }
    for decoy in [
        "public.metrics",
        "public.events",
        "sales.orders",
        "sales.customers",
    ] {
        assert_eq!(
            count(&tgt, decoy),
            0,
            "rows landed in {decoy} on the target, which the map sends elsewhere"
        );
    }
}

/// A table mapped into a hypertable of another schema and name: the copy and the changes
/// are routed into its chunks (none in the root).
#[test]
fn table_map_into_a_hypertable_routes_rows_into_chunks() {
    let src = Db::fresh(source(), "mapht_src");
    let tgt = Db::fresh(target(), "mapht_tgt");
    let def = "(ts timestamptz NOT NULL, dev int NOT NULL, v float8, PRIMARY KEY (dev, ts))";
    src.exec(&format!(
        "CREATE TABLE metrics {def}; \
         INSERT INTO metrics SELECT '2026-01-01'::timestamptz + g * interval '10 min', g % 4, g \
           FROM generate_series(0, 6 * 144 - 1) g; \
         CREATE PUBLICATION p FOR TABLE metrics"
    ));
    tgt.exec(&format!(
        "CREATE SCHEMA analytics; CREATE TABLE analytics.metrics_ht {def}; \
         SELECT create_hypertable('analytics.metrics_ht', 'ts', \
                                  chunk_time_interval => interval '1 day')"
    ));
    let map = r#"[{"source": {"schema": "public", "table": "metrics"},
                   "target": {"schema": "analytics", "table": "metrics_ht"}}]"#;
    let sub = "map_hypertable";
    let _g = start_with(
        &tgt,
        &src,
        "p",
        sub,
        &format!("table_map => {}", jsonb(map)),
    );
    wait_mapped(
        &tgt,
        sub,
        &[("public.metrics", "analytics.metrics_ht")],
        'r',
    );
    src.exec(
        "INSERT INTO metrics SELECT '2026-01-10'::timestamptz + g * interval '10 min', g % 4, -g \
           FROM generate_series(0, 200) g; \
         UPDATE metrics SET v = v + 0.5 WHERE dev = 1 AND ts < '2026-01-03'; \
         DELETE FROM metrics WHERE dev = 2 AND ts >= '2026-01-04' AND ts < '2026-01-05'",
    );
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "metrics", "analytics.metrics_ht");
    assert_eq!(
        count_only(&tgt, "analytics.metrics_ht"),
        0,
        "rows in the hypertable's root instead of its chunks"
    );
    assert!(
        chunk_count(&tgt, "analytics.metrics_ht") >= 7,
        "expected a chunk per day of data, got {}",
        chunk_count(&tgt, "analytics.metrics_ht")
    );
    assert_eq!(count(&tgt, "pg_tables WHERE tablename = 'metrics'"), 0);
}

/// `livesync_alter(subscription, table_map => ...)` on a running sync: accepted, and the map
/// applies to a table added to the publication afterwards; the tables already synced keep
/// their names and go on streaming.
#[test]
fn table_map_given_by_livesync_alter_applies_to_tables_added_later() {
    let src = Db::fresh(source(), "mapalter_src");
    let tgt = Db::fresh(target(), "mapalter_tgt");
    ddl_both(&src, &tgt, &kv_table_ddl("a"));
    src.exec(&format!(
        "{}; CREATE PUBLICATION p FOR TABLE a",
        kv_fill_sql("a", 500)
    ));
    let sub = "map_alter";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.a"], 'r');

    let map = r#"[{"source": {"schema": "public", "table": "late"},
                   "target": {"schema": "moved", "table": "late_t"}}]"#;
    tgt.client()
        .execute(
            "SELECT livesync_alter($1, table_map => $2::text::jsonb)",
            &[&sub, &map],
        )
        .unwrap_or_else(|e| panic!("livesync_alter(table_map => ..): {}", err_text(&e)));

    tgt.exec(&format!(
        "CREATE SCHEMA moved; {}",
        kv_table_ddl("moved.late_t")
    ));
    src.exec(&format!(
        "{}; {}; ALTER PUBLICATION p ADD TABLE late",
        kv_table_ddl("late"),
        kv_fill_sql("late", 300)
    ));
    src.exec("INSERT INTO a VALUES (501, 5010, 'after alter')");
    wait_mapped(
        &tgt,
        sub,
        &[("public.a", "public.a"), ("public.late", "moved.late_t")],
        'r',
    );
    src.exec(
        "INSERT INTO late SELECT g, g * 10, 'live' FROM generate_series(301, 350) g; \
         UPDATE late SET v = -v WHERE id % 4 = 0; DELETE FROM late WHERE id % 9 = 0; \
         UPDATE a SET payload = 'changed' WHERE id < 20",
    );
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "late", "moved.late_t");
    assert_same(&src, &tgt, "a", "a");
    assert_eq!(
        count(
            &tgt,
            "pg_tables WHERE schemaname = 'public' AND tablename = 'late'"
        ),
        0,
        "a table public.late appeared on the target"
    );
}

/// Bad maps are an ERROR with SQLSTATE 22023 at `livesync_start` that names `table_map`, and
/// leave no sync and no slot behind: not an array, an entry without "source", a hypertable
/// entry without "time_column".
#[test]
fn bad_table_maps_are_rejected_with_invalid_parameter_value() {
    let src = Db::fresh(source(), "badmap_src");
    let tgt = Db::fresh(target(), "badmap_tgt");
    src.exec(&format!(
        "{}; CREATE PUBLICATION p FOR TABLE t",
        kv_table_ddl("t")
    ));
    tgt.exec(&kv_table_ddl("t"));
    let cases = [
        (
            "bad_map_object",
            r#"{"source": {"schema": "public"}, "target": {"schema": "analytics"}}"#,
        ),
        ("bad_map_scalar", r#""public.t""#),
        (
            "bad_map_no_source",
            r#"[{"target": {"schema": "analytics", "table": "t"}}]"#,
        ),
        (
            "bad_map_no_time_column",
            r#"[{"source": {"schema": "public", "table": "t"},
                 "target": {"schema": "public", "table": "t"},
                 "hypertable": {"chunk_interval": "1 day"}}]"#,
        ),
    ];
    for (sub, map) in cases {
        let res = try_start_with(
            &tgt,
            &src,
            "p",
            sub,
            &format!("table_map => {}, create_tables => true", jsonb(map)),
        );
        let _guard = SyncGuard::new(&tgt, sub); // in case it wrongly succeeded
        let what = format!("livesync_start(table_map => {map})");
        let text = assert_sqlstate(res, &["22023"], &what);
        eprintln!("[e2e] {what} -> {text}");
        assert!(
            text.contains("table_map"),
            "{what}: the error should name table_map: {text}"
        );
        assert!(
            sub_info(&tgt, sub).is_none(),
            "{what}: left a row in livesync.subscription"
        );
        assert_eq!(
            slots_on_source(source(), sub),
            Vec::<String>::new(),
            "{what}: left a slot on the source"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// create_tables
// ---------------------------------------------------------------------------------------------

/// `create_tables => true`: published tables missing on the target are created from the
/// source's definition (columns and types, NOT NULL, defaults other than a sequence's
/// nextval, the primary key, the replica identity index), copied and followed.
#[test]
fn create_tables_creates_missing_tables_from_the_source_definition() {
    let src = Db::fresh(source(), "create_src");
    let tgt = Db::fresh(target(), "create_tgt");
    src.exec(
        "CREATE TABLE plain_t (id bigserial PRIMARY KEY, name text NOT NULL, \
                               qty int NOT NULL DEFAULT 7, price numeric(10,2), \
                               note varchar(20) DEFAULT 'none', created date DEFAULT '2020-01-01', \
                               tags text[], payload jsonb, at timestamptz); \
         CREATE TABLE ri_t (a int NOT NULL, b text NOT NULL, c text); \
         CREATE UNIQUE INDEX ri_t_ab ON ri_t (a, b); \
         ALTER TABLE ri_t REPLICA IDENTITY USING INDEX ri_t_ab; \
         INSERT INTO plain_t (name, price, tags, payload, at) \
           SELECT 'n' || g, g / 3.0, ARRAY['x', g::text], jsonb_build_object('g', g), \
                  '2026-01-01'::timestamptz + g * interval '1 min' \
           FROM generate_series(1, 1000) g; \
         INSERT INTO ri_t SELECT g % 100, 'b' || (g / 100), 'c' || g FROM generate_series(1, 500) g; \
         CREATE PUBLICATION p FOR TABLE plain_t, ri_t",
    );
    assert!(user_tables(&tgt).is_empty(), "the target is not empty");
    let sub = "create_plain";
    let _g = start_with(&tgt, &src, "p", sub, "create_tables => true");
    wait_tables(&tgt, sub, &["public.plain_t", "public.ri_t"], 'r');

    for t in ["plain_t", "ri_t"] {
        assert_eq!(
            column_defs(&tgt, t),
            column_defs(&src, t),
            "columns of the created {t}"
        );
        assert_eq!(
            plain_defaults(&tgt, t),
            plain_defaults(&src, t),
            "defaults of the created {t}"
        );
        assert_eq!(
            primary_key(&tgt, t),
            primary_key(&src, t),
            "primary key of the created {t}"
        );
    }
    assert!(
        plain_defaults(&tgt, "plain_t").is_some_and(|d| d.contains("qty=7")),
        "plain_t.qty lost its default"
    );
    assert_eq!(
        sequence_defaults(&tgt, "plain_t"),
        None,
        "plain_t on the target got a sequence default"
    );
    assert_eq!(
        tgt.query_one::<String>(
            "SELECT relreplident::text FROM pg_class WHERE oid = 'ri_t'::regclass"
        ),
        "i",
        "ri_t on the target has not its replica identity index"
    );
    let ri_index: Option<String> = tgt.query_one(
        "SELECT (SELECT pg_get_indexdef(indexrelid) FROM pg_index \
                  WHERE indrelid = 'ri_t'::regclass AND indisreplident)",
    );
    let ri_index = ri_index.expect("no replica identity index on the target's ri_t");
    assert!(
        ri_index.contains("UNIQUE INDEX") && ri_index.contains("(a, b)"),
        "replica identity index of the created ri_t: {ri_index}"
    );

    src.exec(
        "INSERT INTO plain_t (name, price) SELECT 'late' || g, g FROM generate_series(1, 50) g; \
         UPDATE plain_t SET qty = qty + id, note = 'upd' WHERE id % 7 = 0; \
         DELETE FROM plain_t WHERE id % 11 = 0; \
         UPDATE ri_t SET c = 'changed' WHERE a % 5 = 0; \
         UPDATE ri_t SET b = b || '!' WHERE a % 3 = 0; \
         DELETE FROM ri_t WHERE a % 4 = 1; \
         INSERT INTO ri_t VALUES (5000, 'new', NULL)",
    );
    synced(&src, &tgt, sub, &["plain_t", "ri_t"]);
    assert_eq!(user_tables(&tgt), ["public.plain_t", "public.ri_t"]);
}

/// `create_tables => true` with `hypertable` map entries: the tables are created as
/// hypertables on `ts` with 1-day chunks (one also with a hash dimension on `dev` of 2
/// partitions; one entry names only the target schema), and the copy and later changes land
/// in their chunks.
#[test]
fn create_tables_makes_hypertables_where_the_map_says_so() {
    let src = Db::fresh(source(), "createht_src");
    let tgt = Db::fresh(target(), "createht_tgt");
    let def = "(ts timestamptz NOT NULL, dev int NOT NULL, v float8, PRIMARY KEY (dev, ts))";
    src.exec(&format!(
        "CREATE TABLE metrics {def}; CREATE TABLE metrics_p {def}; \
         INSERT INTO metrics SELECT '2026-01-01'::timestamptz + g * interval '10 min', g % 4, g \
           FROM generate_series(0, 6 * 144 - 1) g; \
         INSERT INTO metrics_p SELECT * FROM metrics; \
         CREATE PUBLICATION p FOR TABLE metrics, metrics_p"
    ));
    let map = r#"[
        {"source": {"schema": "public", "table": "metrics"}, "target": {"schema": "public"},
         "hypertable": {"time_column": "ts", "chunk_interval": "1 day"}},
        {"source": {"schema": "public", "table": "metrics_p"},
         "target": {"schema": "public", "table": "metrics_p"},
         "hypertable": {"time_column": "ts", "chunk_interval": "1 day",
                        "partitioning_column": "dev", "number_partitions": 2}}
    ]"#;
    let sub = "create_hyper";
    let _g = start_with(
        &tgt,
        &src,
        "p",
        sub,
        &format!("create_tables => true, table_map => {}", jsonb(map)),
    );
    wait_tables(&tgt, sub, &["public.metrics", "public.metrics_p"], 'r');

    assert!(is_hypertable(&tgt, "public", "metrics"), "metrics");
    assert!(is_hypertable(&tgt, "public", "metrics_p"), "metrics_p");
    assert_eq!(dimensions(&tgt, "public", "metrics"), ["ts:Time:true:-"]);
    assert_eq!(
        dimensions(&tgt, "public", "metrics_p"),
        ["ts:Time:true:-", "dev:Space:-:2"]
    );
    for t in ["metrics", "metrics_p"] {
        assert_eq!(column_defs(&tgt, t), column_defs(&src, t), "columns of {t}");
        assert_eq!(count_only(&tgt, t), 0, "rows in the root of {t}");
        assert!(
            chunk_count(&tgt, t) >= 6,
            "{t}: expected a chunk per day of data, got {}",
            chunk_count(&tgt, t)
        );
    }
    assert_tables_equal(&src, &tgt, "metrics");
    assert_tables_equal(&src, &tgt, "metrics_p");

    for t in ["metrics", "metrics_p"] {
        src.exec(&format!(
            "INSERT INTO {t} SELECT '2026-01-20'::timestamptz + g * interval '10 min', g % 4, -g \
               FROM generate_series(0, 200) g; \
             UPDATE {t} SET v = v * 2 WHERE dev = 1 AND ts < '2026-01-03'; \
             DELETE FROM {t} WHERE dev = 0 AND ts >= '2026-01-02' AND ts < '2026-01-03'"
        ));
    }
    synced(&src, &tgt, sub, &["metrics", "metrics_p"]);
    for t in ["metrics", "metrics_p"] {
        assert_eq!(count_only(&tgt, t), 0, "rows in the root of {t}");
    }
    assert_eq!(user_tables(&tgt), ["public.metrics", "public.metrics_p"]);
}

/// Without `create_tables`, a published table missing on the target is reported on its
/// `subscription_rel` row (what is missing and the option that would create it) and in the
/// sync's `last_error` (naming the table), counted as a copy error, while another table of the
/// publication is copied and streams; once the user creates the table, it is copied and
/// followed with nothing lost.
#[test]
fn missing_target_table_is_reported_until_created_by_hand() {
    let src = Db::fresh(source(), "missing_src");
    let tgt = Db::fresh(target(), "missing_tgt");
    src.exec(&format!(
        "{}; {}; {}; {}; CREATE PUBLICATION p FOR TABLE present_t, absent_t",
        kv_table_ddl("present_t"),
        kv_table_ddl("absent_t"),
        kv_fill_sql("present_t", 1_000),
        kv_fill_sql("absent_t", 1_000)
    ));
    tgt.exec(&kv_table_ddl("present_t"));
    let sub = "missing_table";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    let err = wait_rel_error(
        &tgt,
        sub,
        "public.absent_t",
        "the missing table and create_tables",
        |e| e.contains("does not exist on the target") && e.contains("create_tables"),
    );
    eprintln!("[e2e] absent_t last_error: {err}");
    wait_until_or(
        LONG,
        "present_t in state 'r'",
        || describe(&tgt, sub),
        || {
            try_rels(&tgt, sub)
                .unwrap_or_default()
                .iter()
                .any(|r| r.source == "public.present_t" && r.state == 'r')
        },
    );
    // The sync's own last_error names the failing table.
    let err = wait_sub_error(
        &tgt,
        sub,
        LONG,
        "the failing table",
        || describe(&tgt, sub),
        |e| e.contains("absent_t"),
    );
    eprintln!("[e2e] subscription last_error: {err}");
    wait_counters(&tgt, sub, "a copy error", |c| c.copy_error_count >= 1);

    // present_t streams while absent_t fails; absent_t changes on the source meanwhile.
    src.exec("INSERT INTO present_t VALUES (5000, 1, 'live')");
    src.exec(
        "INSERT INTO absent_t SELECT g, g * 10, 'while missing' FROM generate_series(1001, 1100) g; \
         UPDATE absent_t SET v = -v WHERE id % 10 = 0; DELETE FROM absent_t WHERE id % 13 = 0",
    );
    wait_count(&tgt, sub, "present_t WHERE id = 5000", 1);

    tgt.exec(&kv_table_ddl("absent_t"));
    src.exec("INSERT INTO absent_t VALUES (2000, 1, 'after create')");
    wait_tables(&tgt, sub, &["public.present_t", "public.absent_t"], 'r');
    synced(&src, &tgt, sub, &["present_t", "absent_t"]);
    wait_until_or(
        LONG,
        "absent_t's last_error to clear once it is synced",
        || describe(&tgt, sub),
        || rel_error(&tgt, sub, "public.absent_t").is_none(),
    );
}

// ---------------------------------------------------------------------------------------------
// TimescaleDB as the source
// ---------------------------------------------------------------------------------------------

/// A source with TimescaleDB preloaded (private to this binary, shared by its tests).
fn tsdb_source() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| {
        Cluster::new_private_with(
            ClusterSpec::new(Kind::Source, "tsdb_src")
                .conf("shared_preload_libraries = 'timescaledb'")
                .conf("timescaledb.telemetry_level = off")
                .conf("max_worker_processes = 16"),
        )
    })
}

/// A database on [`tsdb_source`] with the hypertable `public.metrics` (1-day chunks) holding
/// 5 days of rows (4 devices, one row per 10 minutes each).
fn tsdb_source_db(prefix: &str) -> Db<'static> {
    let src = Db::fresh(tsdb_source(), prefix);
    src.exec(
        "SET client_min_messages = warning; CREATE EXTENSION timescaledb; \
         CREATE TABLE public.metrics (ts timestamptz NOT NULL, dev int NOT NULL, v float8, \
                                      PRIMARY KEY (dev, ts)); \
         SELECT create_hypertable('public.metrics', 'ts', chunk_time_interval => interval '1 day'); \
         INSERT INTO public.metrics \
           SELECT '2026-01-01'::timestamptz + (g / 4) * interval '10 min', g % 4, g \
           FROM generate_series(0, 5 * 144 * 4 - 1) g",
    );
    assert_eq!(chunk_count(&src, "public.metrics"), 5);
    src
}

/// Waits (120 s) until the sync lists one table per chunk of the source's `public.metrics`
/// (at least `chunks`), each from `_timescaledb_internal` into the target's `public.metrics`,
/// every table in 'r', and no table whose target is in `_timescaledb_internal`.
fn wait_chunks_synced(tgt: &Db, sub: &str, chunks: i64) {
    wait_until_or(
        LONG,
        &format!("sync {sub} to list {chunks} chunks of public.metrics, all in state 'r'"),
        || describe(tgt, sub),
        || {
            let Ok(rels) = try_rels(tgt, sub) else {
                return false;
            };
            let from_chunks = rels
                .iter()
                .filter(|r| r.srcschema == "_timescaledb_internal")
                .count() as i64;
            from_chunks >= chunks && rels.iter().all(|r| r.state == 'r')
        },
    );
    let list = rels(tgt, sub);
    assert!(
        list.iter()
            .all(|r| !r.target.starts_with("_timescaledb_internal.")),
        "a chunk is synced into a table of its own: {list:#?}"
    );
    for r in list
        .iter()
        .filter(|r| r.srcschema == "_timescaledb_internal")
    {
        assert_eq!(
            r.target, "public.metrics",
            "chunk {} goes elsewhere than the hypertable",
            r.source
        );
    }
}

/// Changes on the TimescaleDB source: rows of a new day (a chunk created while the sync runs),
/// updates and deletes of existing rows.
const TSDB_CHANGES: &str = "INSERT INTO public.metrics \
       SELECT '2026-01-10'::timestamptz + (g / 4) * interval '10 min', g % 4, -g \
       FROM generate_series(0, 399) g; \
     UPDATE public.metrics SET v = v + 0.25 WHERE dev = 1 AND ts < '2026-01-03'; \
     DELETE FROM public.metrics WHERE dev = 2 AND ts >= '2026-01-04' AND ts < '2026-01-05'";

/// TimescaleDB as the source, published `FOR TABLES IN SCHEMA _timescaledb_internal` (its
/// chunks): every row arrives in the target's hypertable `public.metrics` (none in its root),
/// `subscription_rel` lists the chunks with their source names and the hypertable as target,
/// and rows of a new day (a new chunk, published as it is created), updates and deletes of
/// existing rows follow.
#[test]
fn timescaledb_source_chunks_sync_into_the_target_hypertable() {
    let src = tsdb_source_db("tschunks_src");
    src.exec("CREATE PUBLICATION p FOR TABLES IN SCHEMA _timescaledb_internal");
    let tgt = Db::fresh(target(), "tschunks_tgt");
    // No unique key on the target, so that a row that arrived twice (a chunk copied and
    // also applied, or the root's copy doubling its chunks') would show.
    tgt.exec(
        "CREATE TABLE public.metrics (ts timestamptz NOT NULL, dev int NOT NULL, v float8); \
         CREATE INDEX ON public.metrics (dev, ts); \
         SELECT create_hypertable('public.metrics', 'ts', chunk_time_interval => interval '2 days')",
    );
    let sub = "tsdb_chunks";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_chunks_synced(&tgt, sub, 5);
    wait_applied(&src, &tgt, sub, LONG);
    assert_same(&src, &tgt, "public.metrics", "public.metrics");

    src.exec(TSDB_CHANGES);
    let chunks = chunk_count(&src, "public.metrics");
    assert_eq!(chunks, 6, "the new day made no new chunk on the source");
    wait_chunks_synced(&tgt, sub, chunks);
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "public.metrics", "public.metrics");
    assert_eq!(
        count_only(&tgt, "public.metrics"),
        0,
        "rows in the root of the target's hypertable"
    );
    assert_eq!(
        count(&tgt, "public.metrics WHERE ts >= '2026-01-10'"),
        400,
        "the new chunk's rows"
    );
    assert_no_duplicates(&tgt, "public.metrics", "dev, ts");
    assert_eq!(user_tables(&tgt), ["public.metrics"]);
    // Changes to the chunk that joined while the sync ran, now that it is streamed: the
    // apply worker saw that chunk before it was a table of the sync, and must still send
    // its changes to the hypertable.
    src.exec(TSDB_LATER_CHANGES);
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "public.metrics", "public.metrics");
    assert_no_duplicates(&tgt, "public.metrics", "dev, ts");
    // ... directly, not by way of an error and a retry.
    let c = try_counters(&tgt, sub).unwrap().unwrap();
    assert_eq!(
        (c.apply_error_count, c.copy_error_count),
        (0, 0),
        "errors on the way: {}",
        describe(&tgt, sub)
    );
}

/// Changes to the rows of the chunk [`TSDB_CHANGES`] created.
const TSDB_LATER_CHANGES: &str = "UPDATE public.metrics SET v = v * 10 WHERE ts >= '2026-01-10'; \
     DELETE FROM public.metrics WHERE ts >= '2026-01-10' AND dev = 3; \
     INSERT INTO public.metrics VALUES ('2026-01-10 23:59', 9, 9)";

/// TimescaleDB as the source, published `FOR ALL TABLES`, into an empty target with
/// `create_tables => true` and a `hypertable` entry for `public.metrics`: the target's
/// `public.metrics` is created as a hypertable and gets every row exactly once (chunks and
/// root are both published); no chunk nor TimescaleDB catalog becomes a table of its own.
#[test]
fn timescaledb_source_for_all_tables_with_create_tables() {
    let src = tsdb_source_db("tsall_src");
    src.exec("CREATE PUBLICATION p FOR ALL TABLES");
    let tgt = Db::fresh(target(), "tsall_tgt");
    let map = r#"[{"source": {"schema": "public", "table": "metrics"},
                   "target": {"schema": "public", "table": "metrics"},
                   "hypertable": {"time_column": "ts", "chunk_interval": "1 day"}}]"#;
    let sub = "tsdb_all";
    let _g = start_with(
        &tgt,
        &src,
        "p",
        sub,
        &format!("create_tables => true, table_map => {}", jsonb(map)),
    );
    wait_chunks_synced(&tgt, sub, 5);
    wait_applied(&src, &tgt, sub, LONG);
    assert!(
        is_hypertable(&tgt, "public", "metrics"),
        "the created public.metrics is not a hypertable"
    );
    assert_eq!(dimensions(&tgt, "public", "metrics"), ["ts:Time:true:-"]);
    let list = rels(&tgt, sub);
    assert!(
        list.iter().all(|r| r.target == "public.metrics"),
        "tables other than the hypertable's are synced: {list:#?}"
    );
    assert_same(&src, &tgt, "public.metrics", "public.metrics");

    src.exec(TSDB_CHANGES);
    let chunks = chunk_count(&src, "public.metrics");
    wait_chunks_synced(&tgt, sub, chunks);
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "public.metrics", "public.metrics");
    assert_eq!(count_only(&tgt, "public.metrics"), 0);
    assert_eq!(user_tables(&tgt), ["public.metrics"]);
    src.exec(TSDB_LATER_CHANGES);
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "public.metrics", "public.metrics");
    let c = try_counters(&tgt, sub).unwrap().unwrap();
    assert_eq!(
        (c.apply_error_count, c.copy_error_count),
        (0, 0),
        "errors on the way: {}",
        describe(&tgt, sub)
    );
}

// ---------------------------------------------------------------------------------------------
// add_columns
// ---------------------------------------------------------------------------------------------

/// `add_columns => true`: a column added on the source is added to the target table (same
/// type), and the values that use it arrive.
#[test]
fn add_columns_adds_the_source_column_to_the_target() {
    let src = Db::fresh(source(), "addcol_src");
    let tgt = Db::fresh(target(), "addcol_tgt");
    ddl_both(&src, &tgt, "CREATE TABLE t (id int PRIMARY KEY, a text)");
    src.exec(
        "INSERT INTO t SELECT g, 'a' || g FROM generate_series(1, 200) g; \
         CREATE PUBLICATION p FOR TABLE t",
    );
    let sub = "add_columns";
    let _g = start_with(&tgt, &src, "p", sub, "add_columns => true");
    wait_tables(&tgt, sub, &["public.t"], 'r');
    src.exec(
        "ALTER TABLE t ADD COLUMN extra text; \
         INSERT INTO t SELECT g, 'a' || g, 'extra ' || g FROM generate_series(201, 250) g; \
         UPDATE t SET extra = 'set later' WHERE id <= 10; \
         DELETE FROM t WHERE id = 100",
    );
    wait_until_or(
        LONG,
        "the target's t to gain column extra",
        || describe(&tgt, sub),
        || {
            count(
                &tgt,
                "information_schema.columns WHERE table_schema = 'public' \
                 AND table_name = 't' AND column_name = 'extra'",
            ) == 1
        },
    );
    let ty: String = tgt.query_one(
        "SELECT data_type::text FROM information_schema.columns \
          WHERE table_schema = 'public' AND table_name = 't' AND column_name = 'extra'",
    );
    assert_eq!(ty, "text");
    synced(&src, &tgt, sub, &["t"]);
    assert_eq!(count(&tgt, "t WHERE extra LIKE 'extra %'"), 50);
    assert_eq!(count(&tgt, "t WHERE extra = 'set later'"), 10);
    assert_eq!(sub_last_error(&tgt, sub), None);
}

/// Without `add_columns`, a column added on the source holds back only that table: its
/// `subscription_rel.last_error` names the column and the option, another table keeps
/// streaming, and once the user adds the column on the target the table catches up with
/// nothing lost.
#[test]
fn new_source_column_without_add_columns_holds_only_that_table() {
    let src = Db::fresh(source(), "noaddcol_src");
    let tgt = Db::fresh(target(), "noaddcol_tgt");
    ddl_both(
        &src,
        &tgt,
        &format!(
            "CREATE TABLE t_stuck (id int PRIMARY KEY, a text); {}",
            kv_table_ddl("t_free")
        ),
    );
    src.exec(&format!(
        "INSERT INTO t_stuck SELECT g, 'a' || g FROM generate_series(1, 200) g; {}; \
         CREATE PUBLICATION p FOR TABLE t_stuck, t_free",
        kv_fill_sql("t_free", 500)
    ));
    let sub = "no_add_columns";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.t_stuck", "public.t_free"], 'r');
    src.exec(
        "ALTER TABLE t_stuck ADD COLUMN extra text; \
         INSERT INTO t_stuck SELECT g, 'a' || g, 'extra ' || g FROM generate_series(201, 250) g",
    );
    let err = wait_rel_error(
        &tgt,
        sub,
        "public.t_stuck",
        "the new column and add_columns",
        |e| e.contains("extra") && e.contains("add_columns"),
    );
    eprintln!("[e2e] t_stuck last_error: {err}");
    // After the stuck transaction: t_free streams.
    src.exec("INSERT INTO t_free VALUES (5000, 1, 'live')");
    wait_count(&tgt, sub, "t_free WHERE id = 5000", 1);
    src.exec(
        "UPDATE t_stuck SET extra = 'while stuck' WHERE id <= 10; DELETE FROM t_stuck WHERE id = 7; \
         INSERT INTO t_stuck VALUES (300, 'late', 'late'); \
         INSERT INTO t_free VALUES (5001, 2, 'live too')",
    );
    wait_count(&tgt, sub, "t_free WHERE id = 5001", 1);
    assert_eq!(
        count(
            &tgt,
            "information_schema.columns WHERE table_name = 't_stuck' AND column_name = 'extra'"
        ),
        0,
        "the column was added without add_columns"
    );

    tgt.exec("ALTER TABLE t_stuck ADD COLUMN extra text");
    synced(&src, &tgt, sub, &["t_stuck", "t_free"]);
    assert_eq!(
        count(&tgt, "t_stuck WHERE extra = 'while stuck'"),
        9,
        "rows updated while the table was held (id 7 was deleted)"
    );
    wait_until_or(
        LONG,
        "t_stuck's last_error to clear",
        || describe(&tgt, sub),
        || rel_error(&tgt, sub, "public.t_stuck").is_none(),
    );
}

// ---------------------------------------------------------------------------------------------
// livesync_resync, livesync_sync_sequences
// ---------------------------------------------------------------------------------------------

/// `livesync_resync(subscription, table)` empties a tampered target table and copies it again
/// (back to 'r' with a new consistent LSN, equal to the source, the bogus row gone) while
/// another table keeps streaming (it never leaves 'r' and gets every change made meanwhile).
/// A table the sync does not have, or an unknown sync, is an ERROR.
#[test]
fn resync_copies_one_table_again_while_others_stream() {
    let src = Db::fresh(source(), "resync_src");
    let tgt = Db::fresh(target(), "resync_tgt");
    ddl_both(
        &src,
        &tgt,
        &format!("{}; {}", kv_table_ddl("a"), kv_table_ddl("b")),
    );
    src.exec(&format!(
        "{}; {}; CREATE PUBLICATION p FOR TABLE a, b",
        kv_fill_sql("a", 3_000),
        kv_fill_sql("b", 3_000)
    ));
    let sub = "resync_one";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["a", "b"]);

    // Tampered by hand on the target.
    tgt.exec(
        "DELETE FROM a WHERE id % 7 = 0; UPDATE a SET payload = 'tampered' WHERE id % 11 = 0; \
         INSERT INTO a VALUES (999999, 0, 'bogus')",
    );
    assert_ne!(
        table_checksum(&mut src.client(), "a"),
        table_checksum(&mut tgt.client(), "a")
    );
    let old_lsn = rels(&tgt, sub)
        .into_iter()
        .find(|r| r.source == "public.a")
        .and_then(|r| r.lsn);
    assert!(old_lsn.is_some(), "a has no lsn: {}", describe(&tgt, sub));

    let writer = BackgroundWriter::kv(&src, "b", 3_001);
    sleep(Duration::from_millis(300));
    tgt.client()
        .execute(
            "SELECT livesync_resync($1, $2::text::regclass)",
            &[&sub, &"public.a"],
        )
        .unwrap_or_else(|e| panic!("livesync_resync({sub}, public.a): {}", err_text(&e)));
    src.exec(
        "INSERT INTO a SELECT g, g * 10, 'during resync' FROM generate_series(3001, 3100) g; \
         UPDATE a SET v = -v WHERE id % 5 = 0; DELETE FROM a WHERE id % 23 = 0",
    );
    let mut b_states = BTreeSet::new();
    wait_until_or(
        LONG,
        "a to be copied again (a new lsn) and back in 'r'",
        || describe(&tgt, sub),
        || {
            let Ok(rels) = try_rels(&tgt, sub) else {
                return false;
            };
            b_states.extend(
                rels.iter()
                    .filter(|r| r.source == "public.b")
                    .map(|r| r.state),
            );
            rels.iter().any(|r| {
                r.source == "public.a" && r.state == 'r' && r.lsn.is_some() && r.lsn != old_lsn
            })
        },
    );
    sleep(Duration::from_millis(500));
    let stats = writer.stop();
    eprintln!("[e2e] writer on b during the resync: {stats:?}");
    synced(&src, &tgt, sub, &["a", "b"]);
    assert_eq!(
        count(&tgt, "a WHERE id = 999999"),
        0,
        "the bogus row stayed"
    );
    assert_eq!(count(&tgt, "a WHERE payload = 'tampered'"), 0);
    assert_eq!(
        b_states,
        BTreeSet::from(['r']),
        "b left state 'r' during a's resync"
    );

    // What cannot be resynced.
    tgt.exec("CREATE TABLE not_synced (id int PRIMARY KEY)");
    let text = assert_server_error(
        tgt.client().execute(
            "SELECT livesync_resync($1, 'not_synced'::regclass)",
            &[&sub],
        ),
        "livesync_resync of a table the sync does not have",
    );
    eprintln!("[e2e] resync of an unknown table -> {text}");
    let text = assert_server_error(
        tgt.client()
            .execute("SELECT livesync_resync('no_such_sync', 'a'::regclass)", &[]),
        "livesync_resync of an unknown sync",
    );
    eprintln!("[e2e] resync of an unknown sync -> {text}");
    // Neither error disturbed the sync.
    src.exec("INSERT INTO a VALUES (9000, 1, 'after')");
    synced(&src, &tgt, sub, &["a", "b"]);
}

/// `livesync_sync_sequences(subscription)` sets the target's sequences of the synced tables
/// (a `bigserial`'s and a standalone sequence a column default uses) to the source's
/// `last_value`/`is_called`, returns how many it set, and leaves a sequence no synced table
/// uses alone.
#[test]
fn sync_sequences_sets_the_target_sequences_to_the_source_values() {
    let src = Db::fresh(source(), "seq_src");
    let tgt = Db::fresh(target(), "seq_tgt");
    ddl_both(
        &src,
        &tgt,
        "CREATE SEQUENCE standalone_seq START 100; CREATE SEQUENCE unrelated_seq; \
         CREATE TABLE s_t (id bigserial PRIMARY KEY, n bigint NOT NULL DEFAULT nextval('standalone_seq'), \
                           note text)",
    );
    src.exec(
        "INSERT INTO s_t (note) SELECT 'r' || g FROM generate_series(1, 10) g; \
         CREATE PUBLICATION p FOR TABLE s_t",
    );
    let sub = "sync_seqs";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    wait_tables(&tgt, sub, &["public.s_t"], 'r');
    src.exec(
        "INSERT INTO s_t (note) SELECT 'live' || g FROM generate_series(1, 15) g; \
         SELECT nextval('standalone_seq') FROM generate_series(1, 10); \
         SELECT nextval('unrelated_seq') FROM generate_series(1, 5)",
    );
    synced(&src, &tgt, sub, &["s_t"]);
    assert_eq!(sequence_state(&src, "s_t_id_seq"), "25/true");
    assert_eq!(sequence_state(&src, "standalone_seq"), "134/true");
    // Rows came with their ids: the target's sequences did not move.
    assert_eq!(sequence_state(&tgt, "s_t_id_seq"), "1/false");
    assert_eq!(sequence_state(&tgt, "standalone_seq"), "100/false");

    let set: i32 = tgt
        .client()
        .query_one("SELECT livesync_sync_sequences($1)", &[&sub])
        .unwrap_or_else(|e| panic!("livesync_sync_sequences({sub}): {}", err_text(&e)))
        .get(0);
    assert!(set >= 2, "livesync_sync_sequences returned {set}");
    for seq in ["s_t_id_seq", "standalone_seq"] {
        assert_eq!(
            sequence_state(&tgt, seq),
            sequence_state(&src, seq),
            "{seq} (last_value/is_called) on the target"
        );
    }
    assert_eq!(
        sequence_state(&tgt, "unrelated_seq"),
        "1/false",
        "a sequence no synced table uses was set"
    );
    // The target's next ids do not collide with the synced rows.
    let next: i64 = tgt.query_one("SELECT nextval('s_t_id_seq')");
    assert_eq!(next, 26);

    // Again after the source moved on.
    src.exec("INSERT INTO s_t (note) VALUES ('more'), ('more')");
    synced(&src, &tgt, sub, &["s_t"]);
    tgt.client()
        .query_one("SELECT livesync_sync_sequences($1)", &[&sub])
        .unwrap_or_else(|e| panic!("livesync_sync_sequences({sub}): {}", err_text(&e)));
    for seq in ["s_t_id_seq", "standalone_seq"] {
        assert_eq!(
            sequence_state(&tgt, seq),
            sequence_state(&src, seq),
            "{seq}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// livesync_skip, disable_on_error, counters
// ---------------------------------------------------------------------------------------------

/// Source `t` with ids 1..=20 and publication `p`; the same table on the target.
fn conflict_pair(prefix: &str) -> (Db<'static>, Db<'static>) {
    let src = Db::fresh(source(), &format!("{prefix}_src"));
    let tgt = Db::fresh(target(), &format!("{prefix}_tgt"));
    ddl_both(&src, &tgt, "CREATE TABLE t (id int PRIMARY KEY, v text)");
    src.exec(
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g; \
         CREATE PUBLICATION p FOR TABLE t",
    );
    (src, tgt)
}

/// A source transaction that fails on the target (a row with its key was inserted there by
/// hand) is reported with the LSN it finished at, counted (`apply_error_count`,
/// `insert_exists`); `livesync_skip` at that LSN skips the whole transaction (its other row
/// never arrives), later transactions arrive, and the error clears.
#[test]
fn skip_passes_over_the_failing_source_transaction() {
    let (src, tgt) = conflict_pair("skip");
    let sub = "skip_txn";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["t"]);

    tgt.exec("INSERT INTO t VALUES (1000, 'by hand')");
    let before = current_lsn(&src);
    src.exec(
        "BEGIN; INSERT INTO t VALUES (1000, 'src'); INSERT INTO t VALUES (1001, 'src'); COMMIT",
    );
    let after = current_lsn(&src);
    let err = wait_sub_error(
        &tgt,
        sub,
        LONG,
        "the failing transaction's finish LSN",
        || describe(&tgt, sub),
        |e| lsn_after_finished_at(e).is_some(),
    );
    eprintln!("[e2e] last_error: {err}");
    let lsn = lsn_after_finished_at(&err).unwrap();
    let inside: bool = src
        .client()
        .query_one(
            "SELECT $1::text::pg_lsn > $2::text::pg_lsn AND $1::text::pg_lsn <= $3::text::pg_lsn",
            &[&lsn, &before, &after],
        )
        .unwrap()
        .get(0);
    assert!(
        inside,
        "finished at {lsn} is not the failing transaction's (WAL {before} .. {after})"
    );
    let c = wait_counters(&tgt, sub, "the apply error and insert_exists", |c| {
        c.apply_error_count >= 1 && c.insert_exists >= 1
    });
    eprintln!("[e2e] counters: {c:?}");

    tgt.client()
        .execute("SELECT livesync_skip($1, $2::text::pg_lsn)", &[&sub, &lsn])
        .unwrap_or_else(|e| panic!("livesync_skip({sub}, {lsn}): {}", err_text(&e)));
    src.exec("INSERT INTO t VALUES (1002, 'after the skip')");
    wait_count(&tgt, sub, "t WHERE id = 1002", 1);
    caught_up(&src, &tgt, sub);
    assert_eq!(
        count(&tgt, "t WHERE id = 1001"),
        0,
        "a row of the skipped transaction arrived"
    );
    assert_eq!(
        tgt.query_one::<String>("SELECT v FROM t WHERE id = 1000"),
        "by hand"
    );
    assert_same(
        &src,
        &tgt,
        "(SELECT * FROM t WHERE id NOT IN (1000, 1001))",
        "(SELECT * FROM t WHERE id NOT IN (1000, 1001))",
    );
    wait_until_or(
        LONG,
        "last_error to clear after the skip",
        || describe(&tgt, sub),
        || sub_last_error(&tgt, sub).is_none(),
    );
    // And the sync goes on.
    src.exec("UPDATE t SET v = 'later' WHERE id <= 5; DELETE FROM t WHERE id = 6");
    caught_up(&src, &tgt, sub);
    assert_same(
        &src,
        &tgt,
        "(SELECT * FROM t WHERE id NOT IN (1000, 1001))",
        "(SELECT * FROM t WHERE id NOT IN (1000, 1001))",
    );
}

/// `disable_on_error => true`: the first apply error disables the sync (enabled false, no
/// apply worker, the error kept), and it stays disabled: later source changes do not arrive.
#[test]
fn disable_on_error_disables_the_sync_at_the_first_apply_error() {
    let (src, tgt) = conflict_pair("disable");
    let sub = "disable_on_err";
    let _g = start_with(&tgt, &src, "p", sub, "disable_on_error => true");
    synced(&src, &tgt, sub, &["t"]);
    assert!(sub_info(&tgt, sub).is_some_and(|i| i.enabled));

    tgt.exec("INSERT INTO t VALUES (1000, 'by hand')");
    src.exec(
        "BEGIN; INSERT INTO t VALUES (1000, 'src'); INSERT INTO t VALUES (1001, 'src'); COMMIT",
    );
    wait_until_or(
        LONG,
        "the sync to be disabled with its error kept",
        || describe(&tgt, sub),
        || {
            try_sub_info(&tgt, sub)
                .ok()
                .flatten()
                .is_some_and(|i| !i.enabled && i.pid.is_none() && i.last_error.is_some())
        },
    );
    let err = sub_last_error(&tgt, sub).unwrap();
    eprintln!("[e2e] disabled with last_error: {err}");
    let lower = err.to_lowercase();
    assert!(
        lower.contains("duplicate key") || lower.contains("unique"),
        "{err}"
    );
    src.exec("INSERT INTO t VALUES (2000, 'while disabled')");
    sleep(Duration::from_secs(3));
    let info = sub_info(&tgt, sub).expect("the sync is gone");
    assert!(
        !info.enabled && info.pid.is_none(),
        "the sync did not stay disabled: {info:?}"
    );
    assert!(info.last_error.is_some(), "the error was cleared: {info:?}");
    assert_eq!(count(&tgt, "t WHERE id IN (1001, 2000)"), 0);
    assert!(
        livesync_backends(&tgt).is_empty(),
        "livesync processes still run for the disabled sync: {:?}",
        livesync_backends(&tgt)
    );
    let c = try_counters(&tgt, sub).unwrap().unwrap();
    assert!(c.apply_error_count >= 1, "{c:?}");
}

/// An UPDATE and a DELETE of rows the target no longer has are counted (`update_missing`,
/// `delete_missing`) and passed over, as PostgreSQL does: no error, and the sync goes on.
#[test]
fn missing_rows_are_counted_and_the_sync_goes_on() {
    let (src, tgt) = conflict_pair("missing_rows");
    let sub = "missing_rows";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["t"]);
    let c0 = try_counters(&tgt, sub).unwrap().unwrap();
    assert_eq!(
        (c0.update_missing, c0.delete_missing),
        (0, 0),
        "counters before any conflict: {c0:?}"
    );

    tgt.exec("DELETE FROM t WHERE id IN (5, 6)");
    src.exec("UPDATE t SET v = 'updated' WHERE id = 5");
    src.exec("DELETE FROM t WHERE id = 6");
    src.exec("INSERT INTO t VALUES (100, 'later')");
    wait_count(&tgt, sub, "t WHERE id = 100", 1);
    let c = wait_counters(&tgt, sub, "update_missing and delete_missing", |c| {
        c.update_missing >= 1 && c.delete_missing >= 1
    });
    eprintln!("[e2e] counters: {c:?}");
    assert_eq!(
        count(&tgt, "t WHERE id = 5"),
        0,
        "the missing row came back"
    );
    caught_up(&src, &tgt, sub);
    assert_same(
        &src,
        &tgt,
        "(SELECT * FROM t WHERE id <> 5)",
        "(SELECT * FROM t)",
    );
    wait_until_or(
        LONG,
        "last_error to be NULL",
        || describe(&tgt, sub),
        || sub_last_error(&tgt, sub).is_none(),
    );
    assert_eq!(
        try_counters(&tgt, sub).unwrap().unwrap().apply_error_count,
        c0.apply_error_count,
        "a missing row counted as an apply error"
    );
}

/// After some work, a caught-up idle sync shows `lag_seconds` near 0 (below 5) and a
/// `last_commit_time`: the source commit time of the last applied transaction.
#[test]
fn lag_seconds_and_last_commit_time_when_caught_up() {
    let (src, tgt) = conflict_pair("lag");
    let sub = "lag_times";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["t"]);
    let mut c = src.client();
    for i in 0..200i32 {
        c.execute("INSERT INTO t VALUES ($1, 'small txn')", &[&(1000 + i)])
            .unwrap();
    }
    let before_last: String = src.query_one("SELECT clock_timestamp()::text");
    src.exec("UPDATE t SET v = 'last' WHERE id = 1");
    synced(&src, &tgt, sub, &["t"]);
    wait_until_or(
        LONG,
        "lag_seconds below 5 and last_commit_time set",
        || {
            format!(
                "(lag_seconds, last_commit_time set): {:?}\n{}",
                lag_and_commit_time(&tgt, sub),
                describe(&tgt, sub)
            )
        },
        || {
            matches!(lag_and_commit_time(&tgt, sub),
                     Some((Some(lag), true)) if (0.0..5.0).contains(&lag))
        },
    );
    let plausible: bool = tgt
        .client()
        .query_one(
            "SELECT last_commit_time >= $1::text::timestamptz - interval '1 second' \
                AND last_commit_time <= now() + interval '1 second' \
               FROM livesync.subscription WHERE subname = $2",
            &[&before_last, &sub],
        )
        .unwrap()
        .get(0);
    assert!(
        plausible,
        "last_commit_time is not the last source commit's (after {before_last}): {}",
        describe(&tgt, sub)
    );
}

/// A sync that is behind does not look caught up: while the apply worker is held (a trigger
/// on the target waits for an advisory lock the test holds), `lag_seconds` counts from the
/// source commit of the last applied transaction and `lag_bytes` is above 0; once released,
/// both return to 0.
#[test]
fn lag_seconds_grow_while_the_sync_is_behind() {
    let (src, tgt) = conflict_pair("lagbehind");
    tgt.exec(
        "CREATE FUNCTION hold() RETURNS trigger LANGUAGE plpgsql AS \
           $$ BEGIN PERFORM pg_advisory_xact_lock_shared(4242); RETURN NEW; END $$; \
         CREATE TRIGGER hold BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION hold(); \
         ALTER TABLE t ENABLE ALWAYS TRIGGER hold",
    );
    let sub = "lag_behind";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["t"]);
    src.exec("UPDATE t SET v = 'last before the hold' WHERE id = 1");
    caught_up(&src, &tgt, sub);
    let mut holder = tgt.client();
    holder
        .execute("SELECT pg_advisory_lock(4242)", &[])
        .unwrap();
    sleep(Duration::from_secs(2));
    src.exec("INSERT INTO t VALUES (5000, 'held')");
    let lag_of = |tgt: &Db| -> (f64, i64) {
        let r = tgt
            .client()
            .query_one(
                "SELECT coalesce(lag_seconds, -1)::float8, coalesce(lag_bytes, -1)::int8 \
                   FROM livesync.subscription WHERE subname = $1",
                &[&sub],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    wait_until_or(
        LONG,
        "lag_seconds of at least 2 and lag_bytes above 0 while the apply worker is held",
        || {
            format!(
                "(lag_seconds, lag_bytes) = {:?}\n{}",
                lag_of(&tgt),
                describe(&tgt, sub)
            )
        },
        || {
            let (secs, bytes) = lag_of(&tgt);
            secs >= 2.0 && bytes > 0
        },
    );
    holder
        .execute("SELECT pg_advisory_unlock(4242)", &[])
        .unwrap();
    wait_count(&tgt, sub, "t WHERE id = 5000", 1);
    caught_up(&src, &tgt, sub);
    wait_until_or(
        LONG,
        "lag_seconds and lag_bytes back to 0",
        || format!("(lag_seconds, lag_bytes) = {:?}", lag_of(&tgt)),
        || lag_of(&tgt) == (0.0, 0),
    );
}

/// `monitoring/postgres_exporter.yml` runs as shipped: its query gives one row per table of
/// the sync, with every metric the file declares, and the figures are right for a synced
/// table (ready, not failing, rows copied as the source has them).
#[test]
fn the_postgres_exporter_query_gives_every_figure() {
    let file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../monitoring/postgres_exporter.yml"),
    )
    .expect("read monitoring/postgres_exporter.yml");
    let query: String = file
        .split("query: |")
        .nth(1)
        .and_then(|rest| rest.split("  metrics:").next())
        .expect("a query block")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n");
    let declared: Vec<String> = file
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- "))
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect();
    assert!(declared.len() > 20, "metrics of the file: {declared:?}");

    let (src, tgt) = conflict_pair("exporter");
    let sub = "exporter_q";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["t"]);
    let rows = tgt
        .client()
        .query(query.as_str(), &[])
        .unwrap_or_else(|e| panic!("the exporter's query fails: {}\n{query}", err_text(&e)));
    assert_eq!(rows.len(), 1, "one row per table of the sync");
    let row = &rows[0];
    let columns: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(
        columns, declared,
        "the query's columns and the file's metrics differ"
    );
    let num = |name: &str| -> f64 {
        let i = columns.iter().position(|c| *c == name).unwrap();
        match row.columns()[i].type_().name() {
            "int4" => f64::from(row.get::<_, i32>(i)),
            "int8" => row.get::<_, i64>(i) as f64,
            "float8" => row.get::<_, f64>(i),
            other => panic!("metric {name} has type {other}: not a number postgres_exporter reads"),
        }
    };
    assert_eq!(row.get::<_, String>("subname"), sub);
    assert_eq!(num("enabled"), 1.0);
    assert_eq!(num("table_ready"), 1.0);
    assert_eq!(num("table_failing"), 0.0);
    assert_eq!(num("failing"), 0.0);
    assert_eq!(num("tables"), 1.0);
    assert_eq!(num("rows_copied"), 20.0, "rows of the copy");
}

/// A table `create_tables` creates in a schema another role owns belongs to that role, so
/// the source's defaults, generated columns and the owner's triggers on it never run with
/// livesync's superuser rights.
#[test]
fn created_tables_belong_to_their_schemas_owner() {
    let src = Db::fresh(source(), "crown_src");
    let tgt = Db::fresh(target(), "crown_tgt");
    src.exec(
        "CREATE TABLE t (id int PRIMARY KEY, v text, n int GENERATED ALWAYS AS (id * 2) STORED); \
         INSERT INTO t (id, v) SELECT g, 'v' || g FROM generate_series(1, 50) g; \
         CREATE TABLE m (ts timestamptz NOT NULL, dev int NOT NULL, v float8, PRIMARY KEY (dev, ts)); \
         INSERT INTO m SELECT '2026-01-01'::timestamptz + g * interval '2 hours', g % 3, g \
           FROM generate_series(1, 100) g; \
         CREATE PUBLICATION p FOR TABLE t, m",
    );
    let role = unique_name("crown_owner");
    target().exec("postgres", &format!("CREATE ROLE {role} NOLOGIN"));
    tgt.exec(&format!("CREATE SCHEMA owned AUTHORIZATION {role}"));
    let sub = "created_owner";
    let map = r#"[{"source": {"schema": "public"}, "target": {"schema": "owned"}},
                   {"source": {"schema": "public", "table": "m"}, "target": {"schema": "owned"},
                    "hypertable": {"time_column": "ts", "chunk_interval": "1 day"}}]"#;
    let _g = start_with(
        &tgt,
        &src,
        "p",
        sub,
        &format!("create_tables => true, table_map => {}", jsonb(map)),
    );
    wait_mapped(
        &tgt,
        sub,
        &[("public.t", "owned.t"), ("public.m", "owned.m")],
        'r',
    );
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "public.t", "owned.t");
    assert_same(&src, &tgt, "public.m", "owned.m");
    for t in ["owned.t", "owned.m"] {
        let owner: String = tgt.query_one(&format!(
            "SELECT relowner::regrole::text FROM pg_class WHERE oid = '{t}'::regclass"
        ));
        assert_eq!(owner, role, "owner of {t}");
    }
    assert!(is_hypertable(&tgt, "owned", "m"));
    assert_eq!(count_only(&tgt, "owned.m"), 0);
    src.exec(
        "INSERT INTO t (id, v) VALUES (100, 'later'); UPDATE t SET v = 'x' WHERE id = 1; \
         INSERT INTO m VALUES ('2026-02-01', 1, 1); DELETE FROM m WHERE dev = 2",
    );
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "public.t", "owned.t");
    assert_same(&src, &tgt, "public.m", "owned.m");
}

/// `create_tables` into a schema the target does not have yet: livesync creates the schema
/// and the table in it (as `make demo` does with `analytics`), owned by livesync's role.
#[test]
fn create_tables_creates_a_missing_schema_too() {
    let src = Db::fresh(source(), "crschema_src");
    let tgt = Db::fresh(target(), "crschema_tgt");
    src.exec(
        "CREATE TABLE readings (ts timestamptz NOT NULL, dev int NOT NULL, v float8, \
                                PRIMARY KEY (dev, ts)); \
         INSERT INTO readings SELECT '2026-01-01'::timestamptz + g * interval '1 hour', g % 4, g \
           FROM generate_series(1, 300) g; \
         CREATE PUBLICATION p FOR TABLE readings",
    );
    let map = r#"[{"source": {"schema": "public", "table": "readings"},
                   "target": {"schema": "fresh_schema"},
                   "hypertable": {"time_column": "ts", "chunk_interval": "1 day"}}]"#;
    let sub = "created_schema";
    let _g = start_with(
        &tgt,
        &src,
        "p",
        sub,
        &format!("create_tables => true, table_map => {}", jsonb(map)),
    );
    wait_mapped(
        &tgt,
        sub,
        &[("public.readings", "fresh_schema.readings")],
        'r',
    );
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "public.readings", "fresh_schema.readings");
    assert!(is_hypertable(&tgt, "fresh_schema", "readings"));
    assert_eq!(count_only(&tgt, "fresh_schema.readings"), 0);
}

/// A table created on the source while the sync runs, and written at once (its changes
/// reach the apply worker before the table is one of the sync's), follows the map after it
/// is copied: its later changes go to the mapped target, never to a table of the source's
/// name on the target.
#[test]
fn table_map_applies_to_a_table_created_while_the_sync_runs() {
    // A slow publication refresh on a target of its own: the new table's first changes
    // surely arrive before the sync lists it.
    let cluster = Cluster::new_private_with(
        ClusterSpec::new(Kind::Target, "newmap").conf("livesync.publication_refresh_interval = 15"),
    );
    let src = Db::fresh(source(), "newmap_src");
    let tgt = Db::fresh(&cluster, "newmap_tgt");
    src.exec(
        "CREATE TABLE t1 (id int PRIMARY KEY, v text); INSERT INTO t1 VALUES (1, 'a'); \
         CREATE PUBLICATION p FOR TABLES IN SCHEMA public",
    );
    // A decoy with the new table's source name: it must stay empty.
    tgt.exec("CREATE TABLE public.t2 (id int PRIMARY KEY, v text)");
    let map = r#"[{"source": {"schema": "public"}, "target": {"schema": "mapped"}}]"#;
    let sub = "map_new_table";
    let _g = start_with(
        &tgt,
        &src,
        "p",
        sub,
        &format!("create_tables => true, table_map => {}", jsonb(map)),
    );
    wait_mapped(&tgt, sub, &[("public.t1", "mapped.t1")], 'r');
    src.exec(
        "CREATE TABLE t2 (id int PRIMARY KEY, v text); \
         INSERT INTO t2 SELECT g, 'early' FROM generate_series(1, 100) g",
    );
    wait_mapped(
        &tgt,
        sub,
        &[("public.t1", "mapped.t1"), ("public.t2", "mapped.t2")],
        'r',
    );
    src.exec(
        "INSERT INTO t2 SELECT g, 'later' FROM generate_series(101, 200) g; \
         UPDATE t2 SET v = 'changed' WHERE id % 10 = 0; DELETE FROM t2 WHERE id % 7 = 0",
    );
    caught_up(&src, &tgt, sub);
    assert_same(&src, &tgt, "public.t2", "mapped.t2");
    assert_eq!(
        count(&tgt, "public.t2"),
        0,
        "rows went to the source's name"
    );
    let c = try_counters(&tgt, sub).unwrap().unwrap();
    assert_eq!(c.apply_error_count, 0, "{}", describe(&tgt, sub));
}

/// `add_columns` into a hypertable target: the column is added to the hypertable (and so to
/// its chunks), with a type modifier kept (`numeric(10,2)`), and rows of old and new
/// chunks carry it.
#[test]
fn add_columns_adds_the_source_column_to_a_hypertable() {
    let src = Db::fresh(source(), "addcolht_src");
    let tgt = Db::fresh(target(), "addcolht_tgt");
    let ddl = "CREATE TABLE m (ts timestamptz NOT NULL, dev int NOT NULL, v float8, \
                               PRIMARY KEY (dev, ts))";
    ddl_both(&src, &tgt, ddl);
    tgt.exec("SELECT create_hypertable('m', 'ts', chunk_time_interval => interval '1 day')");
    src.exec(
        "INSERT INTO m SELECT '2026-01-01'::timestamptz + g * interval '1 hour', g % 3, g \
           FROM generate_series(1, 120) g; \
         CREATE PUBLICATION p FOR TABLE m",
    );
    let sub = "add_columns_ht";
    let _g = start_with(&tgt, &src, "p", sub, "add_columns => true");
    wait_tables(&tgt, sub, &["public.m"], 'r');
    src.exec(
        "ALTER TABLE m ADD COLUMN price numeric(10,2); \
         INSERT INTO m SELECT '2026-02-01'::timestamptz + g * interval '1 hour', 5, g, g * 1.5 \
           FROM generate_series(1, 30) g; \
         UPDATE m SET price = 9.99 WHERE ts < '2026-01-02'",
    );
    synced(&src, &tgt, sub, &["m"]);
    let ty: String = tgt.query_one(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute \
          WHERE attrelid = 'm'::regclass AND attname = 'price'",
    );
    assert_eq!(ty, "numeric(10,2)");
    assert_eq!(count_only(&tgt, "m"), 0);
    assert_eq!(
        count(&tgt, "m WHERE price = 9.99"),
        count(&src, "m WHERE price = 9.99")
    );
    assert!(count(&tgt, "m WHERE price = 9.99") > 0);
}

/// `livesync_resync` of a hypertable target: it is emptied (its chunks dropped) and copied
/// again into new chunks, and it follows changes afterwards.
#[test]
fn resync_copies_a_hypertable_again() {
    let src = Db::fresh(source(), "resyncht_src");
    let tgt = Db::fresh(target(), "resyncht_tgt");
    let ddl = "CREATE TABLE m (ts timestamptz NOT NULL, dev int NOT NULL, v float8, \
                               PRIMARY KEY (dev, ts))";
    ddl_both(&src, &tgt, ddl);
    tgt.exec("SELECT create_hypertable('m', 'ts', chunk_time_interval => interval '1 day')");
    src.exec(
        "INSERT INTO m SELECT '2026-01-01'::timestamptz + g * interval '1 hour', g % 3, g \
           FROM generate_series(1, 200) g; \
         CREATE PUBLICATION p FOR TABLE m",
    );
    let sub = "resync_ht";
    let _g = start_sync(&tgt, &src.uri(), "p", sub);
    synced(&src, &tgt, sub, &["m"]);
    tgt.exec("DELETE FROM m WHERE dev = 1; INSERT INTO m VALUES ('2030-01-01', 99, -1)");
    let lsn_before = rels(&tgt, sub)[0].lsn.clone();
    tgt.client()
        .execute("SELECT livesync_resync($1, 'm'::regclass)", &[&sub])
        .unwrap_or_else(|e| panic!("livesync_resync: {}", err_text(&e)));
    wait_until_or(
        LONG,
        "m to be copied again (a new consistent LSN, state r)",
        || describe(&tgt, sub),
        || {
            try_rels(&tgt, sub)
                .map(|r| r.len() == 1 && r[0].state == 'r' && r[0].lsn != lsn_before)
                .unwrap_or(false)
        },
    );
    src.exec("INSERT INTO m VALUES ('2026-03-01', 7, 7); UPDATE m SET v = 0 WHERE dev = 2");
    synced(&src, &tgt, sub, &["m"]);
    assert_eq!(
        count(&tgt, "m WHERE dev = 99"),
        0,
        "the tampered row survived"
    );
    assert_eq!(count_only(&tgt, "m"), 0);
}
