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
use threadline_protocol::codec::{self, DeadLetter, LogRecord, TimerRow};
use threadline_protocol::{ConversationId, ConversationState};

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
    pub(crate) db: Database,
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

/// Decodes every value of the tables that hold encoded records.
fn check_values(db: &Database, ext: &dyn Extension) -> Result<Vec<Damage>, StoreError> {
    let r = db.begin_read()?;
    let mut out = Vec::new();
    let mut note = |table: &'static str, conversation: Option<u64>, e: Option<String>| {
        if let Some(error) = e {
            out.push(Damage {
                table,
                conversation: conversation.map(ConversationId),
                error,
            });
        }
    };
    let err = |r: Result<(), codec::CodecError>| r.err().map(|e| e.to_string());
    // Each table: its values decoded, the conversation read off the key.
    macro_rules! scan {
        ($table:expr, $name:literal, $conv:expr, $decode:path) => {
            for row in r.open_table($table)?.iter()? {
                let (k, v) = row?;
                note($name, $conv(k.value()), err($decode(v.value()).map(drop)));
            }
        };
    }
    scan!(SNAPSHOTS, "snapshots", Some, codec::decode_snapshot);
    scan!(LOG, "log", |_| None, codec::decode_log_record);
    scan!(TIMERS, "timers", |_| None, codec::decode_timer_row);
    scan!(
        OUTBOX,
        "outbox",
        |k: (u64, u32)| Some(k.0),
        codec::decode_outbox
    );
    scan!(AGENT_WORK, "agent_work", Some, codec::decode_agent_work);
    scan!(OFFERS, "offers", Some, codec::decode_offer_hold);
    ext.check(&r, &mut out)?;
    Ok(out)
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
            db,
            pending: Mutex::new(Pending::default()),
            replica_pending: Mutex::new(Pending::default()),
            path: dir.join(DB_FILE),
            writing: Mutex::new(()),
            damaged: Default::default(),
        };
        let mut report = store.recover()?;
        report.replica_records_folded = ext.recover(&store)?;
        report.damaged = check_values(&store.db, ext)?;
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

    fn recover(&self) -> Result<OpenReport, StoreError> {
        let mut report = OpenReport::default();
        // Group the log tail by conversation.
        let mut tail: HashMap<u64, Vec<(u64, LogRecord)>> = HashMap::new();
        let mut undecodable: Vec<(u64, String)> = Vec::new();
        let (max_log, max_conv, max_dead, any_moved) = {
            let r = self.db.begin_read()?;
            let log = r.open_table(LOG)?;
            // Records of a copy that moved away (or was replaced) count not.
            let mut moved: HashMap<u64, u64> = HashMap::new();
            for item in r.open_table(MOVED)?.iter()? {
                let (c, k) = item?;
                moved.insert(c.value(), k.value());
            }
            for item in log.iter()? {
                let (k, v) = item?;
                let rec = match codec::decode_log_record(v.value()) {
                    Ok(rec) => rec,
                    Err(e) => {
                        // Whose it was cannot be told: set aside.
                        undecodable.push((k.value(), e.to_string()));
                        continue;
                    }
                };
                if moved.get(&rec.conv.0).is_some_and(|from| k.value() < *from) {
                    report.log_records_of_moved_copies += 1;
                    continue;
                }
                tail.entry(rec.conv.0).or_default().push((k.value(), rec));
                report.log_records_replayed += 1;
            }
            let last = |t: Option<u64>| t.map_or(0, |k| k + 1);
            let max_log = last(log.last()?.map(|(k, _)| k.value()));
            let max_conv = last(r.open_table(CONVERSATIONS)?.last()?.map(|(k, _)| k.value()));
            let max_dead = last(r.open_table(DEAD_LETTERS)?.last()?.map(|(k, _)| k.value()));
            (max_log, max_conv, max_dead, !moved.is_empty())
        };
        let mut max_conv = max_conv;
        if !tail.is_empty() || any_moved || !undecodable.is_empty() {
            let w = self.db.begin_write()?;
            {
                let mut snaps = w.open_table(SNAPSHOTS)?;
                let mut contacts = w.open_table(CONTACTS)?;
                let mut convs = w.open_table(CONVERSATIONS)?;
                let mut quarantine = w.open_table(QUARANTINE)?;
                let mut summaries = w.open_table(SUMMARIES)?;
                let log = w.open_table(LOG)?;
                for (k, e) in &undecodable {
                    if let Some(v) = log.get(*k)? {
                        quarantine.insert(*k, v.value())?;
                    }
                    tracing::error!(log_key = k, error = %e, "a damaged log record was quarantined");
                    report.quarantined.push((ConversationId(0), e.clone(), 1));
                }
                for (conv, keyed) in tail {
                    let existing = match snaps.get(conv)? {
                        Some(v) => codec::decode_snapshot(v.value()).map(Some),
                        None => Ok(None),
                    };
                    let (keys, records): (Vec<u64>, Vec<LogRecord>) = keyed.into_iter().unzip();
                    let replayed = existing
                        .map_err(StoreError::from)
                        .and_then(|existing| replay(ConversationId(conv), existing, &records));
                    let state = match replayed {
                        Ok(state) => state,
                        Err(e) => {
                            // One conversation's records do not hold the
                            // whole node's data hostage: they are set
                            // aside, kept for an operator, and said.
                            for k in &keys {
                                if let Some(v) = log.get(*k)? {
                                    quarantine.insert(*k, v.value())?;
                                }
                            }
                            tracing::error!(
                                conversation = %ConversationId(conv),
                                records = keys.len(),
                                error = %e,
                                "log records that do not replay were quarantined; the conversation is served as its snapshot had it"
                            );
                            report.quarantined.push((
                                ConversationId(conv),
                                e.to_string(),
                                keys.len(),
                            ));
                            continue;
                        }
                    };
                    if let Some(state) = state {
                        let key = contact_key(&state.tenant, &state.contact);
                        contacts.insert(key.as_str(), conv)?;
                        convs.insert(conv, key.as_str())?;
                        snaps.insert(conv, codec::encode_snapshot(&state).as_slice())?;
                        summaries.insert(
                            (state.tenant.as_str(), conv),
                            codec::encode_summary(&codec::ConversationSummary::of(&state))
                                .as_slice(),
                        )?;
                        max_conv = max_conv.max(conv + 1);
                        report.conversations_recovered += 1;
                    }
                }
                drop(log);
                w.open_table(LOG)?.retain(|_, _| false)?;
                // The log is empty now: no record is of a moved copy.
                w.open_table(MOVED)?.retain(|_, _| false)?;
            }
            w.commit()?;
        }
        self.backfill_summaries()?;
        report.next_log_key = max_log;
        report.next_conversation = max_conv.max(1);
        report.next_dead_letter = max_dead;
        let r = self.db.begin_read()?;
        let hwm = r.open_table(META)?.get(TIMER_HWM)?.map_or(0, |v| v.value());
        drop(r);
        report.timers = self.timer_rows()?;
        report.outbox = self.outbox_entries()?;
        report.next_timer_id = report
            .timers
            .iter()
            .map(|t| t.id)
            .max()
            .unwrap_or(0)
            .max(hwm)
            + 1;
        Ok(report)
    }

    /// Data written before conversations had summaries gets them, once.
    fn backfill_summaries(&self) -> Result<(), StoreError> {
        let r = self.db.begin_read()?;
        if !redb::ReadableTableMetadata::is_empty(&r.open_table(SUMMARIES)?)? {
            return Ok(());
        }
        let snaps = r.open_table(SNAPSHOTS)?;
        let mut rows = Vec::new();
        for row in snaps.iter()? {
            let (k, v) = row?;
            // A damaged snapshot is reported by the integrity check.
            if let Ok(state) = codec::decode_snapshot(v.value()) {
                rows.push((
                    state.tenant.clone(),
                    k.value(),
                    codec::encode_summary(&codec::ConversationSummary::of(&state)),
                ));
            }
        }
        drop(snaps);
        drop(r);
        if rows.is_empty() {
            return Ok(());
        }
        let w = self.db.begin_write()?;
        {
            let mut t = w.open_table(SUMMARIES)?;
            for (tenant, conv, bytes) in &rows {
                t.insert((tenant.as_str(), *conv), bytes.as_slice())?;
            }
        }
        w.commit()?;
        tracing::info!(
            conversations = rows.len(),
            "conversation summaries written for existing data"
        );
        Ok(())
    }

    /// The current conversation of a contact, if any.
    pub fn conversation_of(
        &self,
        tenant: &str,
        address: &str,
    ) -> Result<Option<ConversationId>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(CONTACTS)?;
        Ok(t.get(contact_key(tenant, address).as_str())?
            .map(|v| ConversationId(v.value())))
    }

    /// (tenant, address) of a conversation id, if it exists.
    pub fn contact_of(&self, id: ConversationId) -> Result<Option<(String, String)>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(CONVERSATIONS)?;
        Ok(t.get(id.0)?.and_then(|v| split_contact_key(v.value())))
    }

    /// The durable state of a conversation: snapshot plus pending log records.
    /// The caller must have passed a persistence barrier, so that everything
    /// submitted before is committed and listed in `Pending`.
    pub fn load(&self, id: ConversationId) -> Result<Option<ConversationState>, StoreError> {
        Ok(self.load_held(id)?.0)
    }

    /// `load`, and the epoch this node holds the conversation at, read in
    /// one transaction (an actor writes at the epoch its state is from:
    /// the writer's fence refuses its writes once the conversation moved).
    pub fn load_held(
        &self,
        id: ConversationId,
    ) -> Result<(Option<ConversationState>, u64), StoreError> {
        self.noted(self.read_held(id), "conversation")
    }

    fn read_held(
        &self,
        id: ConversationId,
    ) -> Result<(Option<ConversationState>, u64), StoreError> {
        let keys = self.pending.lock().keys(id.0);
        let r = self.db.begin_read()?;
        let epoch = r.open_table(EPOCHS)?.get(id.0)?.map_or(0, |v| v.value());
        let snapshot = match r.open_table(SNAPSHOTS)?.get(id.0)? {
            Some(v) => Some(codec::decode_snapshot(v.value())?),
            None => None,
        };
        let log = r.open_table(LOG)?;
        let mut records = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(v) = log.get(k)? {
                records.push(codec::decode_log_record(v.value())?);
            }
        }
        Ok((replay(id, snapshot, &records)?, epoch))
    }

    /// Whether outbound message (conv, seq) still waits for its provider.
    pub fn outbox_contains(&self, conv: u64, seq: u32) -> Result<bool, StoreError> {
        let r = self.db.begin_read()?;
        Ok(r.open_table(OUTBOX)?.get((conv, seq))?.is_some())
    }

    /// Every outbound message waiting for its provider.
    pub fn outbox_entries(&self) -> Result<Vec<threadline_protocol::OutboxEntry>, StoreError> {
        let r = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in r.open_table(OUTBOX)?.iter()? {
            let (_, v) = item?;
            out.push(codec::decode_outbox(v.value())?);
        }
        Ok(out)
    }

    /// Every pending timer in the index.
    pub fn timer_rows(&self) -> Result<Vec<TimerRow>, StoreError> {
        let r = self.db.begin_read()?;
        let mut out = Vec::new();
        for item in r.open_table(TIMERS)?.iter()? {
            let (_, v) = item?;
            out.push(codec::decode_timer_row(v.value())?);
        }
        Ok(out)
    }

    /// Sealed audit records of a tenant in chain order, optionally only one
    /// contact's and only from `since` on (a filtered export does not verify
    /// as a chain: records of other contacts are left out).
    pub fn audit_records(
        &self,
        tenant: &str,
        contact: Option<&str>,
        since: Option<threadline_protocol::Timestamp>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(AUDIT)?;
        let from = format!("{tenant}\0");
        let to = format!("{tenant}\u{1}");
        let mut out = Vec::new();
        for item in t.range(from.as_str()..to.as_str())? {
            let (_, v) = item?;
            let line = String::from_utf8_lossy(v.value()).into_owned();
            if contact.is_some() || since.is_some() {
                let rec: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                if contact.is_some_and(|c| rec["contact"] != c) {
                    continue;
                }
                if since.is_some_and(|s| rec["at"].as_i64().unwrap_or(0) < s.0) {
                    continue;
                }
            }
            out.push(line);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Every held or booked calendar slot.
    pub fn calendar(&self) -> Result<Vec<(String, SlotHold)>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(CALENDAR)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if let Some(h) = SlotHold::decode(v.value()) {
                out.push((k.value().to_owned(), h));
            }
        }
        Ok(out)
    }

    /// The summaries of `tenant`'s conversations held here.
    pub fn summaries(&self, tenant: &str) -> Result<Vec<codec::ConversationSummary>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(SUMMARIES)?;
        let mut out = Vec::new();
        for row in t.range((tenant, 0)..=(tenant, u64::MAX))? {
            let (_, v) = row?;
            out.push(self.noted(
                codec::decode_summary(v.value()).map_err(StoreError::from),
                "summary",
            )?);
        }
        Ok(out)
    }

    /// The outcome counts kept so far: (tenant, name, value).
    pub fn outcomes(&self) -> Result<Vec<(String, String, u64)>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(OUTCOMES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            if let Some((tenant, name)) = k.value().split_once('\0') {
                out.push((tenant.to_owned(), name.to_owned(), v.value()));
            }
        }
        Ok(out)
    }

    /// Open offers the agent pool made, by conversation.
    pub fn offers(&self) -> Result<Vec<threadline_protocol::OfferHold>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(OFFERS)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(codec::decode_offer_hold(v.value())?);
        }
        Ok(out)
    }

    /// The agent pool's durable index: conversations waiting for or held by
    /// an agent.
    pub fn agent_work(&self) -> Result<Vec<threadline_protocol::AgentWork>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(AGENT_WORK)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (_, v) = row?;
            out.push(codec::decode_agent_work(v.value())?);
        }
        Ok(out)
    }

    /// The agent pool's row of conversation `conv`, if any.
    pub fn agent_work_of(
        &self,
        conv: u64,
    ) -> Result<Option<threadline_protocol::AgentWork>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(AGENT_WORK)?;
        Ok(match t.get(conv)? {
            Some(v) => Some(codec::decode_agent_work(v.value())?),
            None => None,
        })
    }

    /// Every alias: (`tenant \0 address`, the address it continues).
    pub fn aliases(&self) -> Result<Vec<(String, String)>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(ALIASES)?;
        let mut out = Vec::new();
        for row in t.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }

    pub fn dead_letters(&self, limit: usize) -> Result<Vec<(u64, DeadLetter)>, StoreError> {
        let r = self.db.begin_read()?;
        let t = r.open_table(DEAD_LETTERS)?;
        let mut out = Vec::new();
        for item in t.iter()?.take(limit) {
            let (k, v) = item?;
            out.push((k.value(), codec::decode_dead_letter(v.value())?));
        }
        Ok(out)
    }

    pub fn pending_len(&self) -> usize {
        self.pending.lock().len()
    }
}

/// Applies log records (in seq order, skipping those the snapshot covers).
pub(crate) fn replay(
    id: ConversationId,
    snapshot: Option<ConversationState>,
    records: &[LogRecord],
) -> Result<Option<ConversationState>, StoreError> {
    let mut state = snapshot;
    let mut records: Vec<&LogRecord> = records.iter().collect();
    records.sort_by_key(|r| r.seq);
    for rec in records {
        let err = |detail: String| StoreError::Replay { conv: id, detail };
        match &mut state {
            None => {
                if rec.seq != 1 {
                    return Err(err(format!(
                        "log starts at event {} with no snapshot",
                        rec.seq
                    )));
                }
                state = Some(
                    ConversationState::from_created(&rec.event).map_err(|e| err(e.to_string()))?,
                );
            }
            Some(s) if rec.seq <= s.last_seq => {}
            Some(s) => s
                .apply(rec.seq, &rec.event)
                .map_err(|e| err(e.to_string()))?,
        }
    }
    Ok(state)
}

/// Writes one batch of operations in one durable transaction.
/// Returns what must be done to `Pending` once the commit returned.
pub(crate) struct BatchWriter<'a> {
    pub next_log_key: &'a mut u64,
    pub next_dead_letter: &'a mut u64,
    pub audit_heads: &'a mut AuditHeads,
}

/// Further writes in a batch's transaction (the cluster's), given the
/// log's next key once the batch's events are in; what they return.
pub(crate) type ExtraWrites<'e, R> =
    &'e mut dyn FnMut(&redb::WriteTransaction, u64) -> Result<R, StoreError>;

pub(crate) enum Applied {
    Logged { conv: u64, seq: u32, key: u64 },
    Snapshotted { conv: u64, seq: u32 },
    Nothing,
}

/// A change to the outbox, committed with the owner's events.
#[derive(Debug, Clone)]
pub enum OutboxWrite {
    Put(threadline_protocol::OutboxEntry),
    /// The message's provider outcome is recorded: (conversation, seq).
    Delete(u64, u32),
}

/// A calendar slot and who has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SlotHold {
    pub conv: u64,
    pub booked: bool,
    /// A hold (not booked) lapses at this instant.
    pub until: threadline_protocol::Timestamp,
}

impl SlotHold {
    /// Whether conversation `conv` may take this slot from its holder: its
    /// own, or another customer's hold that lapsed (never a booking or a
    /// slot the business blocked).
    pub fn takeable_by(&self, conv: u64, now: threadline_protocol::Timestamp) -> bool {
        self.conv == conv || (!self.booked && self.until.0 <= now.0)
    }

    fn encode(&self) -> [u8; 17] {
        let mut b = [0u8; 17];
        b[..8].copy_from_slice(&self.conv.to_le_bytes());
        b[8] = u8::from(self.booked);
        b[9..].copy_from_slice(&self.until.0.to_le_bytes());
        b
    }
    fn decode(b: &[u8]) -> Option<SlotHold> {
        Some(SlotHold {
            conv: u64::from_le_bytes(b.get(..8)?.try_into().ok()?),
            booked: *b.get(8)? == 1,
            until: threadline_protocol::Timestamp(i64::from_le_bytes(
                b.get(9..17)?.try_into().ok()?,
            )),
        })
    }
}

/// The calendar row key of `tenant`'s slot at `start`.
pub fn slot_key(tenant: &str, start: threadline_protocol::Timestamp) -> String {
    format!("{tenant}\0{:016x}", start.0)
}

/// A change to the calendar, committed with the owner's events.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub enum CalendarWrite {
    Put(String, SlotHold),
    Delete(String),
}

/// A change to the agent pool's index, committed with the owner's events.
#[derive(Debug, Clone)]
pub enum WorkWrite {
    Put(threadline_protocol::AgentWork),
    Delete(u64),
}

/// A change to the scheduler's timer index, committed with the owner's events.
#[derive(Debug, Clone, Copy)]
pub enum TimerIndex {
    Put(TimerRow),
    Delete(u64),
}

pub(crate) enum Write<'a> {
    /// Consecutive events of one conversation, committed together with the
    /// timer index changes they imply.
    Events {
        conv: ConversationId,
        records: &'a [(u32, Vec<u8>)],
        index: Option<(&'a str, &'a str)>,
        timers: &'a [TimerIndex],
        audit: &'a [crate::audit::AuditDraft],
        outbox: &'a [OutboxWrite],
        work: &'a [WorkWrite],
        calendar: &'a [CalendarWrite],
        outcomes: &'a [(String, u64)],
        /// The conversation's summary after these events (tenant, bytes).
        summary: Option<(&'a str, &'a [u8])>,
    },
    Snapshot {
        conv: ConversationId,
        seq: u32,
        bytes: &'a [u8],
    },
    DeadLetter {
        bytes: &'a [u8],
    },
    Alias {
        alias: &'a str,
        target: &'a str,
    },
    TimerDelete {
        id: u64,
    },
    /// An offer of `conv` opened (`hold`) or ended (`None`), with its
    /// expiry timer's index change.
    Offer {
        conv: u64,
        hold: Option<&'a [u8]>,
        timer: TimerIndex,
    },
    /// Deletes log records below `below` (already covered by snapshots).
    Truncate {
        below: u64,
    },
}

impl BatchWriter<'_> {
    /// Commits `writes`, then the cluster's writes (replicas, ownership
    /// moves), in one durable transaction; returns the replicas' verdicts.
    pub(crate) fn commit<'w, R: Default>(
        &mut self,
        db: &Database,
        writes: impl Iterator<Item = Write<'w>>,
        extra: Option<ExtraWrites<'_, R>>,
        out: &mut Vec<Applied>,
    ) -> Result<R, StoreError> {
        let mut txn = db.begin_write()?;
        txn.set_durability(redb::Durability::Immediate)?;
        let start_log = *self.next_log_key;
        let start_dead = *self.next_dead_letter;
        // Chain heads of the tenants this batch audits, as they were before
        // it: to write once at the end, or to restore if the commit fails.
        let mut heads_before: HashMap<String, Option<(u64, crate::audit::Hash)>> = HashMap::new();
        {
            let mut log = txn.open_table(LOG)?;
            let mut snaps = txn.open_table(SNAPSHOTS)?;
            let mut contacts = txn.open_table(CONTACTS)?;
            let mut convs = txn.open_table(CONVERSATIONS)?;
            let mut dead = txn.open_table(DEAD_LETTERS)?;
            let mut timers = txn.open_table(TIMERS)?;
            let mut audit_t = txn.open_table(AUDIT)?;
            let mut audit_heads_t = txn.open_table(AUDIT_HEADS)?;
            let mut outbox_t = txn.open_table(OUTBOX)?;
            let mut aliases = txn.open_table(ALIASES)?;
            let mut work_t = txn.open_table(AGENT_WORK)?;
            let mut calendar_t = txn.open_table(CALENDAR)?;
            let mut offers_t = txn.open_table(OFFERS)?;
            let mut outcomes_t = txn.open_table(OUTCOMES)?;
            let mut summaries_t = txn.open_table(SUMMARIES)?;
            let mut timer_hwm = 0u64;
            for w in writes {
                match w {
                    Write::Events {
                        conv,
                        records,
                        index,
                        timers: timer_ops,
                        audit,
                        outbox,
                        work,
                        calendar,
                        outcomes,
                        summary,
                    } => {
                        if let Some((tenant, bytes)) = summary {
                            summaries_t.insert((tenant, conv.0), bytes)?;
                        }
                        for (k, inc) in outcomes {
                            let now = outcomes_t.get(k.as_str())?.map_or(0, |v| v.value());
                            outcomes_t.insert(k.as_str(), now.saturating_add(*inc))?;
                        }
                        for w in calendar {
                            match w {
                                CalendarWrite::Put(k, h) => {
                                    calendar_t.insert(k.as_str(), h.encode().as_slice())?;
                                }
                                CalendarWrite::Delete(k) => {
                                    calendar_t.remove(k.as_str())?;
                                }
                            }
                        }
                        for w in work {
                            match w {
                                WorkWrite::Put(row) => {
                                    work_t.insert(
                                        row.conv.0,
                                        codec::encode_agent_work(row).as_slice(),
                                    )?;
                                }
                                WorkWrite::Delete(c) => {
                                    work_t.remove(*c)?;
                                }
                            }
                        }
                        for w in outbox {
                            match w {
                                OutboxWrite::Put(e) => {
                                    outbox_t.insert(
                                        (e.conv.0, e.seq),
                                        codec::encode_outbox(e).as_slice(),
                                    )?;
                                }
                                OutboxWrite::Delete(c, s) => {
                                    outbox_t.remove((*c, *s))?;
                                }
                            }
                        }
                        for draft in audit {
                            if !heads_before.contains_key(&draft.tenant) {
                                let head = match self.audit_heads.get(&draft.tenant) {
                                    Some(h) => Some(*h),
                                    None => audit_heads_t
                                        .get(draft.tenant.as_str())?
                                        .and_then(|v| decode_head(v.value())),
                                };
                                heads_before.insert(draft.tenant.clone(), head);
                                if let Some(h) = head {
                                    self.audit_heads.insert(draft.tenant.clone(), h);
                                }
                            }
                            let (last, prev) = self
                                .audit_heads
                                .get(&draft.tenant)
                                .copied()
                                .unwrap_or((0, crate::audit::GENESIS));
                            let seq = last + 1;
                            let (line, hash) = crate::audit::seal(&prev, seq, draft);
                            let key = format!("{}\0{seq:016x}", draft.tenant);
                            audit_t.insert(key.as_str(), line.as_bytes())?;
                            self.audit_heads.insert(draft.tenant.clone(), (seq, hash));
                        }
                        for (seq, record) in records {
                            let key = *self.next_log_key;
                            *self.next_log_key += 1;
                            log.insert(key, record.as_slice())?;
                            out.push(Applied::Logged {
                                conv: conv.0,
                                seq: *seq,
                                key,
                            });
                        }
                        if let Some((tenant, address)) = index {
                            let ck = contact_key(tenant, address);
                            contacts.insert(ck.as_str(), conv.0)?;
                            convs.insert(conv.0, ck.as_str())?;
                        }
                        for op in timer_ops {
                            match op {
                                TimerIndex::Put(row) => {
                                    timers
                                        .insert(row.id, codec::encode_timer_row(row).as_slice())?;
                                    timer_hwm = timer_hwm.max(row.id);
                                }
                                TimerIndex::Delete(id) => {
                                    timers.remove(*id)?;
                                }
                            }
                        }
                    }
                    Write::TimerDelete { id } => {
                        timers.remove(id)?;
                        out.push(Applied::Nothing);
                    }
                    Write::Offer { conv, hold, timer } => {
                        match hold {
                            Some(h) => offers_t.insert(conv, h)?,
                            None => offers_t.remove(conv)?,
                        };
                        match timer {
                            TimerIndex::Put(row) => {
                                timers.insert(row.id, codec::encode_timer_row(&row).as_slice())?;
                                timer_hwm = timer_hwm.max(row.id);
                            }
                            TimerIndex::Delete(id) => {
                                timers.remove(id)?;
                            }
                        }
                        out.push(Applied::Nothing);
                    }
                    Write::Snapshot { conv, seq, bytes } => {
                        snaps.insert(conv.0, bytes)?;
                        out.push(Applied::Snapshotted { conv: conv.0, seq });
                    }
                    Write::DeadLetter { bytes } => {
                        let key = *self.next_dead_letter;
                        *self.next_dead_letter += 1;
                        dead.insert(key, bytes)?;
                        out.push(Applied::Nothing);
                    }
                    Write::Alias { alias, target } => {
                        aliases.insert(alias, target)?;
                        out.push(Applied::Nothing);
                    }
                    Write::Truncate { below } => {
                        log.retain_in(..below, |_, _| false)?;
                        out.push(Applied::Nothing);
                    }
                }
            }
            for tenant in heads_before.keys() {
                let (seq, hash) = self.audit_heads[tenant];
                let mut head = seq.to_le_bytes().to_vec();
                head.extend_from_slice(&hash);
                audit_heads_t.insert(tenant.as_str(), head.as_slice())?;
            }
            if timer_hwm > 0 {
                let mut meta = txn.open_table(META)?;
                let old = meta.get(TIMER_HWM)?.map_or(0, |v| v.value());
                if timer_hwm > old {
                    meta.insert(TIMER_HWM, timer_hwm)?;
                }
            }
        }
        let extra = match extra {
            None => Ok(R::default()),
            Some(f) => f(&txn, *self.next_log_key),
        };
        let committed = extra.and_then(|r| txn.commit().map(|()| r).map_err(StoreError::from));
        if committed.is_err() {
            self.restore(start_log, start_dead, heads_before);
            out.clear();
        }
        committed
    }

    /// Nothing of this batch is durable: hand the keys out again.
    fn restore(
        &mut self,
        start_log: u64,
        start_dead: u64,
        heads_before: HashMap<String, Option<(u64, crate::audit::Hash)>>,
    ) {
        *self.next_log_key = start_log;
        *self.next_dead_letter = start_dead;
        for (tenant, head) in heads_before {
            match head {
                Some(h) => self.audit_heads.insert(tenant, h),
                None => self.audit_heads.remove(&tenant),
            };
        }
    }
}

/// A stored chain head: seq (u64 LE) then the 32-byte hash.
fn decode_head(b: &[u8]) -> Option<(u64, crate::audit::Hash)> {
    let seq = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let hash = b.get(8..40)?.try_into().ok()?;
    Some((seq, hash))
}

/// Convenience for tests and tools: decode every event of the log tail.
pub fn log_tail(store: &Store) -> Result<Vec<(u64, LogRecord)>, StoreError> {
    let r = store.db.begin_read()?;
    let t = r.open_table(LOG)?;
    let mut out = Vec::new();
    for item in t.iter()? {
        let (k, v) = item?;
        out.push((k.value(), codec::decode_log_record(v.value())?));
    }
    Ok(out)
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
