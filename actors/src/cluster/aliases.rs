//! Aliases on every node: a web-chat visitor who proved a phone number is
//! routed to the phone's conversation by whichever node their socket
//! reaches, so the alias (visitor → phone) is kept by every node, not only
//! by the one that made the link.
//!
//! - A link answers only once every live peer stored the alias durably
//!   (`share_alias`, a `PoolAsk::Alias` each); one that does not answer
//!   fails the link (503), and linking again repairs it.
//! - A node that was down meanwhile catches up: whenever a peer counts live
//!   here and has not been read since it was last seen, its aliases are
//!   read page by page (`PoolAsk::Aliases`) and the ones missing here are
//!   stored (`pull_aliases`). A node that starts again reads every peer.
//! - Aliases are only added, never removed; a visitor who later proves
//!   another number is aliased to it from then on, and two nodes that
//!   disagree settle on whichever value each last read (a visitor proving
//!   two numbers at once on two nodes is the one case left open).

use std::sync::Arc;

use super::pool::PoolAsk;
use super::{Cluster, LocalNode};
use crate::command::DeliverError;

/// Aliases per `PoolAsk::Aliases` page.
pub(super) const ALIAS_PAGE: usize = 1_000;
/// How long a peer may take to store an alias or read a page.
const ALIAS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Cluster {
    /// Stores `alias` → `target` on every live peer; resolves once each
    /// has it durably.
    pub(crate) async fn share_alias(&self, alias: &str, target: &str) -> Result<(), DeliverError> {
        let ask = PoolAsk::Alias {
            alias: alias.to_owned(),
            target: target.to_owned(),
        };
        let peers = self.peer_names();
        let asks = peers.iter().map(|n| self.ask::<()>(n, &ask, ALIAS_TIMEOUT));
        for r in futures_util::future::join_all(asks).await {
            r?;
        }
        Ok(())
    }

    /// Reads the aliases of every live peer not read since it was last
    /// seen live, each on its own task.
    pub(super) fn pull_aliases(self: &Arc<Self>, live: &[String]) {
        let mut read = self.aliases_read.lock();
        read.retain(|n| live.contains(n));
        for peer in live.iter().filter(|n| **n != self.spec.name) {
            if read.insert(peer.clone()) {
                let (c, peer) = (self.clone(), peer.clone());
                tokio::spawn(async move {
                    if let Err(e) = c.pull_aliases_of(&peer).await {
                        tracing::warn!(peer, error = %e, "aliases of a peer not read; retrying");
                        c.aliases_read.lock().remove(&peer);
                    }
                });
            }
        }
    }

    async fn pull_aliases_of(&self, peer: &str) -> Result<(), DeliverError> {
        let mut after = None;
        let mut added = 0usize;
        loop {
            let ask = PoolAsk::Aliases {
                after: after.clone(),
            };
            let page: Vec<(String, String)> = self.ask(peer, &ask, ALIAS_TIMEOUT).await?;
            let last = page.last().map(|(k, _)| k.clone());
            let full = page.len() >= ALIAS_PAGE;
            for (alias, target) in page {
                let aliases = self.node.aliases();
                if aliases.get(&alias).is_none_or(|t| *t != target) {
                    self.node
                        .persistence()
                        .alias(aliases, alias, target)
                        .await
                        .map_err(|e| DeliverError::Storage(e.to_string()))?;
                    added += 1;
                }
            }
            if !full {
                break;
            }
            after = last;
        }
        if added > 0 {
            tracing::info!(peer, added, "aliases caught up from a peer");
        }
        Ok(())
    }
}

/// A peer's `PoolAsk::Alias`: stored here durably.
pub(super) async fn store_alias(
    node: &dyn LocalNode,
    alias: String,
    target: String,
) -> Result<(), DeliverError> {
    node.persistence()
        .alias(node.aliases(), alias, target)
        .await
        .map_err(|e| DeliverError::Storage(e.to_string()))
}

/// A peer's `PoolAsk::Aliases`: a page of this node's aliases.
pub(super) async fn aliases_after(
    node: &dyn LocalNode,
    after: Option<String>,
) -> Result<Vec<(String, String)>, DeliverError> {
    let store = node.persistence().store.clone();
    tokio::task::spawn_blocking(move || store.aliases_after(after.as_deref(), ALIAS_PAGE))
        .await
        .map_err(|e| DeliverError::Storage(e.to_string()))?
        .map_err(|e| DeliverError::Storage(e.to_string()))
}
