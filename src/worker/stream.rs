//! One pgoutput stream being applied: receive, decode, apply, commit, confirm.
//!
//! Used by the apply worker (all tables it owns, many source transactions grouped into one
//! target transaction) and by a table-sync worker catching up (one table, up to a given
//! LSN). Both drive it with the same loop body, [`Stream::step`], as PostgreSQL's
//! `LogicalRepApplyLoop` serves both; each supplies only what differs: which relations it
//! owns ([`Owner`]: which relations, and for a copy read under several snapshots which rows
//! of them, `slices::KeyFilter`), how it groups transactions ([`Batching`]), and what it
//! does between steps, never inside a source transaction. Which target table each
//! relation goes to (the table map, a chunk's hypertable) the caller tells the applier
//! (`Applier::set_target`).
//!
//! Progress is recorded the way PostgreSQL's apply worker does it: the source commit's
//! end LSN is stored in the session's replication origin by the same target commit that
//! holds the data, so a crash at any point loses and doubles nothing; on restart we ask the
//! slot to resume from the origin's position. The stream also keeps what it is applying
//! ([`Context`]: the source transaction, its finish LSN, the change and relation) for an
//! error's context, skips the one transaction `livesync_skip` names, and counts the rows
//! an UPDATE or DELETE did not find.

use super::spool::Spool;
use crate::apply::{Applier, Origin};
use crate::error::{Error, Result};
use crate::pgoutput::{Datum, Decoder, Lsn, Message, PgTimestamp, RelId, TupleData, Xid};
use crate::remote::{quote_ident, quote_literal};
use crate::slices::KeyFilter;
use crate::source::{Connection, ReplMessage};
use crate::worker;
use pgrx::pg_sys;
use pgrx::PgSqlErrorCode as Code;
use std::time::{Duration, Instant};

/// A stream that took buffered messages since it last read the socket, or read one this
/// recently, counts as busy ([`Stream::recv`])...
const GATHER_WHEN_BUSY: Duration = Duration::from_millis(2);
/// ... and, unless paced (below), sleeps this long before it waits on the socket.
/// Measured on loopback, 300 000 single-row INSERT transactions, once INSERT runs went
/// through COPY: 1 ms left the walsender at 6.5 to 7 CPU seconds (medians of 3 rounds,
/// drains of 6.8 to 7.3 s), 3 to 15 ms at 4.6 to 5.7 s (drains of 3.7 to 5.9 s): a
/// reader that comes back less often lets more of the walsender's messages leave
/// together. It delays a busy stream by at most this long (so the commit that follows a
/// burst, and the position the source is told, come up to this much later); an idle one
/// waits on the socket.
const GATHER_FOR: Duration = Duration::from_millis(8);

/// A paced stream (`Connection::paced`: a source on this host, a small receive window)
/// that has caught up sleeps this long instead: the walsender fills the window (a packet
/// per message) in a few milliseconds, then its messages queue and leave together, so the
/// longer the sleep, the fewer of them go one by one. Measured over loopback, 300 000
/// single-row INSERT transactions, 3 rounds: 8 ms drained in 5.1 to 6.1 s (walsender
/// 5.2 CPU s), 20 ms in 3.6 to 5.0 s (4.2 s), 40 ms in 3.7 to 4.7 s (3.8 s); session 18,
/// 4 alternating rounds each way in one run: 25 and 60 ms were no faster. A busy
/// stream's changes come up to this much later; the apply worker commits what it applied
/// before it pauses ([`Stream::step`]). An idle stream waits on the socket.
const GATHER_PACED: Duration = Duration::from_millis(40);

/// Seconds between status updates to the source even when nothing changed.
const FEEDBACK_EVERY: Duration = Duration::from_secs(10);

/// Decides, per change, whether this stream applies it: (source relation, commit LSN of
/// its transaction).
pub trait Owner {
    fn owns(&self, rel: RelId, commit_lsn: Lsn) -> bool;

    /// For a table whose copy was read under several snapshots: which of its rows a change
    /// applies to (`crate::slices`). None: every row of a table it owns.
    fn key_filter(&self, _rel: RelId) -> Option<&KeyFilter> {
        None
    }
}

/// How source transactions become target commits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batching {
    /// Group several source transactions into one target commit (the apply worker),
    /// within `livesync.apply_batch_rows` / `livesync.apply_batch_delay`.
    Group,
    /// Commit each source transaction on its own (a table-sync worker's catch-up, which
    /// must be able to stop after any of them).
    EachTransaction,
}

/// What one [`Stream::step`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// A message was handled; a target transaction may be open.
    Applied,
    /// The target transaction committed, ending on a source commit.
    Committed,
    /// Nothing arrived in time, in the middle of a source transaction: the target
    /// transaction stays open (the source was pinged if silent for long).
    Waiting,
    /// Nothing arrived in time, and no target transaction is open.
    Idle,
}

pub struct Stream {
    pub conn: Connection,
    decoder: Decoder,
    /// The source sends values in binary form (`start_command`): a Relation message with
    /// a column whose type may not come so ends the stream ([`Error::TextStream`]).
    binary: bool,
    /// Streamed (in-progress) transactions waiting for their commit.
    spool: Spool,
    /// The transaction of the streamed block we are in (between StreamStart and StreamStop).
    stream_xid: Option<Xid>,
    pub applier: Applier,
    /// Highest LSN the source told us about (data or keepalive).
    pub received: Lsn,
    /// The source's WAL end from its latest message.
    pub source_end: Lsn,
    /// End LSN of the last source transaction whose target commit succeeded.
    pub committed: Lsn,
    /// Our commits not known to be flushed yet: (local commit end, source end LSN).
    unflushed: std::collections::VecDeque<(Lsn, Lsn)>,
    /// The source end LSN of the last commit known flushed.
    flushed: Lsn,
    in_remote_txn: bool,
    remote_final_lsn: Lsn,
    /// A target transaction is open.
    xact_open: bool,
    /// The last source commit applied in the open target transaction.
    pending_commit: Option<(Lsn, PgTimestamp)>,
    batch_changes: usize,
    batch_started: Instant,
    last_feedback: Instant,
    last_sent: (Lsn, Lsn),
    last_idle_advance: Instant,
    pub last_msg: Instant,
    /// Buffered messages were taken since the socket was last read.
    drained: bool,
    /// A gathering pause put off by the commit that came before it ([`Stream::step`]).
    pause: Option<Duration>,
    /// When streaming started.
    pub started: Instant,
    /// The source commit time of the last transaction committed here.
    pub last_commit_time: Option<PgTimestamp>,
    /// `livesync_skip`: the finish LSN of the one source transaction to skip (apply
    /// worker only), and whether the stream is inside it now.
    pub skip_lsn: Option<Lsn>,
    skipping: bool,
    /// A skipped transaction committed in the open target transaction: its LSN is
    /// cleared from the catalog by the same commit.
    skipped: Option<Lsn>,
    /// The sync whose counters (conflicts, skips) this stream's commits update.
    pub subid: Option<i32>,
    /// What is being applied, for an error's context.
    pub context: Context,
    /// Write buffered changes at every source commit, so that an error names exactly the
    /// transaction it comes from (after an error, until a target commit succeeds).
    pub careful: bool,
    /// The sync (database, subid) whose shared-memory progress this stream updates as
    /// data arrives, so that a worker stuck applying still shows what it has not applied.
    pub progress: Option<(u32, i32)>,
    last_progress: Instant,
    last_published: (Lsn, Lsn),
}

/// What the stream was applying (as PostgreSQL's `apply_error_callback` reports it).
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub xid: Option<Xid>,
    /// The finish LSN of the source transaction being applied (0: none).
    pub finish_lsn: Lsn,
    pub action: &'static str,
    /// The source relation of the change being applied.
    pub rel: Option<RelId>,
}

impl Stream {
    /// What was being applied when an error happened: the buffered run's transaction
    /// when a run was being written. None outside a source transaction, or when the
    /// failed rows may come from several transactions.
    pub fn error_context(&self) -> Option<Context> {
        let c = match self.applier.flushing() {
            Some(run) => {
                let o = run.origin?;
                Context {
                    xid: o.xid,
                    finish_lsn: o.finish_lsn,
                    action: run.action,
                    rel: Some(run.rel),
                }
            }
            None => self.context.clone(),
        };
        (c.finish_lsn != 0).then_some(c)
    }

    /// [`Stream::error_context`] in words: `processing remote data during "INSERT" for
    /// replication target relation "public.t" in transaction 740, finished at 0/14C0378`.
    pub fn describe_error_context(&self) -> Option<(String, Context)> {
        let c = self.error_context()?;
        let mut s = format!("processing remote data during \"{}\"", c.action);
        if let Some(r) = c.rel.and_then(|r| self.applier.relation_name(r)) {
            s.push_str(&format!(" for replication target relation \"{r}\""));
        }
        if let Some(x) = c.xid {
            s.push_str(&format!(" in transaction {x}"));
        }
        s.push_str(&format!(
            ", finished at {}",
            crate::lsn::format(c.finish_lsn)
        ));
        Some((s, c))
    }
}

/// pgoutput protocol 2: streaming of in-progress transactions.
const PROTO_VERSION: u32 = 2;

/// Options of START_REPLICATION for our pgoutput stream; `binary`: values in their types'
/// binary form where they have one (`crate::binval`).
pub fn start_command(slot: &str, start: Lsn, publication: &str, binary: bool) -> String {
    format!(
        "START_REPLICATION SLOT {} LOGICAL {} (proto_version '2', streaming 'on', publication_names {}{})",
        quote_ident(slot),
        crate::lsn::format(start),
        quote_literal(&quote_ident(publication)),
        if binary { ", binary 'true'" } else { "" }
    )
}

impl Stream {
    pub fn start(
        rt: &tokio::runtime::Runtime,
        mut conn: Connection,
        slot: &str,
        start: Lsn,
        publication: &str,
        spool_tag: &str,
        binary: bool,
    ) -> Result<Stream> {
        // Where PostgreSQL puts this session's temporary files (temp_tablespaces), with
        // its temp_file_limit; PostgreSQL empties those directories at startup.
        let (dir, limit) = worker::xact(|| Ok(super::spool::temp_location()))?;
        let spool = Spool::new(dir, spool_tag)?.with_limit(limit);
        let cmd = start_command(slot, start, publication, binary);
        worker::block_on(rt, conn.start_replication(&cmd))?.map_err(|e| match e {
            crate::source::SourceError::Server(s) if s.code == "42704" => Error::NeedsResync {
                msg: format!(
                    "replication slot \"{slot}\" does not exist on the source, so changes may have been lost; a full resync is needed"
                ),
            },
            // Invalidated: PostgreSQL 15 says "cannot read from logical replication slot",
            // 16 and 17 "can no longer get changes from replication slot", 18 "can no
            // longer access replication slot", with the cause (removed WAL, an idle timeout,
            // a conflict on a standby) in the DETAIL.
            crate::source::SourceError::Server(s)
                if s.code == "55000"
                    && (s.message.contains("replication slot")
                        && (s.message.contains("cannot read from")
                            || s.message.contains("can no longer"))) =>
            {
                Error::NeedsResync {
                    msg: format!(
                        "replication slot \"{slot}\" was invalidated on the source ({}), so changes were lost; a full resync is needed",
                        s.detail.as_deref().unwrap_or(&s.message)
                    ),
                }
            }
            other => Error::from_source("could not start streaming from the source", other),
        })?;
        Ok(Stream {
            conn,
            decoder: Decoder::with_proto_version(PROTO_VERSION),
            binary,
            spool,
            stream_xid: None,
            applier: Applier::new(),
            received: start,
            source_end: start,
            committed: start,
            unflushed: Default::default(),
            flushed: start,
            in_remote_txn: false,
            remote_final_lsn: 0,
            xact_open: false,
            pending_commit: None,
            batch_changes: 0,
            batch_started: Instant::now(),
            last_feedback: Instant::now(),
            last_sent: (0, 0),
            last_idle_advance: Instant::now(),
            last_msg: Instant::now(),
            drained: false,
            pause: None,
            started: Instant::now(),
            last_commit_time: None,
            skip_lsn: None,
            skipping: false,
            skipped: None,
            subid: None,
            context: Context::default(),
            careful: false,
            progress: None,
            last_progress: Instant::now(),
            last_published: (0, 0),
        })
    }

    /// How long to let the source's messages gather before the next read of the socket;
    /// None: read now (a message is buffered, or the stream was quiet). A reader parked on
    /// the socket is woken by every message the walsender sends, one packet each, and on a
    /// busy source those wake-ups cost the walsender more than the messages themselves
    /// (its sends then slow the whole stream down); a reader that comes back after a short
    /// pause finds many messages and takes them with one read. A paced stream pauses only
    /// once it has taken all the source had ready ([`Connection::source_has_more`]).
    fn gather_pause(&mut self) -> Option<Duration> {
        if self.conn.has_buffered_message() {
            return None;
        }
        if !(std::mem::take(&mut self.drained) || self.last_msg.elapsed() < GATHER_WHEN_BUSY) {
            return None;
        }
        if !self.conn.paced() {
            Some(GATHER_FOR)
        } else if !self.conn.source_has_more() {
            Some(GATHER_PACED)
        } else {
            None
        }
    }

    /// Receive one message, waiting at most `wait`. None: nothing arrived in time.
    fn recv(
        &mut self,
        rt: &tokio::runtime::Runtime,
        wait: Duration,
    ) -> Result<Option<ReplMessage>> {
        // A stream that is behind finds its next message buffered: no runtime, no timer.
        match self.conn.next_buffered_message() {
            Ok(Some(m)) => {
                self.drained = true;
                self.last_msg = Instant::now();
                return Ok(Some(m));
            }
            Ok(None) => {}
            Err(e) => {
                return Err(Error::from_source(
                    "lost the replication stream from the source",
                    e,
                ))
            }
        }
        match rt.block_on(async {
            tokio::time::timeout(wait, self.conn.next_replication_message()).await
        }) {
            Ok(Ok(m)) => {
                self.last_msg = Instant::now();
                Ok(Some(m))
            }
            Ok(Err(e)) => Err(Error::from_source(
                "lost the replication stream from the source",
                e,
            )),
            Err(_) => Ok(None),
        }
    }

    /// Handle one message from the walsender. Returns true when a source transaction
    /// committed (it is now pending in the open target transaction).
    fn handle(
        &mut self,
        rt: &tokio::runtime::Runtime,
        m: ReplMessage,
        owner: &dyn Owner,
    ) -> Result<(bool, bool)> {
        match m {
            ReplMessage::Keepalive {
                wal_end,
                reply_requested,
                ..
            } => {
                self.received = self.received.max(wal_end);
                self.source_end = wal_end;
                Ok((false, reply_requested))
            }
            ReplMessage::XLogData {
                wal_start,
                wal_end,
                data,
                ..
            } => {
                self.received = self.received.max(wal_start).max(wal_end);
                self.source_end = self.source_end.max(wal_end);
                let raw = data.clone();
                let msg = self.decoder.decode(data)?;
                Ok((self.route(rt, msg, &raw, owner)?, false))
            }
        }
    }

    /// A source transaction ending at `end` arrived whole.
    fn note_received(&mut self, end: Lsn) {
        self.received = self.received.max(end);
        self.source_end = self.source_end.max(end);
        self.publish_received();
    }

    /// What arrived, in shared memory, as each source transaction arrives whole (at most
    /// every 100 ms): `lag_bytes` and `lag_seconds` then grow while a transaction takes
    /// long to apply. (The messages' own LSNs say little: the walsender sends one with a
    /// transaction's last message only, and PostgreSQL 18 sends the commit record's start.)
    fn publish_received(&mut self) {
        let Some((db, subid)) = self.progress else {
            return;
        };
        // Only positions that moved count (most messages of a transaction carry none: the
        // walsender sends an LSN with its last message only).
        let pos = (self.received, self.source_end);
        if pos == self.last_published || self.last_progress.elapsed() < Duration::from_millis(100) {
            return;
        }
        self.last_progress = Instant::now();
        self.last_published = pos;
        if let Some(s) = crate::shmem::REGISTRY.exclusive().sync_mut(db, subid) {
            s.received_lsn = s.received_lsn.max(self.received);
            s.source_end_lsn = s.source_end_lsn.max(self.source_end.max(self.received));
        }
    }

    fn ensure_xact(&mut self) {
        if !self.xact_open {
            worker::begin();
            self.xact_open = true;
            self.batch_started = Instant::now();
            self.batch_changes = 0;
        }
    }

    /// Streamed messages go to the spool; everything else is applied now.
    fn route(
        &mut self,
        rt: &tokio::runtime::Runtime,
        msg: Message,
        raw: &[u8],
        owner: &dyn Owner,
    ) -> Result<bool> {
        match msg {
            Message::StreamStart { xid, first_segment } => {
                self.spool.start(xid, first_segment)?;
                self.stream_xid = Some(xid);
            }
            Message::StreamStop => self.stream_xid = None,
            Message::StreamAbort { xid, subxid, .. } => self.spool.abort(xid, subxid)?,
            Message::StreamCommit {
                xid,
                commit_lsn,
                end_lsn,
                commit_time,
                ..
            } => {
                if self.skip_lsn == Some(commit_lsn) {
                    self.spool.abort(xid, xid)?;
                    self.ensure_xact();
                    self.note_skipped(commit_lsn);
                } else {
                    self.context = Context {
                        xid: Some(xid),
                        finish_lsn: commit_lsn,
                        action: "STREAM COMMIT",
                        rel: None,
                    };
                    self.applier.current = Origin {
                        xid: Some(xid),
                        finish_lsn: commit_lsn,
                    };
                    self.replay(rt, xid, commit_lsn, owner)?;
                    if self.careful {
                        self.applier.flush()?;
                    }
                }
                self.pending_commit = Some((end_lsn, commit_time));
                self.note_received(end_lsn);
                return Ok(true);
            }
            m if self.decoder.in_stream() => {
                let top = self.stream_xid.ok_or_else(|| {
                    Error::user(
                        Code::ERRCODE_PROTOCOL_VIOLATION,
                        "streamed change outside a stream",
                    )
                })?;
                self.spool.append(top, message_xid(&m), raw)?;
            }
            m => return self.apply(m, owner),
        }
        Ok(false)
    }

    /// Apply a committed streamed transaction from its spool file, in the open target
    /// transaction, keeping the walsender alive and honouring SIGTERM on the way.
    fn replay(
        &mut self,
        rt: &tokio::runtime::Runtime,
        xid: Xid,
        commit_lsn: Lsn,
        owner: &dyn Owner,
    ) -> Result<()> {
        self.ensure_xact();
        self.in_remote_txn = true;
        self.remote_final_lsn = commit_lsn;
        let mut decoder = Decoder::with_proto_version(PROTO_VERSION);
        decoder.set_in_stream(true);
        for (i, frame) in self.spool.commit(xid)?.enumerate() {
            let msg = decoder.decode(frame?)?;
            self.apply(msg, owner)?;
            if i % 10_000 == 9_999 {
                worker::check_interrupts()?;
                self.feedback(rt, false)?;
            }
        }
        self.in_remote_txn = false;
        Ok(())
    }

    /// Does a change of an owned table apply to this row ([`Owner::key_filter`])?
    fn row_applies(&self, owner: &dyn Owner, rel: RelId, row: &TupleData) -> Result<bool> {
        let Some(f) = owner.key_filter(rel) else {
            return Ok(true);
        };
        let key = if f.needs_key() {
            let i = self.applier.column_index(rel, &f.column);
            match i.and_then(|i| row.0.get(i).map(|d| (i, d))) {
                Some((_, Datum::Text(b))) => Some(b.clone()),
                Some((i, Datum::Binary(b))) => Some(self.applier.value_text(rel, i, b)?),
                _ => None,
            }
        } else {
            None
        };
        f.applies(self.remote_final_lsn, key.as_deref())
    }

    /// A skipped transaction (`livesync_skip`) ended: the open target transaction clears
    /// the skip as it commits, with the origin past the transaction.
    fn note_skipped(&mut self, lsn: Lsn) {
        pgrx::log!(
            "livesync: skipped the source transaction finished at {} (livesync_skip)",
            crate::lsn::format(lsn)
        );
        self.skipped = Some(lsn);
        self.skip_lsn = None;
        self.skipping = false;
    }

    /// Record what is being applied, for an error's context.
    fn doing(&mut self, action: &'static str, rel: RelId) {
        self.context.action = action;
        self.context.rel = Some(rel);
    }

    fn apply(&mut self, msg: Message, owner: &dyn Owner) -> Result<bool> {
        match msg {
            Message::Insert { .. }
            | Message::Update { .. }
            | Message::Delete { .. }
            | Message::Truncate { .. }
                if self.skipping =>
            {
                return Ok(false)
            }
            Message::Begin { final_lsn, xid, .. } => {
                self.ensure_xact();
                self.in_remote_txn = true;
                self.remote_final_lsn = final_lsn;
                self.context = Context {
                    xid: Some(xid),
                    finish_lsn: final_lsn,
                    action: "BEGIN",
                    rel: None,
                };
                self.applier.current = Origin {
                    xid: Some(xid),
                    finish_lsn: final_lsn,
                };
                if self.skip_lsn == Some(final_lsn) {
                    self.skipping = true;
                }
            }
            Message::Commit {
                end_lsn,
                commit_time,
                ..
            } => {
                self.in_remote_txn = false;
                if self.careful {
                    self.applier.flush()?;
                }
                self.context.action = "COMMIT";
                self.context.rel = None;
                if self.skipping {
                    self.note_skipped(self.remote_final_lsn);
                }
                self.pending_commit = Some((end_lsn, commit_time));
                // The whole transaction is here (the message's own LSN may be the commit
                // record's start).
                self.note_received(end_lsn);
                return Ok(true);
            }
            Message::Relation { rel, .. } => {
                if self.binary {
                    if let Some(c) = rel
                        .columns
                        .iter()
                        .find(|c| !crate::binval::safe(c.type_oid))
                    {
                        return Err(Error::TextStream {
                            rel: format!("{}.{}", rel.namespace, rel.name),
                            column: c.name.clone(),
                            type_oid: c.type_oid,
                        });
                    }
                }
                self.ensure_xact();
                self.applier.relation(rel)?;
            }
            Message::Insert { rel, new, .. } => {
                self.doing("INSERT", rel);
                if owner.owns(rel, self.remote_final_lsn) && self.row_applies(owner, rel, &new)? {
                    self.applier.insert(rel, &new)?;
                    self.batch_changes += 1;
                }
            }
            Message::Update {
                rel,
                mut old,
                mut new,
                ..
            } => {
                self.doing("UPDATE", rel);
                if owner.owns(rel, self.remote_final_lsn) {
                    if self.binary {
                        self.applier.text_values(rel, &mut new)?;
                        if let Some((_, o)) = old.as_mut() {
                            self.applier.text_values(rel, o)?;
                        }
                    }
                    let key = old.as_ref().map(|(_, t)| t).unwrap_or(&new);
                    // A row that moves between parts of a copy read under different
                    // snapshots is a DELETE in one and an INSERT in the other.
                    match (
                        self.row_applies(owner, rel, key)?,
                        self.row_applies(owner, rel, &new)?,
                    ) {
                        (true, true) => {
                            self.applier
                                .update(rel, old.as_ref().map(|(k, t)| (*k, t)), &new)?
                        }
                        (true, false) => self.applier.delete(rel, key)?,
                        (false, true) => {
                            if new.0.contains(&Datum::UnchangedToast) {
                                return Err(Error::NeedsResync {
                                    msg: "an UPDATE moved a row with unchanged TOASTed values into a part of the copy read earlier".into(),
                                });
                            }
                            self.applier.insert(rel, &new)?
                        }
                        (false, false) => return Ok(false),
                    }
                    self.batch_changes += 1;
                }
            }
            Message::Delete { rel, mut old, .. } => {
                self.doing("DELETE", rel);
                if !owner.owns(rel, self.remote_final_lsn) {
                    return Ok(false);
                }
                if self.binary {
                    self.applier.text_values(rel, &mut old)?;
                }
                if self.row_applies(owner, rel, &old)? {
                    self.applier.delete(rel, &old)?;
                    self.batch_changes += 1;
                }
            }
            Message::Truncate {
                restart_identity,
                rels,
                ..
            } => {
                self.context.action = "TRUNCATE";
                self.context.rel = None;
                let mut mine = Vec::new();
                let listed = rels.clone();
                for r in rels {
                    if !owner.owns(r, self.remote_final_lsn) {
                        continue;
                    }
                    match owner
                        .key_filter(r)
                        .map(|f| f.truncate_applies(self.remote_final_lsn))
                    {
                        None | Some(Some(true)) => mine.push(r),
                        Some(Some(false)) => {}
                        Some(None) => {
                            return Err(Error::NeedsResync {
                                msg:
                                    "a TRUNCATE came between the snapshots the copy was read under"
                                        .into(),
                            })
                        }
                    }
                }
                self.applier.truncate(&mine, &listed, restart_identity)?;
                self.batch_changes += 1;
            }
            Message::Origin { .. } | Message::Type { .. } | Message::LogicalMessage { .. } => {}
            other => {
                return Err(Error::user(
                    Code::ERRCODE_PROTOCOL_VIOLATION,
                    format!(
                        "unexpected pgoutput message '{}' in a non-streaming session",
                        other.tag() as char
                    ),
                ))
            }
        }
        Ok(false)
    }

    /// One turn of the loop that drives a pgoutput stream, the same for the apply worker and
    /// for a table-sync worker's catch-up (PostgreSQL's `LogicalRepApplyLoop` serves both):
    /// receive one message (waiting at most `wait`), apply it, commit when `batching`
    /// says so, answer the source. The callers do their own work between steps, and only
    /// where a step left no target transaction open (`xact_open()`), because a source
    /// transaction, however long, ends in one target commit.
    pub fn step(
        &mut self,
        rt: &tokio::runtime::Runtime,
        owner: &dyn Owner,
        wait: Duration,
        batching: Batching,
    ) -> Result<Step> {
        worker::check_interrupts()?;
        if let Some(pause) = self.pause.take().or_else(|| self.gather_pause()) {
            // Everything the source had sent is applied (nothing buffered, nothing in the
            // socket): a batch that ends on a source commit commits now, not after the
            // pause (nor after the pause's read, when that read is the stream's last), and
            // is visible and confirmed that much sooner. The pause follows in the next
            // step. A stream that pauses with bytes waiting (one not paced, over a
            // network) keeps its batch open as before.
            if batching == Batching::Group && self.has_pending_commit() && self.conn.socket_empty()
            {
                self.commit()?;
                self.pause = Some(pause);
                return Ok(Step::Committed);
            }
            std::thread::sleep(pause);
        }
        match self.recv(rt, wait)? {
            Some(m) => {
                let (committed, reply) = self.handle(rt, m, owner)?;
                let commit_now = match batching {
                    Batching::Group => self.batch_full(),
                    Batching::EachTransaction => committed,
                };
                if commit_now {
                    self.commit()?;
                }
                if reply {
                    self.feedback(rt, true)?;
                }
                Ok(if commit_now {
                    Step::Committed
                } else {
                    Step::Applied
                })
            }
            // Nothing more right now: end the batch at its last source commit.
            None if self.has_pending_commit() => {
                self.commit()?;
                Ok(Step::Committed)
            }
            None if self.xact_open => {
                self.check_alive(rt)?;
                self.feedback(rt, false)?;
                Ok(Step::Waiting)
            }
            None => Ok(Step::Idle),
        }
    }

    /// Should the open target transaction commit now (it ends on a source commit)?
    fn batch_full(&self) -> bool {
        self.pending_commit.is_some()
            && !self.in_remote_txn
            && (self.batch_changes >= crate::gucs::APPLY_BATCH_ROWS.get() as usize
                || self.batch_started.elapsed().as_millis() as i64
                    >= crate::gucs::APPLY_BATCH_MS.get() as i64)
    }

    fn has_pending_commit(&self) -> bool {
        self.pending_commit.is_some() && !self.in_remote_txn
    }

    pub fn xact_open(&self) -> bool {
        self.xact_open
    }

    /// Commit the target transaction with the last source commit's position in the origin.
    fn commit(&mut self) -> Result<()> {
        let Some((end_lsn, commit_time)) = self.pending_commit.take() else {
            return Ok(());
        };
        self.applier.flush()?;
        if let Some(subid) = self.subid {
            let (updates, deletes) = self.applier.take_missing();
            crate::catalog::count(subid, crate::catalog::Counter::UpdateMissing, updates)?;
            crate::catalog::count(subid, crate::catalog::Counter::DeleteMissing, deletes)?;
            if let Some(lsn) = self.skipped.take() {
                crate::catalog::clear_skip_lsn(subid, lsn)?;
            }
        }
        let local_end = commit_at_origin_async(end_lsn, commit_time);
        self.unflushed.push_back((local_end, end_lsn));
        self.xact_open = false;
        self.committed = self.committed.max(end_lsn);
        self.last_commit_time = Some(commit_time);
        self.context = Context::default();
        Ok(())
    }

    /// The end LSN of the last source transaction committed here (perhaps not yet
    /// flushed: data commits are asynchronous, see [`commit_at_origin_async`]).
    pub fn confirmed(&self) -> Lsn {
        self.committed
    }

    /// The position we confirm to the source: durable in the replication origin, so the
    /// slot never gets ahead of the target, even after a crash. That invariant is what
    /// lets a restart detect a slot dropped and recreated, or advanced, by someone else.
    /// As PostgreSQL's apply worker (`get_flush_position`): the source position of the
    /// last of our commits that the WAL has flushed.
    pub fn durable(&mut self) -> Lsn {
        // SAFETY: reads the WAL flush position from shared memory.
        let flushed = unsafe { pg_sys::GetFlushRecPtr(std::ptr::null_mut()) };
        while let Some(&(local, remote)) = self.unflushed.front() {
            if local > flushed {
                break;
            }
            self.flushed = self.flushed.max(remote);
            self.unflushed.pop_front();
        }
        if self.unflushed.is_empty() {
            self.flushed = self.flushed.max(self.committed);
        }
        self.flushed
    }

    /// When idle (no transaction in flight) and the source reported a position past our
    /// last commit, record that position in the origin with an empty transaction, as if a
    /// transaction had committed there, so it can be confirmed. At most once a second.
    pub fn advance_idle(&mut self) -> Result<()> {
        if self.xact_open
            || self.in_remote_txn
            || self.pending_commit.is_some()
            || self.stream_xid.is_some()
            || self.received <= self.committed
            || self.last_idle_advance.elapsed() < Duration::from_secs(1)
        {
            return Ok(());
        }
        self.last_idle_advance = Instant::now();
        let lsn = self.received;
        worker::begin();
        // SAFETY: reads the backend's clock.
        commit_at_origin(lsn, unsafe { pg_sys::GetCurrentTimestamp() });
        self.committed = self.committed.max(lsn);
        Ok(())
    }

    /// Send a status update if positions moved, if `force`, or every 10 s.
    pub fn feedback(&mut self, rt: &tokio::runtime::Runtime, force: bool) -> Result<()> {
        let pos = (self.received, self.durable());
        if !force && pos == self.last_sent && self.last_feedback.elapsed() < FEEDBACK_EVERY {
            return Ok(());
        }
        if !force
            && pos != self.last_sent
            && self.last_feedback.elapsed() < Duration::from_millis(100)
        {
            return Ok(());
        }
        worker::block_on(
            rt,
            self.conn.send_standby_status(pos.0, pos.1, pos.1, false),
        )?
        .map_err(|e| Error::from_source("could not send a status update to the source", e))?;
        self.last_sent = pos;
        self.last_feedback = Instant::now();
        Ok(())
    }

    /// Like a walreceiver's `wal_receiver_timeout` (60 s): after 30 s without a message ask
    /// the source for a reply, after 60 s give up on the connection.
    pub fn check_alive(&mut self, rt: &tokio::runtime::Runtime) -> Result<()> {
        let silent = self.last_msg.elapsed();
        if silent > Duration::from_secs(60) {
            return Err(Error::user(
                Code::ERRCODE_CONNECTION_FAILURE,
                format!("no message from the source for {} s", silent.as_secs()),
            )
            .hint("Check the network between target and source; livesync reconnects by itself."));
        }
        if silent > Duration::from_secs(30)
            && self.last_feedback.elapsed() > Duration::from_secs(10)
        {
            let pos = (self.received, self.durable());
            worker::block_on(rt, self.conn.send_standby_status(pos.0, pos.1, pos.1, true))?
                .map_err(|e| {
                    Error::from_source("could not send a status update to the source", e)
                })?;
            self.last_feedback = Instant::now();
        }
        Ok(())
    }

    /// Abandon the open target transaction (after an error).
    pub fn abort(&mut self) {
        self.applier.discard();
        if self.xact_open {
            worker::abort();
            self.xact_open = false;
        }
    }
}

/// Commit the open transaction recording `lsn` as the session origin's position, and make
/// that durable before returning: only then may `lsn` be confirmed to the source.
///
/// The transaction always gets an xid, so a commit record (which carries the origin
/// position) is written even when every change of the batch was filtered out; and the
/// commit record is flushed explicitly, because PostgreSQL flushes a commit synchronously
/// only when the transaction wrote WAL before it. A crash therefore never leaves the
/// source's slot ahead of the target.
pub fn commit_at_origin(lsn: Lsn, time: PgTimestamp) {
    // SAFETY: inside an open transaction on the main thread; the replorigin globals are the
    // per-transaction values pg_replication_origin_xact_setup() would set.
    unsafe {
        pg_sys::GetCurrentTransactionId();
        pg_sys::replorigin_session_origin_lsn = lsn;
        pg_sys::replorigin_session_origin_timestamp = time;
    }
    worker::commit();
    // Only this commit carries the position; later ones (catalog updates) must not.
    worker::reset_origin_position();
    // SAFETY: flushes WAL up to our own commit record.
    unsafe { pg_sys::XLogFlush(pg_sys::XactLastCommitEnd) };
}

/// [`commit_at_origin`] without waiting for the WAL flush, as PostgreSQL's apply worker
/// commits (`synchronous_commit = off` by default for subscriptions): a crash may lose the
/// last commits, with their origin position, so they are applied again from the slot,
/// which is confirmed only up to flushed commits ([`Stream::durable`]). Returns the end of
/// the commit record in the local WAL.
pub fn commit_at_origin_async(lsn: Lsn, time: PgTimestamp) -> Lsn {
    /// Restores `synchronous_commit` also when the commit raises an ERROR.
    struct Restore(std::ffi::c_int);
    impl Drop for Restore {
        fn drop(&mut self) {
            // SAFETY: a backend global, main thread.
            unsafe { pg_sys::synchronous_commit = self.0 };
        }
    }
    // SAFETY: inside an open transaction on the main thread; the replorigin globals are the
    // per-transaction values pg_replication_origin_xact_setup() would set, and
    // synchronous_commit is what RecordTransactionCommit reads (for this commit only).
    let _restore = unsafe {
        pg_sys::GetCurrentTransactionId();
        pg_sys::replorigin_session_origin_lsn = lsn;
        pg_sys::replorigin_session_origin_timestamp = time;
        let r = Restore(pg_sys::synchronous_commit);
        pg_sys::synchronous_commit =
            pg_sys::SyncCommitLevel::SYNCHRONOUS_COMMIT_OFF as std::ffi::c_int;
        r
    };
    worker::commit();
    worker::reset_origin_position();
    // SAFETY: this backend's last commit record.
    unsafe { pg_sys::XactLastCommitEnd }
}

/// The (sub)transaction a streamed change belongs to.
fn message_xid(m: &Message) -> Option<Xid> {
    match m {
        Message::Relation { xid, .. }
        | Message::Type { xid, .. }
        | Message::Insert { xid, .. }
        | Message::Update { xid, .. }
        | Message::Delete { xid, .. }
        | Message::Truncate { xid, .. }
        | Message::LogicalMessage { xid, .. } => *xid,
        _ => None,
    }
}

/// Set up this session to apply changes: replica role (no FK checks, REPLICA triggers),
/// text formats matching what the source prints.
pub fn prepare_session() -> Result<()> {
    worker::xact(|| {
        for sql in [
            "SET session_replication_role = replica",
            "SET datestyle = ISO",
            "SET intervalstyle = postgres",
            "SET extra_float_digits = 3",
            "SET bytea_output = hex",
            "SET statement_timeout = 0",
            "SET lock_timeout = 0",
        ] {
            pgrx::spi::Spi::run(sql)?;
        }
        Ok(())
    })
}

/// Make `name` this session's replication origin (creating it if needed); returns its
/// progress: the end LSN of the last source transaction committed here.
pub fn setup_origin(name: &str) -> Result<Lsn> {
    worker::xact(|| {
        pgrx::spi::Spi::run_with_args(
            "SELECT pg_catalog.pg_replication_origin_create($1) \
              WHERE NOT EXISTS (SELECT 1 FROM pg_catalog.pg_replication_origin WHERE roname OPERATOR(pg_catalog.=) $1)",
            &[name.into()],
        )?;
        Ok(())
    })?;
    worker::xact(|| {
        pgrx::spi::Spi::run_with_args(
            "SELECT pg_catalog.pg_replication_origin_session_setup($1)",
            &[name.into()],
        )?;
        let p: Option<String> = pgrx::spi::Spi::get_one(
            "SELECT pg_catalog.pg_replication_origin_session_progress(true)::pg_catalog.text",
        )?;
        Ok(p.and_then(|s| crate::lsn::parse(&s)).unwrap_or(0))
    })
}

/// Create replication origin `name` (anew) at `lsn` (inside the caller's transaction).
pub fn create_origin_at(name: &str, lsn: Lsn) -> Result<()> {
    pgrx::spi::Spi::run_with_args(
        "SELECT pg_catalog.pg_replication_origin_drop(roname) FROM pg_catalog.pg_replication_origin \
          WHERE roname OPERATOR(pg_catalog.=) $1",
        &[name.into()],
    )?;
    pgrx::spi::Spi::run_with_args(
        "SELECT pg_catalog.pg_replication_origin_create($1), \
                pg_catalog.pg_replication_origin_advance($1, $2::pg_catalog.pg_lsn)",
        &[name.into(), crate::lsn::format(lsn).as_str().into()],
    )?;
    Ok(())
}

pub fn drop_origin(name: &str) -> Result<()> {
    worker::xact(|| {
        pgrx::spi::Spi::run_with_args(
            "SELECT pg_catalog.pg_replication_origin_drop(roname) FROM pg_catalog.pg_replication_origin WHERE roname OPERATOR(pg_catalog.=) $1",
            &[name.into()],
        )?;
        Ok(())
    })
}
