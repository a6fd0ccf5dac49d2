//! Creating a missing target table from the source's definition (`create_tables`), and
//! adding a column the source gained (`add_columns`).
//!
//! What is created, as the issue and API.md ask: the published columns with their types,
//! NOT NULL, defaults that no sequence is behind, stored generated columns, the primary
//! key, and the replica identity index. A map entry's `"hypertable"` makes it a hypertable
//! (`by_range`, and a `by_hash` dimension when asked); without one, a table that is a
//! hypertable on the source (its chunks are what is published) becomes a hypertable with
//! the source's dimensions. Types and expressions are printed by the source with an empty
//! `search_path`, so every name outside `pg_catalog` comes schema-qualified.

use crate::error::{Error, Result};
use crate::remote::quote_literal;
use crate::source::Connection;
use crate::tablemap::HypertableSpec;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode as Code;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub name: String,
    /// `format_type(atttypid, atttypmod)`, as the source prints it.
    pub type_sql: String,
    pub not_null: bool,
    pub default: Option<String>,
    /// A stored generated column's expression.
    pub generated: Option<String>,
}

/// A dimension of a source hypertable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dimension {
    /// A range dimension: its column and interval (microseconds for time types, the
    /// integer interval otherwise).
    Range {
        column: String,
        interval: i64,
        time: bool,
    },
    Hash {
        column: String,
        partitions: i32,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableDef {
    pub columns: Vec<ColumnDef>,
    /// `PRIMARY KEY (...)`, as `pg_get_constraintdef` prints it.
    pub primary_key: Option<String>,
    /// The replica identity index, when it is not the primary key: its columns.
    pub replica_identity: Option<Vec<String>>,
    /// The source table is a hypertable: its dimensions.
    pub dimensions: Vec<Dimension>,
}

fn lit_table(schema: &str, table: &str) -> String {
    format!(
        "(SELECT c.oid FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
            ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
          WHERE n.nspname OPERATOR(pg_catalog.=) {} AND c.relname OPERATOR(pg_catalog.=) {})",
        quote_literal(schema),
        quote_literal(table)
    )
}

/// Read the definition of source table `schema`.`table`, limited to `columns` when the
/// publication lists only some (None: all).
pub async fn fetch(
    conn: &mut Connection,
    schema: &str,
    table: &str,
    columns: Option<&[String]>,
) -> Result<TableDef> {
    let t = lit_table(schema, table);
    let mut def = TableDef::default();
    for r in conn
        .simple_query(&format!(
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), a.attnotnull, \
                    CASE WHEN a.attgenerated OPERATOR(pg_catalog.=) '' AND a.attidentity OPERATOR(pg_catalog.=) '' \
                          AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d \
                                           WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
                                             AND d.objid OPERATOR(pg_catalog.=) ad.oid \
                                             AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                                             AND (SELECT relkind FROM pg_catalog.pg_class s \
                                                   WHERE s.oid OPERATOR(pg_catalog.=) d.refobjid) OPERATOR(pg_catalog.=) 'S') \
                         THEN pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END, \
                    CASE WHEN a.attgenerated OPERATOR(pg_catalog.=) 's' THEN pg_catalog.pg_get_expr(ad.adbin, ad.adrelid) END \
               FROM pg_catalog.pg_attribute a \
               LEFT JOIN pg_catalog.pg_attrdef ad ON ad.adrelid OPERATOR(pg_catalog.=) a.attrelid \
                    AND ad.adnum OPERATOR(pg_catalog.=) a.attnum \
              WHERE a.attrelid OPERATOR(pg_catalog.=) {t} AND a.attnum OPERATOR(pg_catalog.>) 0 \
                AND NOT a.attisdropped \
              ORDER BY a.attnum"
        ))
        .await?
    {
        let name = r.get(0).unwrap_or_default().to_string();
        let generated = r.get(4).map(str::to_string);
        if columns.is_some_and(|cols| !cols.contains(&name)) && generated.is_none() {
            continue;
        }
        def.columns.push(ColumnDef {
            name,
            type_sql: r.get(1).unwrap_or_default().to_string(),
            not_null: r.get(2) == Some("t"),
            default: r.get(3).map(str::to_string),
            generated,
        });
    }
    if def.columns.is_empty() {
        return Err(Error::user(
            Code::ERRCODE_UNDEFINED_TABLE,
            format!("table \"{schema}.{table}\" was not found on the source"),
        ));
    }
    def.primary_key = conn
        .simple_query(&format!(
            "SELECT pg_catalog.pg_get_constraintdef(oid) FROM pg_catalog.pg_constraint \
              WHERE conrelid OPERATOR(pg_catalog.=) {t} AND contype OPERATOR(pg_catalog.=) 'p'"
        ))
        .await?
        .first()
        .and_then(|r| r.get(0).map(str::to_string));
    let ri = conn
        .simple_query(&format!(
            "SELECT a.attname FROM pg_catalog.pg_index i \
               JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) i.indrelid \
                AND a.attnum OPERATOR(pg_catalog.=) ANY (i.indkey) \
              WHERE i.indrelid OPERATOR(pg_catalog.=) {t} AND i.indisreplident AND NOT i.indisprimary \
              ORDER BY pg_catalog.array_position(i.indkey::pg_catalog.int2[], a.attnum)"
        ))
        .await?;
    if !ri.is_empty() {
        def.replica_identity = Some(
            ri.iter()
                .filter_map(|r| r.get(0).map(str::to_string))
                .collect(),
        );
    }
    let tsdb = conn
        .simple_query("SELECT pg_catalog.to_regclass('_timescaledb_catalog.dimension') IS NOT NULL")
        .await?;
    if tsdb.first().and_then(|r| r.get(0)) == Some("t") {
        for r in conn
            .simple_query(&format!(
                "SELECT d.column_name, d.interval_length, d.num_slices, \
                        d.column_type OPERATOR(pg_catalog.=) ANY ('{{timestamptz,timestamp,date}}'::pg_catalog.regtype[]) \
                   FROM _timescaledb_catalog.dimension d \
                   JOIN _timescaledb_catalog.hypertable h ON h.id OPERATOR(pg_catalog.=) d.hypertable_id \
                  WHERE h.schema_name OPERATOR(pg_catalog.=) {} AND h.table_name OPERATOR(pg_catalog.=) {} \
                  ORDER BY d.id",
                quote_literal(schema),
                quote_literal(table)
            ))
            .await?
        {
            let column = r.get(0).unwrap_or_default().to_string();
            match (
                r.get(1).and_then(|s| s.parse::<i64>().ok()),
                r.get(2).and_then(|s| s.parse::<i32>().ok()),
            ) {
                (Some(interval), _) => def.dimensions.push(Dimension::Range {
                    column,
                    interval,
                    time: r.get(3) == Some("t"),
                }),
                (None, Some(partitions)) => {
                    def.dimensions.push(Dimension::Hash { column, partitions })
                }
                _ => {}
            }
        }
    }
    Ok(def)
}

fn qi(s: &str) -> String {
    crate::remote::quote_ident(s)
}

/// The statements that create `schema`.`table` from `def` (pure). `tsdb` is the schema of
/// the target's TimescaleDB extension, needed for a hypertable.
pub fn create_sql(
    schema: &str,
    table: &str,
    def: &TableDef,
    hypertable: Option<&HypertableSpec>,
    tsdb: Option<&str>,
) -> std::result::Result<Vec<String>, String> {
    let target = format!("{}.{}", qi(schema), qi(table));
    let mut items: Vec<String> = def
        .columns
        .iter()
        .map(|c| {
            let mut s = format!("{} {}", qi(&c.name), c.type_sql);
            if let Some(g) = &c.generated {
                s.push_str(&format!(" GENERATED ALWAYS AS ({g}) STORED"));
            } else if let Some(d) = &c.default {
                s.push_str(&format!(" DEFAULT {d}"));
            }
            if c.not_null {
                s.push_str(" NOT NULL");
            }
            s
        })
        .collect();
    if let Some(pk) = &def.primary_key {
        items.push(pk.clone());
    }
    let mut out = vec![
        format!("CREATE SCHEMA IF NOT EXISTS {}", qi(schema)),
        format!("CREATE TABLE {target} ({})", items.join(", ")),
    ];
    let dims: Vec<Dimension> = match hypertable {
        Some(h) => {
            let mut d = vec![Dimension::Range {
                column: h.time_column.clone(),
                interval: -1,
                time: true,
            }];
            if let (Some(c), Some(n)) = (&h.partitioning_column, h.number_partitions) {
                d.push(Dimension::Hash {
                    column: c.clone(),
                    partitions: n as i32,
                });
            }
            d
        }
        None => def.dimensions.clone(),
    };
    if !dims.is_empty() {
        let Some(tsdb) = tsdb else {
            return Err("TimescaleDB is not installed in the target database".into());
        };
        let ts = qi(tsdb);
        for (i, d) in dims.iter().enumerate() {
            let dim = match d {
                Dimension::Range {
                    column,
                    interval,
                    time,
                } => {
                    if !def.columns.iter().any(|c| &c.name == column) {
                        return Err(format!("the table has no column \"{column}\""));
                    }
                    let iv = if *interval >= 0 {
                        if *time {
                            format!(", '{interval} microseconds'::pg_catalog.interval")
                        } else {
                            format!(", {interval}::pg_catalog.int8")
                        }
                    } else {
                        match hypertable.and_then(|h| h.chunk_interval_text()) {
                            Some(t) if t.trim().parse::<i64>().is_ok() => {
                                format!(", {}::pg_catalog.int8", t.trim())
                            }
                            Some(t) => format!(", {}::pg_catalog.interval", quote_literal(&t)),
                            None => String::new(),
                        }
                    };
                    format!("{ts}.by_range({}{iv})", quote_literal(column))
                }
                Dimension::Hash { column, partitions } => {
                    if !def.columns.iter().any(|c| &c.name == column) {
                        return Err(format!("the table has no column \"{column}\""));
                    }
                    format!("{ts}.by_hash({}, {partitions})", quote_literal(column))
                }
            };
            out.push(if i == 0 {
                format!(
                    "SELECT {ts}.create_hypertable({}::pg_catalog.regclass, {dim})",
                    quote_literal(&target)
                )
            } else {
                format!(
                    "SELECT {ts}.add_dimension({}::pg_catalog.regclass, {dim})",
                    quote_literal(&target)
                )
            });
        }
    }
    if let Some(cols) = &def.replica_identity {
        let index = format!("{table}_replica_identity");
        let index: String = index.chars().take(63).collect();
        out.push(format!(
            "CREATE UNIQUE INDEX {} ON {target} ({})",
            qi(&index),
            cols.iter().map(|c| qi(c)).collect::<Vec<_>>().join(", ")
        ));
        out.push(format!(
            "ALTER TABLE {target} REPLICA IDENTITY USING INDEX {}",
            qi(&index)
        ));
    }
    Ok(out)
}

/// The schema TimescaleDB is installed in, in this (target) database.
fn timescaledb_schema() -> Result<Option<String>> {
    Ok(Spi::get_one::<String>(
        "SELECT n.nspname::pg_catalog.text FROM pg_catalog.pg_extension e \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) e.extnamespace \
          WHERE e.extname OPERATOR(pg_catalog.=) 'timescaledb'",
    )?)
}

/// Does `schema`.`table` exist on the target?
pub fn exists(schema: &str, table: &str) -> Result<bool> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace \
          WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2)",
        &[schema.into(), table.into()],
    )?
    .unwrap_or(false))
}

/// Create `schema`.`table` on the target (inside the caller's transaction).
///
/// The definition is the source's text: every type must parse as a type of the target
/// (`regtype`), and every statement runs as one prepared statement, so no text the source
/// sends can add a command. The table is created by the owner of its schema, as if that
/// role had created it (a superuser-owned schema, e.g. one livesync creates, gives a table
/// of livesync's role): changes and copies run as the table's owner (`apply::as_owner`),
/// and the source's defaults and generated columns never run with livesync's rights in a
/// schema someone else controls.
pub fn create(
    schema: &str,
    table: &str,
    def: &TableDef,
    hypertable: Option<&HypertableSpec>,
) -> Result<()> {
    for c in &def.columns {
        Spi::get_one_with_args::<pg_sys::Oid>(
            "SELECT $1::pg_catalog.regtype::pg_catalog.oid",
            &[c.type_sql.as_str().into()],
        )
        .map_err(|_| {
            Error::user(
                Code::ERRCODE_UNDEFINED_OBJECT,
                format!(
                    "cannot create table \"{schema}.{table}\": type {} of column \"{}\" does not exist on the target",
                    c.type_sql, c.name
                ),
            )
            .hint("Create the type on the target (as on the source), or create the table yourself.")
        })?;
    }
    let tsdb = timescaledb_schema()?;
    let stmts = create_sql(schema, table, def, hypertable, tsdb.as_deref()).map_err(|e| {
        Error::user(
            Code::ERRCODE_INVALID_TABLE_DEFINITION,
            format!("cannot create table \"{schema}.{table}\" as a hypertable: {e}"),
        )
        .hint("Fix the \"hypertable\" entry of the sync's table_map (livesync_alter), or create the table on the target yourself.")
    })?;
    let (first, rest) = stmts.split_first().expect("CREATE SCHEMA comes first");
    run_one(first)?;
    crate::apply::as_role(schema_owner(schema)?, || {
        rest.iter().try_for_each(|s| run_one(s))
    })
}

/// Run one statement (a prepared statement holds exactly one).
fn run_one(sql: &str) -> Result<()> {
    Spi::connect_mut(|c| {
        let plan = c.prepare_mut(sql, &[])?;
        c.update(&plan, None, &[])?;
        Ok::<_, pgrx::spi::SpiError>(())
    })?;
    Ok(())
}

/// The role that owns `schema` (the database's owner for `pg_database_owner`), unless it is
/// a superuser: then livesync's own role creates the table (InvalidOid).
fn schema_owner(schema: &str) -> Result<pg_sys::Oid> {
    Ok(Spi::get_one_with_args::<pg_sys::Oid>(
        "SELECT o.oid FROM pg_catalog.pg_namespace n \
           JOIN pg_catalog.pg_database d ON d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database() \
           JOIN pg_catalog.pg_roles o ON o.oid OPERATOR(pg_catalog.=) \
                CASE WHEN n.nspowner OPERATOR(pg_catalog.=) 'pg_database_owner'::pg_catalog.regrole \
                     THEN d.datdba ELSE n.nspowner END \
          WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND NOT o.rolsuper",
        &[schema.into()],
    )
    .or_else(|e| match e {
        pgrx::spi::SpiError::InvalidPosition => Ok(None),
        e => Err(e),
    })?
    .unwrap_or(pg_sys::InvalidOid))
}

/// Add column `column` of type `type_sql` (as the source prints it) to a target table.
pub fn add_column(qualified: &str, column: &str, type_sql: &str) -> Result<()> {
    Spi::run(&format!(
        "ALTER TABLE {qualified} ADD COLUMN IF NOT EXISTS {} {type_sql}",
        qi(column)
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> TableDef {
        TableDef {
            columns: vec![
                ColumnDef {
                    name: "id".into(),
                    type_sql: "bigint".into(),
                    not_null: true,
                    default: None,
                    generated: None,
                },
                ColumnDef {
                    name: "ts".into(),
                    type_sql: "timestamp with time zone".into(),
                    not_null: true,
                    default: Some("now()".into()),
                    generated: None,
                },
                ColumnDef {
                    name: "dev".into(),
                    type_sql: "integer".into(),
                    not_null: false,
                    default: None,
                    generated: None,
                },
            ],
            primary_key: Some("PRIMARY KEY (id, ts)".into()),
            replica_identity: None,
            dimensions: vec![],
        }
    }

    #[test]
    fn a_plain_table() {
        let s = create_sql("analytics", "m", &def(), None, None).unwrap();
        assert_eq!(s[0], "CREATE SCHEMA IF NOT EXISTS \"analytics\"");
        assert_eq!(
            s[1],
            "CREATE TABLE \"analytics\".\"m\" (\"id\" bigint NOT NULL, \"ts\" timestamp with time zone DEFAULT now() NOT NULL, \"dev\" integer, PRIMARY KEY (id, ts))"
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_hypertable_from_the_map() {
        let h: HypertableSpec = serde_json::from_str(
            r#"{"time_column": "ts", "chunk_interval": "1 day", "partitioning_column": "dev", "number_partitions": 2}"#,
        )
        .unwrap();
        let s = create_sql("public", "m", &def(), Some(&h), Some("public")).unwrap();
        assert_eq!(
            s[2],
            "SELECT \"public\".create_hypertable('\"public\".\"m\"'::pg_catalog.regclass, \"public\".by_range('ts', '1 day'::pg_catalog.interval))"
        );
        assert_eq!(
            s[3],
            "SELECT \"public\".add_dimension('\"public\".\"m\"'::pg_catalog.regclass, \"public\".by_hash('dev', 2))"
        );
        assert!(create_sql("public", "m", &def(), Some(&h), None).is_err());
        let bad: HypertableSpec = serde_json::from_str(r#"{"time_column": "nope"}"#).unwrap();
        assert!(
            create_sql("public", "m", &def(), Some(&bad), Some("public"))
                .unwrap_err()
                .contains("nope")
        );
    }

    #[test]
    fn a_source_hypertable_keeps_its_dimensions() {
        let mut d = def();
        d.dimensions = vec![Dimension::Range {
            column: "ts".into(),
            interval: 86_400_000_000,
            time: true,
        }];
        d.replica_identity = Some(vec!["id".into(), "ts".into()]);
        let s = create_sql("public", "m", &d, None, Some("ts")).unwrap();
        assert_eq!(
            s[2],
            "SELECT \"ts\".create_hypertable('\"public\".\"m\"'::pg_catalog.regclass, \"ts\".by_range('ts', '86400000000 microseconds'::pg_catalog.interval))"
        );
        assert_eq!(
            s[3],
            "CREATE UNIQUE INDEX \"m_replica_identity\" ON \"public\".\"m\" (\"id\", \"ts\")"
        );
    }
}
