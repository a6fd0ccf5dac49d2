//! Remote relation -> local table: which target table a source relation's changes go to,
//! which target column each remote column fills, and which columns identify a row.
//!
//! As PostgreSQL's `relation.c`: the target table has the source's schema and name;
//! columns are matched by name; target columns the source does not send get their
//! defaults; generated target columns are computed, never written. A source column with
//! no target column is an error naming both (the user adds the column, and the sync
//! continues).

use crate::error::{Error, Result};
use crate::pgoutput::{Relation, ReplicaIdentity};
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

/// A column of the target table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCol {
    pub name: String,
    /// The column's type, schema-qualified and without its modifier (`"pg_catalog"."varchar"`):
    /// used as `CAST($n AS <type>)`. The modifier is applied by the assignment to the
    /// column, which raises an error on a value too long, as native apply does, where an
    /// explicit cast to `varchar(n)` would cut the value silently.
    pub type_name: String,
    /// `format_type(atttypid, atttypmod)`, for messages.
    pub display_type: String,
    /// `atttypid`.
    pub type_oid: u32,
    /// `OPERATOR("schema".=)`: the equality of the type's default btree operator class,
    /// which native apply also uses to find rows; None for types without one (json, point).
    pub eq_op: Option<String>,
    /// A length the column's type modifier imposes, checked to name the column when a
    /// value does not fit.
    pub limit: Option<Limit>,
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: INSERT needs OVERRIDING SYSTEM VALUE, UPDATE may
    /// not set it at all.
    pub always_identity: bool,
    /// Part of the target's primary key (or, when it has one, replica identity index).
    pub in_local_key: bool,
}

/// What a type modifier allows of a value's text (`varchar(n)`, `char(n)`, `bit(n)`,
/// `varbit(n)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// At most n characters.
    Chars(usize),
    /// At most n characters once trailing spaces are ignored (`char(n)`).
    PaddedChars(usize),
    /// Exactly n bits.
    Bits(usize),
    /// At most n bits.
    VarBits(usize),
}

impl Limit {
    fn from_type(typname: &str, typmod: i32) -> Option<Limit> {
        let n = usize::try_from(typmod).ok()?;
        Some(match typname {
            "varchar" => Limit::Chars(n.checked_sub(4)?),
            "bpchar" => Limit::PaddedChars(n.checked_sub(4)?),
            "bit" => Limit::Bits(n),
            "varbit" => Limit::VarBits(n),
            _ => return None,
        })
    }

    /// The error PostgreSQL's input function raises for a value that does not fit, as
    /// (SQLSTATE, message).
    pub fn violation(self, v: &str, display_type: &str) -> (pgrx::PgSqlErrorCode, String) {
        match self {
            Limit::Bits(_) => (
                Code::ERRCODE_STRING_DATA_LENGTH_MISMATCH,
                format!(
                    "bit string length {} does not match type {display_type}",
                    v.len()
                ),
            ),
            Limit::VarBits(_) => (
                Code::ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
                format!("bit string too long for type {display_type}"),
            ),
            _ => (
                Code::ERRCODE_STRING_DATA_RIGHT_TRUNCATION,
                format!("value too long for type {display_type}"),
            ),
        }
    }

    /// Does the source's text for a value fit (pure)?
    pub fn admits(self, v: &str) -> bool {
        match self {
            Limit::Chars(n) => v.chars().count() <= n,
            Limit::PaddedChars(n) => v.trim_end_matches(' ').chars().count() <= n,
            Limit::Bits(n) => v.len() == n,
            Limit::VarBits(n) => v.len() <= n,
        }
    }
}

/// Where one remote column goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The column's name.
    pub name: String,
    /// Quoted column name.
    pub column: String,
    /// See [`LocalCol::type_name`].
    pub type_name: String,
    pub display_type: String,
    pub eq_op: Option<String>,
    pub limit: Option<Limit>,
    pub always_identity: bool,
    /// The target column's type (`atttypid`).
    pub type_oid: u32,
    /// Binary values of this column (a binary stream's) may be loaded by COPY as they
    /// came: the source column has the target's own type, a built-in one whose binary
    /// form means the same on both servers ([`crate::binval::safe`]), and no
    /// `bit(n)`/`varbit(n)` limit to check on its text.
    pub binary: bool,
}

#[derive(Debug, Clone)]
pub struct Mapping {
    pub local_oid: pg_sys::Oid,
    /// `"schema"."table"`, quoted, for SQL.
    pub qualified: String,
    /// `schema.table`, for messages.
    pub display: String,
    /// Per remote column (in the Relation's order): its target, or None when not written.
    pub cols: Vec<Option<Target>>,
    /// Remote column indexes that identify a row (replica identity), in order.
    pub key: Vec<usize>,
    pub identity: ReplicaIdentity,
    /// When the target is a TimescaleDB hypertable: remote column indexes of its
    /// partitioning (dimension) columns. An UPDATE that changes one must move the row to
    /// another chunk, which TimescaleDB's UPDATE cannot do.
    pub dims: Vec<usize>,
    /// The target is a TimescaleDB hypertable (rows must go through the executor or
    /// TimescaleDB's COPY, which route them into chunks).
    pub hypertable: bool,
    /// A hypertable's open (time) dimension, when the sync writes it: remote column index
    /// and the chunk interval in TimescaleDB's internal units (microseconds for time
    /// types). Runs are split by it into chunk-sized groups (`apply::run_groups`).
    pub open_dim: Option<(usize, i64)>,
    /// When the target is a partition: its partitioned ancestors, root first. The applier
    /// locks them before it writes (see `Applier::mapping`).
    pub ancestors: Vec<pg_sys::Oid>,
    /// The target is a partitioned table: TRUNCATE must recurse into its partitions.
    pub partitioned: bool,
    /// REPLICA IDENTITY FULL and no target key to find rows by: a row is found by every
    /// column the source sent, and exactly one matching row is changed.
    pub by_all_columns: bool,
    /// The target table's owner: changes and copies run as this role (see
    /// `apply::as_owner`).
    pub owner: pg_sys::Oid,
    /// The target (or one of its partitions) has user triggers that fire during apply
    /// (`ENABLE ALWAYS` / `ENABLE REPLICA`): its changes are applied in source order
    /// with every other table's, one row at a time, never merged (`apply::Applier`).
    pub triggers: bool,
    /// The target has a unique index or exclusion constraint on a column other than the
    /// row's key and hypertable dimensions (or on an expression): rows updated together
    /// could collide on it in an order the source never had (a swap of two values), so
    /// UPDATEs are applied one at a time, in source order.
    pub unique_elsewhere: bool,
}

pub fn quote_ident(s: &str) -> String {
    pgrx::spi::quote_identifier(s)
}

/// Match remote columns to local ones by name (pure).
pub fn match_columns(
    rel: &Relation,
    local: &[LocalCol],
) -> std::result::Result<Vec<Option<Target>>, String> {
    rel.columns
        .iter()
        .map(|rc| match local.iter().find(|lc| lc.name == rc.name) {
            Some(lc) if lc.generated => Ok(None),
            Some(lc) => Ok(Some(Target {
                name: lc.name.clone(),
                column: quote_ident_pure(&lc.name),
                type_name: lc.type_name.clone(),
                display_type: lc.display_type.clone(),
                eq_op: lc.eq_op.clone(),
                limit: lc.limit,
                always_identity: lc.always_identity,
                type_oid: lc.type_oid,
                binary: rc.type_oid == lc.type_oid
                    && crate::binval::safe(rc.type_oid)
                    && !matches!(lc.limit, Some(Limit::Bits(_) | Limit::VarBits(_))),
            })),
            None => Err(rc.name.clone()),
        })
        .collect()
}

/// Quoting without a backend (always quotes; valid everywhere).
fn quote_ident_pure(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The remote column indexes that identify a row for UPDATE/DELETE, and whether rows are
/// found by all columns (FULL without a usable target key) (pure).
///
/// With REPLICA IDENTITY FULL the source sends every column; when the target has a
/// primary key (or replica identity index) whose columns all come from the source, the
/// row is found through it, as native apply finds it through that index; otherwise by
/// every column.
fn key_and_scan(rel: &Relation, local: &[LocalCol]) -> (Vec<usize>, bool) {
    match rel.replica_identity {
        ReplicaIdentity::Full => {
            let local_key: Vec<&LocalCol> = local.iter().filter(|c| c.in_local_key).collect();
            let by_local_key: Vec<usize> = rel
                .columns
                .iter()
                .enumerate()
                .filter(|(_, rc)| local_key.iter().any(|lc| lc.name == rc.name))
                .map(|(i, _)| i)
                .collect();
            if !local_key.is_empty()
                && by_local_key.len() == local_key.len()
                && local_key.iter().all(|lc| lc.eq_op.is_some())
            {
                (by_local_key, false)
            } else {
                ((0..rel.columns.len()).collect(), true)
            }
        }
        _ => (
            rel.columns
                .iter()
                .enumerate()
                .filter(|(_, c)| c.is_key())
                .map(|(i, _)| i)
                .collect(),
            false,
        ),
    }
}

/// Resolve the target table of `rel` (SPI; inside a transaction).
pub fn resolve(rel: &Relation) -> Result<Mapping> {
    let schema = if rel.namespace.is_empty() {
        "pg_catalog"
    } else {
        &rel.namespace
    };
    let display = format!("{schema}.{}", rel.name);
    let (oid, relkind, owner, local) = Spi::connect(|client| {
        let mut oid = None;
        let mut relkind = None;
        let mut owner = pg_sys::InvalidOid;
        let mut cols = Vec::new();
        // The target's key: its replica identity index if it has one, else its primary key
        // (what native apply looks rows up by).
        let rows = client.select(
            "SELECT c.oid, c.relkind::pg_catalog.text, c.relowner, a.attname::pg_catalog.text, tn.nspname::pg_catalog.text, t.typname::pg_catalog.text, \
                    a.atttypid, a.atttypmod, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                    a.attgenerated OPERATOR(pg_catalog.<>) '', a.attidentity OPERATOR(pg_catalog.=) 'a', \
                    a.attnum OPERATOR(pg_catalog.=) ANY ( \
                      SELECT k FROM pg_catalog.pg_index i, pg_catalog.unnest(i.indkey) AS k \
                       WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indexprs IS NULL \
                         AND i.indpred IS NULL AND i.indisunique \
                         AND (i.indisreplident OR (i.indisprimary AND NOT EXISTS ( \
                              SELECT FROM pg_catalog.pg_index r \
                               WHERE r.indrelid OPERATOR(pg_catalog.=) c.oid AND r.indisreplident)))) \
               FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
               LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid \
                    AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
               LEFT JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) a.atttypid \
               LEFT JOIN pg_catalog.pg_namespace tn ON tn.oid OPERATOR(pg_catalog.=) t.typnamespace \
              WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2 \
                AND c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p}'::pg_catalog.\"char\"[]) \
              ORDER BY a.attnum",
            None,
            &[schema.into(), rel.name.as_str().into()],
        )?;
        for row in rows {
            oid = row.get::<pg_sys::Oid>(1)?;
            relkind = row.get::<String>(2)?;
            owner = row.get::<pg_sys::Oid>(3)?.unwrap_or(pg_sys::InvalidOid);
            let Some(name) = row.get::<String>(4)? else {
                continue; // a table without columns
            };
            let typschema: String = row.get(5)?.unwrap_or_default();
            let typname: String = row.get(6)?.unwrap_or_default();
            let typid: pg_sys::Oid = row.get(7)?.unwrap_or(pg_sys::InvalidOid);
            let typmod: i32 = row.get(8)?.unwrap_or(-1);
            cols.push(LocalCol {
                name,
                type_name: format!(
                    "{}.{}",
                    quote_ident_pure(&typschema),
                    quote_ident_pure(&typname)
                ),
                display_type: row.get(9)?.unwrap_or_default(),
                type_oid: typid.to_u32(),
                eq_op: equality_operator(typid),
                limit: if typschema == "pg_catalog" {
                    Limit::from_type(&typname, typmod)
                } else {
                    None
                },
                generated: row.get(10)?.unwrap_or(false),
                always_identity: row.get(11)?.unwrap_or(false),
                in_local_key: row.get(12)?.unwrap_or(false),
            });
        }
        Ok::<_, pgrx::spi::SpiError>((oid, relkind, owner, cols))
    })?;
    let Some(local_oid) = oid else {
        return Err(Error::user(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("relation \"{display}\" does not exist on the target"),
        )
        .hint("Create the table on the target (for example with pg_dump --schema-only from the source), or let livesync create it: SELECT livesync_alter('<subscription>', create_tables => true); the sync retries and continues. If it is a partition on the source, create the same partition on the target, or publish through the root: ALTER PUBLICATION ... SET (publish_via_partition_root = true)."));
    };
    let cols = match_columns(rel, &local).map_err(|col| {
        Error::user(
            Code::ERRCODE_UNDEFINED_COLUMN,
            format!("column \"{col}\" of relation \"{display}\" is missing on the target"),
        )
        .hint(format!(
            "Add the column on the target, e.g. ALTER TABLE {} ADD COLUMN {} ..., or let livesync add the columns the source gains: SELECT livesync_alter('<subscription>', add_columns => true); the sync retries and continues.",
            quote_ident(schema) + "." + &quote_ident(&rel.name),
            quote_ident(&col)
        ))
    })?;
    let ancestors = partition_ancestors(local_oid)?;
    let dim_names = hypertable_dimensions(schema, &rel.name)?;
    let hypertable = dim_names.is_some();
    let dim_names = dim_names.unwrap_or_default();
    let dims: Vec<usize> = rel
        .columns
        .iter()
        .enumerate()
        .filter(|(i, c)| cols[*i].is_some() && dim_names.contains(&c.name))
        .map(|(i, _)| i)
        .collect();
    let open_dim = if hypertable {
        open_dimension(schema, &rel.name)?.and_then(|(name, interval)| {
            let i = rel.columns.iter().position(|c| c.name == name)?;
            (cols[i].is_some() && interval > 0).then_some((i, interval))
        })
    } else {
        None
    };
    let (key, by_all_columns) = key_and_scan(rel, &local);
    let triggers = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_trigger \
          WHERE tgrelid OPERATOR(pg_catalog.=) ANY (SELECT relid FROM pg_catalog.pg_partition_tree($1)) \
            AND NOT tgisinternal AND tgenabled OPERATOR(pg_catalog.=) ANY ('{A,R}'::pg_catalog.\"char\"[]))",
        &[local_oid.into()],
    )?
    .unwrap_or(true);
    let fixed: Vec<String> = key
        .iter()
        .chain(&dims)
        .filter_map(|&i: &usize| cols[i].as_ref().map(|t| t.name.clone()))
        .collect();
    let unique_elsewhere = Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_index i \
           CROSS JOIN LATERAL pg_catalog.unnest(i.indkey::pg_catalog.int2[]) AS k(attnum) \
           LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid \
                AND a.attnum OPERATOR(pg_catalog.=) k.attnum \
          WHERE i.indrelid OPERATOR(pg_catalog.=) $1 AND (i.indisunique OR i.indisexclusion) \
            AND (k.attnum OPERATOR(pg_catalog.=) 0 \
                 OR NOT a.attname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($2)))",
        &[local_oid.into(), fixed.into()],
    )?
    .unwrap_or(true);
    Ok(Mapping {
        unique_elsewhere,
        triggers,
        owner,
        by_all_columns,
        dims,
        hypertable,
        open_dim,
        local_oid,
        qualified: format!("{}.{}", quote_ident(schema), quote_ident(&rel.name)),
        display,
        cols,
        key,
        identity: rel.replica_identity,
        ancestors,
        partitioned: relkind.as_deref() == Some("p"),
    })
}

/// `OPERATOR("schema".=)` of the equality operator of `typid`'s default btree operator
/// class (PostgreSQL's type cache finds it for domains and binary-compatible types too).
fn equality_operator(typid: pg_sys::Oid) -> Option<String> {
    if typid == pg_sys::InvalidOid {
        return None;
    }
    // SAFETY: a type-cache lookup on the main thread, inside a transaction; the entry
    // lives as long as the cache.
    let opr = unsafe {
        let tce = pg_sys::lookup_type_cache(typid, pg_sys::TYPECACHE_EQ_OPR as i32);
        if tce.is_null() {
            return None;
        }
        (*tce).eq_opr
    };
    if opr == pg_sys::InvalidOid {
        return None;
    }
    let row = Spi::connect(|client| {
        let t = client.select(
            "SELECT n.nspname::pg_catalog.text, o.oprname::pg_catalog.text FROM pg_catalog.pg_operator o \
               JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) o.oprnamespace \
              WHERE o.oid OPERATOR(pg_catalog.=) $1",
            Some(1),
            &[opr.into()],
        )?;
        let mut out = None;
        for r in t {
            out = Some((r.get::<String>(1)?, r.get::<String>(2)?));
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })
    .ok()??;
    let (Some(nsp), Some(name)) = row else {
        return None;
    };
    Some(format!("OPERATOR({}.{name})", quote_ident_pure(&nsp)))
}

/// The partitioned tables above `oid`, root first; empty when it is not a partition.
fn partition_ancestors(oid: pg_sys::Oid) -> Result<Vec<pg_sys::Oid>> {
    Ok(Spi::connect(|client| {
        // pg_partition_ancestors lists the relation itself, then its parent, upward.
        let rows = client.select(
            "SELECT relid FROM pg_catalog.pg_partition_ancestors($1) WHERE relid OPERATOR(pg_catalog.<>) $1",
            None,
            &[oid.into()],
        )?;
        let mut up = Vec::new();
        for row in rows {
            if let Some(o) = row.get::<pg_sys::Oid>(1)? {
                up.push(o);
            }
        }
        up.reverse();
        Ok::<_, pgrx::spi::SpiError>(up)
    })?)
}

/// Partitioning columns of a hypertable; None when the table is not one.
pub fn hypertable_dimensions(schema: &str, table: &str) -> Result<Option<Vec<String>>> {
    let has_tsdb = Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regclass('_timescaledb_catalog.dimension') IS NOT NULL",
    )?
    .unwrap_or(false);
    if !has_tsdb {
        return Ok(None);
    }
    let dims: Vec<String> = Spi::connect(|client| {
        let mut out = Vec::new();
        for row in client.select(
            "SELECT d.column_name::pg_catalog.text FROM _timescaledb_catalog.dimension d \
               JOIN _timescaledb_catalog.hypertable h ON h.id OPERATOR(pg_catalog.=) d.hypertable_id \
              WHERE h.schema_name OPERATOR(pg_catalog.=) $1 AND h.table_name OPERATOR(pg_catalog.=) $2",
            None,
            &[schema.into(), table.into()],
        )? {
            if let Some(n) = row.get::<String>(1)? {
                out.push(n);
            }
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })?;
    Ok((!dims.is_empty()).then_some(dims))
}

/// A hypertable's first open (time) dimension: its column and its chunk interval
/// (`_timescaledb_catalog.dimension.interval_length`).
fn open_dimension(schema: &str, table: &str) -> Result<Option<(String, i64)>> {
    let row = Spi::connect(|client| {
        let rows = client.select(
            "SELECT d.column_name::pg_catalog.text, d.interval_length FROM _timescaledb_catalog.dimension d \
               JOIN _timescaledb_catalog.hypertable h ON h.id OPERATOR(pg_catalog.=) d.hypertable_id \
              WHERE h.schema_name OPERATOR(pg_catalog.=) $1 AND h.table_name OPERATOR(pg_catalog.=) $2 \
                AND d.interval_length IS NOT NULL \
              ORDER BY d.id LIMIT 1",
            None,
            &[schema.into(), table.into()],
        )?;
        match rows.into_iter().next() {
            Some(r) => Ok::<_, pgrx::spi::SpiError>(r.get::<String>(1)?.zip(r.get::<i64>(2)?)),
            None => Ok(None),
        }
    })?;
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::Column;

    fn rel(cols: &[(&str, bool)], ri: ReplicaIdentity) -> Relation {
        Relation {
            id: 1,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: ri,
            columns: cols
                .iter()
                .map(|(n, k)| Column {
                    flags: *k as u8,
                    name: n.to_string(),
                    type_oid: 23,
                    type_mod: -1,
                })
                .collect(),
        }
    }

    fn lc(name: &str, generated: bool) -> LocalCol {
        LocalCol {
            name: name.into(),
            type_name: "\"pg_catalog\".\"int4\"".into(),
            display_type: "integer".into(),
            type_oid: 23,
            eq_op: Some("OPERATOR(\"pg_catalog\".=)".into()),
            limit: None,
            generated,
            always_identity: false,
            in_local_key: false,
        }
    }

    #[test]
    fn matches_by_name_in_any_order() {
        let r = rel(&[("a", true), ("b", false)], ReplicaIdentity::Default);
        let m = match_columns(&r, &[lc("extra", false), lc("b", false), lc("a", false)]).unwrap();
        assert_eq!(m[0].as_ref().unwrap().column, "\"a\"");
        assert_eq!(m[1].as_ref().unwrap().column, "\"b\"");
    }

    #[test]
    fn generated_target_columns_are_not_written() {
        let r = rel(&[("a", true), ("g", false)], ReplicaIdentity::Default);
        let m = match_columns(&r, &[lc("a", false), lc("g", true)]).unwrap();
        assert!(m[1].is_none());
    }

    #[test]
    fn missing_column_is_named() {
        let r = rel(&[("a", true), ("gone", false)], ReplicaIdentity::Default);
        assert_eq!(match_columns(&r, &[lc("a", false)]).unwrap_err(), "gone");
    }

    #[test]
    fn keys() {
        let r = rel(
            &[("a", false), ("b", true), ("c", true)],
            ReplicaIdentity::Default,
        );
        assert_eq!(key_and_scan(&r, &[]), (vec![1, 2], false));
        let r = rel(&[("a", false), ("b", false)], ReplicaIdentity::Full);
        assert_eq!(key_and_scan(&r, &[]), (vec![0, 1], true));
        // FULL, and the target has a key on columns the source sends: found through it.
        let mut b = lc("b", false);
        b.in_local_key = true;
        assert_eq!(
            key_and_scan(&r, &[lc("a", false), b.clone()]),
            (vec![1], false)
        );
        // ... but not when a key column is not sent, or has no equality operator.
        let mut c = lc("c", false);
        c.in_local_key = true;
        assert_eq!(key_and_scan(&r, &[b.clone(), c]), (vec![0, 1], true));
        b.eq_op = None;
        assert_eq!(key_and_scan(&r, &[b]), (vec![0, 1], true));
    }

    #[test]
    fn limits() {
        assert_eq!(Limit::from_type("varchar", 9), Some(Limit::Chars(5)));
        assert_eq!(Limit::from_type("varchar", -1), None);
        assert_eq!(Limit::from_type("bpchar", 7), Some(Limit::PaddedChars(3)));
        assert_eq!(Limit::from_type("bit", 4), Some(Limit::Bits(4)));
        assert_eq!(Limit::from_type("text", 9), None);
        assert!(Limit::Chars(3).admits("héé"));
        assert!(!Limit::Chars(3).admits("abcd"));
        assert!(Limit::PaddedChars(3).admits("abc   "));
        assert!(!Limit::PaddedChars(3).admits("abcd"));
        assert!(!Limit::Bits(4).admits("101"));
        assert!(Limit::VarBits(4).admits("101"));
    }

    #[test]
    fn quoting_is_safe() {
        assert_eq!(quote_ident_pure("we\"ird name"), "\"we\"\"ird name\"");
    }
}
