//! Reads one table's initial copy from the source on a thread of its own, so that reading
//! the source overlaps loading the target.
//!
//! PostgreSQL's tablesync reads and loads in one process and lets the TCP buffers absorb
//! the difference. livesync's hypertable copy loads staged files with TimescaleDB's COPY
//! and would stop reading the source for a whole file at a time. So the table-sync worker
//! creates its slot with `SNAPSHOT 'export'` (or, resuming a copy, a temporary slot), and
//! every loader of the table (the table-sync worker and its copy workers) has a reader
//! thread with its own connection and its own tokio runtime:
//! 1. imports that snapshot (`SET TRANSACTION SNAPSHOT`), so it sees exactly the rows
//!    the slot's consistent point follows, as `SNAPSHOT 'use'` would;
//! 2. looks up the columns to copy and the publication's row filter and column list,
//!    and hands them to the worker ([`CopyReader::meta`]);
//! 3. runs what the worker then asks for, in that one transaction: where to split the
//!    table into slices ([`CopyReader::bounds`]), and each `COPY ... TO STDOUT`
//!    ([`CopyReader::copy`]), whose stream it hands over in chunks of about 1 MB through a
//!    bounded channel (at most [`AHEAD`] chunks read ahead).
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
    /// The column to slice the copy on, and its type (`remote::slice_key`).
    pub key: Option<(String, u32)>,
    /// Every column's type on the source.
    pub types: Vec<(String, u32)>,
    /// The source's `server_version_num`.
    pub source_version: u32,
}

enum Msg {
    Meta(Meta),
    Bounds(Vec<String>),
    Chunk(Bytes),
    End,
    Failed(Error),
}

/// What the worker asks the reader for, after [`Meta`].
enum Request {
    /// `remote::slice_bounds(from, key, size, n)`.
    Bounds {
        from: String,
        key: String,
        size: i64,
        n: usize,
    },
    /// A `COPY ... TO STDOUT`, binary or not.
    Copy(String, bool),
}

/// The worker's end of a reader thread.
pub struct CopyReader {
    rx: Receiver<Msg>,
    requests: SyncSender<Request>,
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
            requests: sql_tx,
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

    fn ask(&self, r: Request) -> Result<()> {
        self.requests
            .send(r)
            .map_err(|_| Error::internal("the copy reader thread ended unexpectedly"))
    }

    /// Where to split `from` into `n` slices on `key` (`remote::slice_bounds`), under the
    /// snapshot.
    pub fn bounds(
        &mut self,
        from: String,
        key: String,
        size: i64,
        n: usize,
    ) -> Result<Vec<String>> {
        self.ask(Request::Bounds { from, key, size, n })?;
        match self.recv()? {
            Msg::Bounds(b) => Ok(b),
            _ => Err(Error::internal("the copy reader answered out of turn")),
        }
    }

    /// Run `sql` (a `COPY ... TO STDOUT`, with `(FORMAT binary)` when `binary`) under the
    /// snapshot; read its rows with [`CopyReader::next_chunk`] to the end before asking for
    /// anything else. Binary rows come without the format's header and trailer.
    pub fn copy(&mut self, sql: String, binary: bool) -> Result<()> {
        self.ask(Request::Copy(sql, binary))
    }

    /// The next chunk of COPY text (whole rows), `None` at the end of the copy.
    pub fn next_chunk(&mut self) -> Result<Option<Bytes>> {
        match self.recv()? {
            Msg::Chunk(b) => Ok(Some(b)),
            Msg::End => Ok(None),
            _ => Err(Error::internal("the copy reader answered out of turn")),
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
    sql_rx: &Receiver<Request>,
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
    // The snapshot must be set before the transaction's first query. Slices are read in
    // key order: through the key's index, never a sort of the whole table.
    conn.simple_query(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY; SET TRANSACTION SNAPSHOT {}; \
         SET LOCAL enable_sort = off",
        remote::quote_literal(&src.snapshot)
    ))
    .await?;
    let (columns, generated, partitioned) =
        remote::copy_columns_and_kind(&mut conn, src.relid).await?;
    let filter =
        remote::publication_filter(&mut conn, &src.publication, &src.schema, &src.table).await?;
    let (approximate_rows, approximate_size) = remote::table_estimate(&mut conn, src.relid).await?;
    let key = remote::slice_key(&mut conn, src.relid).await?;
    let types = remote::column_types(&mut conn, src.relid).await?;
    let meta = Meta {
        types,
        source_version: remote::server_version(&conn),
        columns,
        generated,
        partitioned,
        filter,
        approximate_rows,
        approximate_size,
        key,
    };
    if tx.send(Msg::Meta(meta)).is_err() {
        return Ok(());
    }
    loop {
        let request = loop {
            match sql_rx.recv_timeout(Duration::from_secs(1)) {
                Ok(r) => break r,
                Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => {}
                // The worker is done with us (or gone).
                Err(_) => {
                    // Read-only: ending the transaction is a courtesy; closing does it too.
                    let _ = conn.simple_query("COMMIT").await;
                    conn.close().await;
                    return Ok(());
                }
            }
        };
        let (sql, binary) = match request {
            Request::Bounds { from, key, size, n } => {
                let b = remote::slice_bounds(&mut conn, &from, &key, size, n).await?;
                if tx.send(Msg::Bounds(b)).is_err() {
                    return Ok(());
                }
                continue;
            }
            Request::Copy(sql, binary) => (sql, binary),
        };
        // Binary COPY: the header comes with the first row, the trailer (-1) alone last.
        let mut header = binary;
        let mut copy = conn.copy_out(&sql).await?;
        let mut buf = BytesMut::with_capacity(CHUNK + (64 << 10));
        loop {
            let Some(next) = unless_cancelled(stop, copy.next_chunk()).await else {
                return Ok(());
            };
            match next? {
                Some(mut row) => {
                    if header {
                        header = false;
                        row = strip_binary_header(row)?;
                    }
                    if binary && row[..] == [0xff, 0xff] {
                        continue;
                    }
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
        if tx.send(Msg::End).is_err() {
            return Ok(());
        }
    }
}

/// The rest of the first CopyData message of a binary COPY after the format's header
/// (signature, flags, header extension), or an error if it is not one.
fn strip_binary_header(msg: Bytes) -> Result<Bytes> {
    const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
    let bad = || Error::internal("the source's binary COPY data has no valid header");
    if msg.len() < 19 || &msg[..11] != SIGNATURE {
        return Err(bad());
    }
    let ext = u32::from_be_bytes([msg[15], msg[16], msg[17], msg[18]]) as usize;
    if msg.len() < 19 + ext {
        return Err(bad());
    }
    Ok(msg.slice(19 + ext..))
}
