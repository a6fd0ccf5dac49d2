//! Spool files for streamed (in-progress) source transactions.
//!
//! With `streaming 'on'` the source sends a large transaction in chunks before it commits,
//! interleaved with other transactions. Each chunk's messages are appended to one file per
//! top-level transaction, as length-prefixed frames; a subtransaction's first message
//! offset is remembered so that its abort truncates the file there (PostgreSQL's
//! `worker.c` does the same). At StreamCommit the file is replayed in one target
//! transaction; at StreamAbort of the whole transaction it is deleted. Memory stays
//! bounded whatever the transaction's size.
//!
//! Files live where PostgreSQL's own temporary files go: the `pgsql_tmp` directory of the
//! next of `temp_tablespaces` (`base/pgsql_tmp` without one), with the `pgsql_tmp` prefix,
//! so PostgreSQL removes any left over by a crash when it restarts; a worker also removes
//! its own at start. Their total size honours `temp_file_limit`: a source transaction
//! bigger than the limit is an error that says so, not a full data directory.

use crate::pgoutput::Xid;
use bytes::Bytes;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

struct Open {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    /// (subtransaction xid, offset of its first frame), in order of appearance.
    subxacts: Vec<(Xid, u64)>,
}

pub struct Spool {
    dir: PathBuf,
    prefix: String,
    open: HashMap<Xid, Open>,
    /// `temp_file_limit` in bytes, if any: the most all open files may hold together.
    limit: Option<u64>,
}

/// The error of a spool that would grow past `temp_file_limit` (kB), carried inside an
/// `io::Error` (see `Error::parts`).
#[derive(Debug)]
pub struct TempFileLimit(pub u64);

impl std::fmt::Display for TempFileLimit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "temporary file size exceeds temp_file_limit ({}kB)",
            self.0
        )
    }
}

impl std::error::Error for TempFileLimit {}

/// Where this session's temporary files go (`temp_tablespaces`), and `temp_file_limit` in
/// bytes. Must run inside a transaction (the tablespace list is checked against the
/// catalog).
pub fn temp_location() -> (PathBuf, Option<u64>) {
    // SAFETY: PostgreSQL's own temp-file placement, on the main thread inside a
    // transaction; `path` is MAXPGPATH bytes as TempTablespacePath expects.
    unsafe {
        pgrx::pg_sys::PrepareTempTablespaces();
        let tablespace = pgrx::pg_sys::GetNextTempTableSpace();
        let mut path = [0 as std::ffi::c_char; pgrx::pg_sys::MAXPGPATH as usize];
        pgrx::pg_sys::TempTablespacePath(path.as_mut_ptr(), tablespace);
        let dir = std::ffi::CStr::from_ptr(path.as_ptr())
            .to_string_lossy()
            .into_owned();
        let kb = pgrx::pg_sys::temp_file_limit;
        (PathBuf::from(dir), (kb >= 0).then(|| kb as u64 * 1024))
    }
}

impl Spool {
    /// `tag` names the owner (sync and table), so its stale files can be found.
    pub fn new(dir: PathBuf, tag: &str) -> std::io::Result<Spool> {
        fs::create_dir_all(&dir).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("could not create directory \"{}\": {e}", dir.display()),
            )
        })?;
        let prefix = format!("pgsql_tmp_livesync_{tag}_");
        // Files of an earlier run of this worker: the source streams those transactions
        // again from their start.
        if let Ok(entries) = fs::read_dir(&dir) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(Spool {
            dir,
            prefix,
            open: HashMap::new(),
            limit: None,
        })
    }

    /// Refuse to let the files grow past `bytes` in total.
    pub fn with_limit(mut self, bytes: Option<u64>) -> Spool {
        self.limit = bytes;
        self
    }

    fn total(&self) -> u64 {
        self.open.values().map(|o| o.len).sum()
    }

    fn path(&self, xid: Xid) -> PathBuf {
        self.dir.join(format!("{}{xid}", self.prefix))
    }

    /// A StreamStart: the first segment starts a new file.
    pub fn start(&mut self, xid: Xid, first_segment: bool) -> std::io::Result<()> {
        if first_segment || !self.open.contains_key(&xid) {
            let path = self.path(xid);
            let file = OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(first_segment)
                .read(true)
                .open(&path)
                .map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("could not open file \"{}\": {e}", path.display()),
                    )
                })?;
            let len = file.metadata()?.len();
            self.open.insert(
                xid,
                Open {
                    path,
                    out: BufWriter::with_capacity(1 << 16, file),
                    len,
                    subxacts: Vec::new(),
                },
            );
        }
        Ok(())
    }

    /// Append one message of top-level transaction `top`, sent by (sub)transaction `xid`.
    pub fn append(&mut self, top: Xid, xid: Option<Xid>, msg: &[u8]) -> std::io::Result<()> {
        if let Some(limit) = self.limit {
            if self.total() + 4 + msg.len() as u64 > limit {
                return Err(std::io::Error::other(TempFileLimit(limit / 1024)));
            }
        }
        let o = self.open.get_mut(&top).ok_or_else(|| {
            std::io::Error::other(format!("no stream open for transaction {top}"))
        })?;
        if let Some(x) = xid {
            if x != top && !o.subxacts.iter().any(|(s, _)| *s == x) {
                o.subxacts.push((x, o.len));
            }
        }
        o.out.write_all(&(msg.len() as u32).to_be_bytes())?;
        o.out.write_all(msg)?;
        o.len += 4 + msg.len() as u64;
        Ok(())
    }

    /// StreamAbort: the whole transaction (`subxid == top`) or one subtransaction (and
    /// everything after it, which can only belong to it or its children).
    pub fn abort(&mut self, top: Xid, subxid: Xid) -> std::io::Result<()> {
        if subxid == top {
            if let Some(o) = self.open.remove(&top) {
                drop(o.out);
                let _ = fs::remove_file(o.path);
            }
            return Ok(());
        }
        let Some(o) = self.open.get_mut(&top) else {
            return Ok(());
        };
        if let Some(i) = o.subxacts.iter().position(|(s, _)| *s == subxid) {
            let offset = o.subxacts[i].1;
            o.subxacts.truncate(i);
            o.out.flush()?;
            o.out.get_mut().set_len(offset)?;
            o.out.get_mut().seek(SeekFrom::Start(offset))?;
            o.len = offset;
        }
        Ok(())
    }

    /// StreamCommit: hand back a reader over the transaction's messages; the file is
    /// removed when the reader is dropped.
    pub fn commit(&mut self, top: Xid) -> std::io::Result<Replay> {
        let o = self.open.remove(&top).ok_or_else(|| {
            std::io::Error::other(format!("no spooled data for transaction {top}"))
        })?;
        let mut file = o.out.into_inner().map_err(|e| e.into_error())?;
        file.seek(SeekFrom::Start(0))?;
        Ok(Replay {
            path: o.path,
            input: BufReader::with_capacity(1 << 16, file),
            left: o.len,
        })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        for (_, o) in self.open.drain() {
            drop(o.out);
            let _ = fs::remove_file(o.path);
        }
    }
}

pub struct Replay {
    path: PathBuf,
    input: BufReader<File>,
    left: u64,
}

impl Iterator for Replay {
    type Item = std::io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let mut len = [0u8; 4];
        if let Err(e) = self.input.read_exact(&mut len) {
            return Some(Err(e));
        }
        let n = u32::from_be_bytes(len) as u64;
        if n + 4 > self.left {
            return Some(Err(std::io::Error::other("spool file is corrupt")));
        }
        let mut buf = vec![0u8; n as usize];
        if let Err(e) = self.input.read_exact(&mut buf) {
            return Some(Err(e));
        }
        self.left -= 4 + n;
        Some(Ok(Bytes::from(buf)))
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("livesync-spool-test-{}", std::process::id()));
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn collect(r: Replay) -> Vec<Vec<u8>> {
        r.map(|b| b.unwrap().to_vec()).collect()
    }

    #[test]
    fn segments_subxact_abort_and_commit() {
        let mut s = Spool::new(dir(), "t1").unwrap();
        s.start(10, true).unwrap();
        s.append(10, Some(10), b"a").unwrap();
        s.append(10, Some(11), b"sub11-1").unwrap();
        s.start(20, true).unwrap();
        s.append(20, Some(20), b"other").unwrap();
        // a later segment of 10
        s.start(10, false).unwrap();
        s.append(10, Some(11), b"sub11-2").unwrap();
        s.append(10, Some(12), b"sub12").unwrap();
        s.abort(10, 12).unwrap();
        s.append(10, Some(10), b"b").unwrap();
        assert_eq!(
            collect(s.commit(10).unwrap()),
            vec![
                b"a".to_vec(),
                b"sub11-1".to_vec(),
                b"sub11-2".to_vec(),
                b"b".to_vec()
            ]
        );
        s.abort(20, 20).unwrap();
        assert!(s.commit(20).is_err());
    }

    #[test]
    fn abort_of_first_subxact_drops_everything_after_it() {
        let mut s = Spool::new(dir(), "t2").unwrap();
        s.start(1, true).unwrap();
        s.append(1, Some(1), b"keep").unwrap();
        s.append(1, Some(2), b"x").unwrap();
        s.append(1, Some(3), b"y").unwrap();
        s.abort(1, 2).unwrap();
        assert_eq!(collect(s.commit(1).unwrap()), vec![b"keep".to_vec()]);
    }

    #[test]
    fn temp_file_limit_counts_every_open_file() {
        let mut s = Spool::new(dir(), "t4").unwrap().with_limit(Some(20));
        s.start(1, true).unwrap();
        s.start(2, true).unwrap();
        s.append(1, None, b"12345678").unwrap(); // 12 bytes with its length
        let e = s.append(2, None, b"12345").unwrap_err(); // 21 > 20
        assert!(e.to_string().contains("temp_file_limit"), "{e}");
        s.abort(1, 1).unwrap();
        s.append(2, None, b"12345").unwrap();
    }

    #[test]
    fn stale_files_are_removed_and_replay_removes_its_file() {
        let d = dir();
        fs::write(d.join("pgsql_tmp_livesync_t3_99"), b"junk").unwrap();
        let mut s = Spool::new(d.clone(), "t3").unwrap();
        assert!(!d.join("pgsql_tmp_livesync_t3_99").exists());
        s.start(5, true).unwrap();
        s.append(5, None, b"m").unwrap();
        let r = s.commit(5).unwrap();
        assert!(d.join("pgsql_tmp_livesync_t3_5").exists());
        drop(r);
        assert!(!d.join("pgsql_tmp_livesync_t3_5").exists());
    }
}
