//! A visitor claiming a phone number: the code texted to it, its checks and
//! limits, and joining the number's conversation once verified.

use super::*;

use serde_json::json;
use threadline_protocol::Channel;

use crate::http::{via, App};

/// The visitor says `phone` is theirs: a code goes to it by SMS (through
/// the gate, as a reply the customer asked for: an opted-out number gets
/// none), and the claim waits for it. Limited per socket and per source.
pub(super) async fn claim(app: &App, v: &mut Visitor<'_>, phone: &str) -> String {
    if v.claims >= CLAIMS_PER_SOCKET {
        return error_frame(
            "too_many_claims",
            format!("a socket may give a phone number at most {CLAIMS_PER_SOCKET} times"),
        );
    }
    let now = app.shared.clock.now().0;
    let hub = &app.chat;
    hub.claims.retain(|_, c| c.expires > now);
    if hub.claims.len() >= MAX_PENDING_CLAIMS {
        return error_frame(
            "busy",
            "too many numbers are being verified; try again later",
        );
    }
    if let Some(ip) = v.ip {
        let hour = now - now.rem_euclid(3_600_000);
        if hub.claims_per_source.len() >= MAX_PENDING_CLAIMS {
            hub.claims_per_source.retain(|_, (h, _)| *h == hour);
        }
        let mut e = hub.claims_per_source.entry(ip).or_insert((hour, 0));
        if e.0 != hour {
            *e = (hour, 0);
        }
        if e.1 >= CLAIMS_PER_SOURCE_PER_HOUR {
            return error_frame(
                "too_many_claims",
                format!("at most {CLAIMS_PER_SOURCE_PER_HOUR} numbers an hour from one address"),
            );
        }
        e.1 += 1;
    }
    v.claims += 1;
    let code = format!("{:06}", uuid::Uuid::new_v4().as_u128() % 1_000_000);
    let name = app
        .cfg
        .tenant(v.tenant)
        .map(|t| {
            if t.name.is_empty() {
                t.id.clone()
            } else {
                t.name.clone()
            }
        })
        .unwrap_or_default();
    let spec = threadline_actors::conversation::core::OutboundSpec {
        text: format!(
            "{name}: your web chat code is {code}. It expires in 10 minutes. If you did not ask for it, ignore this message."
        ),
        channel: Some(Channel::Sms),
        purpose: threadline_actors::consent::policy::Purpose::Conversational,
        agent: None,
        requested: true,
        subject: None,
    };
    use threadline_actors::conversation::core::SendOutcome;
    match via(
        app,
        "webchat",
        app.router.send_to_contact(v.tenant, phone, spec),
    )
    .await
    {
        Ok((_, SendOutcome::Sent { .. })) => {
            hub.claims.insert(
                hub_key(v.tenant, v.visitor),
                PendingClaim {
                    phone: phone.to_owned(),
                    code,
                    expires: now + CODE_TTL_MS,
                    attempts: 0,
                },
            );
            json!({"type": "code_sent", "phone": phone, "expires_in_seconds": CODE_TTL_MS / 1000})
                .to_string()
        }
        Ok(_) => error_frame(
            "cannot_verify",
            "no code can be sent to that number; it stays unlinked",
        ),
        Err(e) => error_frame("unavailable", e.message()),
    }
}

/// The code the visitor sends back: right, and the chat joins the number's
/// conversation; wrong, expired or tried too often, and it stays apart.
pub(super) async fn verify(app: &App, v: &mut Visitor<'_>, code: &str) -> String {
    let key = hub_key(v.tenant, v.visitor);
    let now = app.shared.clock.now().0;
    let phone = {
        let Some(mut c) = app.chat.claims.get_mut(&key) else {
            return error_frame("no_claim", "no phone number is waiting for a code");
        };
        if c.expires <= now {
            drop(c);
            app.chat.claims.remove(&key);
            return error_frame("code_expired", "the code expired; give the number again");
        }
        let right: bool = subtle::ConstantTimeEq::ct_eq(c.code.as_bytes(), code.as_bytes()).into();
        if !right {
            c.attempts += 1;
            let spent = c.attempts >= CODE_ATTEMPTS;
            drop(c);
            if spent {
                app.chat.claims.remove(&key);
                return error_frame(
                    "too_many_attempts",
                    "too many wrong codes; give the number again",
                );
            }
            return error_frame("invalid_code", "that is not the code we sent");
        }
        c.phone.clone()
    };
    app.chat.claims.remove(&key);
    link(app, v.tenant, v.visitor, &phone).await
}

pub(super) async fn link(app: &App, tenant: &str, visitor: &str, phone: &str) -> String {
    match via(app, "webchat", app.router.link(tenant, visitor, phone)).await {
        Ok(conv) => json!({"type": "linked", "phone": phone, "conversation_id": conv.to_string()})
            .to_string(),
        Err(e) => error_frame("unavailable", e.message()),
    }
}
