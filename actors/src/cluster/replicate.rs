//! Replication: each committed change goes to the conversation's replica
//! before it completes.

use super::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use futures_util::StreamExt;
use threadline_protocol::codec::{self};
use threadline_protocol::ConversationId;

use crate::conversation::ConvKey;
use crate::replica::{ReplicaBody, ReplicaEntry, Verdict};

impl Cluster {
    /// The node that keeps the replica of `key` (the next live node in
    /// hash order), if this node owns it.
    pub(super) fn replica_node(&self, key: &ConvKey, live: &[String]) -> Result<String, String> {
        let k = format!("{}\0{}", key.tenant(), key.contact());
        let r = ranked(&k, live);
        match (r.first(), r.get(1)) {
            (Some(o), _) if *o != self.spec.name => Err(format!("node {o} owns it now")),
            (_, Some(n)) => Ok((*n).to_owned()),
            _ => Err("no live node to keep its replica".into()),
        }
    }

    pub(super) async fn send_replicas(
        &self,
        node: &str,
        entries: &[ReplicaEntry],
    ) -> Result<Vec<Verdict>, String> {
        let started = Instant::now();
        let req = wire(&entries);
        let bytes = self
            .rpc(node, self.spec.failure_after, |reply| {
                RouterMsg::Replicate(req, reply)
            })
            .await?;
        self.metrics
            .cluster_replication_seconds
            .observe(started.elapsed().as_secs_f64());
        match unwire::<Result<Vec<Verdict>, String>>(&bytes) {
            Some(Ok(v)) if v.len() == entries.len() => Ok(v),
            Some(Ok(_)) => Err(format!("node {node} answered for other entries")),
            Some(Err(e)) => Err(format!("node {node}: {e}")),
            None => Err(format!("node {node}: unreadable answer")),
        }
    }

    /// Replicates the changes of committed batches; returns the
    /// conversations whose changes did not reach their replica, and why.
    pub(super) async fn replicate_changes(
        &self,
        batches: &mut [crate::persistence::Committed],
    ) -> std::collections::HashMap<u64, String> {
        use std::collections::HashMap;
        let mut failed: HashMap<u64, String> = HashMap::new();
        // One entry per conversation: its records in commit order, the
        // last route (epoch, last seq).
        let mut order = Vec::new();
        let mut merged: HashMap<u64, crate::persistence::Change> = HashMap::new();
        for b in batches.iter_mut().filter(|b| b.result.is_ok()) {
            for ch in b.changes.drain(..) {
                match merged.get_mut(&ch.conv) {
                    Some(m) => {
                        m.route = ch.route;
                        m.records.extend(ch.records);
                    }
                    None => {
                        order.push(ch.conv);
                        merged.insert(ch.conv, ch);
                    }
                }
            }
        }
        if order.is_empty() {
            return failed;
        }
        let live = self.live_names();
        let mut by_node: BTreeMap<String, Vec<ReplicaEntry>> = BTreeMap::new();
        let mut routes = HashMap::new();
        for conv in order {
            let crate::persistence::Change { route, records, .. } =
                merged.remove(&conv).expect("merged above");
            match self.replica_node(&route.key, &live) {
                Err(why) => {
                    failed.insert(conv, why);
                }
                Ok(node) => {
                    by_node.entry(node).or_default().push(ReplicaEntry {
                        conv,
                        tenant: route.key.tenant().to_owned(),
                        contact: route.key.contact().to_owned(),
                        epoch: route.epoch,
                        owner: self.spec.name.clone(),
                        body: ReplicaBody::Events {
                            records,
                            through: route.through,
                        },
                    });
                    routes.insert(conv, route);
                }
            }
        }
        let rounds = by_node.into_iter().map(|(node, entries)| async move {
            let first = self.send_replicas(&node, &entries).await;
            let mut out: Vec<(u64, Result<(), String>)> = Vec::new();
            let verdicts = match first {
                Err(e) => {
                    return entries.iter().map(|e2| (e2.conv, Err(e.clone()))).collect();
                }
                Ok(v) => v,
            };
            let mut bases = Vec::new();
            for (e, v) in entries.into_iter().zip(verdicts) {
                match v {
                    Verdict::Stored => out.push((e.conv, Ok(()))),
                    Verdict::Fenced => out.push((
                        e.conv,
                        Err(format!("fenced: node {node} has a newer owner's copy")),
                    )),
                    Verdict::NeedBase => bases.push(e),
                }
            }
            if !bases.is_empty() {
                let store = self.node.persistence().store.clone();
                let ids: Vec<u64> = bases.iter().map(|e| e.conv).collect();
                let loaded = tokio::task::spawn_blocking(move || {
                    ids.into_iter()
                        .map(|c| store.load(ConversationId(c)))
                        .collect::<Vec<_>>()
                })
                .await
                .unwrap_or_default();
                let mut sendable = Vec::new();
                for (mut e, state) in bases.into_iter().zip(loaded) {
                    match state {
                        Ok(Some(s)) => {
                            e.body = ReplicaBody::Base {
                                snapshot: codec::encode_snapshot(&s),
                            };
                            sendable.push(e);
                        }
                        _ => out.push((e.conv, Err("its state could not be read".into()))),
                    }
                }
                self.metrics
                    .cluster_replica_bases
                    .inc_by(sendable.len() as u64);
                match self.send_replicas(&node, &sendable).await {
                    Err(err) => out.extend(sendable.iter().map(|e| (e.conv, Err(err.clone())))),
                    Ok(v) => {
                        for (e, v) in sendable.iter().zip(v) {
                            out.push((
                                e.conv,
                                match v {
                                    Verdict::Stored => Ok(()),
                                    _ => Err(format!("node {node} refused its base")),
                                },
                            ));
                        }
                    }
                }
            }
            out
        });
        for (conv, r) in futures_util::future::join_all(rounds)
            .await
            .into_iter()
            .flatten()
        {
            tracing::debug!(
                conv,
                through = routes.get(&conv).map(|r| r.through),
                epoch = routes.get(&conv).map(|r| r.epoch),
                outcome = ?r,
                live = ?live,
                "replicated a change"
            );
            match r {
                Ok(()) => {
                    self.metrics.cluster_replicated.inc();
                }
                Err(why) => {
                    if why.starts_with("fenced") {
                        // A stale copy: its actor must not go on from it.
                        // (Not waited for: the actor may itself be waiting
                        // for this round.)
                        if let Some(route) = routes.get(&conv) {
                            self.node.stop_actor(&route.key, "fenced", false).await;
                        }
                    }
                    failed.insert(conv, why);
                }
            };
        }
        self.metrics
            .cluster_replication_failures
            .inc_by(failed.len() as u64);
        failed
    }
}

/// The owner's half of replication: takes committed batches in order,
/// replicates their changes (each to the next node in hash order), and
/// completes each batch's callbacks in order once its replicas have them.
/// A change that could not be replicated completes as unavailable: it is
/// durable here, but not acknowledged.
pub(super) async fn replicator(
    cluster: std::sync::Weak<Cluster>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::persistence::Committed>,
) {
    // Rounds overlap (a change does not wait for the round before it to
    // come back), but complete in commit order.
    let mut inflight = futures_util::stream::FuturesOrdered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some((batches, failed)) = inflight.next(), if !inflight.is_empty() => {
                complete(batches, failed);
            }
            first = rx.recv(), if open && inflight.len() < ROUNDS_IN_FLIGHT => {
                let Some(first) = first else {
                    open = false;
                    continue;
                };
                let mut batches = gather(first, &mut rx, ROUND_BATCHES);
                let cluster = cluster.clone();
                inflight.push_back(async move {
                    let failed = match cluster.upgrade() {
                        Some(c) => c.replicate_changes(&mut batches).await,
                        None => batches
                            .iter()
                            .flat_map(|b| {
                                b.changes
                                    .iter()
                                    .map(|c| (c.conv, "cluster stopped".to_owned()))
                            })
                            .collect(),
                    };
                    (batches, failed)
                });
            }
            else => break,
        }
    }
}

/// Completes a round's callbacks, in commit order.
pub(super) fn complete(
    batches: Vec<crate::persistence::Committed>,
    failed: std::collections::HashMap<u64, String>,
) {
    for b in batches {
        for (conv, done) in b.dones {
            let r = match conv.and_then(|c| failed.get(&c)) {
                Some(why) => Err(Arc::new(crate::store::StoreError::Replication(why.clone()))),
                None => b.result.clone(),
            };
            done(r);
        }
    }
}
