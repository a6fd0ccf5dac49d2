//! The table map: which target table a source table is synced into, and whether a target
//! table livesync creates becomes a hypertable (pure; no pgrx).
//!
//! Its form is the original Livesync's `--table-map` (API.md), a JSON array of entries:
//!
//! ```text
//! {"source": {"schema": "public", "table": "metrics"},
//!  "target": {"schema": "analytics", "table": "metrics_raw"},
//!  "hypertable": {"time_column": "ts", "chunk_interval": "1 day",
//!                 "partitioning_column": "dev", "number_partitions": 4}}
//! {"source": {"schema": "public"}, "target": {"schema": "analytics"}}
//! ```
//!
//! A table entry wins over a schema entry; a schema entry maps every table of its schema;
//! a target without `schema` or `table` keeps the source's. A table no entry names keeps
//! its schema and name, as in native logical replication.

use serde::Deserialize;

/// How a target table livesync creates is made a hypertable (`create_hypertable`'s terms).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HypertableSpec {
    pub time_column: String,
    /// An interval (`'1 day'`) or, for an integer time column, a number.
    #[serde(default)]
    pub chunk_interval: Option<serde_json::Value>,
    #[serde(default)]
    pub partitioning_column: Option<String>,
    #[serde(default)]
    pub number_partitions: Option<u32>,
}

impl HypertableSpec {
    pub fn chunk_interval_text(&self) -> Option<String> {
        match &self.chunk_interval {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(other) => Some(other.to_string()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Side {
    schema: Option<String>,
    table: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    source: Side,
    #[serde(default)]
    target: Option<Side>,
    #[serde(default)]
    hypertable: Option<HypertableSpec>,
}

/// Where one source table goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub schema: String,
    pub table: String,
    /// Create it as this hypertable (when livesync creates it).
    pub hypertable: Option<HypertableSpec>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableMap {
    entries: Vec<Entry>,
}

impl TableMap {
    /// Parse and check a map; the error says what is wrong with which entry.
    pub fn parse(json: &str) -> Result<TableMap, String> {
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|e| format!("table_map is not valid JSON: {e}"))?;
        let serde_json::Value::Array(items) = value else {
            return Err("table_map must be a JSON array of entries".into());
        };
        let mut entries = Vec::with_capacity(items.len());
        for (i, item) in items.into_iter().enumerate() {
            let n = i + 1;
            let e: Entry =
                serde_json::from_value(item).map_err(|e| format!("table_map entry {n}: {e}"))?;
            let empty = |s: &Option<String>| s.as_deref().is_some_and(|s| s.is_empty());
            if e.source.schema.is_none() {
                return Err(format!(
                    "table_map entry {n}: \"source\" needs a \"schema\""
                ));
            }
            let target = e.target.clone().unwrap_or(Side {
                schema: None,
                table: None,
            });
            if [
                &e.source.schema,
                &e.source.table,
                &target.schema,
                &target.table,
            ]
            .into_iter()
            .any(empty)
            {
                return Err(format!("table_map entry {n}: names must not be empty"));
            }
            if [
                &e.source.schema,
                &e.source.table,
                &target.schema,
                &target.table,
            ]
            .into_iter()
            .flatten()
            .any(|s| s.len() > 63)
            {
                return Err(format!("table_map entry {n}: names are at most 63 bytes"));
            }
            if e.source.table.is_none() && target.table.is_some() {
                return Err(format!(
                    "table_map entry {n}: a schema entry (no source \"table\") cannot name a target \"table\""
                ));
            }
            if let Some(h) = &e.hypertable {
                if h.time_column.is_empty() {
                    return Err(format!(
                        "table_map entry {n}: \"hypertable\" needs a \"time_column\""
                    ));
                }
                if h.number_partitions.is_some() != h.partitioning_column.is_some() {
                    return Err(format!(
                        "table_map entry {n}: \"partitioning_column\" and \"number_partitions\" go together"
                    ));
                }
            }
            if entries.iter().any(|o: &Entry| {
                o.source.schema == e.source.schema && o.source.table == e.source.table
            }) {
                return Err(format!(
                    "table_map entry {n}: the same source is mapped twice"
                ));
            }
            entries.push(e);
        }
        Ok(TableMap { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The target of source table `schema`.`table`.
    pub fn destination(&self, schema: &str, table: &str) -> Destination {
        let by_table = self.entries.iter().find(|e| {
            e.source.schema.as_deref() == Some(schema) && e.source.table.as_deref() == Some(table)
        });
        let by_schema = || {
            self.entries
                .iter()
                .find(|e| e.source.schema.as_deref() == Some(schema) && e.source.table.is_none())
        };
        match by_table.or_else(by_schema) {
            None => Destination {
                schema: schema.into(),
                table: table.into(),
                hypertable: None,
            },
            Some(e) => {
                let t = e.target.as_ref();
                Destination {
                    schema: t
                        .and_then(|t| t.schema.clone())
                        .unwrap_or_else(|| schema.into()),
                    table: t
                        .and_then(|t| t.table.clone())
                        .unwrap_or_else(|| table.into()),
                    hypertable: e.hypertable.clone(),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_entries_win_over_schema_entries() {
        let m = TableMap::parse(
            r#"[{"source": {"schema": "public"}, "target": {"schema": "analytics"}},
                {"source": {"schema": "public", "table": "metrics"},
                 "target": {"schema": "raw", "table": "metrics_raw"},
                 "hypertable": {"time_column": "ts", "chunk_interval": "1 day"}}]"#,
        )
        .unwrap();
        let d = m.destination("public", "metrics");
        assert_eq!(
            (d.schema.as_str(), d.table.as_str()),
            ("raw", "metrics_raw")
        );
        assert_eq!(
            d.hypertable.unwrap().chunk_interval_text().as_deref(),
            Some("1 day")
        );
        let d = m.destination("public", "other");
        assert_eq!(
            (d.schema.as_str(), d.table.as_str()),
            ("analytics", "other")
        );
        assert!(d.hypertable.is_none());
        let d = m.destination("sales", "orders");
        assert_eq!((d.schema.as_str(), d.table.as_str()), ("sales", "orders"));
    }

    #[test]
    fn a_target_keeps_what_it_does_not_name() {
        let m = TableMap::parse(
            r#"[{"source": {"schema": "s", "table": "t"}, "target": {"table": "u"}},
                {"source": {"schema": "s", "table": "h"}, "hypertable": {"time_column": "ts", "chunk_interval": 86400000000}}]"#,
        )
        .unwrap();
        assert_eq!(m.destination("s", "t").schema, "s");
        assert_eq!(m.destination("s", "t").table, "u");
        let h = m.destination("s", "h");
        assert_eq!(h.table, "h");
        assert_eq!(
            h.hypertable.unwrap().chunk_interval_text().as_deref(),
            Some("86400000000")
        );
    }

    #[test]
    fn bad_maps_say_what_is_wrong() {
        for (json, want) in [
            ("{}", "JSON array"),
            ("[1]", "entry 1"),
            (r#"[{"target": {"schema": "a"}}]"#, "entry 1"),
            (r#"[{"source": {"table": "t"}}]"#, "needs a \"schema\""),
            (r#"[{"source": {"schema": ""}}]"#, "must not be empty"),
            (
                r#"[{"source": {"schema": "a"}, "target": {"table": "x"}}]"#,
                "schema entry",
            ),
            (
                r#"[{"source": {"schema": "a", "table": "t"}, "hypertable": {}}]"#,
                "entry 1",
            ),
            (
                r#"[{"source": {"schema": "a", "table": "t"}, "hypertable": {"time_column": ""}}]"#,
                "time_column",
            ),
            (
                r#"[{"source": {"schema": "a", "table": "t"}, "hypertable": {"time_column": "ts", "number_partitions": 2}}]"#,
                "go together",
            ),
            (
                r#"[{"source": {"schema": "a", "table": "t"}, "tagret": {}}]"#,
                "entry 1",
            ),
            (
                r#"[{"source": {"schema": "a"}}, {"source": {"schema": "a"}}]"#,
                "entry 2: the same source",
            ),
            ("nope", "not valid JSON"),
        ] {
            let e = TableMap::parse(json).unwrap_err();
            assert!(e.contains(want), "{json}: {e}");
        }
        assert!(TableMap::parse("[]").unwrap().is_empty());
    }
}
