//! The WhatsApp Cloud API webhook format: `X-Hub-Signature-256` and the
//! `messages` / `statuses` notifications, turned into normalized events.

use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Whether `header` (`sha256=<hex>`) is the HMAC-SHA256 of `body` keyed by
/// the app secret.
pub fn verify(app_secret: &str, body: &[u8], header: &str) -> bool {
    let Some(hex) = header.strip_prefix("sha256=") else {
        return false;
    };
    let expected = signature(app_secret, body);
    bool::from(
        expected
            .as_bytes()
            .ct_eq(hex.to_ascii_lowercase().as_bytes()),
    )
}

/// Lowercase hex HMAC-SHA256 of `body`.
pub fn signature(app_secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(app_secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// One inbound WhatsApp message.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The business phone number id it was sent to.
    pub phone_number_id: String,
    /// `wa_id` digits, or a business-scoped user id when no number is shared.
    pub from: String,
    pub id: String,
    pub timestamp: Option<i64>,
    /// `text`, `image`, `button`, ...
    pub kind: String,
    pub text: String,
    /// `whatsapp:<type>:<media id>` for media messages.
    pub media: Vec<String>,
    pub profile_name: Option<String>,
}

/// One delivery status of a message the business sent.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    pub phone_number_id: String,
    pub id: String,
    /// sent, delivered, read, failed
    pub status: String,
    pub recipient: Option<String>,
    /// What we sent as `biz_opaque_callback_data`.
    pub callback_data: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Default, PartialEq)]
pub struct Notification {
    pub messages: Vec<Inbound>,
    pub statuses: Vec<Status>,
}

/// Most messages plus statuses taken from one notification.
pub const MAX_EVENTS: usize = 1000;

fn s(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// Parses a notification; `Err` says how it is not the Meta shape.
pub fn parse(v: &Value) -> Result<Notification, String> {
    if v["object"].as_str() != Some("whatsapp_business_account") {
        return Err("`object` must be \"whatsapp_business_account\"".into());
    }
    let entries = v["entry"].as_array().ok_or("`entry` must be an array")?;
    let mut out = Notification::default();
    for entry in entries {
        let changes = match &entry["changes"] {
            Value::Null => continue,
            Value::Array(c) => c,
            _ => return Err("`entry[].changes` must be an array".into()),
        };
        for change in changes {
            let value = &change["value"];
            if !value.is_object() {
                continue; // other fields (account updates...) are not ours
            }
            let phone_number_id = value["metadata"]["phone_number_id"]
                .as_str()
                .ok_or("`value.metadata.phone_number_id` is missing")?
                .to_owned();
            let contacts = value["contacts"].as_array().cloned().unwrap_or_default();
            let name_of = |from: &str| {
                contacts
                    .iter()
                    .find(|c| {
                        c["wa_id"].as_str() == Some(from) || c["user_id"].as_str() == Some(from)
                    })
                    .and_then(|c| s(&c["profile"]["name"]))
            };
            for m in value["messages"].as_array().into_iter().flatten() {
                let from = s(&m["from"])
                    .or_else(|| s(&m["from_user_id"]))
                    .or_else(|| contacts.first().and_then(|c| s(&c["user_id"])))
                    .ok_or("a message has no `from`")?;
                let id = s(&m["id"]).ok_or("a message has no `id`")?;
                let kind = s(&m["type"]).unwrap_or_else(|| "unknown".into());
                let (text, media) = content(m, &kind);
                out.messages.push(Inbound {
                    profile_name: name_of(&from),
                    phone_number_id: phone_number_id.clone(),
                    from,
                    id,
                    timestamp: m["timestamp"].as_str().and_then(|t| t.parse().ok()),
                    kind,
                    text,
                    media,
                });
            }
            for st in value["statuses"].as_array().into_iter().flatten() {
                let error = st["errors"].as_array().and_then(|e| e.first()).map(|e| {
                    format!(
                        "{} {}",
                        e["code"].as_i64().unwrap_or(0),
                        e["title"].as_str().unwrap_or("")
                    )
                });
                out.statuses.push(Status {
                    phone_number_id: phone_number_id.clone(),
                    id: s(&st["id"]).ok_or("a status has no `id`")?,
                    status: s(&st["status"]).ok_or("a status has no `status`")?,
                    recipient: s(&st["recipient_id"]),
                    callback_data: s(&st["biz_opaque_callback_data"]),
                    error,
                });
            }
            if out.messages.len() + out.statuses.len() > MAX_EVENTS {
                return Err(format!("more than {MAX_EVENTS} events in one notification"));
            }
        }
    }
    Ok(out)
}

/// The text of a message and its media references, by type.
fn content(m: &Value, kind: &str) -> (String, Vec<String>) {
    let t = |v: &Value| v.as_str().unwrap_or("").to_owned();
    match kind {
        "text" => (t(&m["text"]["body"]), vec![]),
        "button" => (t(&m["button"]["text"]), vec![]),
        "interactive" => {
            let i = &m["interactive"];
            let title = i["button_reply"]["title"]
                .as_str()
                .or(i["list_reply"]["title"].as_str())
                .unwrap_or("");
            (title.to_owned(), vec![])
        }
        "location" => (
            format!(
                "[location {},{}]",
                m["location"]["latitude"], m["location"]["longitude"]
            ),
            vec![],
        ),
        "image" | "audio" | "video" | "document" | "sticker" => {
            let media = &m[kind];
            let caption = media["caption"].as_str().unwrap_or("");
            let text = if caption.is_empty() {
                format!("[{kind}]")
            } else {
                caption.to_owned()
            };
            let id = media["id"].as_str().unwrap_or("");
            (text, vec![format!("whatsapp:{kind}:{id}")])
        }
        other => (format!("[{other}]"), vec![]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn signature_matches_the_compliance_vector() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let header = "sha256=dec6a680679a968e7e0319355b23599cbfc54502c0784668e9618baa0c633756";
        assert!(verify("test_app_secret", body, header));
        assert!(!verify("wrong_secret", body, header));
        assert!(!verify(
            "test_app_secret",
            br#"{"object":"whatsapp_business_account","entry":[ ]}"#,
            header
        ));
        assert!(!verify("test_app_secret", body, &header["sha256=".len()..]));
    }

    #[test]
    fn messages_statuses_and_profile_names_are_read() {
        let v = json!({"object": "whatsapp_business_account", "entry": [{"id": "1", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15557654321", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Kerry"}, "wa_id": "15551234567"}],
            "messages": [
                {"from": "15551234567", "id": "wamid.A", "timestamp": "1700000000", "type": "text", "text": {"body": "hi"}},
                {"from": "15551234567", "id": "wamid.B", "timestamp": "1700000001", "type": "image", "image": {"id": "MEDIA1", "mime_type": "image/jpeg"}}
            ],
            "statuses": [{"id": "wamid.OUT", "status": "read", "timestamp": "1700000002", "recipient_id": "15551234567", "biz_opaque_callback_data": "7:3"}]
        }}]}]});
        let n = parse(&v).unwrap();
        assert_eq!(n.messages.len(), 2);
        assert_eq!(n.messages[0].text, "hi");
        assert_eq!(n.messages[0].profile_name.as_deref(), Some("Kerry"));
        assert_eq!(n.messages[1].kind, "image");
        assert_eq!(n.messages[1].media, vec!["whatsapp:image:MEDIA1"]);
        assert_eq!(n.statuses[0].status, "read");
        assert_eq!(n.statuses[0].callback_data.as_deref(), Some("7:3"));
    }

    #[test]
    fn other_shapes_are_refused() {
        assert!(parse(&json!({"hello": "world"})).is_err());
        assert!(parse(&json!({"object": "whatsapp_business_account", "entry": {}})).is_err());
        assert!(parse(&json!({"object": "whatsapp_business_account", "entry": [{"changes": [{"value": {"messages": []}}]}]})).is_err());
        assert_eq!(
            parse(&json!({"object": "whatsapp_business_account", "entry": []})).unwrap(),
            Notification::default()
        );
    }
}
