//! Reads of the cluster's tables: epochs, what this node holds, replicas and
//! their state.

use super::*;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};
use threadline_protocol::{ConversationId, ConversationState};

use crate::store::{contact_key, replay, Store, StoreError, CONVERSATIONS, EPOCHS};

impl Store {
    /// The epoch at which this node holds conversation `conv` (0 until its
    /// ownership first moves).
    pub fn epoch(&self, conv: u64) -> Result<u64, StoreError> {
        let r = self.db()?.begin_read()?;
        Ok(r.open_table(EPOCHS)?.get(conv)?.map_or(0, |v| v.value()))
    }

    /// Every conversation this node holds: (id, tenant, address).
    pub fn held(&self) -> Result<Vec<(u64, String, String)>, StoreError> {
        let r = self.db()?.begin_read()?;
        let mut out = Vec::new();
        for item in r.open_table(CONVERSATIONS)?.iter()? {
            let (k, v) = item?;
            if let Some((t, a)) = v.value().split_once('\0') {
                out.push((k.value(), t.to_owned(), a.to_owned()));
            }
        }
        Ok(out)
    }

    /// Every replica this node keeps.
    pub fn replicas(&self) -> Result<Vec<(u64, ReplicaMeta)>, StoreError> {
        let (index, r) = {
            let index = self.replica_pending.lock();
            (index.lasts(), self.db()?.begin_read()?)
        };
        let mut out = Vec::new();
        for item in r.open_table(REPLICAS)?.iter()? {
            let (k, v) = item?;
            let m = decode_meta(v.value())?.with_tail(index.get(&k.value()).copied());
            out.push((k.value(), m));
        }
        Ok(out)
    }

    /// The replica of a contact's conversation, if this node keeps one.
    pub fn replica_of(&self, tenant: &str, address: &str) -> Result<Option<u64>, StoreError> {
        let r = self.db()?.begin_read()?;
        let t = r.open_table(REPLICA_CONTACTS)?;
        Ok(t.get(contact_key(tenant, address).as_str())?
            .map(|v| v.value()))
    }

    /// What this node's replica of `conv` says about it, if it keeps one.
    pub fn replica_meta(&self, conv: u64) -> Result<Option<ReplicaMeta>, StoreError> {
        let (last, r) = {
            let index = self.replica_pending.lock();
            (index.last(conv), self.db()?.begin_read()?)
        };
        Ok(meta_in(&r.open_table(REPLICAS)?, conv)?.map(|m| m.with_tail(last)))
    }

    /// A replica's meta and the conversation it describes.
    pub fn replica_state(
        &self,
        conv: u64,
    ) -> Result<Option<(ReplicaMeta, ConversationState)>, StoreError> {
        self.noted(self.read_replica(conv), "replica")
    }

    pub(super) fn read_replica(
        &self,
        conv: u64,
    ) -> Result<Option<(ReplicaMeta, ConversationState)>, StoreError> {
        // The index and the snapshot the read sees: the writer changes
        // the index only after a commit, and never truncates a record the
        // index still lists, so the read holds every record listed (or a
        // snapshot that covers it).
        let (keys, r) = {
            let index = self.replica_pending.lock();
            (index.keys(conv), self.db()?.begin_read()?)
        };
        let Some(meta) = meta_in(&r.open_table(REPLICAS)?, conv)? else {
            return Ok(None);
        };
        let base = snapshot_in(&r.open_table(REPLICA_SNAPSHOTS)?, conv)?;
        let recs = tail_records(&r.open_table(REPLICA_TAIL)?, conv, meta.epoch, &keys)?;
        Ok(replay(ConversationId(conv), base, &recs)?.map(|s| {
            let meta = ReplicaMeta {
                last_seq: meta.last_seq.max(s.last_seq),
                unfolded: recs.len() as u32,
                ..meta
            };
            (meta, s)
        }))
    }

    /// Whether this node keeps any replica (it has had peers).
    pub fn keeps_replicas(&self) -> Result<bool, StoreError> {
        let r = self.db()?.begin_read()?;
        Ok(r.open_table(REPLICAS)?.first()?.is_some())
    }

    /// Records in the replica tail (folded or not, until truncated).
    pub fn replica_tail_len(&self) -> Result<u64, StoreError> {
        let r = self.db()?.begin_read()?;
        Ok(r.open_table(REPLICA_TAIL)?.len()?)
    }
}
