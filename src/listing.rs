//! The business's lists: a tenant's conversations, filtered and paged
//! (`GET /api/v1/tenants/{t}/conversations`), and one conversation's
//! messages, paged (`GET /api/v1/conversations/{id}/messages`).
//!
//! Conversations are read from their summaries (`codec::ConversationSummary`,
//! the store's `summaries` table, by tenant), not from their snapshots. The
//! order is the most recently updated first; a cursor is the (updated_at,
//! id) of the last row shown, so a page is the same on every node: in a
//! cluster each node lists what it holds after the cursor and the node
//! asked merges them (`?node=this` is one node's part).

use std::sync::Arc;

use serde_json::{json, Value};
use threadline_actors::clock::rfc3339;
use threadline_actors::store::Store;
use threadline_protocol::codec::ConversationSummary;
use threadline_protocol::{Channel, Status, Timestamp};

/// A query that cannot be served: what was wrong (a 400 `invalid_query`).
pub type QueryError = String;

/// Rows in one page unless `limit` says fewer (at most `MAX_LIMIT`).
const DEFAULT_LIMIT: usize = 50;
const MAX_LIMIT: usize = 200;
/// Messages in one page of a transcript (at most `MAX_MESSAGES`).
const DEFAULT_MESSAGES: usize = 50;
const MAX_MESSAGES: usize = 500;

/// What `GET …/conversations` may ask for.
#[derive(Debug, Default)]
pub struct Filter {
    status: Option<Status>,
    channel: Option<Channel>,
    waiting: Option<bool>,
    agent: Option<String>,
    booked: Option<bool>,
    opted_out: Option<bool>,
    updated_since: Option<Timestamp>,
    /// Lowercased words that must each be in the name, the address or the
    /// recent messages.
    words: Vec<String>,
    /// Strictly after this (updated_at, id) in the order.
    after: Option<(i64, u64)>,
    pub limit: usize,
    /// One node's part only.
    pub this_node: bool,
}

fn flag(k: &str, v: &str) -> Result<bool, QueryError> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("`{k}` is true or false")),
    }
}

impl Filter {
    /// From the query's (name, decoded value) pairs.
    pub fn parse(pairs: &[(&str, String)]) -> Result<Filter, QueryError> {
        let mut f = Filter {
            limit: DEFAULT_LIMIT,
            ..Filter::default()
        };
        for (k, v) in pairs {
            let (k, v) = (*k, v.clone());
            if v.is_empty() {
                continue;
            }
            match k {
                "status" => {
                    f.status = Some(match v.as_str() {
                        "active" => Status::Active,
                        "inactive" => Status::Inactive,
                        "closed" => Status::Closed,
                        _ => return Err("`status` is active, inactive or closed".into()),
                    })
                }
                "channel" => {
                    f.channel = Some(Channel::parse(&v).ok_or_else(|| {
                        "`channel` is sms, voice, whatsapp, webchat or email".to_owned()
                    })?)
                }
                "waiting" => f.waiting = Some(flag(k, &v)?),
                "booked" => f.booked = Some(flag(k, &v)?),
                "opted_out" => f.opted_out = Some(flag(k, &v)?),
                "agent" => f.agent = Some(v.chars().take(64).collect()),
                "updated_since" => {
                    f.updated_since = Some(
                        chrono::DateTime::parse_from_rfc3339(&v)
                            .map(|d| Timestamp(d.timestamp_millis()))
                            .map_err(|e| format!("`updated_since` is not RFC 3339: {e}"))?,
                    )
                }
                "q" => {
                    f.words = v
                        .to_lowercase()
                        .split_whitespace()
                        .take(8)
                        .map(|w| w.chars().take(64).collect())
                        .collect()
                }
                "limit" => {
                    f.limit = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_LIMIT).contains(n))
                        .ok_or_else(|| format!("`limit` is a whole number from 1 to {MAX_LIMIT}"))?
                }
                "cursor" => f.after = Some(parse_cursor(&v)?),
                "node" => f.this_node = v == "this",
                _ => {}
            }
        }
        Ok(f)
    }

    fn admits(&self, s: &ConversationSummary) -> bool {
        let key = (s.updated_at.0, s.conv.0);
        self.after.is_none_or(|a| key < a)
            && self.status.is_none_or(|st| s.status == st)
            && self.channel.is_none_or(|c| s.channels.contains(&c))
            && self.waiting.is_none_or(|w| s.waiting_since.is_some() == w)
            && self
                .agent
                .as_ref()
                .is_none_or(|a| s.assigned_agent.as_deref() == Some(a.as_str()))
            && self.booked.is_none_or(|b| {
                let booked = s.booking.is_some_and(|(st, _)| st.holds_start());
                booked == b
            })
            && self.opted_out.is_none_or(|o| s.opted_out == o)
            && self.updated_since.is_none_or(|t| s.updated_at.0 >= t.0)
            && (self.words.is_empty() || {
                let hay = format!(
                    "{} {} {}",
                    s.name.as_deref().unwrap_or("").to_lowercase(),
                    s.contact.to_lowercase(),
                    s.recent.join(" ").to_lowercase()
                );
                self.words.iter().all(|w| hay.contains(w.as_str()))
            })
    }
}

fn cursor_of(updated_at: i64, conv: u64) -> String {
    format!("{updated_at:x}.{conv:x}")
}

fn parse_cursor(v: &str) -> Result<(i64, u64), QueryError> {
    let bad = || "`cursor` is the `next_cursor` of a page".to_owned();
    let (a, b) = v.split_once('.').ok_or_else(bad)?;
    Ok((
        i64::from_str_radix(a, 16).map_err(|_| bad())?,
        u64::from_str_radix(b, 16).map_err(|_| bad())?,
    ))
}

/// One row of the list.
fn row(s: &ConversationSummary) -> Value {
    json!({
        "id": s.conv.to_string(),
        "contact": s.contact,
        "name": s.name,
        "status": s.status.as_str(),
        "channels": s.channels.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
        "updated_at": rfc3339(s.updated_at),
        "last_message": s.last.as_ref().map(|(author, channel, at, text)| json!({
            "author": author, "channel": channel.as_str(), "at": rfc3339(*at), "text": text,
        })),
        "assigned_agent": s.assigned_agent,
        "waiting_since": s.waiting_since.map(rfc3339),
        "booking": s.booking.map(|(st, start)| json!({"status": st.as_str(), "start": start.map(rfc3339)})),
        "opted_out": s.opted_out,
        "unanswered_since": s.unanswered.map(|(at, _)| rfc3339(at)),
        // The order key, to merge the nodes' parts.
        "cursor": cursor_of(s.updated_at.0, s.conv.0),
    })
}

/// This node's rows of `tenant` that `f` admits, in order, at most
/// `f.limit`; `Err` is a storage failure.
pub async fn rows(store: Arc<Store>, tenant: &str, f: &Filter) -> Result<Vec<Value>, String> {
    let t = tenant.to_owned();
    let mut all = tokio::task::spawn_blocking(move || store.summaries(&t))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    all.retain(|s| f.admits(s));
    all.sort_by_key(|s| std::cmp::Reverse((s.updated_at.0, s.conv.0)));
    all.truncate(f.limit);
    Ok(all.iter().map(row).collect())
}

/// The page from the rows of every node (already filtered): the first
/// `limit` in order, and the cursor after the last if there may be more.
pub fn page(tenant: &str, mut rows: Vec<Value>, limit: usize) -> Value {
    let key = |v: &Value| {
        v["cursor"]
            .as_str()
            .and_then(|c| parse_cursor(c).ok())
            .unwrap_or((0, 0))
    };
    rows.sort_by_key(|v| std::cmp::Reverse(key(v)));
    // A conversation caught mid-move may be listed by two nodes: the
    // newest row counts.
    let mut seen = std::collections::HashSet::new();
    rows.retain(|v| seen.insert(v["id"].as_str().unwrap_or_default().to_owned()));
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next = more
        .then(|| rows.last().map(|v| v["cursor"].clone()))
        .flatten();
    json!({"tenant": tenant, "conversations": rows, "next_cursor": next})
}

/// `GET /conversations/{id}/messages?before=&limit=`: the messages before
/// message `before` (a message id, or its sequence number), oldest first,
/// each as `render` shows it, and the cursor for the page before them.
pub fn messages(
    s: &threadline_protocol::ConversationState,
    pairs: &[(&str, String)],
    render: impl Fn(&threadline_protocol::Message) -> Value,
) -> Result<Value, QueryError> {
    let mut before = u32::MAX;
    let mut limit = DEFAULT_MESSAGES;
    for (k, v) in pairs {
        match *k {
            "before" if !v.is_empty() => {
                before = v
                    .parse::<threadline_protocol::MessageId>()
                    .ok()
                    .filter(|m| m.conversation == s.id)
                    .map(|m| m.seq)
                    .or_else(|| v.parse().ok())
                    .ok_or_else(|| "`before` is a message id of this conversation".to_owned())?
            }
            "limit" if !v.is_empty() => {
                limit = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=MAX_MESSAGES).contains(n))
                    .ok_or_else(|| format!("`limit` is a whole number from 1 to {MAX_MESSAGES}"))?
            }
            _ => {}
        }
    }
    let end = s.messages.partition_point(|m| m.seq < before);
    let start = end.saturating_sub(limit);
    let page: Vec<Value> = s.messages[start..end].iter().map(render).collect();
    let next = (start > 0).then(|| {
        threadline_protocol::MessageId {
            conversation: s.id,
            seq: s.messages[start].seq,
        }
        .to_string()
    });
    Ok(json!({
        "conversation_id": s.id.to_string(),
        "total": s.messages.len(),
        "messages": page,
        "next_before": next,
    }))
}
