//! Membership: heartbeats and who is live, joining through seeds, the
//! majority rules a node serves and takes over by.

use super::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::ActorRef;
use ractor_cluster::node::NodeServerSessionInformation;
use ractor_cluster::NodeEventSubscription;

impl Cluster {
    /// Pings every peer's router each `heartbeat`; a peer silent for
    /// `failure_after` is marked down (ractor_cluster alone noticed a
    /// stopped peer only after about 12 s).
    pub(super) async fn heartbeats(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.spec.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick = Instant::now();
        loop {
            // A tick, or at once when a peer answered for the first time
            // since the live set was last settled (a node joining serves
            // only once it is settled).
            tokio::select! {
                _ = tick.tick() => {}
                () = self.settle_now.notified() => {}
            }
            if self.server.get_status() != ractor::ActorStatus::Running {
                tracing::info!("cluster node server stopped; heartbeats end");
                return;
            }
            if last_tick.elapsed() > self.spec.failure_after {
                // This node itself was paused (SIGSTOP, a stalled VM): the
                // peers' silence says nothing about them. Start their
                // clocks again rather than declare everyone else gone.
                tracing::warn!(
                    paused_ms = last_tick.elapsed().as_millis() as u64,
                    "this node was paused; judging its peers afresh"
                );
                let now = Instant::now();
                for t in self.view.write().answered.values_mut() {
                    *t = now;
                }
            }
            last_tick = Instant::now();
            let peers: Vec<ActorRef<RouterMsg>> = ractor::pg::get_members(&ROUTERS.to_owned())
                .into_iter()
                .filter(|c| !c.get_id().is_local())
                .map(ActorRef::from)
                .collect();
            // Each ping runs on its own task and records its answer when
            // it comes: a peer that does not answer delays nobody's health
            // (at most one ping per peer is out at a time).
            let timeout = self.spec.failure_after;
            for p in peers {
                if !self.pinging.lock().insert(p.get_id()) {
                    continue;
                }
                let (c, me) = (self.clone(), wire(&self.spec.name));
                tokio::spawn(async move {
                    let a = tokio::time::timeout(
                        timeout,
                        p.call(|reply| RouterMsg::Ping(me, reply), Some(timeout)),
                    )
                    .await;
                    let answer = match a {
                        Ok(Ok(ractor::rpc::CallResult::Success(bytes))) => {
                            match threadline_protocol::codec::decode_wire::<Heartbeat>(&bytes) {
                                Ok(h) => Some(h),
                                Err(e) => {
                                    if c.other_wire.lock().insert(p.get_id()) {
                                        tracing::error!(
                                            peer = %p.get_id().node(),
                                            error = %e,
                                            "a cluster peer answers heartbeats in another \
                                             format; it is not counted live (run one \
                                             Threadline version in a cluster)"
                                        );
                                    }
                                    None
                                }
                            }
                        }
                        _ => None,
                    };
                    if let Some(Heartbeat {
                        name,
                        http,
                        leaving,
                        links,
                        live: vouched,
                    }) = answer
                    {
                        let mut addrs = links.into_iter();
                        let mut v = c.view.write();
                        v.vouched.insert(name.clone(), vouched);
                        v.first_answer.get_or_insert_with(Instant::now);
                        if let Some(own) = addrs.next() {
                            v.links.insert(name.clone(), own);
                        }
                        let listen = c.spec.listen;
                        v.learned.extend(addrs.filter(|a| *a != listen));
                        if let Some(http) = http {
                            v.http.insert(name.clone(), http);
                        }
                        if leaving {
                            v.leaving.insert(name.clone());
                        } else {
                            v.leaving.remove(&name);
                        }
                        v.answered.insert(name.clone(), Instant::now());
                        let new = !v.balanced.contains(&name);
                        v.routers.insert(name, p.clone());
                        drop(v);
                        if new {
                            c.settle_now.notify_one();
                        }
                    }
                    c.pinging.lock().remove(&p.get_id());
                });
            }
            let now = Instant::now();
            let mut v = self.view.write();
            let View {
                peers,
                answered,
                leaving,
                ..
            } = &mut *v;
            for m in peers.values_mut() {
                let seen = answered
                    .get(&m.name)
                    .copied()
                    .unwrap_or(m.since)
                    .max(m.since);
                m.last_seen = seen;
                let healthy = now.duration_since(seen) < self.spec.failure_after;
                if m.healthy && !healthy {
                    tracing::warn!(peer = m.name, "cluster peer stopped answering heartbeats");
                    leaving.remove(&m.name);
                } else if !m.healthy && healthy {
                    tracing::info!(peer = m.name, "cluster peer answers heartbeats again");
                }
                m.healthy = healthy;
            }
            drop(v);
            let live = self.live_names();
            if !self.joined(&live) {
                // Joining: settling on part of the cluster would place
                // conversations and the agent pool where they do not stay.
                continue;
            }
            let changed = {
                let mut v = self.view.write();
                let rejoined = std::mem::take(&mut v.sessions_changed);
                v.balanced != live || rejoined
            };
            if changed {
                self.membership.notify_waiters();
                self.pool_membership_changed();
            }
            if changed
                || self
                    .rebalance_again
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                self.view.write().balanced = live;
                self.clone().rebalance();
            }
        }
    }

    /// Connects to every seed not yet a member, again and again; a seed
    /// that accepts the connection but never authenticates has another
    /// cookie (or is not a Threadline node) and is logged.
    pub(super) async fn join_seeds(self: Arc<Self>, retry: Duration) {
        let mut warned = std::collections::HashSet::new();
        loop {
            // With TLS, the nodes the peers link to (without, ractor_cluster
            // connects to those itself).
            let learned: Vec<SocketAddr> = match self.spec.tls {
                Some(_) => self.view.read().learned.iter().copied().collect(),
                None => Vec::new(),
            };
            let mut targets = self.spec.seeds.clone();
            for a in learned {
                if !targets.contains(&a) {
                    targets.push(a);
                }
            }
            for seed in &targets {
                if self.is_member_addr(*seed) {
                    continue;
                }
                let connected = match &self.spec.tls {
                    None => ractor_cluster::client_connect(&self.server, *seed).await,
                    Some(t) => {
                        ractor_cluster::client_connect_enc(
                            &self.server,
                            *seed,
                            t.connector.clone(),
                            t.server_name.clone(),
                        )
                        .await
                    }
                };
                match connected {
                    Ok(()) => {
                        tokio::time::sleep(retry).await;
                        if !self.is_member_addr(*seed) && warned.insert(*seed) {
                            tracing::error!(
                                %seed,
                                "cluster seed accepted the connection but did not authenticate: wrong cookie?"
                            );
                        }
                    }
                    Err(ractor_cluster::ClientConnectErr::Encryption(e)) => {
                        if warned.insert(*seed) {
                            tracing::error!(
                                %seed,
                                error = %e,
                                "cluster seed failed the TLS handshake: not a certificate of the cluster's CA, or not TLS?"
                            );
                        }
                    }
                    Err(e) => tracing::debug!(%seed, error = %e, "cluster seed unreachable"),
                }
            }
            if self.server.get_status() != ractor::ActorStatus::Running {
                return;
            }
            tokio::time::sleep(retry).await;
        }
    }

    pub(super) fn is_member_addr(&self, seed: SocketAddr) -> bool {
        // A session's peer address is the seed's for outgoing sessions; a
        // peer that connected to us first is known by the listen address
        // its heartbeat answers announce. (Never by the port alone: nodes
        // on separate hosts usually share one.) Until that first answer,
        // a connection to it may be made twice; the names dedupe it.
        let v = self.view.read();
        let linked = |m: &Member| v.links.get(&m.name) == Some(&seed);
        v.peers
            .values()
            .any(|m| linked(m) || m.addr == seed.to_string())
    }

    /// This node's cluster address, then its live peers' (for the
    /// heartbeat's answer).
    pub(super) fn links(&self) -> Vec<SocketAddr> {
        let live = self.live_names();
        let v = self.view.read();
        let mut out = vec![self.spec.listen];
        for (name, addr) in &v.links {
            if *name != self.spec.name && live.contains(name) {
                out.push(*addr);
            }
        }
        out
    }

    /// The authenticated peers, one per name, by name.
    pub fn members(&self) -> Vec<Member> {
        let mut by_name: BTreeMap<String, Member> = BTreeMap::new();
        for m in self.view.read().peers.values() {
            by_name.entry(m.name.clone()).or_insert_with(|| m.clone());
        }
        by_name.into_values().collect()
    }

    /// Whether this node can take writes: it has heard from its peers, it
    /// sees a majority of the nodes it knows, and (with replication) a
    /// live node to keep its replicas.
    pub fn ready(&self) -> bool {
        let live = self.live_names();
        self.serving()
            && self.has_majority(&live)
            && (self.spec.replication_factor < 2 || live.len() >= 2)
    }

    /// Every node this one has heard from (itself included), sorted: a
    /// take-over needs a majority of them live.
    pub fn known_names(&self) -> Vec<String> {
        let v = self.view.read();
        let mut names: Vec<String> = v.answered.keys().cloned().collect();
        names.push(self.spec.name.clone());
        names.sort();
        names.dedup();
        names
    }

    /// Forgets node `name` for good (it was removed and will not return):
    /// it no longer counts towards the majority a take-over needs. A live
    /// node, or this one, cannot be forgotten.
    pub fn forget(&self, name: &str) -> Result<(), ForgetError> {
        if name == self.spec.name || self.live_names().iter().any(|n| n == name) {
            return Err(ForgetError::Live(name.to_owned()));
        }
        let mut v = self.view.write();
        if v.answered.remove(name).is_none() {
            return Err(ForgetError::Unknown(name.to_owned()));
        }
        v.routers.remove(name);
        v.http.remove(name);
        if let Some(addr) = v.links.remove(name) {
            v.learned.remove(&addr);
        }
        v.leaving.remove(name);
        tracing::info!(node = name, "cluster node forgotten");
        Ok(())
    }

    /// The live set as this node last settled it (placement, the pool's
    /// home and serving follow it), sorted.
    pub fn settled_live(&self) -> Vec<String> {
        self.view.read().balanced.clone()
    }

    /// Every live node's name (answering heartbeats), this one included,
    /// sorted.
    pub fn live_names(&self) -> Vec<String> {
        // A member counts once its router answered: only then can work
        // be forwarded to it.
        let (reachable, leaving): (Vec<String>, Vec<String>) = {
            let v = self.view.read();
            (
                v.routers.keys().cloned().collect(),
                v.leaving.iter().cloned().collect(),
            )
        };
        let mut names: Vec<String> = self
            .members()
            .into_iter()
            .filter(|m| m.healthy && reachable.contains(&m.name) && !leaving.contains(&m.name))
            .map(|m| m.name)
            .collect();
        if !self.left.load(std::sync::atomic::Ordering::Relaxed) {
            names.push(self.spec.name.clone());
        }
        names.sort();
        names.dedup();
        names
    }

    /// Whether this node has joined its cluster: it has no seeds, or it has
    /// heard from every node its peers count live (`live` has them all),
    /// or the failure time has passed since the first peer answered (a
    /// node they still count may be gone), or nobody answered within twice
    /// the failure time.
    pub(super) fn joined(&self, live: &[String]) -> bool {
        let mut v = self.view.write();
        if v.joined || self.first_node() {
            v.joined = true;
            return true;
        }
        // Nobody answered within the grace period: it goes on alone.
        let alone = self.alone_too_long();
        let Some(first) = v.first_answer else {
            v.joined = alone;
            return alone;
        };
        let me = &self.spec.name;
        let all = v
            .vouched
            .values()
            .flatten()
            .filter(|n| *n != me && !v.leaving.contains(*n))
            .all(|n| live.contains(n));
        if (all && live.len() > 1) || first.elapsed() > self.spec.failure_after {
            v.joined = true;
        }
        v.joined
    }

    /// Whether this node serves conversations yet: once it has heard from
    /// a peer (or has no seeds), or after a grace period alone. Before, it
    /// would take conversations its peers own for its own.
    pub fn serving(&self) -> bool {
        // Heard from a peer, and a heartbeat tick has settled the live set
        // with it (so where the agent pool runs is settled too: what this
        // node records reaches the right pool from the first message).
        let settled = || {
            let v = self.view.read();
            !v.answered.is_empty() && v.balanced.len() > 1
        };
        self.first_node() || settled() || self.alone_too_long()
    }

    /// A node with no seeds that was never in a cluster: it starts one,
    /// and serves at once.
    pub(super) fn first_node(&self) -> bool {
        self.spec.seeds.is_empty() && !self.rejoining
    }

    /// Twice the failure time since this node started: a node that heard
    /// from no peer by then goes on alone.
    pub(super) fn alone_too_long(&self) -> bool {
        self.started.elapsed() > 2 * self.spec.failure_after
    }

    /// Whether `node` is known to be gone: not live, and either seen
    /// before or never seen in a long while.
    pub(super) fn known_gone(&self, node: &str, live: &[String]) -> bool {
        let v = self.view.read();
        // A node that is leaving hands its conversations over itself.
        !live.iter().any(|n| n == node)
            && !v.leaving.contains(node)
            && (v.answered.contains_key(node)
                || self.started.elapsed() > 3 * self.spec.failure_after)
    }

    /// Whether a majority of the nodes this one knows count `node` gone:
    /// this node (it does: `known_gone`) and each live peer whose latest
    /// heartbeat answer leaves `node` out of the nodes it counts live.
    /// Only then are `node`'s conversations taken over. A node's own view
    /// is not enough: where the network is cut between two nodes only,
    /// both still reach the third and each sees a majority; each would
    /// take the other's conversations over while the other, still
    /// reached by the third, goes on serving and acknowledging them (two
    /// owners at once). A node that a majority has not heard from for the
    /// failure time cannot reach a majority itself, so it serves nothing
    /// (`check_local`).
    pub(super) fn gone_for_a_majority(&self, node: &str, live: &[String]) -> bool {
        if !self.known_gone(node, live) {
            return false;
        }
        let v = self.view.read();
        let known = v.answered.keys().filter(|n| **n != self.spec.name).count() + 1;
        let agree = 1 + live
            .iter()
            .filter(|p| **p != self.spec.name)
            .filter(|p| {
                v.vouched
                    .get(*p)
                    .is_some_and(|theirs| !theirs.iter().any(|n| n == node))
            })
            .count();
        agree * 2 > known
    }

    /// Resolves once `node` is no longer live.
    pub(super) async fn gone(&self, node: &str) {
        loop {
            let changed = self.membership.notified();
            if !self.live_names().iter().any(|n| n == node) {
                return;
            }
            changed.await;
        }
    }

    /// Whether this node sees a majority of the nodes it has known live
    /// (itself included). Only then does it take over a lost node's
    /// conversations: a node cut off from the others (or just resumed
    /// from a pause) must not take over what they still serve.
    pub(super) fn has_majority(&self, live: &[String]) -> bool {
        let v = self.view.read();
        let known = v.answered.keys().filter(|n| **n != self.spec.name).count() + 1;
        live.len() * 2 > known
    }
}

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let gone = {
            let mut v = self.0.write();
            v.sessions_changed = true;
            let gone = v.peers.remove(&ses.actor.get_id().to_string());
            if let Some(m) = &gone {
                // Gone for good: what it had not handed over is taken over.
                v.leaving.remove(&m.name);
            }
            gone
        };
        if let Some(m) = gone {
            tracing::warn!(peer = m.name, addr = m.addr, "cluster peer left");
        }
    }

    fn node_session_authenticated(&self, ses: NodeServerSessionInformation) {
        // ractor_cluster names a peer `name@host`.
        let name = ses
            .peer_name
            .as_ref()
            .map(|n| n.name.split('@').next().unwrap_or_default().to_owned())
            .unwrap_or_default();
        tracing::info!(peer = name, addr = ses.peer_addr, "cluster peer joined");
        let mut v = self.0.write();
        v.sessions_changed = true;
        v.peers.insert(
            ses.actor.get_id().to_string(),
            Member {
                name,
                addr: ses.peer_addr.clone(),
                since: Instant::now(),
                healthy: true,
                last_seen: Instant::now(),
            },
        );
    }
}
