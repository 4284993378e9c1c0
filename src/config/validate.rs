//! Validation: every problem at once, each with its key path.

use super::*;
use std::collections::HashSet;
use std::net::SocketAddr;

impl Config {
    /// Checks every semantic rule; returns the first offending key's path.
    pub(super) fn check(&self) -> Result<(), (Vec<Seg>, String)> {
        match self.check_all().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Checks every semantic rule; returns every offending key's path and
    /// what is wrong with it.
    pub(super) fn check_all(&self) -> Vec<(Vec<Seg>, String)> {
        let mut errs: Vec<(Vec<Seg>, String)> = Vec::new();
        self.check_server(&mut errs);
        self.check_cluster(&mut errs);
        self.check_runtime(&mut errs);
        let (ids, mut tokens) = self.check_tenants(&mut errs);
        self.check_agents(&mut errs, &ids, &mut tokens);
        errs
    }

    /// `[telemetry]` and `[server]`.
    pub(super) fn check_server(&self, errs: &mut Vec<(Vec<Seg>, String)>) {
        use Seg::Key;
        if let Some(o) = &self.telemetry.otlp {
            let at = |k: &'static str| vec![Key("telemetry"), Key("otlp"), Key(k)];
            if !(o.endpoint.starts_with("http://") || o.endpoint.starts_with("https://"))
                || o.endpoint.len() > 2048
            {
                errs.push((at("endpoint"), "must be an http:// or https:// URL".into()));
            }
            if !(0.0..=1.0).contains(&o.sample_ratio) {
                errs.push((at("sample_ratio"), "must be between 0.0 and 1.0".into()));
            }
            if !(10..=60_000).contains(&o.batch_delay_ms) {
                errs.push((at("batch_delay_ms"), "must be between 10 and 60000".into()));
            }
            if o.service_name.is_empty() || o.service_name.len() > 128 {
                errs.push((at("service_name"), "must be 1 to 128 characters".into()));
            }
            if o.headers.len() > 16 {
                errs.push((at("headers"), "at most 16 headers".into()));
            }
        }
        if self.server.http.parse::<SocketAddr>().is_err() {
            errs.push((
                vec![Key("server"), Key("http")],
                format!(
                    "{:?} is not an address like 127.0.0.1:8080",
                    self.server.http
                ),
            ));
        }
        if let Some(u) = &self.server.public_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) || u.len() > 2048 {
                errs.push((
                    vec![Key("server"), Key("public_url")],
                    "must be an http:// or https:// URL".into(),
                ));
            }
        }
        if self.server.admin_token.len() < 8 {
            errs.push((
                vec![Key("server"), Key("admin_token")],
                "is required, at least 8 characters".into(),
            ));
        }
        if let Some(s) = &self.server.supervisor_token {
            if s.len() < 8 || *s == self.server.admin_token {
                errs.push((
                    vec![Key("server"), Key("supervisor_token")],
                    "must be at least 8 characters and differ from admin_token".into(),
                ));
            }
        }
        if !(1024..=16 << 20).contains(&self.server.max_body_bytes) {
            errs.push((
                vec![Key("server"), Key("max_body_bytes")],
                "must be between 1024 and 16777216".into(),
            ));
        }
        if let Some(tls) = &self.server.tls {
            for (key, f) in [("cert_file", &tls.cert_file), ("key_file", &tls.key_file)] {
                if !self.base_dir.join(f).is_file() {
                    errs.push((
                        vec![Key("server"), Key("tls"), Key(key)],
                        format!("{} is not a readable file", f.display()),
                    ));
                }
            }
        }
        // Bounded numbers of `[server]`: (key, value, least, most).
        let s = &self.server;
        for (key, value, least, most) in [
            (
                "websocket_write_timeout_ms",
                s.websocket_write_timeout_ms,
                100,
                600_000,
            ),
            ("body_timeout_ms", s.body_timeout_ms, 100, 600_000),
            (
                "websocket_idle_timeout_ms",
                s.websocket_idle_timeout_ms,
                1_000,
                86_400_000,
            ),
            (
                "websockets_per_source",
                s.websockets_per_source as u64,
                1,
                1_000_000,
            ),
            ("max_connections", s.max_connections as u64, 1, 1_000_000),
            (
                "max_in_flight_per_gateway",
                s.max_in_flight_per_gateway as u64,
                1,
                1_000_000,
            ),
        ] {
            if !(least..=most).contains(&value) {
                errs.push((
                    vec![Key("server"), Key(key)],
                    format!("must be between {least} and {most}"),
                ));
            }
        }
        if self.server.rate_limit_per_second > 1_000_000 {
            errs.push((
                vec![Key("server"), Key("rate_limit_per_second")],
                "must be at most 1000000 (0: no limit)".into(),
            ));
        }
        if let Some(b) = self.server.rate_limit_burst {
            if b == 0 || b > 10_000_000 || self.server.rate_limit_per_second == 0 {
                errs.push((
                    vec![Key("server"), Key("rate_limit_burst")],
                    "must be between 1 and 10000000, with a rate_limit_per_second".into(),
                ));
            }
        }
    }

    /// `[cluster]`.
    pub(super) fn check_cluster(&self, errs: &mut Vec<(Vec<Seg>, String)>) {
        use Seg::{Index, Key};
        if let Some(c) = &self.cluster {
            if !is_id(&c.name) {
                errs.push((
                    vec![Key("cluster"), Key("name")],
                    "must be a name of letters, digits, - and _".into(),
                ));
            }
            match c.listen.parse::<SocketAddr>() {
                Err(_) => errs.push((
                    vec![Key("cluster"), Key("listen")],
                    format!("{:?} is not an address like 127.0.0.1:7100", c.listen),
                )),
                // Peers are told this address: it must reach this node.
                Ok(a) if a.ip().is_unspecified() => errs.push((
                    vec![Key("cluster"), Key("listen")],
                    format!(
                        "{:?} is announced to the peers, so it must be this node's own address (not {})",
                        c.listen,
                        a.ip()
                    ),
                )),
                Ok(_) => {}
            }
            if let Some((i, s)) = c
                .seeds
                .iter()
                .enumerate()
                .find(|(_, s)| s.parse::<SocketAddr>().is_err())
            {
                errs.push((
                    vec![Key("cluster"), Key("seeds"), Index(i)],
                    format!("{s:?} is not an address like 127.0.0.2:7100"),
                ));
            }
            if !(50..=60_000).contains(&c.heartbeat_ms) {
                errs.push((
                    vec![Key("cluster"), Key("heartbeat_ms")],
                    "must be between 50 and 60000".into(),
                ));
            }
            if c.failure_after_ms < 2 * c.heartbeat_ms || c.failure_after_ms > 600_000 {
                errs.push((
                    vec![Key("cluster"), Key("failure_after_ms")],
                    "must be at least twice heartbeat_ms, and at most 600000".into(),
                ));
            }
            if !(1..=2).contains(&c.replication_factor) {
                errs.push((
                    vec![Key("cluster"), Key("replication_factor")],
                    "must be 1 (no replica) or 2 (one replica)".into(),
                ));
            }
            if c.cookie.len() < 16 {
                errs.push((
                    vec![Key("cluster"), Key("cookie")],
                    "is required, at least 16 characters".into(),
                ));
            }
            if let Some(tls) = &c.tls {
                for (key, f) in [
                    ("cert_file", &tls.cert_file),
                    ("key_file", &tls.key_file),
                    ("ca_file", &tls.ca_file),
                ] {
                    if !self.base_dir.join(f).is_file() {
                        errs.push((
                            vec![Key("cluster"), Key("tls"), Key(key)],
                            format!("{} is not a readable file", f.display()),
                        ));
                    }
                }
                if rustls_pki_types::DnsName::try_from(tls.server_name.as_str()).is_err() {
                    errs.push((
                        vec![Key("cluster"), Key("tls"), Key("server_name")],
                        format!("{:?} is not a DNS name", tls.server_name),
                    ));
                }
            }
        }
    }

    /// `[runtime]` and `[providers]`.
    pub(super) fn check_runtime(&self, errs: &mut Vec<(Vec<Seg>, String)>) {
        use Seg::Key;
        let r = &self.runtime;
        if r.max_resident_conversations == 0 {
            errs.push((
                vec![Key("runtime"), Key("max_resident_conversations")],
                "must be at least 1".into(),
            ));
        }
        if r.passivate_after_secs == 0 {
            errs.push((
                vec![Key("runtime"), Key("passivate_after_secs")],
                "must be at least 1".into(),
            ));
        }
        if r.snapshot_every_events == 0 {
            errs.push((
                vec![Key("runtime"), Key("snapshot_every_events")],
                "must be at least 1".into(),
            ));
        }
        if !(4..=65_536).contains(&r.storage_cache_mb) {
            errs.push((
                vec![Key("runtime"), Key("storage_cache_mb")],
                "must be between 4 and 65536".into(),
            ));
        }
        if !(16..=1 << 22).contains(&r.persistence_queue) {
            errs.push((
                vec![Key("runtime"), Key("persistence_queue")],
                "must be between 16 and 4194304".into(),
            ));
        }
        let p = &self.providers;
        if !(1..=50).contains(&p.retry_attempts) {
            errs.push((
                vec![Key("providers"), Key("retry_attempts")],
                "must be between 1 and 50".into(),
            ));
        }
        if !(1..=60_000).contains(&p.retry_base_ms) {
            errs.push((
                vec![Key("providers"), Key("retry_base_ms")],
                "must be between 1 and 60000".into(),
            ));
        }
        for (name, base) in [
            ("twilio", p.twilio.as_ref().map(|t| &t.api_base)),
            ("whatsapp", p.whatsapp.as_ref().map(|w| &w.api_base)),
        ] {
            if let Some(b) = base {
                if !(b.starts_with("http://") || b.starts_with("https://")) {
                    errs.push((
                        vec![Key("providers"), Key(name), Key("api_base")],
                        "must be an http:// or https:// URL".into(),
                    ));
                }
            }
        }
    }

    /// `[[tenants]]`; returns the tenant ids and every token seen.
    pub(super) fn check_tenants(
        &self,
        errs: &mut Vec<(Vec<Seg>, String)>,
    ) -> (HashSet<&str>, HashSet<&str>) {
        use Seg::{Index, Key};
        if self.tenants.is_empty() {
            errs.push((
                vec![Key("tenants")],
                "at least one [[tenants]] entry is required".into(),
            ));
        }
        let mut ids = HashSet::new();
        let mut numbers = std::collections::HashMap::new();
        let mut wa_ids = std::collections::HashMap::new();
        let mut tokens = HashSet::new();
        for (i, t) in self.tenants.iter().enumerate() {
            let at = |k| vec![Key("tenants"), Index(i), Key(k)];
            if !is_id(&t.id) {
                errs.push((at("id"), "must be 1-64 letters, digits, '-' or '_'".into()));
            }
            if !ids.insert(t.id.as_str()) {
                errs.push((at("id"), format!("duplicate tenant id {:?}", t.id)));
            }
            if t.timezone.parse::<chrono_tz::Tz>().is_err() {
                errs.push((
                    at("timezone"),
                    format!("unknown IANA time zone {:?}", t.timezone),
                ));
            }
            for (j, n) in t.sms_numbers.iter().enumerate() {
                if !is_e164(n) {
                    errs.push((
                        vec![Key("tenants"), Index(i), Key("sms_numbers"), Index(j)],
                        format!("{n:?} is not an E.164 number like +15557654321"),
                    ));
                }
            }
            if let Some(p) = &t.owner_phone {
                if !is_e164(p) {
                    errs.push((at("owner_phone"), format!("{p:?} is not an E.164 number")));
                }
            }
            for (j, n) in t.sms_numbers.iter().enumerate() {
                if let Some(other) = numbers.insert(n.as_str(), t.id.as_str()) {
                    errs.push((
                        vec![Key("tenants"), Index(i), Key("sms_numbers"), Index(j)],
                        format!("{n} is already a number of tenant {other:?}"),
                    ));
                }
            }
            if let Some(w) = &t.whatsapp_phone_number_id {
                if w.is_empty() || w.len() > 64 || !w.bytes().all(|b| b.is_ascii_digit()) {
                    errs.push((
                        at("whatsapp_phone_number_id"),
                        "must be the digits of a WhatsApp phone number id".into(),
                    ));
                }
                if let Some(other) = wa_ids.insert(w.as_str(), t.id.as_str()) {
                    errs.push((
                        at("whatsapp_phone_number_id"),
                        format!("{w} is already used by tenant {other:?}"),
                    ));
                }
            }
            if t.missed_call_text.as_ref().is_some_and(|m| m.len() > 1600) {
                errs.push((at("missed_call_text"), "must be at most 1600 bytes".into()));
            }
            if !(1..=43_200).contains(&t.stalled_after_minutes) {
                errs.push((
                    at("stalled_after_minutes"),
                    "must be between 1 and 43200 (30 days)".into(),
                ));
            }
            for (j, o) in t.chat_frame_ancestors.iter().enumerate() {
                let host = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"))
                    .unwrap_or("");
                if host.is_empty()
                    || o.len() > 256
                    || !host
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.:*".contains(&b))
                {
                    errs.push((
                        vec![
                            Key("tenants"),
                            Index(i),
                            Key("chat_frame_ancestors"),
                            Index(j),
                        ],
                        format!("{o:?} is not an origin like https://www.example.com"),
                    ));
                }
            }
            if parse_window(&t.quiet_hours_abroad).is_none() {
                errs.push((
                    at("quiet_hours_abroad"),
                    format!(
                        "{:?} is not a window like \"08:00-21:00\"",
                        t.quiet_hours_abroad
                    ),
                ));
            }
            for (c, w) in &t.quiet_hours_by_country {
                if c.len() != 2 || !c.bytes().all(|b| b.is_ascii_alphabetic()) {
                    errs.push((
                        at("quiet_hours_by_country"),
                        format!("{c:?} is not a two-letter country code"),
                    ));
                }
                if parse_window(w).is_none() {
                    errs.push((
                        at("quiet_hours_by_country"),
                        format!("{c}: {w:?} is not a window like \"09:00-20:00\""),
                    ));
                }
            }
            if threadline_actors::consent::policy::OutreachBasis::parse(&t.outreach_basis).is_none()
            {
                errs.push((
                    at("outreach_basis"),
                    format!(
                        "{:?} is not relationship_or_consent or consent",
                        t.outreach_basis
                    ),
                ));
            }
            for (purpose, tpl) in &t.whatsapp_templates {
                if !["conversational", "reminder", "marketing"].contains(&purpose.as_str()) {
                    errs.push((
                        at("whatsapp_templates"),
                        format!("{purpose:?}: the purpose must be conversational, reminder or marketing"),
                    ));
                }
                if tpl.name.is_empty()
                    || tpl.name.len() > 512
                    || tpl.language.is_empty()
                    || tpl.language.len() > 16
                {
                    errs.push((
                        at("whatsapp_templates"),
                        format!(
                            "{purpose}: needs a template `name` and a `language` code like en_US"
                        ),
                    ));
                }
            }
            const TEN_YEARS: u64 = 10 * 366 * 24 * 3600;
            if !(60..=TEN_YEARS).contains(&t.inactive_after_secs) {
                errs.push((
                    at("inactive_after_secs"),
                    "must be between 60 and 316224000".into(),
                ));
            }
            if !(60..=TEN_YEARS).contains(&t.close_after_secs) {
                errs.push((
                    at("close_after_secs"),
                    "must be between 60 and 316224000".into(),
                ));
            }
            for (j, p) in t.language_packs.iter().enumerate() {
                if threadline_actors::consent::keywords::language_pack(p).is_none() {
                    errs.push((
                        vec![Key("tenants"), Index(i), Key("language_packs"), Index(j)],
                        format!("unknown language pack {p:?} (available: es)"),
                    ));
                }
            }
            for (j, st) in t.quiet_hours_states.iter().enumerate() {
                if threadline_actors::consent::policy::Rule::for_state(st).is_none() {
                    errs.push((
                        vec![
                            Key("tenants"),
                            Index(i),
                            Key("quiet_hours_states"),
                            Index(j),
                        ],
                        format!("{st:?} has no rules here (FL, OK, MD, WA, CT, TX, AL)"),
                    ));
                }
            }
            for (key, list) in [
                ("opt_out_keywords", &t.opt_out_keywords),
                ("opt_in_keywords", &t.opt_in_keywords),
                ("help_keywords", &t.help_keywords),
            ] {
                if list.len() > 100 || list.iter().any(|k| k.trim().is_empty() || k.len() > 64) {
                    errs.push((
                        at(key),
                        "keyword lists hold at most 100 non-empty entries of at most 64 bytes"
                            .into(),
                    ));
                }
            }
            if t.help_text.len() > 1600 {
                errs.push((at("help_text"), "at most 1600 bytes".into()));
            }
            if t.gateway_token.len() < 6 {
                errs.push((
                    at("gateway_token"),
                    "is required, at least 6 characters".into(),
                ));
            }
            if !tokens.insert(t.gateway_token.as_str())
                || t.gateway_token == self.server.admin_token
            {
                errs.push((
                    at("gateway_token"),
                    "must be unique among all tokens".into(),
                ));
            }
        }
        (ids, tokens)
    }

    /// `[[agents]]` and the agent settings of `[runtime]`.
    pub(super) fn check_agents<'a>(
        &'a self,
        errs: &mut Vec<(Vec<Seg>, String)>,
        ids: &HashSet<&str>,
        tokens: &mut HashSet<&'a str>,
    ) {
        use Seg::{Index, Key};
        if !(1..=3600).contains(&self.runtime.offer_timeout_secs) {
            errs.push((
                vec![Key("runtime"), Key("offer_timeout_secs")],
                "must be between 1 and 3600".into(),
            ));
        }
        if self.runtime.agent_grace_secs > 86_400 {
            errs.push((
                vec![Key("runtime"), Key("agent_grace_secs")],
                "must be at most 86400".into(),
            ));
        }
        if self.runtime.agent_wait_text.len() > 1600 {
            errs.push((
                vec![Key("runtime"), Key("agent_wait_text")],
                "must be at most 1600 bytes".into(),
            ));
        }
        let mut agent_ids = HashSet::new();
        for (i, a) in self.agents.iter().enumerate() {
            let at = |k| vec![Key("agents"), Index(i), Key(k)];
            if !is_id(&a.id) {
                errs.push((at("id"), "must be 1-64 letters, digits, '-' or '_'".into()));
            }
            if !agent_ids.insert(a.id.as_str()) {
                errs.push((at("id"), format!("duplicate agent id {:?}", a.id)));
            }
            if a.token.len() < 6 {
                errs.push((at("token"), "is required, at least 6 characters".into()));
            }
            if !tokens.insert(a.token.as_str()) || a.token == self.server.admin_token {
                errs.push((at("token"), "must be unique among all tokens".into()));
            }
            for (j, t) in a.tenants.iter().enumerate() {
                if !ids.contains(t.as_str()) {
                    errs.push((
                        vec![Key("agents"), Index(i), Key("tenants"), Index(j)],
                        format!("unknown tenant {t:?}"),
                    ));
                }
            }
            if a.phone.as_ref().is_some_and(|p| !is_e164(p)) {
                errs.push((
                    at("phone"),
                    "must be an E.164 number like +15550001111".into(),
                ));
            }
            for k in a.capacity.keys() {
                if !["chat", "sms", "whatsapp", "voice"].contains(&k.as_str()) {
                    errs.push((
                        at("capacity"),
                        format!("unknown channel {k:?} (chat, sms, whatsapp, voice)"),
                    ));
                }
            }
        }
    }
}

pub(super) fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
