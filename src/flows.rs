//! Flow files: each tenant's conversation flow, read as TOML (relative to
//! the config file), compiled by `threadline_actors::flows::engine`, and
//! reloadable while the node runs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use threadline_actors::flows::engine::{Flow, FlowSpec, ResponderSpec};
use threadline_actors::flows::{Responder, ResponderRequest};
use threadline_actors::sender::BoxFuture;

use crate::config::Config;

pub type Flows = HashMap<String, Arc<Flow>>;
pub type Responders = HashMap<String, Arc<dyn Responder>>;

/// Every tenant's compiled flow, and the external responders they name;
/// the error names the tenant key, the file and what is wrong.
pub fn load(cfg: &Config) -> Result<(Flows, Responders), String> {
    let mut out = HashMap::new();
    let mut responders: Responders = HashMap::new();
    for (i, t) in cfg.tenants.iter().enumerate() {
        let Some(rel) = &t.flow else { continue };
        let path = cfg.base_dir.join(rel);
        let key = format!("tenants[{i}].flow");
        let src = std::fs::read_to_string(&path)
            .map_err(|e| format!("`{key}`: cannot read {}: {e}", path.display()))?;
        if src.len() > 1 << 20 {
            return Err(format!("`{key}`: {} is larger than 1 MiB", path.display()));
        }
        let spec: FlowSpec = toml::from_str(&src).map_err(|e| {
            let line = e
                .span()
                .map(|r| src[..r.start].matches('\n').count() + 1)
                .map(|l| format!(" line {l}:"))
                .unwrap_or_default();
            format!("`{key}`: {}:{line} {}", path.display(), e.message().trim())
        })?;
        let flow = Flow::compile(spec).map_err(|e| format!("`{key}`: {}: {e}", path.display()))?;
        if let Some(r) = &flow.spec.responder {
            let responder = ChatCompletions::new(r)
                .map_err(|e| format!("`{key}`: {}: responder: {e}", path.display()))?;
            responders.insert(t.id.clone(), Arc::new(responder));
        }
        out.insert(t.id.clone(), Arc::new(flow));
    }
    Ok((out, responders))
}

/// An OpenAI-compatible chat-completions endpoint as a responder.
struct ChatCompletions {
    http: reqwest::Client,
    url: String,
    model: String,
    key: Option<String>,
    timeout: Duration,
}

impl ChatCompletions {
    fn new(r: &ResponderSpec) -> Result<ChatCompletions, String> {
        let key = match (&r.api_key, &r.api_key_env) {
            (Some(k), _) => Some(k.clone()),
            (None, Some(env)) => Some(
                std::env::var(env)
                    .map_err(|_| format!("the environment variable {env} is not set"))?,
            ),
            (None, None) => None,
        };
        let timeout = Duration::from_millis(r.timeout_ms);
        Ok(ChatCompletions {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| e.to_string())?,
            url: r.url.clone(),
            model: r.model.clone(),
            key,
            timeout,
        })
    }
}

/// The chat-completions request for one reply.
fn messages(req: &ResponderRequest) -> Value {
    let facts: Vec<String> = req.facts.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let system = format!(
        "You are {}, replying to a customer of this business by text message. Keep the same \
         name and tone on every channel, be brief (at most two sentences), never invent \
         prices, times or policies. What we know about the customer:\n{}\n\nA suggested \
         reply that is correct in substance (keep its facts, times and instructions such as \
         'Reply C to confirm'): {}",
        req.persona,
        if facts.is_empty() {
            "(nothing yet)".into()
        } else {
            facts.join("\n")
        },
        req.draft
    );
    let mut msgs = vec![json!({"role": "system", "content": system})];
    for (who, text) in &req.transcript {
        let role = if who == "customer" {
            "user"
        } else {
            "assistant"
        };
        msgs.push(json!({"role": role, "content": text}));
    }
    Value::Array(msgs)
}

impl Responder for ChatCompletions {
    fn respond(&self, req: ResponderRequest) -> BoxFuture<Result<String, String>> {
        let mut r = self
            .http
            .post(&self.url)
            .json(&json!({"model": self.model, "messages": messages(&req), "max_tokens": 200}));
        if let Some(k) = &self.key {
            r = r.bearer_auth(k);
        }
        Box::pin(async move {
            let resp = r.send().await.map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("responder answered {}", resp.status()));
            }
            let v: Value = resp.json().await.map_err(|e| e.to_string())?;
            v["choices"][0]["message"]["content"]
                .as_str()
                .map(|s| s.trim().to_owned())
                .ok_or_else(|| "no choices[0].message.content in the answer".into())
        })
    }

    fn timeout(&self) -> Duration {
        self.timeout
    }
}
