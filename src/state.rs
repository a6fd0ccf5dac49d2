//! Per-table sync states and their legal transitions (pure; no pgrx).
//!
//! These are the states of PostgreSQL's `pg_subscription_rel.srsubstate` (see the NOTES at
//! the top of PostgreSQL's `tablesync.c`). Only these five are stored; PostgreSQL's
//! in-memory SYNCWAIT/CATCHUP hand-shake is carried by `sync_rel.catchup_lsn` instead.
//!
//! ```text
//!   i (queued) --tablesync starts--> d (copying; the copy runs in one target transaction)
//!   d --copy committed together with state f and the copy's LSN--> f (copy finished)
//!   f --tablesync caught up with the apply worker's position--> s (sync done at sync_lsn)
//!   s --apply worker passed sync_lsn--> r (ready: the apply worker owns the table)
//!   d --tablesync restarted after a failed copy--> d (the failed copy left nothing)
//!   i --copy_data = false--> r
//! ```

/// A table's state in `livesync.sync_rel.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TableState {
    /// Queued for the initial copy.
    Init,
    /// A table-sync worker is copying the data.
    DataSync,
    /// The copy is committed; the table-sync worker is catching up with the apply worker.
    FinishedCopy,
    /// The table-sync worker applied everything up to `sync_lsn` and exited.
    SyncDone,
    /// The apply worker applies every change of this table.
    Ready,
}

impl TableState {
    pub const ALL: [TableState; 5] = [
        TableState::Init,
        TableState::DataSync,
        TableState::FinishedCopy,
        TableState::SyncDone,
        TableState::Ready,
    ];

    pub fn as_char(self) -> char {
        match self {
            TableState::Init => 'i',
            TableState::DataSync => 'd',
            TableState::FinishedCopy => 'f',
            TableState::SyncDone => 's',
            TableState::Ready => 'r',
        }
    }

    pub fn from_char(c: char) -> Option<TableState> {
        TableState::ALL.into_iter().find(|s| s.as_char() == c)
    }

    /// Is `self -> next` a transition the protocol allows?
    pub fn can_become(self, next: TableState) -> bool {
        use TableState::*;
        matches!(
            (self, next),
            (Init, DataSync)
                | (Init, Ready)
                | (DataSync, DataSync)
                | (DataSync, FinishedCopy)
                | (FinishedCopy, SyncDone)
                // The table-sync slot was lost before the hand-off: copy again.
                | (FinishedCopy, Init)
                | (SyncDone, Ready)
                // An apply error only the table can fix holds it (`catalog::hold_rel`); a
                // table-sync worker catches it up again; `livesync_resync` copies it anew.
                | (Ready, FinishedCopy)
                | (_, Init)
        )
    }

    /// Does a table-sync worker still have work to do for a table in this state?
    pub fn needs_tablesync(self) -> bool {
        matches!(
            self,
            TableState::Init | TableState::DataSync | TableState::FinishedCopy
        )
    }

    /// Must the apply worker apply a change of this table that commits at `commit_lsn`?
    ///
    /// As PostgreSQL's `should_apply_changes_for_rel`: a ready table always; a table whose
    /// sync finished at `sync_lsn` for transactions committing at or after it (everything
    /// before was applied by the table-sync worker or is in the copy); otherwise never,
    /// because the table-sync worker will apply it.
    pub fn apply_owns(self, sync_lsn: u64, commit_lsn: u64) -> bool {
        match self {
            TableState::Ready => true,
            TableState::SyncDone => sync_lsn <= commit_lsn,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TableState::{self, *};

    #[test]
    fn chars_round_trip() {
        for s in TableState::ALL {
            assert_eq!(TableState::from_char(s.as_char()), Some(s));
        }
        assert_eq!(TableState::from_char('x'), None);
        assert_eq!(
            TableState::ALL.map(TableState::as_char),
            ['i', 'd', 'f', 's', 'r']
        );
    }

    #[test]
    fn transitions() {
        assert!(Init.can_become(DataSync));
        assert!(Init.can_become(Ready));
        assert!(DataSync.can_become(FinishedCopy));
        assert!(DataSync.can_become(DataSync));
        assert!(FinishedCopy.can_become(SyncDone));
        assert!(SyncDone.can_become(Ready));
        // livesync_resync copies any table anew; an apply error only the table can fix
        // holds a ready table for a catch-up.
        assert!(Ready.can_become(Init));
        assert!(Ready.can_become(FinishedCopy));
        assert!(!Ready.can_become(SyncDone));
        assert!(!FinishedCopy.can_become(Ready));
        assert!(FinishedCopy.can_become(Init));
        assert!(!Init.can_become(SyncDone));
        assert!(!DataSync.can_become(Ready));
    }

    #[test]
    fn apply_ownership() {
        assert!(Ready.apply_owns(0, 5));
        assert!(SyncDone.apply_owns(100, 100));
        assert!(SyncDone.apply_owns(100, 150));
        assert!(!SyncDone.apply_owns(100, 99));
        for s in [Init, DataSync, FinishedCopy] {
            assert!(!s.apply_owns(0, u64::MAX));
            assert!(s.needs_tablesync());
        }
        assert!(!Ready.needs_tablesync() && !SyncDone.needs_tablesync());
    }
}
