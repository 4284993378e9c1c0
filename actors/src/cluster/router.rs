//! The remotable router actor: what a node answers its peers.

use super::*;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use threadline_protocol::codec::{self};
use threadline_protocol::ConversationId;

use crate::command::{DeliverError, Delivered};
use crate::conversation::{ConvKey, InboundMeta};
use crate::replica::{ReplicaEntry, Verdict};

/// Answers an RPC on its own task (the router stays free for heartbeats)
/// with what `answer` makes with this node's cluster; an error
/// once the cluster is stopping.
pub(super) fn answer_on_task<F, Fut>(st: &RouterState, reply: RpcReplyPort<Vec<u8>>, answer: F)
where
    F: FnOnce(Arc<Cluster>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
{
    let cluster = st.cluster();
    tokio::spawn(async move {
        let bytes = match cluster {
            Some(c) => answer(c).await,
            None => wire(&Err::<(), _>("cluster stopping")),
        };
        let _ = reply.send(bytes);
    });
}

impl Actor for RouterActor {
    type Msg = RouterMsg;
    type State = RouterState;
    type Arguments = RouterState;

    async fn pre_start(
        &self,
        _myself: ActorRef<RouterMsg>,
        st: RouterState,
    ) -> Result<RouterState, ActorProcessingErr> {
        Ok(st)
    }

    async fn handle(
        &self,
        _myself: ActorRef<RouterMsg>,
        msg: RouterMsg,
        st: &mut RouterState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RouterMsg::Ping(_from, reply) => {
                let (links, live) = match st.cluster() {
                    Some(c) => (c.links(), c.live_names()),
                    None => (Vec::new(), Vec::new()),
                };
                let _ = reply.send(wire(&Heartbeat {
                    name: st.name.clone(),
                    http: st.http.clone(),
                    leaving: st.leaving.load(std::sync::atomic::Ordering::Relaxed),
                    links,
                    live,
                }));
            }
            RouterMsg::Resident(_from, reply) => {
                let _ = reply.send(st.node.resident() as u64);
            }
            RouterMsg::Replicate(bytes, reply) => {
                // Submitted here, in the order the owner sent them (its
                // rounds overlap); only the wait for durability is spawned.
                let persistence = &st.node.persistence();
                let cluster = st.cluster();
                // Per entry: whether this node is where its replica goes.
                let mut placed: Vec<bool> = Vec::new();
                let queued = match unwire::<Vec<ReplicaEntry>>(&bytes) {
                    None => Err("unreadable replica entries".to_owned()),
                    Some(entries) => {
                        // Only the node after the owner, in this node's own
                        // view, keeps a replica: a sender that sees another
                        // membership (a node just back, with stale copies,
                        // that has not heard of everyone yet) is fenced
                        // rather than given a replica somewhere else.
                        let live = cluster.as_ref().map(|c| c.live_names()).unwrap_or_default();
                        let me = cluster.as_ref().map(|c| c.spec.name.as_str()).unwrap_or("");
                        placed = entries
                            .iter()
                            .map(|e| {
                                let r = ranked(&format!("{}\0{}", e.tenant, e.contact), &live);
                                r.first() == Some(&e.owner.as_str()) && r.get(1) == Some(&me)
                            })
                            .collect();
                        let keep: Vec<ReplicaEntry> = entries
                            .into_iter()
                            .zip(&placed)
                            .filter_map(|(e, p)| p.then_some(e))
                            .collect();
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let op = crate::persistence::Op::Replica {
                            entries: keep,
                            reply: tx,
                        };
                        persistence
                            .submit(op)
                            .await
                            .map(|()| rx)
                            .map_err(|e| e.to_string())
                    }
                };
                tokio::spawn(async move {
                    let answer: Result<Vec<Verdict>, String> = match queued {
                        Err(e) => Err(e),
                        Ok(rx) => rx.await.unwrap_or_else(|_| Err("writer gone".into())),
                    };
                    let answer = answer.map(|kept| {
                        let mut kept = kept.into_iter();
                        placed
                            .iter()
                            .map(|p| match p {
                                true => kept.next().unwrap_or(Verdict::Fenced),
                                false => Verdict::Fenced,
                            })
                            .collect::<Vec<_>>()
                    });
                    let _ = reply.send(wire(&answer));
                });
            }
            RouterMsg::Peek(bytes, reply) => {
                let store = st.node.persistence().store.clone();
                tokio::spawn(async move {
                    let answer = match unwire::<(u64, bool)>(&bytes) {
                        None => Err("unreadable peek".to_owned()),
                        Some((conv, with_state)) => {
                            tokio::task::spawn_blocking(move || peek(&store, conv, with_state))
                                .await
                                .map_err(|e| e.to_string())
                                .and_then(|r| r.map_err(|e| e.to_string()))
                        }
                    };
                    let _ = reply.send(wire(&answer));
                });
            }
            RouterMsg::Handover(bytes, reply) => {
                answer_on_task(st, reply, |c| async move {
                    let answer: Result<Verdict, String> = match unwire::<Handover>(&bytes) {
                        None => Err("unreadable handover".into()),
                        Some(h) => c.receive(h).await,
                    };
                    wire(&answer)
                });
            }
            RouterMsg::View(bytes, reply) => {
                let router = st.node.clone();
                let cluster = st.cluster();
                tokio::spawn(async move {
                    let found = match unwire::<Lookup>(&bytes) {
                        None => Err(DeliverError::Unavailable("unreadable view request".into())),
                        Some(Lookup::Contact(t, c)) => match router.view_local(&t, &c).await {
                            Ok(None) => match cluster.as_ref() {
                                Some(c2) => c2.held_by_a_peer(&ConvKey::new(&t, &c)).await,
                                None => Ok(None),
                            },
                            other => other,
                        },
                        Some(Lookup::ContactHere(t, c)) => router.view_local(&t, &c).await,
                        Some(Lookup::Id(id)) => {
                            let id = ConversationId(id);
                            match router.view_by_id_local(id).await {
                                Ok(None) => match cluster.as_ref() {
                                    // It moved on: one more hop, to its owner.
                                    Some(c) => match c.replica_owner(id).await {
                                        Some(n) => c.forward_view_by_id(&n, id).await,
                                        None => Ok(None),
                                    },
                                    None => Ok(None),
                                },
                                other => other,
                            }
                        }
                    };
                    let answer: Result<Option<Vec<u8>>, String> = found
                        .map(|s| s.map(|s| codec::encode_snapshot(&s)))
                        .map_err(|e| e.to_string());
                    let _ = reply.send(wire(&answer));
                });
            }
            RouterMsg::PoolAsk(bytes, reply) => {
                let router = st.node.clone();
                answer_on_task(st, reply, |c| async move {
                    match unwire::<PoolAsk>(&bytes) {
                        Some(ask) => c.on_pool_ask(router, ask).await,
                        None => wire(&Err::<(), _>("unreadable pool request")),
                    }
                });
            }
            RouterMsg::Request(bytes, reply) => {
                answer_on_task(st, reply, |c| async move { c.on_request(bytes).await });
            }
            RouterMsg::Calendar(bytes, reply) => {
                answer_on_task(st, reply, |c| async move { c.on_calendar(bytes).await });
            }
            RouterMsg::PoolTell(bytes) => {
                let cluster = st.cluster();
                match (unwire::<pool::PoolTell>(&bytes), cluster) {
                    (Some(tell), Some(c)) => c.on_pool_tell(&*st.node, tell),
                    (None, _) => tracing::warn!("unreadable agent pool message from a peer"),
                    (_, None) => {}
                }
            }
            RouterMsg::Deliver(bytes, reply) => {
                // Delivered on their own tasks: the router stays free for
                // heartbeats and other deliveries.
                let router = st.node.clone();
                tokio::spawn(async move {
                    let Some(batch) = unwire::<Vec<Forwarded>>(&bytes) else {
                        let _ = reply.send(wire(&Vec::<ForwardResult>::new()));
                        return;
                    };
                    let each = batch.into_iter().map(|f| {
                        let router = router.clone();
                        async move {
                            let meta = InboundMeta {
                                hint: f.hint.as_deref().and_then(keyword_of),
                                from_state: f.from_state,
                                identities: f.identities,
                                profile_name: f.profile_name,
                            };
                            match router
                                .deliver_local(&f.tenant, &f.contact, f.msg, meta)
                                .await
                            {
                                Ok(Delivered::Recorded(a)) => ForwardResult::Recorded {
                                    conversation: a.conversation.0,
                                    seq: a.message.seq,
                                    duplicate: a.duplicate,
                                },
                                Ok(Delivered::DeadLettered { conversation }) => {
                                    ForwardResult::DeadLettered(conversation.map(|c| c.0))
                                }
                                Err(DeliverError::Unavailable(m)) => ForwardResult::Unavailable(m),
                                Err(DeliverError::Storage(m)) => ForwardResult::Storage(m),
                            }
                        }
                    });
                    let results = futures_util::future::join_all(each).await;
                    let _ = reply.send(wire(&results));
                });
            }
        }
        Ok(())
    }
}
