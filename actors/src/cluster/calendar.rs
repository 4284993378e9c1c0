//! Each tenant's calendar across nodes: one node decides who may hold or
//! book a slot, so two customers on different nodes are never given the
//! same one.
//!
//! The tenant's calendar has a home: the first node in the rendezvous order
//! of `calendar \0 tenant` over the settled live set (the next one keeps its
//! replica). A conversation's flow runs on the node that holds the
//! conversation, against a fresh copy of the home's rows; the holds and
//! bookings it made are reserved at the home before the conversation commits
//! them. The home checks them against its own rows (a slot another customer
//! holds or booked meanwhile is refused), commits them, and passes its rows
//! to its replica, all before it answers. A refused reservation fails the
//! message unacknowledged (503: the caller retries, and the flow then offers
//! another slot).
//!
//! A node that becomes a calendar's home (after any change of the live set)
//! first takes the newest copy among the live nodes: each copy carries the
//! version of the last change it has, so the replica's copy wins over a
//! restarted node's old rows. With no versions at all (every node restarted)
//! it takes the union, a slot taken in any copy staying taken.
//!
//! # Calendars across nodes
//!
//! each tenant's calendar across nodes. The home is the first node of
//! `ranked("calendar\0" + tenant, settled live)`, the second keeps the
//! replica. `RouterMsg::Calendar` carries a wire `CalendarAsk`: `Copy` (a
//! node's rows and version, as they are), `Current` (the home's rows),
//! `Reserve` (a conversation's calendar writes, checked against the home's
//! rows with the `SharedCalendar` rules, all or none), `Replicate` (the
//! home's rows after a change, taken if its version is newer). The
//! conversation actor refreshes the tenant's rows from the home before its
//! flow runs (`calendar_refresh`) and reserves its `pending_calendar` before
//! it commits (`calendar_reserve`); refused, it answers 503 and reloads its
//! durable state (`StorageFailed`: the in-memory change is dropped). The home
//! serialises changes per tenant (`locks`), and adopts the calendar once per
//! live set (`adopt`: the newest copy by version, or the union when none has
//! a version).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::{ranked, unwire, wire, Cluster, RouterMsg};
use crate::command::DeliverError;
use crate::flows::BLOCKED;
use crate::store::{CalendarWrite, SlotHold};

/// What the nodes keep of the calendars they decide or replicate.
#[derive(Default)]
pub(super) struct CalendarLinks {
    /// Tenant → the version of the last change this node's copy has.
    versions: DashMap<String, u64>,
    /// Tenant → the live set under which this node took the calendar as
    /// its home (cleared when another node takes it).
    adopted: parking_lot::Mutex<HashMap<String, Vec<String>>>,
    /// Tenant → the home's lock: changes go one at a time, in version order.
    locks: DashMap<String, Arc<tokio::sync::Mutex<()>>>,
}

type Rows = Vec<(String, SlotHold)>;

/// A calendar request between nodes.
#[derive(Serialize, Deserialize)]
pub(super) enum CalendarAsk {
    /// This node's copy as it is: `(version, rows)`.
    Copy { tenant: String },
    /// The home's rows, current.
    Current { tenant: String },
    /// Changes a conversation made, to be reserved at the home.
    Reserve {
        tenant: String,
        conv: u64,
        writes: Vec<CalendarWrite>,
    },
    /// The home's copy after a change, for its replica.
    Replicate {
        tenant: String,
        version: u64,
        rows: Rows,
    },
}

/// The home's answer to a reservation.
#[derive(Serialize, Deserialize)]
enum Reserved {
    Done,
    /// A slot was taken meanwhile: the home's rows now.
    Taken(Rows),
}

fn prefix(tenant: &str) -> String {
    format!("{tenant}\0")
}

fn unavailable(e: String) -> DeliverError {
    DeliverError::Unavailable(format!("calendar: {e}"))
}

impl Cluster {
    /// The nodes in the order of `tenant`'s calendar (home first).
    fn calendar_order(&self, tenant: &str) -> Vec<String> {
        let mut live = self.settled_live();
        if live.is_empty() {
            live = self.live_names();
        }
        ranked(&format!("calendar\0{tenant}"), &live)
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// The home of `tenant`'s calendar, when it is another node.
    pub fn calendar_home(&self, tenant: &str) -> Option<String> {
        self.calendar_order(tenant)
            .into_iter()
            .next()
            .filter(|h| *h != self.spec.name)
    }

    /// This node's rows of `tenant`'s calendar.
    fn calendar_rows(&self, tenant: &str) -> Rows {
        let p = prefix(tenant);
        let mut rows: Rows = self
            .node
            .calendar()
            .iter()
            .filter(|e| e.key().starts_with(&p))
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    /// Makes `rows` this node's rows of `tenant`; the writes that did it.
    fn replace_rows(&self, tenant: &str, rows: Rows) -> Vec<CalendarWrite> {
        let p = prefix(tenant);
        let map = &self.node.calendar();
        let new: BTreeMap<String, SlotHold> = rows
            .into_iter()
            .filter(|(k, _)| k.starts_with(&p))
            .collect();
        let mut writes = Vec::new();
        let old: Vec<String> = map
            .iter()
            .filter(|e| e.key().starts_with(&p) && !new.contains_key(e.key()))
            .map(|e| e.key().clone())
            .collect();
        for k in old {
            map.remove(&k);
            writes.push(CalendarWrite::Delete(k));
        }
        for (k, h) in new {
            if map.insert(k.clone(), h) != Some(h) {
                writes.push(CalendarWrite::Put(k, h));
            }
        }
        writes
    }

    /// Replaces this node's rows of `tenant` and commits the change.
    async fn store_rows(&self, tenant: &str, rows: Rows) -> Result<(), String> {
        let writes = self.replace_rows(tenant, rows);
        if writes.is_empty() {
            return Ok(());
        }
        self.node
            .persistence()
            .calendar(writes)
            .await
            .map_err(|e| format!("calendar: {e}"))
    }

    async fn calendar_ask<T: serde::de::DeserializeOwned>(
        &self,
        node: &str,
        ask: &CalendarAsk,
    ) -> Result<T, String> {
        let bytes = wire(ask);
        let answer = self
            .rpc(node, self.spec.failure_after, |reply| {
                RouterMsg::Calendar(bytes, reply)
            })
            .await?;
        unwire::<Result<T, String>>(&answer)
            .ok_or_else(|| format!("node {node}: unreadable calendar answer"))?
            .map_err(|e| format!("node {node}: {e}"))
    }

    /// The version of the last change this node's copy of `tenant` has.
    fn calendar_version(&self, tenant: &str) -> u64 {
        self.calendar.versions.get(tenant).map_or(0, |v| *v)
    }

    /// As the home, under the tenant's lock: one change more, and the rows
    /// passed to the replica.
    async fn calendar_changed_locked(&self, tenant: &str) -> Result<(), String> {
        *self.calendar.versions.entry(tenant.to_owned()).or_default() += 1;
        self.replicate_calendar(tenant, &self.calendar_order(tenant))
            .await
    }

    fn calendar_lock(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.calendar
            .locks
            .entry(tenant.to_owned())
            .or_default()
            .clone()
    }

    /// As the home, under the tenant's lock: takes the newest copy among
    /// the live nodes if the live set changed since this node last did.
    async fn adopt(&self, tenant: &str) -> Result<(), String> {
        let order = self.calendar_order(tenant);
        if order.first() != Some(&self.spec.name) {
            return Err(format!(
                "this node is not the home of {tenant}'s calendar now; retry"
            ));
        }
        let mut live = order.clone();
        live.sort();
        if self.calendar.adopted.lock().get(tenant) == Some(&live) {
            return Ok(());
        }
        let mut copies = vec![(self.calendar_version(tenant), self.calendar_rows(tenant))];
        for peer in order.iter().filter(|n| **n != self.spec.name) {
            let ask = CalendarAsk::Copy {
                tenant: tenant.to_owned(),
            };
            copies.push(self.calendar_ask::<(u64, Rows)>(peer, &ask).await?);
        }
        let newest = copies.iter().map(|(v, _)| *v).max().unwrap_or(0);
        let rows = if newest > 0 {
            copies
                .into_iter()
                .find(|(v, _)| *v == newest)
                .map(|(_, r)| r)
                .unwrap_or_default()
        } else {
            union(copies.into_iter().flat_map(|(_, r)| r))
        };
        self.store_rows(tenant, rows).await?;
        self.calendar.versions.insert(tenant.to_owned(), newest);
        self.calendar_changed_locked(tenant).await?;
        self.calendar.adopted.lock().insert(tenant.to_owned(), live);
        tracing::info!(tenant, "this node decides the tenant's calendar now");
        Ok(())
    }

    /// As the home: passes this node's rows of `tenant` to its replica.
    async fn replicate_calendar(&self, tenant: &str, order: &[String]) -> Result<(), String> {
        let Some(replica) = order.get(1) else {
            return Ok(());
        };
        let ask = CalendarAsk::Replicate {
            tenant: tenant.to_owned(),
            version: self.calendar_version(tenant),
            rows: self.calendar_rows(tenant),
        };
        self.calendar_ask::<()>(replica, &ask).await
    }

    /// Before a flow runs on `tenant`'s calendar here: this node's rows are
    /// made the home's.
    pub async fn calendar_refresh(&self, tenant: &str) -> Result<(), DeliverError> {
        let Some(home) = self.calendar_home(tenant) else {
            return self.calendar_ready(tenant).await;
        };
        let ask = CalendarAsk::Current {
            tenant: tenant.to_owned(),
        };
        let rows: Rows = self.calendar_ask(&home, &ask).await.map_err(unavailable)?;
        self.replace_rows(tenant, rows);
        Ok(())
    }

    /// Reserves the holds and bookings conversation `conv` made at the
    /// home, before the conversation commits them. Err (unacknowledged) if
    /// a slot was taken meanwhile or the home did not answer.
    pub async fn calendar_reserve(
        &self,
        tenant: &str,
        conv: u64,
        writes: &[CalendarWrite],
    ) -> Result<(), String> {
        match self.calendar_home(tenant) {
            None => {
                // The flow changed the home's rows themselves; the
                // conversation commits them here, and the replica gets them.
                let lock = self.calendar_lock(tenant);
                let _held = lock.lock().await;
                if let Err(e) = self.calendar_changed_locked(tenant).await {
                    // Taken here all the same: the replica gets the rows with
                    // the next change, or when the live set changes.
                    tracing::warn!(tenant, error = %e, "calendar replica missed a change");
                }
                Ok(())
            }
            Some(home) => {
                let ask = CalendarAsk::Reserve {
                    tenant: tenant.to_owned(),
                    conv,
                    writes: writes.to_vec(),
                };
                match self.calendar_ask::<Reserved>(&home, &ask).await? {
                    Reserved::Done => Ok(()),
                    Reserved::Taken(rows) => {
                        self.replace_rows(tenant, rows);
                        Err("another customer took that slot a moment ago; retry".into())
                    }
                }
            }
        }
    }

    /// As the home: a change the admin API made to `tenant`'s calendar
    /// (rows already changed here), committed and passed to the replica.
    pub async fn calendar_changed(&self, tenant: &str) -> Result<(), DeliverError> {
        let lock = self.calendar_lock(tenant);
        let _held = lock.lock().await;
        self.calendar_changed_locked(tenant)
            .await
            .map_err(unavailable)
    }

    /// As the home, before the admin API reads or changes `tenant`'s
    /// calendar here: its rows are current.
    pub async fn calendar_ready(&self, tenant: &str) -> Result<(), DeliverError> {
        let lock = self.calendar_lock(tenant);
        let _held = lock.lock().await;
        self.adopt(tenant).await.map_err(unavailable)
    }

    /// Answers a calendar request from a peer (a wire `CalendarAsk`).
    pub(super) async fn on_calendar(&self, bytes: Vec<u8>) -> Vec<u8> {
        match unwire::<CalendarAsk>(&bytes) {
            None => wire(&Err::<(), _>("unreadable calendar request")),
            Some(CalendarAsk::Copy { tenant }) => {
                // Another node is taking the calendar.
                self.calendar.adopted.lock().remove(&tenant);
                let copy = (self.calendar_version(&tenant), self.calendar_rows(&tenant));
                wire(&Ok::<_, String>(copy))
            }
            Some(CalendarAsk::Current { tenant }) => {
                let r = self.calendar_ready(&tenant).await;
                wire(
                    &r.map(|()| self.calendar_rows(&tenant))
                        .map_err(|e| e.to_string()),
                )
            }
            Some(CalendarAsk::Reserve {
                tenant,
                conv,
                writes,
            }) => wire(&self.on_reserve(&tenant, conv, writes).await),
            Some(CalendarAsk::Replicate {
                tenant,
                version,
                rows,
            }) => {
                self.calendar.adopted.lock().remove(&tenant);
                let r = if version > self.calendar_version(&tenant) {
                    let r = self.store_rows(&tenant, rows).await;
                    if r.is_ok() {
                        self.calendar.versions.insert(tenant, version);
                    }
                    r
                } else {
                    Ok(())
                };
                wire(&r)
            }
        }
    }

    async fn on_reserve(
        &self,
        tenant: &str,
        conv: u64,
        writes: Vec<CalendarWrite>,
    ) -> Result<Reserved, String> {
        let lock = self.calendar_lock(tenant);
        let _held = lock.lock().await;
        self.adopt(tenant).await?;
        let p = prefix(tenant);
        let now = self.node.clock().now();
        let map = &self.node.calendar();
        // Checked whole before anything is applied.
        for w in &writes {
            let (CalendarWrite::Put(key, _) | CalendarWrite::Delete(key)) = w;
            if !key.starts_with(&p) {
                return Err(format!("slot {key:?} is not {tenant}'s"));
            }
            if matches!(w, CalendarWrite::Put(_, h) if h.conv != conv || conv == BLOCKED) {
                return Err("a conversation reserves only its own slots".into());
            }
        }
        // Applied one by one; undone if a later one is refused.
        let mut before: Vec<(String, Option<SlotHold>)> = Vec::new();
        let mut taken = false;
        for w in &writes {
            match w {
                CalendarWrite::Put(k, h) => {
                    let cur = match map.entry(k.clone()) {
                        dashmap::Entry::Vacant(v) => {
                            v.insert(*h);
                            None
                        }
                        dashmap::Entry::Occupied(mut o) => {
                            let c = *o.get();
                            if !c.takeable_by(conv, now) {
                                taken = true;
                                break;
                            }
                            o.insert(*h);
                            Some(c)
                        }
                    };
                    before.push((k.clone(), cur));
                }
                CalendarWrite::Delete(k) => {
                    if let Some((_, c)) = map.remove_if(k, |_, c| c.conv == conv) {
                        before.push((k.clone(), Some(c)));
                    }
                }
            }
        }
        if taken {
            for (k, old) in before.into_iter().rev() {
                match old {
                    Some(h) => map.insert(k, h),
                    None => map.remove(&k).map(|(_, h)| h),
                };
            }
            return Ok(Reserved::Taken(self.calendar_rows(tenant)));
        }
        self.node
            .persistence()
            .calendar(writes)
            .await
            .map_err(|e| format!("calendar: {e}"))?;
        self.calendar_changed_locked(tenant).await?;
        Ok(Reserved::Done)
    }
}

/// Every copy's rows together; where copies differ on a slot, the one that
/// keeps it taken longest wins (blocked, then booked, then the latest hold).
fn union(rows: impl Iterator<Item = (String, SlotHold)>) -> Rows {
    let rank = |h: &SlotHold| (h.conv == BLOCKED, h.booked, h.until.0);
    let mut best: BTreeMap<String, SlotHold> = BTreeMap::new();
    for (k, h) in rows {
        match best.get(&k) {
            Some(b) if rank(b) >= rank(&h) => {}
            _ => {
                best.insert(k, h);
            }
        }
    }
    best.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use threadline_protocol::Timestamp;

    fn hold(conv: u64, booked: bool, until: i64) -> SlotHold {
        SlotHold {
            conv,
            booked,
            until: Timestamp(until),
        }
    }

    #[test]
    fn the_union_keeps_a_slot_taken_in_any_copy() {
        let rows = union(
            vec![
                ("t\0a".to_owned(), hold(1, false, 10)),
                ("t\0a".to_owned(), hold(2, true, 5)),
                ("t\0b".to_owned(), hold(3, false, 10)),
                ("t\0b".to_owned(), hold(4, false, 20)),
                ("t\0c".to_owned(), hold(BLOCKED, true, i64::MAX)),
                ("t\0c".to_owned(), hold(5, true, 1)),
            ]
            .into_iter(),
        );
        assert_eq!(
            rows,
            vec![
                ("t\0a".to_owned(), hold(2, true, 5)),
                ("t\0b".to_owned(), hold(4, false, 20)),
                ("t\0c".to_owned(), hold(BLOCKED, true, i64::MAX)),
            ]
        );
    }
}
