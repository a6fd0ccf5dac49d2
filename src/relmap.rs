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
    /// `format_type(atttypid, atttypmod)`: used as `CAST($n AS <type>)`.
    pub type_name: String,
    pub generated: bool,
    /// `GENERATED ALWAYS AS IDENTITY`: INSERT needs OVERRIDING SYSTEM VALUE, UPDATE may
    /// not set it at all.
    pub always_identity: bool,
}

/// Where one remote column goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The column's name.
    pub name: String,
    /// Quoted column name.
    pub column: String,
    pub type_name: String,
    pub always_identity: bool,
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
    /// The target is a TimescaleDB hypertable (rows must go through the executor).
    pub hypertable: bool,
    /// When the target is a partition: its partitioned ancestors, root first. The applier
    /// locks them before it writes (see `Applier::mapping`).
    pub ancestors: Vec<pg_sys::Oid>,
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
                always_identity: lc.always_identity,
            })),
            None => Err(rc.name.clone()),
        })
        .collect()
}

/// Quoting without a backend (always quotes; valid everywhere).
fn quote_ident_pure(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The remote column indexes that identify a row for UPDATE/DELETE.
pub fn key_columns(rel: &Relation) -> Vec<usize> {
    match rel.replica_identity {
        ReplicaIdentity::Full => (0..rel.columns.len()).collect(),
        _ => rel
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.is_key())
            .map(|(i, _)| i)
            .collect(),
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
    let (oid, local) = Spi::connect(|client| {
        let mut oid = None;
        let mut cols = Vec::new();
        let rows = client.select(
            "SELECT c.oid, a.attname::text, pg_catalog.format_type(a.atttypid, a.atttypmod), \
                    a.attgenerated <> '', a.attidentity = 'a' \
               FROM pg_catalog.pg_class c \
               JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
               LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
              ORDER BY a.attnum",
            None,
            &[schema.into(), rel.name.as_str().into()],
        )?;
        for row in rows {
            oid = row.get::<pg_sys::Oid>(1)?;
            if row.get::<String>(2)?.is_none() {
                continue; // a table without columns
            }
            cols.push(LocalCol {
                name: row.get(2)?.unwrap_or_default(),
                type_name: row.get(3)?.unwrap_or_default(),
                generated: row.get(4)?.unwrap_or(false),
                always_identity: row.get(5)?.unwrap_or(false),
            });
        }
        Ok::<_, pgrx::spi::SpiError>((oid, cols))
    })?;
    let Some(local_oid) = oid else {
        return Err(Error::user(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("relation \"{display}\" does not exist on the target"),
        )
        .hint("Create the table on the target (for example with pg_dump --schema-only from the source); the sync retries and continues. If it is a partition on the source, create the same partition on the target, or publish through the root: ALTER PUBLICATION ... SET (publish_via_partition_root = true)."));
    };
    let cols = match_columns(rel, &local).map_err(|col| {
        Error::user(
            Code::ERRCODE_UNDEFINED_COLUMN,
            format!("column \"{col}\" of relation \"{display}\" is missing on the target"),
        )
        .hint(format!(
            "Add the column on the target, e.g. ALTER TABLE {} ADD COLUMN {} ...; the sync retries and continues.",
            quote_ident(schema) + "." + &quote_ident(&rel.name),
            quote_ident(&col)
        ))
    })?;
    let ancestors = partition_ancestors(local_oid)?;
    let dim_names = hypertable_dimensions(schema, &rel.name)?;
    let hypertable = dim_names.is_some();
    let dim_names = dim_names.unwrap_or_default();
    let dims = rel
        .columns
        .iter()
        .enumerate()
        .filter(|(i, c)| cols[*i].is_some() && dim_names.contains(&c.name))
        .map(|(i, _)| i)
        .collect();
    Ok(Mapping {
        dims,
        hypertable,
        local_oid,
        qualified: format!("{}.{}", quote_ident(schema), quote_ident(&rel.name)),
        display,
        cols,
        key: key_columns(rel),
        identity: rel.replica_identity,
        ancestors,
    })
}

/// The partitioned tables above `oid`, root first; empty when it is not a partition.
fn partition_ancestors(oid: pg_sys::Oid) -> Result<Vec<pg_sys::Oid>> {
    Ok(Spi::connect(|client| {
        // pg_partition_ancestors lists the relation itself, then its parent, upward.
        let rows = client.select(
            "SELECT relid FROM pg_catalog.pg_partition_ancestors($1) WHERE relid <> $1",
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
fn hypertable_dimensions(schema: &str, table: &str) -> Result<Option<Vec<String>>> {
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
            "SELECT d.column_name::text FROM _timescaledb_catalog.dimension d \
               JOIN _timescaledb_catalog.hypertable h ON h.id = d.hypertable_id \
              WHERE h.schema_name = $1 AND h.table_name = $2",
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
            type_name: "integer".into(),
            generated,
            always_identity: false,
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
        assert_eq!(key_columns(&r), vec![1, 2]);
        let r = rel(&[("a", false), ("b", false)], ReplicaIdentity::Full);
        assert_eq!(key_columns(&r), vec![0, 1]);
    }

    #[test]
    fn quoting_is_safe() {
        assert_eq!(quote_ident_pure("we\"ird name"), "\"we\"\"ird name\"");
    }
}
