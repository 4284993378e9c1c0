//! Signing webhooks the way Twilio and Meta do, independently of the
//! node's own code (checked against the vectors in COMPLIANCE.md), and
//! posting them to a node.

use hmac::{Hmac, Mac};
use serde_json::Value;

use super::Node;

/// The public URL test nodes are configured with.
pub const PUBLIC_URL: &str = "https://hooks.example.test";

/// Twilio's request signature, computed from Twilio's documented recipe.
pub fn twilio_signature(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    use base64::Engine;
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut data = url.to_owned();
    for (k, v) in sorted {
        data.push_str(k);
        data.push_str(v);
    }
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(data.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Meta's `X-Hub-Signature-256` header value for `body`.
pub fn meta_signature(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

pub fn form_body(params: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish()
}

impl Node {
    /// Posts `params` to `path_and_query` with `signature` (None: no header).
    pub async fn twilio_raw(
        &self,
        path_and_query: &str,
        body: Vec<u8>,
        signature: Option<&str>,
    ) -> (u16, String) {
        let mut r = self
            .http
            .post(self.url(path_and_query))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(s) = signature {
            r = r.header("X-Twilio-Signature", s);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// A correctly signed Twilio webhook (auth token `token`).
    pub async fn twilio(
        &self,
        token: &str,
        path_and_query: &str,
        params: &[(&str, &str)],
    ) -> (u16, String) {
        let sig = twilio_signature(token, &format!("{PUBLIC_URL}{path_and_query}"), params);
        self.twilio_raw(path_and_query, form_body(params).into_bytes(), Some(&sig))
            .await
    }

    /// A correctly signed WhatsApp notification.
    pub async fn whatsapp(&self, secret: &str, body: &Value) -> (u16, Value) {
        let bytes = body.to_string().into_bytes();
        self.whatsapp_raw(bytes.clone(), Some(&meta_signature(secret, &bytes)))
            .await
    }

    pub async fn whatsapp_raw(&self, body: Vec<u8>, signature: Option<&str>) -> (u16, Value) {
        let mut r = self
            .http
            .post(self.url("/webhooks/whatsapp"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = signature {
            r = r.header("X-Hub-Signature-256", s);
        }
        let r = r.send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
    }
}

/// A WhatsApp Cloud API text message notification.
pub fn whatsapp_text(
    phone_number_id: &str,
    wa_id: &str,
    id: &str,
    text: &str,
    name: &str,
) -> Value {
    serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "WABA1", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15557654321", "phone_number_id": phone_number_id},
        "contacts": [{"profile": {"name": name}, "wa_id": wa_id}],
        "messages": [{"from": wa_id, "id": id, "timestamp": "1773151200", "type": "text", "text": {"body": text}}]
    }}]}]})
}
