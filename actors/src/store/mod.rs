//! redb storage: the write-ahead log, conversation snapshots, indexes and
//! dead letters. Synchronous; the writer half runs on its own thread
//! (`persistence`), reads run wherever a caller needs them (redb read
//! transactions are MVCC and never wait for the writer).
//!
//! Layout:
//! - `log`: global sequence `u64` → `LogRecord`. Appends use sequential
//!   keys, the cheapest write redb has; entries already covered by a
//!   snapshot are truncated in the background.
//! - `snapshots`: conversation id → `ConversationState` at some event seq.
//! - `contacts`: `tenant \0 address` → conversation id (current conversation).
//! - `conversations`: conversation id → `tenant \0 address`.
//! - `dead_letters`: sequence → `DeadLetter`.
//! - `meta`: small named counters.
//!
//! A conversation's durable state is its snapshot plus the log records with
//! a higher event seq. Which log records those are is kept in memory in
//! `Pending` (rebuilt from the log at start).
//!
//! # Storage design
//!
//! - `log` is keyed by a node-wide monotonic `u64`, so appends are sequential
//!   (the cheapest redb insert). A record is (conversation, event seq,
//!   event).
//! - A conversation's durable state = its snapshot + its log records with a
//!   higher seq. `Pending` says which log keys those are, so a restarted
//!   actor reads only its own records.
//! - Snapshots are written every `snapshot_every_events` events, on
//!   passivation and at shutdown; when one commits, `Pending` drops the
//!   records it covers and the writer truncates the log below the lowest
//!   still-needed key.
//! - At open, every log record not covered by a snapshot is folded into a new
//!   snapshot, so a node starts with an empty log and empty `Pending`.
//! - The writer's channel is FIFO and batches commit in order: when an
//!   operation completes, everything submitted before it is durable. A new
//!   actor passes a barrier before loading, so it never misses a
//!   predecessor's queued writes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use threadline_protocol::codec::{self, TimerRow};
use threadline_protocol::ConversationId;

mod reads;
mod recover;
mod writes;

use recover::check_values;
pub(crate) use recover::replay;
pub use writes::*;

pub(crate) const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
pub(crate) const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("snapshots");
pub(crate) const CONTACTS: TableDefinition<&str, u64> = TableDefinition::new("contacts");
pub(crate) const CONVERSATIONS: TableDefinition<u64, &str> = TableDefinition::new("conversations");
pub(crate) const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const TIMERS: TableDefinition<u64, &[u8]> = TableDefinition::new("timers");
/// `tenant \0 seq (16 hex)` → one sealed audit record (a JSON line).
pub(crate) const AUDIT: TableDefinition<&str, &[u8]> = TableDefinition::new("audit");
/// tenant → last sealed seq (u64 LE) and hash (32 bytes).
pub(crate) const AUDIT_HEADS: TableDefinition<&str, &[u8]> = TableDefinition::new("audit_heads");

/// (conversation, message seq) → an outbound message waiting for its provider.
/// `tenant \0 address` → another address of the same tenant whose
/// conversation it continues (a web-chat visitor who gave their phone).
pub(crate) const ALIASES: TableDefinition<&str, &str> = TableDefinition::new("aliases");
/// `tenant \0 start (16 hex ms)` → a held or booked calendar slot:
/// conversation id (u64 LE), booked flag (1 byte), hold expiry (i64 LE).
pub(crate) const CALENDAR: TableDefinition<&str, &[u8]> = TableDefinition::new("calendar");
/// conversation id → the agent pool's durable index (`AgentWork`).
pub(crate) const AGENT_WORK: TableDefinition<u64, &[u8]> = TableDefinition::new("agent_work");
/// conversation → its open offer (`OfferHold`), kept by the agent pool.
pub(crate) const OFFERS: TableDefinition<u64, &[u8]> = TableDefinition::new("offers");
/// Outcome counts by `tenant\0name` (`metrics::Tally`), added to in the
/// commit of the events that achieved them.
pub(crate) const OUTCOMES: TableDefinition<&str, u64> = TableDefinition::new("outcomes");
/// What lists show of each conversation held here, by (tenant, id)
/// (`codec::ConversationSummary`), written with its events.
pub(crate) const SUMMARIES: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("summaries");
pub(crate) const OUTBOX: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("outbox");
/// conversation → the epoch at which this node holds it (no row: 0, it
/// never moved). Raised by every ownership move.
pub(crate) const EPOCHS: TableDefinition<u64, u64> = TableDefinition::new("epochs");
/// conversation → the first log key that counts for it: it moved (was
/// installed or handed over) in the commit before that key. Log records
/// of it below are of the copy the move replaced: snapshots covered them
/// but the log keeps them until it is truncated, and they must never be
/// replayed (onto no snapshot, or onto another lineage's). Emptied at
/// open, when the whole log has been folded.
pub(crate) const MOVED: TableDefinition<u64, u64> = TableDefinition::new("moved");

/// Log records set aside at open because they do not replay onto what the
/// store holds of their conversation (log key → the record as it was).
pub(crate) const QUARANTINE: TableDefinition<u64, &[u8]> = TableDefinition::new("quarantine");

/// Per-tenant chain heads kept by the writer: (last seq, last hash).
pub(crate) type AuditHeads = HashMap<String, (u64, crate::audit::Hash)>;

/// How many times the database was opened again after an I/O error.
const REOPENED: &str = "reopened";

/// Highest timer id ever written, so ids are never reused.
const TIMER_HWM: &str = "timer_hwm";

pub const DB_FILE: &str = "threadline.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Redb(String),
    #[error("stored data is unreadable: {0}")]
    Codec(codec::CodecError),
    /// Stored bytes changed under the store (a checksum that does not
    /// match, a value or page that does not parse): restore from a backup.
    #[error("stored data is damaged: {0}")]
    Damaged(String),
    #[error("stored events of {conv} do not replay: {detail}")]
    Replay {
        conv: ConversationId,
        detail: String,
    },
    #[error("the storage writer has stopped")]
    WriterGone,
    /// Committed here, but not replicated: not acknowledged.
    #[error("not replicated: {0}")]
    Replication(String),
    /// Refused by the ownership fence: the conversation moved (or is
    /// moving) away from the copy the writer loaded. Nothing was written.
    #[error("{0}")]
    Moved(String),
}

impl From<codec::CodecError> for StoreError {
    fn from(e: codec::CodecError) -> Self {
        match e.is_damage() {
            true => StoreError::Damaged(e.to_string()),
            false => StoreError::Codec(e),
        }
    }
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        match e {
            redb::StorageError::Corrupted(m) => StoreError::Damaged(m),
            other => StoreError::Redb(other.to_string()),
        }
    }
}

macro_rules! redb_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self { StoreError::Redb(e.to_string()) }
        }
    )*};
}
redb_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::SetDurabilityError
);

pub fn contact_key(tenant: &str, address: &str) -> String {
    let mut k = String::with_capacity(tenant.len() + address.len() + 1);
    k.push_str(tenant);
    k.push('\0');
    k.push_str(address);
    k
}

fn split_contact_key(k: &str) -> Option<(String, String)> {
    k.split_once('\0')
        .map(|(t, a)| (t.to_owned(), a.to_owned()))
}

/// Log entries not yet covered by a snapshot, per conversation:
/// (event seq, log key), in increasing order. `firsts` indexes each
/// conversation's lowest pending log key, so the low-water mark below which
/// the log can be truncated is O(log n) however many conversations there are.
#[derive(Default)]
pub struct Pending {
    pub(crate) by_conv: HashMap<u64, Vec<(u32, u64)>>,
    firsts: BTreeMap<u64, u64>,
}

impl Pending {
    pub(crate) fn push(&mut self, conv: u64, seq: u32, log_key: u64) {
        let v = self.by_conv.entry(conv).or_default();
        if v.is_empty() {
            self.firsts.insert(log_key, conv);
        }
        v.push((seq, log_key));
    }
    /// A snapshot at `seq` was committed: entries up to it are covered.
    pub(crate) fn covered(&mut self, conv: u64, seq: u32) {
        let Some(v) = self.by_conv.get_mut(&conv) else {
            return;
        };
        let before = v.first().map(|(_, k)| *k);
        v.retain(|(s, _)| *s > seq);
        let after = v.first().map(|(_, k)| *k);
        if before != after {
            if let Some(k) = before {
                self.firsts.remove(&k);
            }
            match after {
                Some(k) => {
                    self.firsts.insert(k, conv);
                }
                None => {
                    self.by_conv.remove(&conv);
                }
            }
        }
    }
    /// The pending log keys of `conv`, oldest first.
    pub(crate) fn keys(&self, conv: u64) -> Vec<u64> {
        self.by_conv
            .get(&conv)
            .map(|v| v.iter().map(|(_, k)| *k).collect())
            .unwrap_or_default()
    }
    /// The seq of the last pending entry of `conv`, and how many there are.
    pub(crate) fn last(&self, conv: u64) -> Option<(u32, usize)> {
        let v = self.by_conv.get(&conv)?;
        Some((v.last()?.0, v.len()))
    }
    /// `last` of every conversation.
    pub(crate) fn lasts(&self) -> HashMap<u64, (u32, usize)> {
        self.by_conv
            .iter()
            .filter_map(|(c, v)| Some((*c, (v.last()?.0, v.len()))))
            .collect()
    }
    /// The `n` conversations whose oldest pending entries are the oldest,
    /// with those entries' keys.
    pub(crate) fn oldest(&self, n: usize) -> Vec<(u64, u64)> {
        self.firsts.iter().take(n).map(|(k, c)| (*c, *k)).collect()
    }
    /// The lowest log key still needed; everything below can be truncated.
    pub(crate) fn low_water(&self) -> Option<u64> {
        self.firsts.first_key_value().map(|(k, _)| *k)
    }
    pub fn len(&self) -> usize {
        self.by_conv.values().map(Vec::len).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.by_conv.is_empty()
    }
}

pub struct Store {
    /// The open database; `None` while it is being opened again after an
    /// I/O error (`reopen`).
    db: parking_lot::RwLock<Option<Arc<Database>>>,
    cache_bytes: usize,
    pub(crate) pending: Mutex<Pending>,
    /// The replica tail's records not folded yet, per conversation (the
    /// same index as `pending`, over `replica_tail`).
    pub(crate) replica_pending: Mutex<Pending>,
    /// The database file.
    path: std::path::PathBuf,
    /// Held by the writer thread for each write transaction, and by a
    /// backup while it copies the file: a copy never sees half a commit.
    pub(crate) writing: Mutex<()>,
    /// Set once a read (or the check at open) found damaged data: the
    /// node is not ready and the writer commits nothing more.
    damaged: std::sync::atomic::AtomicBool,
}

/// What `Store::open` found on disk.
#[derive(Debug, Default, Clone)]
pub struct OpenReport {
    pub log_records_replayed: usize,
    pub conversations_recovered: usize,
    /// Replica tail records folded into their replicas' snapshots.
    pub replica_records_folded: usize,
    /// Log records of copies that moved away (covered by the snapshot
    /// they had, not truncated yet), dropped.
    pub log_records_of_moved_copies: usize,
    /// Conversations whose log records did not replay at open: the records
    /// were set aside (`quarantine` table) and the rest of the node serves.
    /// (conversation, what was wrong, records set aside).
    pub quarantined: Vec<(ConversationId, String, usize)>,
    pub next_conversation: u64,
    pub next_log_key: u64,
    pub next_dead_letter: u64,
    pub next_timer_id: u64,
    /// Every pending timer, for the scheduler.
    pub timers: Vec<TimerRow>,
    /// Every outbound message waiting for its provider, for the sender.
    pub outbox: Vec<threadline_protocol::OutboxEntry>,
    /// Stored values that did not decode (the check at open).
    pub damaged: Vec<Damage>,
}

/// What another part of the node keeps in the same database (the
/// cluster's replicas): its tables are created and recovered at open and
/// checked with the rest. The store knows nothing of what they hold.
pub trait Extension {
    fn create_tables(&self, txn: &redb::WriteTransaction) -> Result<(), StoreError>;
    /// Recovery at open, after the store's own; how many records it folded.
    fn recover(&self, store: &Store) -> Result<usize, StoreError>;
    /// Adds its damaged values to `out`.
    fn check(&self, r: &redb::ReadTransaction, out: &mut Vec<Damage>) -> Result<(), StoreError>;
}

/// A store with nothing beside its own tables.
pub struct NoExtension;

impl Extension for NoExtension {
    fn create_tables(&self, _: &redb::WriteTransaction) -> Result<(), StoreError> {
        Ok(())
    }
    fn recover(&self, _: &Store) -> Result<usize, StoreError> {
        Ok(0)
    }
    fn check(&self, _: &redb::ReadTransaction, _: &mut Vec<Damage>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// A stored value that does not decode.
#[derive(Debug, Clone)]
pub struct Damage {
    pub table: &'static str,
    /// The conversation it belongs to, where the key says.
    pub conversation: Option<ConversationId>,
    pub error: String,
}

impl Store {
    /// Opens (or creates) the database in `dir`, then folds every log record
    /// that a snapshot does not cover yet into a fresh snapshot, so a node
    /// starts with an empty log tail.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<(Arc<Store>, OpenReport), StoreError> {
        Self::open_with(dir, cache_bytes, &NoExtension)
    }

    /// `open`, with `ext`'s tables beside the store's.
    pub fn open_with(
        dir: &Path,
        cache_bytes: usize,
        ext: &dyn Extension,
    ) -> Result<(Arc<Store>, OpenReport), StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Redb(format!("cannot create {}: {e}", dir.display())))?;
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create(dir.join(DB_FILE))?;
        {
            let txn = db.begin_write()?;
            txn.open_table(LOG)?;
            txn.open_table(SNAPSHOTS)?;
            txn.open_table(CONTACTS)?;
            txn.open_table(CONVERSATIONS)?;
            txn.open_table(DEAD_LETTERS)?;
            txn.open_table(ALIASES)?;
            txn.open_table(AGENT_WORK)?;
            txn.open_table(OFFERS)?;
            txn.open_table(CALENDAR)?;
            txn.open_table(OUTCOMES)?;
            txn.open_table(SUMMARIES)?;
            txn.open_table(META)?;
            txn.open_table(TIMERS)?;
            txn.open_table(AUDIT)?;
            txn.open_table(AUDIT_HEADS)?;
            txn.open_table(OUTBOX)?;
            txn.open_table(QUARANTINE)?;
            txn.open_table(EPOCHS)?;
            txn.open_table(MOVED)?;
            ext.create_tables(&txn)?;
            txn.commit()?;
        }
        let store = Store {
            db: parking_lot::RwLock::new(Some(Arc::new(db))),
            cache_bytes,
            pending: Mutex::new(Pending::default()),
            replica_pending: Mutex::new(Pending::default()),
            path: dir.join(DB_FILE),
            writing: Mutex::new(()),
            damaged: Default::default(),
        };
        let mut report = store.recover()?;
        report.replica_records_folded = ext.recover(&store)?;
        report.damaged = check_values(&*store.db()?, ext)?;
        for d in &report.damaged {
            tracing::error!(table = d.table, conversation = ?d.conversation.map(|c| c.to_string()), error = %d.error, "damaged record found at open; restore from a backup");
        }
        if !report.damaged.is_empty() {
            store
                .damaged
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok((Arc::new(store), report))
    }

    /// The open database (an error while it is being opened again).
    pub(crate) fn db(&self) -> Result<Arc<Database>, StoreError> {
        self.db
            .read()
            .clone()
            .ok_or_else(|| StoreError::Redb("storage is being reopened after an I/O error".into()))
    }

    /// Opens the database file afresh and checks that it takes a write:
    /// after an I/O error (a full disk) redb takes no more transactions
    /// until it is reopened. Waits (up to `wait`) for reads still using the
    /// old handle; on failure the store stays closed (reads and writes
    /// answer errors) until the next attempt.
    pub(crate) fn reopen(&self, wait: std::time::Duration) -> Result<(), StoreError> {
        let mut slot = self.db.write();
        if let Some(old) = slot.take() {
            let until = std::time::Instant::now() + wait;
            let mut old = old;
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still) if std::time::Instant::now() < until => {
                        old = still;
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    Err(still) => {
                        *slot = Some(still);
                        return Err(StoreError::Redb("reads still hold the database".into()));
                    }
                }
            }
        }
        let db = Database::builder()
            .set_cache_size(self.cache_bytes)
            .create(&self.path)?;
        {
            let w = db.begin_write()?;
            {
                let mut t = w.open_table(META)?;
                let n = t.get(REOPENED)?.map(|v| v.value()).unwrap_or(0);
                t.insert(REOPENED, n + 1)?;
            }
            w.commit()?;
        }
        *slot = Some(Arc::new(db));
        Ok(())
    }

    /// Whether damaged data was found: readiness is off and the writer
    /// commits nothing more (see `OpenReport::damaged`).
    pub fn is_damaged(&self) -> bool {
        self.damaged.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Notes what a read found: damage is logged and stops the node
    /// taking writes.
    pub(crate) fn noted<T>(&self, r: Result<T, StoreError>, what: &str) -> Result<T, StoreError> {
        if let Err(StoreError::Damaged(m)) = &r {
            if !self.damaged.swap(true, std::sync::atomic::Ordering::SeqCst) {
                tracing::error!(read = what, error = %m, "damaged data read; the node takes no more writes (restore from a backup)");
            }
        }
        r
    }

    /// Checks every stored value of the database in `dir` (no node may be
    /// running on it): the damaged ones, by table and conversation.
    pub fn check_data(dir: &Path, ext: &dyn Extension) -> Result<Vec<Damage>, StoreError> {
        let db = Database::open(dir.join(DB_FILE))
            .map_err(|e| StoreError::Redb(format!("cannot open {}: {e}", dir.display())))?;
        check_values(&db, ext)
    }

    /// Copies the database file to `to` while the node runs: writes wait
    /// for the copy (no transaction is open meanwhile), so it holds every
    /// commit made before it and none in part. Returns its size in bytes.
    pub fn backup(&self, to: &Path) -> Result<u64, StoreError> {
        let io = |e: std::io::Error| StoreError::Redb(format!("backup to {}: {e}", to.display()));
        if let Some(dir) = to.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let partial = to.with_extension("partial");
        let bytes = {
            let _no_writes = self.writing.lock();
            std::fs::copy(&self.path, &partial).map_err(io)?
        };
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        std::fs::rename(&partial, to).map_err(io)?;
        Ok(bytes)
    }

    /// Puts backup file `backup` in place as the database of data
    /// directory `dir` (no node may be running on it). The backup is
    /// opened first, so a file that is not a Threadline database is
    /// refused; a database already in `dir` is kept beside it as
    /// `threadline.redb.before-restore`. Returns what was done.
    pub fn restore(backup: &Path, dir: &Path) -> Result<String, StoreError> {
        let io = |what: &str, e: std::io::Error| StoreError::Redb(format!("{what}: {e}"));
        let target = dir.join(DB_FILE);
        if target.exists() {
            // A running node holds the file's lock.
            drop(Database::open(&target).map_err(|e| {
                StoreError::Redb(format!(
                    "{} is in use (is a node running on {}?): {e}",
                    target.display(),
                    dir.display()
                ))
            })?);
        }
        {
            let db = Database::open(backup).map_err(|e| {
                StoreError::Redb(format!("{} is not a database: {e}", backup.display()))
            })?;
            let r = db.begin_read()?;
            r.open_table(CONVERSATIONS).map_err(|e| {
                StoreError::Redb(format!(
                    "{} is not a Threadline database: {e}",
                    backup.display()
                ))
            })?;
        }
        std::fs::create_dir_all(dir).map_err(|e| io("cannot create the data directory", e))?;
        let partial = dir.join(format!("{DB_FILE}.partial"));
        std::fs::copy(backup, &partial).map_err(|e| io("cannot copy the backup", e))?;
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("cannot flush the copy", e))?;
        let mut done = format!("restored {} into {}", backup.display(), target.display());
        if target.exists() {
            let kept = dir.join(format!("{DB_FILE}.before-restore"));
            std::fs::rename(&target, &kept).map_err(|e| io("cannot keep the old database", e))?;
            done.push_str(&format!("; the previous database is {}", kept.display()));
        }
        std::fs::rename(&partial, &target).map_err(|e| io("cannot put the backup in place", e))?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_low_water_follows_the_oldest_uncovered_entry() {
        let mut p = Pending::default();
        assert_eq!(p.low_water(), None);
        p.push(1, 1, 10);
        p.push(2, 1, 11);
        p.push(1, 2, 12);
        p.push(2, 2, 13);
        assert_eq!(p.low_water(), Some(10));
        p.covered(1, 1);
        assert_eq!(p.low_water(), Some(11));
        p.covered(2, 2);
        assert_eq!(p.low_water(), Some(12));
        p.covered(1, 5);
        assert_eq!(p.low_water(), None);
        assert!(p.is_empty());
        // Covering an unknown conversation or an already covered seq is a no-op.
        p.covered(9, 1);
        p.push(3, 7, 20);
        p.covered(3, 6);
        assert_eq!(p.low_water(), Some(20));
        assert_eq!(p.len(), 1);
    }
}
