//! Reads one table's initial copy from the source on a thread of its own, so that reading
//! the source overlaps loading the target.
//!
//! PostgreSQL's tablesync reads and loads in one process and lets the TCP buffers absorb
//! the difference. livesync's hypertable copy loads staged files with TimescaleDB's COPY
//! and would stop reading the source for a whole file at a time. So the table-sync worker
//! creates its slot with `SNAPSHOT 'export'`, and a reader thread with its own connection
//! and its own tokio runtime:
//! 1. imports that snapshot (`SET TRANSACTION SNAPSHOT`), so it sees exactly the rows
//!    the slot's consistent point follows, as `SNAPSHOT 'use'` would;
//! 2. looks up the columns to copy and the publication's row filter and column list,
//!    and hands them to the worker ([`CopyReader::meta`]);
//! 3. runs the `COPY ... TO STDOUT` the worker then asks for, and hands the stream over
//!    in chunks of about 1 MB through a bounded channel (at most [`AHEAD`] chunks read
//!    ahead).
//!
//! The thread makes no PostgreSQL calls (only the worker's main thread may) and blocks
//! every signal, so PostgreSQL's handlers never run on it. It stops on its own when the
//! worker drops the [`CopyReader`] (an error, SIGTERM) or the source fails; the worker
//! notices a failed or vanished reader as an error and retries the copy.

use super::{check_interrupts, runtime, spawn_without_signals, SLICE};
use crate::error::{Error, Result};
use crate::remote;
use crate::source::{ConnInfo, Connection};
use bytes::{Bytes, BytesMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// Chunks read ahead of the loader: with [`CHUNK`], up to about 16 MB per table copy.
const AHEAD: usize = 16;
/// Rows are handed over in chunks of at least this many bytes (whole CopyData messages).
const CHUNK: usize = 1 << 20;

/// What to copy, as seen under the slot's snapshot.
#[derive(Debug)]
pub struct Meta {
    /// The table's columns to copy (no dropped ones, generated ones only from a source that
    /// may publish them: `remote::copy_columns`), in order.
    pub columns: Vec<String>,
    /// The generated columns among them (COPY reads those only through a SELECT).
    pub generated: Vec<String>,
    /// The table is partitioned on the source (its rows are in its partitions).
    pub partitioned: bool,
    /// The publication's column list (empty: all) and row filter for this table.
    pub filter: Option<(Vec<String>, Option<String>)>,
    /// The source's estimates of the table's rows (`reltuples`, None before its first
    /// ANALYZE) and size in bytes (`pg_table_size`), partitions included.
    pub approximate_rows: Option<i64>,
    pub approximate_size: Option<i64>,
}

enum Msg {
    Meta(Meta),
    Chunk(Bytes),
    End,
    Failed(Error),
}

/// The worker's end of a reader thread.
pub struct CopyReader {
    rx: Receiver<Msg>,
    sql: Option<SyncSender<String>>,
    cancel: Arc<AtomicBool>,
}

/// Which table to read, and under which exported snapshot.
pub struct Source {
    pub info: ConnInfo,
    pub application_name: String,
    pub snapshot: String,
    pub relid: u32,
    pub publication: String,
    pub schema: String,
    pub table: String,
}

impl CopyReader {
    /// Start the reader thread. It connects and imports the snapshot right away; the
    /// exporting replication connection must stay idle until [`CopyReader::meta`] returned.
    pub fn start(src: Source) -> Result<CopyReader> {
        let (tx, rx) = mpsc::sync_channel(AHEAD);
        let (sql_tx, sql_rx) = mpsc::sync_channel(1);
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = cancel.clone();
        spawn_without_signals(format!("livesync copy reader {}", src.relid), move || {
            let rt = runtime();
            let res = rt.block_on(read(&src, &tx, &sql_rx, &stop));
            if let Err(e) = res {
                let _ = tx.send(Msg::Failed(e));
            }
        })
        .map_err(|e| Error::internal(format!("could not start the copy reader thread: {e}")))?;
        Ok(CopyReader {
            rx,
            sql: Some(sql_tx),
            cancel,
        })
    }

    fn recv(&self) -> Result<Msg> {
        loop {
            match self.rx.recv_timeout(SLICE) {
                Ok(Msg::Failed(e)) => return Err(e),
                Ok(m) => return Ok(m),
                Err(RecvTimeoutError::Timeout) => check_interrupts()?,
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::internal("the copy reader thread ended unexpectedly"))
                }
            }
        }
    }

    /// Wait until the reader has imported the snapshot and looked the table up.
    pub fn meta(&mut self) -> Result<Meta> {
        match self.recv()? {
            Msg::Meta(m) => Ok(m),
            _ => Err(Error::internal(
                "the copy reader sent data before the table's columns",
            )),
        }
    }

    /// Run `sql` (a `COPY ... TO STDOUT`) under the snapshot.
    pub fn copy(&mut self, sql: String) -> Result<()> {
        let tx = self
            .sql
            .take()
            .ok_or_else(|| Error::internal("copy started twice"))?;
        tx.send(sql)
            .map_err(|_| Error::internal("the copy reader thread ended unexpectedly"))
    }

    /// The next chunk of COPY text (whole rows), `None` at the end of the copy.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        match self.recv()? {
            Msg::Chunk(b) => Ok(Some(b)),
            Msg::End => Ok(None),
            _ => Err(Error::internal(
                "the copy reader sent the table's columns twice",
            )),
        }
    }
}

impl Drop for CopyReader {
    fn drop(&mut self) {
        // The thread sees this within a second, or at its next send, and closes its
        // connection (which ends the source's COPY and transaction).
        self.cancel.store(true, Ordering::Relaxed);
    }
}

/// Await `fut`, giving up when the worker has let go of the reader.
async fn unless_cancelled<T>(
    stop: &AtomicBool,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mut fut = std::pin::pin!(fut);
    loop {
        if stop.load(Ordering::Relaxed) {
            return None;
        }
        if let Ok(v) = tokio::time::timeout(Duration::from_secs(1), &mut fut).await {
            return Some(v);
        }
    }
}

async fn read(
    src: &Source,
    tx: &SyncSender<Msg>,
    sql_rx: &Receiver<String>,
    stop: &AtomicBool,
) -> Result<()> {
    let Some(conn) = unless_cancelled(
        stop,
        Connection::connect(&src.info, false, &src.application_name),
    )
    .await
    else {
        return Ok(());
    };
    let mut conn =
        conn.map_err(|e| Error::from_source("could not connect to the source to copy", e))?;
    // The snapshot must be set before the transaction's first query.
    conn.simple_query(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}",
        remote::quote_literal(&src.snapshot)
    ))
    .await?;
    let (columns, generated, partitioned) =
        remote::copy_columns_and_kind(&mut conn, src.relid).await?;
    let filter =
        remote::publication_filter(&mut conn, &src.publication, &src.schema, &src.table).await?;
    let (approximate_rows, approximate_size) = remote::table_estimate(&mut conn, src.relid).await?;
    let meta = Meta {
        columns,
        generated,
        partitioned,
        filter,
        approximate_rows,
        approximate_size,
    };
    if tx.send(Msg::Meta(meta)).is_err() {
        return Ok(());
    }
    let sql = loop {
        match sql_rx.recv_timeout(Duration::from_secs(1)) {
            Ok(sql) => break sql,
            Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
            Err(_) => return Ok(()),
        }
    };
    let mut copy = conn.copy_out(&sql).await?;
    let mut buf = BytesMut::with_capacity(CHUNK + (64 << 10));
    loop {
        let Some(next) = unless_cancelled(stop, copy.next_chunk()).await else {
            return Ok(());
        };
        match next? {
            Some(row) => {
                buf.extend_from_slice(&row);
                if buf.len() >= CHUNK {
                    let chunk = buf.split().freeze();
                    buf.reserve(CHUNK + (64 << 10));
                    if tx.send(Msg::Chunk(chunk)).is_err() {
                        return Ok(());
                    }
                }
            }
            None => break,
        }
    }
    if !buf.is_empty() && tx.send(Msg::Chunk(buf.freeze())).is_err() {
        return Ok(());
    }
    // Read-only: ending the transaction is a courtesy; closing would do the same.
    let _ = conn.simple_query("COMMIT").await;
    conn.close().await;
    let _ = tx.send(Msg::End);
    Ok(())
}
