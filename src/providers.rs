//! Outbound providers' wire formats: the Twilio Messages REST API and the
//! WhatsApp Cloud API messages endpoint, at configurable base URLs. The
//! sender actor calls them through `threadline_actors::sender::Provider`.
//!
//! Every request carries the message id as its idempotency key
//! (`Idempotency-Key` and Twilio's `I-Twilio-Idempotency-Token`), so a
//! message resent after a crash can be recognised by the provider.
//!
//! # Wire formats
//!
//! the outbound wire formats: Twilio Messages and Calls REST (form, basic
//! auth; status callbacks carry `?c=<conversation>&m=<seq>` so a status lands
//! on its message whatever order it comes in; a call's `Url` is our TwiML
//! that says the message) and the WhatsApp Cloud API messages endpoint (text
//! inside the 24-hour window, the tenant's approved template outside it;
//! `biz_opaque_callback_data` names the message), behind
//! `threadline_actors::sender::Provider`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use threadline_actors::sender::{Attempt, BoxFuture, Provider};
use threadline_protocol::{Channel, OutboxEntry};

use crate::config::Config;

/// Twilio's error code for "the recipient replied STOP".
pub const TWILIO_OPTED_OUT: i64 = 21610;

struct Twilio {
    account_sid: String,
    auth_token: String,
    api_base: String,
}

struct Whatsapp {
    access_token: String,
    api_base: String,
}

struct TenantNumbers {
    sms_from: Option<String>,
    whatsapp_phone_number_id: Option<String>,
    /// purpose → (template name, language code)
    templates: std::collections::HashMap<String, (String, String)>,
}

pub struct Providers {
    http: reqwest::Client,
    twilio: Option<Twilio>,
    whatsapp: Option<Whatsapp>,
    tenants: std::collections::HashMap<String, TenantNumbers>,
    /// `public_url` without a trailing slash: Twilio calls it back.
    public_url: Option<String>,
}

impl Providers {
    /// The providers configured, or `None` for the sandbox only.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Option<Arc<Providers>>> {
        let p = &cfg.providers;
        if p.twilio.is_none() && p.whatsapp.is_none() {
            return Ok(None);
        }
        let http = {
            crate::tls::install_default_provider();
            reqwest::Client::builder()
        }
        .timeout(Duration::from_secs(15))
        .connect_timeout(Duration::from_secs(5))
        .build()?;
        Ok(Some(Arc::new(Providers {
            http,
            twilio: p.twilio.as_ref().map(|t| Twilio {
                account_sid: t.account_sid.clone(),
                auth_token: t.auth_token.clone(),
                api_base: t.api_base.trim_end_matches('/').to_owned(),
            }),
            whatsapp: p.whatsapp.as_ref().map(|w| Whatsapp {
                access_token: w.access_token.clone(),
                api_base: w.api_base.trim_end_matches('/').to_owned(),
            }),
            tenants: cfg
                .tenants
                .iter()
                .map(|t| {
                    (
                        t.id.clone(),
                        TenantNumbers {
                            sms_from: t.sms_numbers.first().cloned(),
                            whatsapp_phone_number_id: t.whatsapp_phone_number_id.clone(),
                            templates: t
                                .whatsapp_templates
                                .iter()
                                .map(|(k, v)| (k.clone(), (v.name.clone(), v.language.clone())))
                                .collect(),
                        },
                    )
                })
                .collect(),
            public_url: cfg
                .server
                .public_url
                .as_ref()
                .map(|u| u.trim_end_matches('/').to_owned()),
        })))
    }

    /// Gives the call in progress `call_sid` new TwiML (Twilio's call
    /// update): what it says replaces what it was saying.
    pub async fn update_call(&self, call_sid: &str, twiml: &str) -> Result<(), CallUpdate> {
        let Some(t) = &self.twilio else {
            return Err(CallUpdate::Gone("Twilio is not configured".into()));
        };
        let sid_ok = call_sid.len() <= 64 && call_sid.bytes().all(|b| b.is_ascii_alphanumeric());
        if !sid_ok {
            return Err(CallUpdate::Gone(format!("{call_sid:?} is not a call sid")));
        }
        let req = self
            .http
            .post(format!(
                "{}/2010-04-01/Accounts/{}/Calls/{call_sid}.json",
                t.api_base, t.account_sid
            ))
            .basic_auth(&t.account_sid, Some(&t.auth_token))
            .form(&[("Twiml", twiml)]);
        match answer(req.send().await).await {
            Ok((200..=299, _)) => Ok(()),
            Ok((status @ (429 | 500..=599), _)) => {
                Err(CallUpdate::Retry(format!("Twilio answered {status}")))
            }
            Ok((status, body)) => Err(CallUpdate::Gone(format!(
                "Twilio answered {status}: {}",
                body["message"].as_str().unwrap_or("")
            ))),
            Err(Attempt::Retry(e)) => Err(CallUpdate::Retry(e)),
            Err(other) => Err(CallUpdate::Retry(format!("{other:?}"))),
        }
    }

    /// A callback URL naming outbound message `e` (`?c=<conv>&m=<seq>`),
    /// so its status lands on the right message whatever order it comes in.
    fn callback(&self, path: &str, e: &OutboxEntry) -> Option<String> {
        self.public_url
            .as_ref()
            .map(|u| format!("{u}{path}?c={}&m={}", e.conv.0, e.seq))
    }

    /// The HTTP request that sends `e`, and whether it is Twilio's.
    fn request(&self, e: &OutboxEntry) -> Result<(reqwest::RequestBuilder, bool), String> {
        let numbers = self.tenants.get(&e.tenant);
        let twilio = |resource: &str, form: Vec<(&'static str, String)>| match (
            &self.twilio,
            numbers.and_then(|n| n.sms_from.as_ref()),
        ) {
            (Some(t), Some(from)) => {
                let mut form = form;
                form.push(("From", from.clone()));
                Ok((
                    self.http
                        .post(format!(
                            "{}/2010-04-01/Accounts/{}/{resource}.json",
                            t.api_base, t.account_sid
                        ))
                        .basic_auth(&t.account_sid, Some(&t.auth_token))
                        .form(&form),
                    true,
                ))
            }
            _ => Err("Twilio is not configured for this tenant".to_owned()),
        };
        match e.channel {
            Channel::Sms => {
                let mut form = vec![("To", e.to.clone()), ("Body", e.body.clone())];
                if let Some(cb) = self.callback("/webhooks/twilio/status", e) {
                    form.push(("StatusCallback", cb));
                }
                twilio("Messages", form)
            }
            Channel::Voice => {
                // The call says the message: Twilio fetches its TwiML from us.
                let url = self
                    .callback("/webhooks/twilio/voice/outbound", e)
                    .ok_or("calls need server.public_url: Twilio fetches the call's TwiML there")?;
                // Answering-machine detection, asynchronous: the call
                // starts talking as soon as it is answered (a person hears
                // no silence), and Twilio posts who answered to the AMD
                // callback; for a machine that is after its greeting's
                // beep, and the call is then given the voicemail
                // (`Providers::update_call`), so it is left whole.
                let amd = self
                    .callback("/webhooks/twilio/voice/amd", e)
                    .ok_or("calls need server.public_url")?;
                let mut form = vec![
                    ("To", e.to.clone()),
                    ("Url", url),
                    ("MachineDetection", "DetectMessageEnd".to_owned()),
                    ("AsyncAmd", "true".to_owned()),
                    ("AsyncAmdStatusCallback", amd),
                    ("AsyncAmdStatusCallbackMethod", "POST".to_owned()),
                ];
                if let Some(cb) = self.callback("/webhooks/twilio/voice/status", e) {
                    form.push(("StatusCallback", cb));
                }
                twilio("Calls", form)
            }
            Channel::Whatsapp => {
                let (Some(w), Some(n)) = (&self.whatsapp, numbers) else {
                    return Err("WhatsApp is not configured for this tenant".into());
                };
                let phone_id = n
                    .whatsapp_phone_number_id
                    .as_ref()
                    .ok_or("this tenant has no whatsapp_phone_number_id")?;
                let mut body = json!({
                    "messaging_product": "whatsapp",
                    "recipient_type": "individual",
                    "to": e.to.trim_start_matches('+'),
                    "biz_opaque_callback_data": format!("{}:{}", e.conv.0, e.seq),
                });
                match &e.template {
                    Some(purpose) => {
                        let (name, language) = n.templates.get(purpose).ok_or_else(|| {
                            format!("no WhatsApp template is configured for {purpose}")
                        })?;
                        body["type"] = json!("template");
                        body["template"] = json!({
                            "name": name,
                            "language": {"code": language},
                            "components": [{
                                "type": "body",
                                "parameters": [{"type": "text", "text": e.body}],
                            }],
                        });
                    }
                    None => {
                        body["type"] = json!("text");
                        body["text"] = json!({"body": e.body});
                    }
                }
                Ok((
                    self.http
                        .post(format!("{}/{}/messages", w.api_base, phone_id))
                        .bearer_auth(&w.access_token)
                        .json(&body),
                    false,
                ))
            }
            other => Err(format!("no provider sends {} messages", other.as_str())),
        }
    }
}

/// Why a call in progress was not updated.
#[derive(Debug)]
pub enum CallUpdate {
    /// Twilio could not take it now: worth asking again.
    Retry(String),
    /// The call is over (or unknown): nothing to update.
    Gone(String),
}

/// Sorts an HTTP answer into retry, rejection or acceptance.
fn classify(status: u16, body: &Value, id_of: impl Fn(&Value) -> Option<String>) -> Attempt {
    match status {
        200..=299 => Attempt::Accepted {
            provider_id: id_of(body),
        },
        429 | 500..=599 => Attempt::Retry(format!("provider answered {status}")),
        _ => {
            let code = body["code"]
                .as_i64()
                .or_else(|| body["error"]["code"].as_i64());
            let message = body["message"]
                .as_str()
                .or_else(|| body["error"]["message"].as_str())
                .unwrap_or("");
            Attempt::Rejected {
                error: format!(
                    "provider answered {status}, code {}: {message}",
                    code.unwrap_or(0)
                ),
                opted_out: code == Some(TWILIO_OPTED_OUT),
            }
        }
    }
}

async fn answer(r: Result<reqwest::Response, reqwest::Error>) -> Result<(u16, Value), Attempt> {
    match r {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.json::<Value>().await.unwrap_or(Value::Null);
            Ok((status, body))
        }
        Err(e) => Err(Attempt::Retry(format!("cannot reach the provider: {e}"))),
    }
}

impl Provider for Providers {
    fn channels(&self, tenant: &str) -> Vec<Channel> {
        let mut out = Vec::new();
        let Some(t) = self.tenants.get(tenant) else {
            return out;
        };
        if self.twilio.is_some() && t.sms_from.is_some() {
            out.push(Channel::Sms);
            if self.public_url.is_some() {
                out.push(Channel::Voice);
            }
        }
        if self.whatsapp.is_some() && t.whatsapp_phone_number_id.is_some() {
            out.push(Channel::Whatsapp);
        }
        out
    }

    fn send(&self, e: &OutboxEntry, key: &str) -> BoxFuture<Attempt> {
        let request = self.request(e);
        let key = key.to_owned();
        Box::pin(async move {
            let (req, twilio) = match request {
                Ok(r) => r,
                Err(error) => {
                    return Attempt::Rejected {
                        error,
                        opted_out: false,
                    }
                }
            };
            let req = req
                .header("Idempotency-Key", &key)
                .header("I-Twilio-Idempotency-Token", &key);
            match answer(req.send().await).await {
                Ok((status, body)) => classify(status, &body, |b| {
                    if twilio {
                        b["sid"].as_str().map(str::to_owned)
                    } else {
                        b["messages"][0]["id"].as_str().map(str::to_owned)
                    }
                }),
                Err(retry) => retry,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_sorted_into_retry_reject_and_accept() {
        let sid = |b: &Value| b["sid"].as_str().map(str::to_owned);
        assert_eq!(
            classify(201, &json!({"sid": "SM1"}), sid),
            Attempt::Accepted {
                provider_id: Some("SM1".into())
            }
        );
        assert!(matches!(
            classify(500, &Value::Null, sid),
            Attempt::Retry(_)
        ));
        assert!(matches!(
            classify(503, &Value::Null, sid),
            Attempt::Retry(_)
        ));
        assert!(matches!(
            classify(429, &Value::Null, sid),
            Attempt::Retry(_)
        ));
        assert!(matches!(
            classify(
                400,
                &json!({"code": 21610, "message": "Attempt to send to unsubscribed recipient"}),
                sid
            ),
            Attempt::Rejected {
                opted_out: true,
                ..
            }
        ));
        assert!(matches!(
            classify(
                400,
                &json!({"error": {"code": 131047, "message": "Re-engagement message"}}),
                sid
            ),
            Attempt::Rejected {
                opted_out: false,
                ..
            }
        ));
    }
}
