//! What livesync asks of the source, over a [`source::Connection`]: checks, slots (the
//! sync's, each table copy's, and the temporary ones a resumed copy reads under), the
//! publication's table list, and how to slice a table's copy (`slice_key`,
//! `slice_bounds`). Source-side SQL runs with an empty `search_path`. Async and free of pgrx, so both the SQL functions and the
//! workers can drive it from their own runtime.

use crate::error::{Error, Result};
use crate::lsn;
use crate::source::{Connection, SourceError};
use pgrx::PgSqlErrorCode as Code;

/// `'...'` with quotes doubled (the source runs with standard_conforming_strings = on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// `"..."` with quotes doubled: always quoted, which is always valid.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

pub async fn check_wal_level(conn: &mut Connection) -> Result<()> {
    let rows = conn.simple_query("SHOW wal_level").await?;
    let level = rows
        .first()
        .and_then(|r| r.get(0))
        .unwrap_or("")
        .to_string();
    if level != "logical" {
        return Err(Error::user(
            Code::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            format!("the source has wal_level = {level}; logical replication needs wal_level = logical"),
        )
        .hint("Set wal_level = logical in the source's postgresql.conf and restart the source server."));
    }
    Ok(())
}

/// The source's system identifier (IDENTIFY_SYSTEM, on a replication connection).
pub async fn system_identifier(conn: &mut Connection) -> Result<String> {
    let rows = conn.simple_query("IDENTIFY_SYSTEM").await?;
    Ok(rows
        .first()
        .and_then(|r| r.get(0))
        .unwrap_or_default()
        .to_string())
}

pub async fn publication_exists(conn: &mut Connection, publication: &str) -> Result<bool> {
    let sql = format!(
        "SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = {}",
        quote_literal(publication)
    );
    Ok(!conn.simple_query(&sql).await?.is_empty())
}

/// May the apply worker ask for binary values (`crate::binval`)? The source is
/// PostgreSQL 14 or later (pgoutput's `binary` option) and no newer a major than the
/// target ([`crate::binval::readable_from`]), and every column of every table the
/// publication has now is of a type [`crate::binval::safe`] lists. Tables added later, or
/// types changed, are checked again as their Relation messages arrive.
pub async fn publication_binary_safe(conn: &mut Connection, publication: &str) -> Result<bool> {
    let v = server_version(conn);
    if v < 140_000 || !crate::binval::readable_from(v) {
        return Ok(false);
    }
    let sql = format!(
        "SELECT 1 FROM pg_catalog.pg_publication_tables p \
           JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) p.schemaname \
           JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid \
                AND c.relname OPERATOR(pg_catalog.=) p.tablename \
           JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
          WHERE p.pubname OPERATOR(pg_catalog.=) {} AND a.attnum OPERATOR(pg_catalog.>) 0 \
            AND NOT a.attisdropped \
            AND NOT a.atttypid OPERATOR(pg_catalog.=) ANY ({}) LIMIT 1",
        quote_literal(publication),
        crate::binval::safe_sql_array()
    );
    Ok(conn.simple_query(&sql).await?.is_empty())
}

/// The source's version as `server_version_num` spells it (170012 for 17.12), from the
/// `server_version` the server reports at startup ("17.12 (Debian 17.12-0+deb13u1)",
/// "18beta1"); 0 when unknown.
pub fn server_version(conn: &Connection) -> u32 {
    conn.parameter("server_version")
        .map(version_num)
        .unwrap_or(0)
}

fn version_num(v: &str) -> u32 {
    let digits = |s: &str| -> (u32, usize) {
        let n = s.bytes().take_while(u8::is_ascii_digit).count();
        (s[..n].parse().unwrap_or(0), n)
    };
    let (major, n) = digits(v);
    let minor = match v[n..].strip_prefix('.') {
        Some(rest) => digits(rest).0,
        None => 0,
    };
    major * 10_000 + minor
}

/// What the source says of a slot (`pg_replication_slots`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    pub confirmed_flush: u64,
    /// `lost` once the slot is invalidated, whatever the cause.
    pub wal_status: String,
    /// Why it was invalidated (PostgreSQL 17+: `wal_removed`, `rows_removed`,
    /// `wal_level_insufficient`, 18: `idle_timeout`); None when it was not, or on older
    /// sources.
    pub invalidation_reason: Option<String>,
    /// A failover slot (PostgreSQL 17+), synchronized to standbys.
    pub failover: bool,
    /// A walsender holds it.
    pub active: bool,
}

impl SlotState {
    /// Why the slot was invalidated, in words.
    pub fn invalidation_cause(&self) -> String {
        match self.invalidation_reason.as_deref() {
            Some("wal_removed") | None => {
                "the WAL it needed was removed (max_slot_wal_keep_size)".into()
            }
            Some("idle_timeout") => "it was idle longer than idle_replication_slot_timeout".into(),
            Some("rows_removed") => {
                "rows it needed were removed on the primary (a conflict on a standby)".into()
            }
            Some("wal_level_insufficient") => "the primary's wal_level is below logical".into(),
            Some("conflict") => {
                "it conflicted with recovery on this standby (rows it needed were removed, or \
                 wal_level was lowered, on its primary)"
                    .into()
            }
            Some(other) => format!("\"{other}\""),
        }
    }
}

/// A slot's state, or None when it does not exist.
pub async fn slot_state(conn: &mut Connection, slot: &str) -> Result<Option<SlotState>> {
    let version = server_version(conn);
    let sql = format!(
        "SELECT confirmed_flush_lsn, wal_status, {}, active FROM pg_catalog.pg_replication_slots \
          WHERE slot_name OPERATOR(pg_catalog.=) {}",
        if version >= 170_000 {
            "invalidation_reason, failover"
        } else if version >= 160_000 {
            // 16 says only whether a conflict with recovery invalidated it.
            "CASE WHEN conflicting THEN 'conflict' END, false"
        } else {
            "NULL, false"
        },
        quote_literal(slot)
    );
    Ok(conn.simple_query(&sql).await?.first().map(|r| SlotState {
        confirmed_flush: r.get(0).and_then(lsn::parse).unwrap_or(0),
        wal_status: r.get(1).unwrap_or_default().to_string(),
        invalidation_reason: r.get(2).map(str::to_string),
        failover: r.get(3) == Some("t"),
        active: r.get(4) == Some("t"),
    }))
}

/// Should livesync's main slot be a failover slot? On a PostgreSQL 17+ primary that is
/// set up for failover slots, that is, with `synchronized_standby_slots` naming the physical
/// slots of its standbys: then the slot is synchronized to those standbys
/// (`sync_replication_slots = on` there), the source's walsender sends livesync only what
/// they have received, and after a failover livesync continues from the promoted standby
/// where it stopped. (Native subscriptions ask for it with `failover = true`.)
pub async fn wants_failover(conn: &mut Connection) -> Result<bool> {
    if server_version(conn) < 170_000 {
        return Ok(false);
    }
    let rows = conn
        .simple_query(
            "SELECT pg_catalog.current_setting('synchronized_standby_slots') OPERATOR(pg_catalog.<>) '' \
                    AND NOT pg_catalog.pg_is_in_recovery()",
        )
        .await?;
    Ok(rows.first().and_then(|r| r.get(0)) == Some("t"))
}

/// Create the sync's main slot: no snapshot (each table's copy has its own), and a failover
/// slot when the source is set up for them ([`wants_failover`]).
pub async fn create_main_slot(conn: &mut Connection, slot: &str) -> Result<u64> {
    let failover = wants_failover(conn).await?;
    let options = if failover {
        "SNAPSHOT 'nothing', FAILOVER true"
    } else {
        "SNAPSHOT 'nothing'"
    };
    Ok(create_slot_with(conn, slot, "", options).await?.0)
}

/// Make an existing main slot a failover slot (PostgreSQL 17+), for a source that was set up
/// for failover slots after the sync started.
pub async fn set_failover(conn: &mut Connection, slot: &str) -> Result<()> {
    conn.simple_query(&format!(
        "ALTER_REPLICATION_SLOT {} (FAILOVER true)",
        quote_ident(slot)
    ))
    .await?;
    Ok(())
}

pub async fn slot_exists(conn: &mut Connection, slot: &str) -> Result<bool> {
    let sql = format!(
        "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
        quote_literal(slot)
    );
    Ok(!conn.simple_query(&sql).await?.is_empty())
}

/// Create a table sync's slot with `SNAPSHOT 'export'`: returns its consistent point and
/// the name of the exported snapshot, which other sessions can import
/// (`SET TRANSACTION SNAPSHOT`) until the connection runs its next command. A failover
/// slot when the main one is ([`wants_failover`]), as PostgreSQL 17's tablesync does: its
/// catch-up then also reads only what the standbys have.
pub async fn create_slot_exporting(conn: &mut Connection, slot: &str) -> Result<(u64, String)> {
    let options = if wants_failover(conn).await? {
        "SNAPSHOT 'export', FAILOVER true"
    } else {
        "SNAPSHOT 'export'"
    };
    let (lsn, snapshot) = create_slot_with(conn, slot, "", options).await?;
    let snapshot = snapshot.ok_or_else(|| {
        SourceError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into())
    })?;
    Ok((lsn, snapshot))
}

/// A TEMPORARY slot that exports its snapshot: a consistent point and the snapshot of
/// exactly the transactions that committed before it, for a copy that resumes after its
/// first snapshot is gone. It vanishes with the connection, and is never streamed.
pub async fn create_temp_slot_exporting(
    conn: &mut Connection,
    slot: &str,
) -> Result<(u64, String)> {
    let (lsn, snapshot) = create_slot_with(conn, slot, "TEMPORARY ", "SNAPSHOT 'export'").await?;
    let snapshot = snapshot.ok_or_else(|| {
        SourceError::Protocol("CREATE_REPLICATION_SLOT exported no snapshot".into())
    })?;
    Ok((lsn, snapshot))
}

/// CREATE_REPLICATION_SLOT of a pgoutput slot with these options; returns its consistent
/// point and its exported snapshot, if any.
async fn create_slot_with(
    conn: &mut Connection,
    slot: &str,
    temporary: &str,
    options: &str,
) -> Result<(u64, Option<String>)> {
    let sql = format!(
        "CREATE_REPLICATION_SLOT {} {temporary}LOGICAL pgoutput ({options})",
        quote_ident(slot)
    );
    let rows = match conn.simple_query(&sql).await {
        Ok(rows) => rows,
        Err(SourceError::Server(e)) if e.code == "42710" => {
            return Err(Error::user(
                Code::ERRCODE_DUPLICATE_OBJECT,
                format!("replication slot \"{slot}\" already exists on the source"),
            )
            .hint(format!(
                "Choose another subscription name, or drop the slot on the source with SELECT pg_drop_replication_slot('{slot}')."
            )))
        }
        Err(SourceError::Server(e)) if e.code == "53400" => {
            return Err(Error::user(
                Code::ERRCODE_CONFIGURATION_LIMIT_EXCEEDED,
                format!("could not create replication slot \"{slot}\" on the source: {}", e.message),
            )
            .hint("Raise max_replication_slots on the source, or drop slots that are no longer used."))
        }
        Err(e) => return Err(e.into()),
    };
    let row = rows.first();
    let lsn = row
        .and_then(|r| r.get(1))
        .and_then(lsn::parse)
        .ok_or_else(|| {
            SourceError::Protocol("CREATE_REPLICATION_SLOT returned no consistent point".into())
        })?;
    Ok((lsn, row.and_then(|r| r.get(2)).map(str::to_string)))
}

/// Drop a slot, waiting for a walsender that still holds it to let go. Ok(false): no such slot.
pub async fn drop_slot(conn: &mut Connection, slot: &str) -> Result<bool> {
    let sql = format!("DROP_REPLICATION_SLOT {} WAIT", quote_ident(slot));
    match conn.simple_query(&sql).await {
        Ok(_) => Ok(true),
        Err(SourceError::Server(e)) if e.code == "42704" => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Make `copy` a copy of logical slot `slot` (same position, same retained WAL), replacing
/// an inactive slot of that name. On a plain connection (a SQL function).
pub async fn copy_slot(conn: &mut Connection, slot: &str, copy: &str) -> Result<()> {
    conn.simple_query(&format!(
        "SELECT pg_catalog.pg_drop_replication_slot(slot_name) FROM pg_catalog.pg_replication_slots \
          WHERE slot_name OPERATOR(pg_catalog.=) {} AND NOT active",
        quote_literal(copy)
    ))
    .await?;
    conn.simple_query(&format!(
        "SELECT pg_catalog.pg_copy_logical_replication_slot({}, {})",
        quote_literal(slot),
        quote_literal(copy)
    ))
    .await?;
    Ok(())
}

/// Every slot of this sync: the main one (exactly its name) and the table-sync ones
/// (`<name>_sync_<digits>`, see [`is_slot_of`]).
pub async fn slots_of(conn: &mut Connection, subname: &str) -> Result<Vec<String>> {
    let prefix = format!("{subname}_sync_");
    let sql = format!(
        "SELECT slot_name FROM pg_catalog.pg_replication_slots \
          WHERE slot_name OPERATOR(pg_catalog.=) {} \
             OR pg_catalog.left(slot_name, {}) OPERATOR(pg_catalog.=) {}",
        quote_literal(subname),
        prefix.len(),
        quote_literal(&prefix)
    );
    Ok(conn
        .simple_query(&sql)
        .await?
        .iter()
        .filter_map(|r| r.get(0).map(str::to_string))
        .filter(|s| is_slot_of(s, subname))
        .collect())
}

/// Is `slot` a slot of the sync `subname`: its main slot, or a table-sync slot
/// `<subname>_sync_<digits>`? Exact, so that the sync `x` never claims a slot of the
/// sync `x_sync_eu` (whose slots are `x_sync_eu` and `x_sync_eu_sync_<digits>`); sync
/// names that end like a table-sync slot are refused (`api::validate_name`).
pub fn is_slot_of(slot: &str, subname: &str) -> bool {
    slot == subname
        || slot
            .strip_prefix(subname)
            .and_then(|rest| rest.strip_prefix("_sync_"))
            .is_some_and(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubTable {
    pub relid: u32,
    pub schema: String,
    pub name: String,
    /// A chunk of a TimescaleDB hypertable on the source: that hypertable (schema, name),
    /// whose name the chunk is mapped and synced by.
    pub hypertable: Option<(String, String)>,
}

impl PubTable {
    /// The name the table map and the target go by: a chunk's hypertable, else the table.
    pub fn logical_name(&self) -> (&str, &str) {
        match &self.hypertable {
            Some((s, n)) => (s, n),
            None => (&self.schema, &self.name),
        }
    }
}

/// The tables `pg_publication_tables` lists for the publication (leaf partitions, or roots
/// with publish_via_partition_root), with their source oids.
///
/// Tables that belong to an extension on the source are left out, and listed nowhere: a
/// `FOR ALL TABLES` publication on a server that runs livesync or TimescaleDB itself lists
/// their catalogs (livesync's holds connection strings with passwords), which must never
/// reach the target. (`pg_dump` leaves them out for the same reason; native replication
/// does copy them, which is its weakness here, not a behaviour to keep.)
pub async fn publication_tables(conn: &mut Connection, publication: &str) -> Result<Vec<PubTable>> {
    let sql = format!(
        "SELECT c.oid, pt.schemaname, pt.tablename \
           FROM pg_catalog.pg_publication_tables pt \
           JOIN pg_catalog.pg_namespace n ON n.nspname OPERATOR(pg_catalog.=) pt.schemaname \
           JOIN pg_catalog.pg_class c ON c.relnamespace OPERATOR(pg_catalog.=) n.oid \
                AND c.relname OPERATOR(pg_catalog.=) pt.tablename \
          WHERE pt.pubname OPERATOR(pg_catalog.=) {} \
            AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d \
                             WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                               AND d.objid OPERATOR(pg_catalog.=) c.oid \
                               AND d.deptype OPERATOR(pg_catalog.=) 'e')",
        quote_literal(publication)
    );
    let mut out = Vec::new();
    for r in conn.simple_query(&sql).await? {
        let relid = r.get(0).and_then(|s| s.parse().ok()).unwrap_or(0);
        out.push(PubTable {
            relid,
            schema: r.get(1).unwrap_or_default().to_string(),
            name: r.get(2).unwrap_or_default().to_string(),
            hypertable: None,
        });
    }
    timescaledb_chunks(conn, &mut out).await?;
    Ok(out)
}

/// On a TimescaleDB source: each published chunk learns its hypertable, and the tables of
/// TimescaleDB's own machinery are left out (compressed and materialized hypertables of
/// compression and continuous aggregates, and their chunks, which hold data in
/// TimescaleDB's internal formats: whatever in `_timescaledb_internal` is not a chunk of a
/// user's hypertable). Through `timescaledb_information.chunks`, whose columns every
/// TimescaleDB 2 release keeps (its catalog tables change between releases).
async fn timescaledb_chunks(conn: &mut Connection, tables: &mut Vec<PubTable>) -> Result<()> {
    let has = conn
        .simple_query("SELECT pg_catalog.to_regclass('timescaledb_information.chunks') IS NOT NULL")
        .await?;
    if has.first().and_then(|r| r.get(0)) != Some("t") || tables.is_empty() {
        return Ok(());
    }
    let oids = tables
        .iter()
        .map(|t| t.relid.to_string())
        .collect::<Vec<_>>()
        .join(",");
    // (relid, its schema, hypertable schema, hypertable name)
    let sql = format!(
        "SELECT c.oid, n.nspname, ch.hypertable_schema, ch.hypertable_name \
           FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
           LEFT JOIN timescaledb_information.chunks ch \
                  ON ch.chunk_schema OPERATOR(pg_catalog.=) n.nspname \
                 AND ch.chunk_name OPERATOR(pg_catalog.=) c.relname \
          WHERE c.oid OPERATOR(pg_catalog.=) ANY ('{{{oids}}}'::pg_catalog.oid[])"
    );
    let mut drop = Vec::new();
    for r in conn.simple_query(&sql).await? {
        let relid: u32 = r.get(0).and_then(|s| s.parse().ok()).unwrap_or(0);
        let internal = |schema: Option<&str>| schema == Some("_timescaledb_internal");
        match (r.get(2), r.get(3)) {
            (Some(hs), Some(hn)) if !internal(Some(hs)) => {
                if let Some(t) = tables.iter_mut().find(|t| t.relid == relid) {
                    t.hypertable = Some((hs.to_string(), hn.to_string()));
                }
            }
            _ if internal(r.get(1)) || internal(r.get(2)) => drop.push(relid),
            _ => {}
        }
    }
    tables.retain(|t| !drop.contains(&t.relid));
    Ok(())
}

/// The columns of a source table a COPY may read, in order: no dropped columns, and no
/// generated ones, except the stored generated columns of a PostgreSQL 18+ source, which
/// it publishes when asked to (`publish_generated_columns = stored`, or a column list that
/// names them). The second list names the generated ones among them.
pub async fn copy_columns(conn: &mut Connection, relid: u32) -> Result<(Vec<String>, Vec<String>)> {
    let generated = if server_version(conn) >= 180_000 {
        "attgenerated IN ('', 's')"
    } else {
        "attgenerated = ''"
    };
    let sql = format!(
        "SELECT attname, attgenerated <> '' FROM pg_catalog.pg_attribute \
          WHERE attrelid = {relid} AND attnum > 0 AND NOT attisdropped AND {generated} \
          ORDER BY attnum"
    );
    let (mut all, mut gen) = (Vec::new(), Vec::new());
    for r in conn.simple_query(&sql).await? {
        let name = r.get(0).unwrap_or_default().to_string();
        if r.get(1) == Some("t") {
            gen.push(name.clone());
        }
        all.push(name);
    }
    Ok((all, gen))
}

/// Every column of a table and its type (on the source).
pub async fn column_types(conn: &mut Connection, relid: u32) -> Result<Vec<(String, u32)>> {
    let rows = conn
        .simple_query(&format!(
            "SELECT attname, atttypid::pg_catalog.int8 FROM pg_catalog.pg_attribute \
              WHERE attrelid OPERATOR(pg_catalog.=) {relid} AND attnum OPERATOR(pg_catalog.>) 0 \
                AND NOT attisdropped"
        ))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| Some((r.get(0)?.to_owned(), r.get(1)?.parse().ok()?)))
        .collect())
}

/// [`copy_columns`], and whether the table is partitioned (its rows are then in its
/// partitions: COPY needs a SELECT).
pub async fn copy_columns_and_kind(
    conn: &mut Connection,
    relid: u32,
) -> Result<(Vec<String>, Vec<String>, bool)> {
    let (cols, generated) = copy_columns(conn, relid).await?;
    let kind = conn
        .simple_query(&format!(
            "SELECT relkind FROM pg_catalog.pg_class WHERE oid = {relid}"
        ))
        .await?;
    Ok((
        cols,
        generated,
        kind.first().and_then(|r| r.get(0)) == Some("p"),
    ))
}

/// The source's estimates for a table (and its partitions): rows (`reltuples`; None when
/// never analyzed) and size in bytes (`pg_table_size`). (`pg_partition_tree` lists nothing
/// for a table that is not partitioned, and a partitioned table has neither rows nor size
/// of its own.)
pub async fn table_estimate(
    conn: &mut Connection,
    relid: u32,
) -> Result<(Option<i64>, Option<i64>)> {
    let rows = conn
        .simple_query(&format!(
            "SELECT pg_catalog.sum(c.reltuples) FILTER (WHERE c.reltuples OPERATOR(pg_catalog.>=) 0)::pg_catalog.int8, \
                    pg_catalog.sum(pg_catalog.pg_table_size(c.oid))::pg_catalog.int8 \
               FROM pg_catalog.pg_class c \
              WHERE c.oid IN (SELECT {relid} UNION \
                              SELECT relid FROM pg_catalog.pg_partition_tree({relid}) WHERE isleaf)"
        ))
        .await?;
    let get = |i: usize| {
        rows.first()
            .and_then(|r| r.get(i))
            .and_then(|v| v.parse().ok())
    };
    Ok((get(0), get(1)))
}

/// The column a table's copy can be sliced on: the leading column of its replica identity
/// index (its primary key for `REPLICA IDENTITY DEFAULT` or `FULL`), when its type is one
/// of `crate::slices::SLICEABLE`. Every change then carries its value (in the key image or
/// the new row). None: the table is copied as one slice.
pub async fn slice_key(conn: &mut Connection, relid: u32) -> Result<Option<(String, u32)>> {
    let types = crate::slices::SLICEABLE
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let rows = conn
        .simple_query(&format!(
            "SELECT a.attname, a.atttypid::pg_catalog.int8 \
               FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_index i ON i.indrelid OPERATOR(pg_catalog.=) c.oid \
               JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
                    AND a.attnum OPERATOR(pg_catalog.=) i.indkey[0] \
              WHERE c.oid OPERATOR(pg_catalog.=) {relid} AND i.indisvalid AND i.indimmediate \
                AND CASE c.relreplident WHEN 'i' THEN i.indisreplident \
                                        WHEN 'n' THEN false ELSE i.indisprimary END \
                AND a.atttypid IN ({types})"
        ))
        .await?;
    Ok(rows
        .first()
        .and_then(|r| Some((r.get(0)?.to_owned(), r.get(1)?.parse().ok()?))))
}

/// Where to split a table's copy into `n` slices of about equal row counts: up to n - 1
/// ascending, distinct values of `key`, the quantiles of a sample of the table's blocks
/// (`TABLESAMPLE SYSTEM`, about 4 000 blocks, read in the current snapshot). Quantiles,
/// not an even split of the key's range: keys moved far away (or sparse ranges) would make
/// one slice hold nearly every row.
pub async fn slice_bounds(
    conn: &mut Connection,
    from: &str,
    key: &str,
    size: i64,
    n: usize,
) -> Result<Vec<String>> {
    if n < 2 {
        return Ok(Vec::new());
    }
    let k = quote_ident(key);
    let blocks = (size / 8192).max(1);
    let pct = (4000.0 * 100.0 / blocks as f64).min(100.0);
    let rows = conn
        .simple_query(&format!(
            "SELECT DISTINCT b::pg_catalog.text, b FROM pg_catalog.unnest(( \
                    SELECT pg_catalog.percentile_disc(ARRAY(SELECT g::pg_catalog.float8 OPERATOR(pg_catalog./) {n} \
                                                              FROM pg_catalog.generate_series(1, {n} OPERATOR(pg_catalog.-) 1) g)) \
                           WITHIN GROUP (ORDER BY {k}) \
                      FROM {from} TABLESAMPLE SYSTEM ({pct}))) b \
              WHERE b IS NOT NULL ORDER BY 2"
        ))
        .await?;
    Ok(rows
        .iter()
        .filter_map(|r| r.get(0).map(str::to_owned))
        .collect())
}

/// What a publication publishes of one table (PostgreSQL 15+): its column list (all
/// columns when it has none) and its row filter. None on older sources.
pub async fn publication_filter(
    conn: &mut Connection,
    publication: &str,
    schema: &str,
    table: &str,
) -> Result<Option<(Vec<String>, Option<String>)>> {
    if server_version(conn) < 150_000 {
        return Ok(None);
    }
    let wh = format!(
        "pubname = {} AND schemaname = {} AND tablename = {}",
        quote_literal(publication),
        quote_literal(schema),
        quote_literal(table)
    );
    let cols = conn
        .simple_query(&format!(
            "SELECT a.n FROM pg_catalog.pg_publication_tables pt, \
                    unnest(pt.attnames) WITH ORDINALITY AS a(n, i) WHERE {wh} ORDER BY a.i"
        ))
        .await?
        .iter()
        .filter_map(|r| r.get(0).map(str::to_string))
        .collect();
    let filter = conn
        .simple_query(&format!(
            "SELECT rowfilter FROM pg_catalog.pg_publication_tables WHERE {wh}"
        ))
        .await?
        .first()
        .and_then(|r| r.get(0).map(str::to_string));
    Ok(Some((cols, filter)))
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn version_numbers_from_server_version() {
        assert_eq!(version_num("17.12 (Debian 17.12-0+deb13u1)"), 170_012);
        assert_eq!(version_num("18.6"), 180_006);
        assert_eq!(version_num("15.20"), 150_020);
        assert_eq!(version_num("18beta1"), 180_000);
        assert_eq!(version_num("16devel"), 160_000);
        assert_eq!(version_num(""), 0);
    }

    #[test]
    fn slot_ownership_is_exact() {
        assert!(is_slot_of("x", "x"));
        assert!(is_slot_of("x_sync_16384", "x"));
        assert!(!is_slot_of("x_sync_eu", "x"));
        assert!(!is_slot_of("x_sync_eu_sync_16384", "x"));
        assert!(!is_slot_of("x_sync_", "x"));
        assert!(!is_slot_of("xy", "x"));
        assert!(is_slot_of("x_sync_eu_sync_16384", "x_sync_eu"));
        assert!(!is_slot_of("x_sync_16384", "x_sync_eu"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("a'b"), "'a''b'");
        assert_eq!(quote_ident("Mixed \"Q\""), "\"Mixed \"\"Q\"\"\"");
    }
}

/// A source sequence's state, by the column of a table it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SequenceValue {
    pub column: String,
    pub last_value: i64,
    pub is_called: bool,
}

/// The sequences of source table `schema`.`table` (see `crate::sequences`) and their
/// current values (the source role needs SELECT on them).
pub async fn sequence_values(
    conn: &mut Connection,
    schema: &str,
    table: &str,
) -> Result<Vec<SequenceValue>> {
    let mut out = Vec::new();
    for r in conn
        .simple_query(&crate::sequences::query(schema, table))
        .await?
    {
        let (Some(column), Some(seq)) = (r.get(0), r.get(1)) else {
            continue;
        };
        let rows = conn
            .simple_query(&format!("SELECT last_value, is_called FROM {seq}"))
            .await?;
        if let Some(v) = rows.first() {
            out.push(SequenceValue {
                column: column.to_string(),
                last_value: v.get(0).and_then(|s| s.parse().ok()).unwrap_or(1),
                is_called: v.get(1) == Some("t"),
            });
        }
    }
    Ok(out)
}
