//! Membership: heartbeats and who is live, joining through seeds, the
//! majority rules a node serves and takes over by.

use super::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

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
            let tick = {
                let now = self.now();
                self.view.write().m.on_tick(now)
            };
            if let Some(paused_ms) = tick.paused {
                // This node itself was paused (SIGSTOP, a stalled VM): the
                // peers' silence says nothing about them.
                tracing::warn!(paused_ms, "this node was paused; judging its peers afresh");
            }
            for peer in &tick.stopped {
                tracing::warn!(peer, "cluster peer stopped answering heartbeats");
            }
            for peer in &tick.resumed {
                tracing::info!(peer, "cluster peer answers heartbeats again");
            }
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
                        let now = c.now();
                        let mut v = c.view.write();
                        let new = v.m.on_answer(
                            Answer {
                                name: name.clone(),
                                leaving,
                                live: vouched,
                            },
                            now,
                        );
                        if let Some(own) = addrs.next() {
                            v.links.insert(name.clone(), own);
                        }
                        let listen = c.spec.listen;
                        v.learned.extend(addrs.filter(|a| *a != listen));
                        if let Some(http) = http {
                            v.http.insert(name.clone(), http);
                        }
                        v.routers.insert(name, p.clone());
                        drop(v);
                        if new {
                            c.settle_now.notify_one();
                        }
                    }
                    c.pinging.lock().remove(&p.get_id());
                });
            }
            if tick.joining {
                // Joining: settling on part of the cluster would place
                // conversations and the agent pool where they do not stay.
                continue;
            }
            let (changed, live) = (tick.changed, tick.live);
            if changed {
                self.membership.notify_waiters();
                self.pool_membership_changed();
                self.pull_aliases(&live);
            }
            if changed
                || self
                    .rebalance_again
                    .load(std::sync::atomic::Ordering::Relaxed)
            {
                self.view.write().m.settle(live);
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
        v.m.has_session(&seed.to_string(), |name| v.links.get(name) == Some(&seed))
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
        let at = |ms: u64| self.started + Duration::from_millis(ms);
        self.view
            .read()
            .m
            .members()
            .into_iter()
            .map(|s| Member {
                name: s.name,
                addr: s.addr,
                since: at(s.since),
                healthy: s.healthy,
                last_seen: at(s.last_seen),
            })
            .collect()
    }

    /// Milliseconds since this node's cluster started: membership's clock.
    pub(super) fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether this node can take writes: it has heard from its peers, it
    /// sees a majority of the nodes it knows, and (with replication) a
    /// live node to keep its replicas.
    pub fn ready(&self) -> bool {
        let now = self.now();
        self.view.read().m.ready(now, self.spec.replication_factor)
    }

    /// Every node this one has heard from (itself included), sorted: a
    /// take-over needs a majority of them live.
    pub fn known_names(&self) -> Vec<String> {
        self.view.read().m.known()
    }

    /// Forgets node `name` for good (it was removed and will not return):
    /// it no longer counts towards the majority a take-over needs. A live
    /// node, or this one, cannot be forgotten.
    pub fn forget(&self, name: &str) -> Result<(), ForgetError> {
        let mut v = self.view.write();
        v.m.forget(name)?;
        v.routers.remove(name);
        v.http.remove(name);
        if let Some(addr) = v.links.remove(name) {
            v.learned.remove(&addr);
        }
        tracing::info!(node = name, "cluster node forgotten");
        Ok(())
    }

    /// The live set as this node last settled it (placement, the pool's
    /// home and serving follow it), sorted.
    pub fn settled_live(&self) -> Vec<String> {
        self.view.read().m.settled().to_vec()
    }

    /// Every live node's name (answering heartbeats), this one included,
    /// sorted.
    pub fn live_names(&self) -> Vec<String> {
        self.view.read().m.live()
    }

    /// Whether this node serves conversations yet: once it has heard from
    /// a peer (or has no seeds), or after a grace period alone. Before, it
    /// would take conversations its peers own for its own.
    pub fn serving(&self) -> bool {
        // Heard from a peer, and a heartbeat tick has settled the live set
        // with it (so where the agent pool runs is settled too: what this
        // node records reaches the right pool from the first message).
        let now = self.now();
        self.view.read().m.serving(now)
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
        let now = self.now();
        self.view.read().m.gone_for_a_majority(node, live, now)
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
        self.view.read().m.has_majority(live)
    }
}

impl NodeEventSubscription for Events {
    fn node_session_opened(&self, _ses: NodeServerSessionInformation) {}

    fn node_session_disconnected(&self, ses: NodeServerSessionInformation) {
        let gone = self
            .0
            .write()
            .m
            .session_closed(&ses.actor.get_id().to_string());
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
        let now = self.1.elapsed().as_millis() as u64;
        self.0.write().m.session_opened(
            &ses.actor.get_id().to_string(),
            &name,
            &ses.peer_addr,
            now,
        );
    }
}
