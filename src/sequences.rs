//! Sequences of synced tables (`livesync_sync_sequences`): which sequences belong to a
//! table, on either side, and setting a target sequence.
//!
//! A sequence belongs to a table when one of the table's columns owns it (`serial`,
//! identity columns, `ALTER SEQUENCE ... OWNED BY`) or uses it in its default
//! (`DEFAULT nextval('s')`). Target and source sequences are matched through the column
//! they belong to, so a mapped table (another schema or name) finds its counterpart.

use crate::error::Result;
use crate::remote::quote_literal;
use pgrx::prelude::*;

/// The query listing (column, `"schema"."sequence"`) of table `schema`.`table`; the same
/// text runs on the source (simple query protocol) and on the target (SPI).
pub fn query(schema: &str, table: &str) -> String {
    format!(
        "SELECT a.attname::pg_catalog.text, pg_catalog.format('%I.%I', sn.nspname, s.relname) \
           FROM pg_catalog.pg_class t \
           JOIN pg_catalog.pg_namespace tn ON tn.oid OPERATOR(pg_catalog.=) t.relnamespace \
           JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) t.oid \
                AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
           JOIN pg_catalog.pg_class s ON s.relkind OPERATOR(pg_catalog.=) 'S' \
           JOIN pg_catalog.pg_namespace sn ON sn.oid OPERATOR(pg_catalog.=) s.relnamespace \
          WHERE tn.nspname OPERATOR(pg_catalog.=) {} AND t.relname OPERATOR(pg_catalog.=) {} \
            AND (EXISTS (SELECT FROM pg_catalog.pg_depend d \
                          WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                            AND d.objid OPERATOR(pg_catalog.=) s.oid \
                            AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                            AND d.refobjid OPERATOR(pg_catalog.=) t.oid \
                            AND d.refobjsubid OPERATOR(pg_catalog.=) a.attnum \
                            AND d.deptype OPERATOR(pg_catalog.=) ANY ('{{a,i}}'::pg_catalog.\"char\"[])) \
              OR EXISTS (SELECT FROM pg_catalog.pg_attrdef ad \
                           JOIN pg_catalog.pg_depend d \
                             ON d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_attrdef'::pg_catalog.regclass \
                            AND d.objid OPERATOR(pg_catalog.=) ad.oid \
                          WHERE ad.adrelid OPERATOR(pg_catalog.=) t.oid \
                            AND ad.adnum OPERATOR(pg_catalog.=) a.attnum \
                            AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
                            AND d.refobjid OPERATOR(pg_catalog.=) s.oid)) \
          ORDER BY a.attnum",
        quote_literal(schema),
        quote_literal(table)
    )
}

/// The target sequences of table `schema`.`table`, as (column, quoted sequence name).
pub fn of_table(schema: &str, table: &str) -> Result<Vec<(String, String)>> {
    Ok(Spi::connect(|c| {
        let mut out = Vec::new();
        for row in c.select(&query(schema, table), None, &[])? {
            if let (Some(col), Some(seq)) = (row.get::<String>(1)?, row.get::<String>(2)?) {
                out.push((col, seq));
            }
        }
        Ok::<_, pgrx::spi::SpiError>(out)
    })?)
}

/// Set a target sequence (quoted name) as `setval` does.
pub fn set(seq: &str, last_value: i64, is_called: bool) -> Result<()> {
    Spi::run_with_args(
        "SELECT pg_catalog.setval($1::pg_catalog.regclass, $2, $3)",
        &[seq.into(), last_value.into(), is_called.into()],
    )?;
    Ok(())
}
