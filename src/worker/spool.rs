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
//! Files live in `base/pgsql_tmp` with the `pgsql_tmp` prefix, so PostgreSQL removes any
//! left over by a crash when it restarts; a worker also removes its own at start.

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
}

impl Spool {
    /// `tag` names the owner (sync and table), so its stale files can be found.
    pub fn new(dir: PathBuf, tag: &str) -> std::io::Result<Spool> {
        fs::create_dir_all(&dir)?;
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
        })
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
