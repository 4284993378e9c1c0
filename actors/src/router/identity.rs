//! Identity links: a web-chat visitor who proved a phone number joins the
//! number's conversation, and the visitor's address becomes an alias of it
//! on every node.
//!
//! The link runs on the visitor's owner (a `ContactWrite::Link` addressed
//! to the visitor itself, not through an alias). There, in order:
//!
//! 1. the visitor's own conversation is read;
//! 2. it is merged into the phone's (`ContactWrite::Merge`, on the phone's
//!    owner, idempotent per source conversation);
//! 3. the alias is stored here and on every live peer before the link
//!    answers (`Cluster::share_alias`); a node that was down catches up
//!    when it next sees its peers live (`Cluster::pull_aliases`);
//! 4. the visitor's conversation closes as merged and is passivated.
//!
//! Each step is idempotent, so a crash part-way is repaired by linking
//! again (the visitor proves the number again).

use super::*;

use threadline_protocol::ConversationId;

use super::conversations::mismatched;
use crate::command::{ContactAnswer, ContactWrite, Merge};
use crate::conversation::{ConvKey, ConvMsg};

impl Router {
    /// Joins the conversation of `alias` (a web-chat visitor) to the one of
    /// `canonical` (their phone number), on whichever nodes hold them.
    /// Returns the joined conversation.
    pub async fn link(
        &self,
        tenant: &str,
        alias: &str,
        canonical: &str,
    ) -> Result<ConversationId, DeliverError> {
        if ConvKey::new(tenant, alias) == self.key(tenant, canonical) {
            return self
                .view(tenant, canonical)
                .await?
                .map(|s| s.id)
                .ok_or_else(|| DeliverError::Storage("no conversation to link".into()));
        }
        let link = ContactWrite::Link {
            phone: canonical.to_owned(),
        };
        match self.contact_op(tenant, alias, link).await? {
            ContactAnswer::Conversation(joined) => Ok(joined),
            other => Err(mismatched(other)),
        }
    }

    /// `link`, on the visitor's owner.
    pub(super) async fn link_here(
        &self,
        tenant: &str,
        alias: &str,
        phone: &str,
    ) -> Result<ConversationId, DeliverError> {
        let alias_key = ConvKey::new(tenant, alias);
        let before = self
            .ask(&alias_key, |reply| ConvMsg::View { reply })
            .await?;
        let mut merge = match &before {
            Some(s) => Merge {
                from: s.id,
                messages: s.messages.clone(),
                identities: s.identities.clone(),
                captured: s.captured.clone(),
                journey: s.journey.clone(),
            },
            None => Merge {
                from: ConversationId(0),
                messages: Vec::new(),
                identities: Default::default(),
                captured: Default::default(),
                journey: Default::default(),
            },
        };
        merge.identities.phone = merge.identities.phone.or(Some(phone.to_owned()));
        // (Boxed: a link runs inside a contact write itself.)
        let merge = Box::pin(self.contact_op(tenant, phone, ContactWrite::Merge(Box::new(merge))));
        let joined = match merge.await? {
            ContactAnswer::Conversation(joined) => joined,
            other => return Err(mismatched(other)),
        };
        let alias_row = crate::store::contact_key(tenant, alias);
        let target = self.key(tenant, phone).contact().to_owned();
        self.shared
            .persistence
            .alias(&self.shared.aliases, alias_row.clone(), target.clone())
            .await
            .map_err(|e| DeliverError::Storage(e.to_string()))?;
        if let Some(cluster) = self.shared.cluster() {
            cluster.share_alias(&alias_row, &target).await?;
        }
        if before.is_some() {
            self.ask_write(&alias_key, |reply| ConvMsg::CloseMerged {
                into: joined,
                reply,
            })
            .await?;
            // The closed conversation's actor is no longer routed to.
            self.passivate_actor(&alias_key);
        }
        Ok(joined)
    }
}
