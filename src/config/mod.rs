//! The node's configuration: one typed struct, read from TOML, validated
//! before anything starts, overridable by command-line flags. Errors name
//! the key and the line.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

mod locate;
mod schema;
mod validate;

pub use locate::*;
pub use schema::*;

impl std::error::Error for ConfigError {}

pub use threadline_actors::phone::is_e164;

impl Config {
    /// Parses and validates a config file's text.
    pub fn parse(src: &str) -> Result<Config, ConfigError> {
        Self::parse_at(src, Path::new("."))
    }

    /// Parses and checks a config whose relative file names (certificates,
    /// keys) are relative to `base_dir`, the config file's directory; the
    /// first problem found.
    pub fn parse_at(src: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Self::parse_all(src, base_dir).map_err(|mut e| e.swap_remove(0))
    }

    /// Parses and checks a config, reporting every problem, each with its
    /// key path and line. A value of the wrong type or an unknown key is
    /// reported and set aside so the rest is still read and checked.
    pub fn parse_all(src: &str, base_dir: &Path) -> Result<Config, Vec<ConfigError>> {
        let mut text = src.to_owned();
        let mut errors = Vec::new();
        let cfg = loop {
            match toml::from_str::<Config>(&text) {
                Ok(cfg) => break Some(cfg),
                Err(e) => {
                    let mut path = e.span().and_then(|r| key_path_at(&text, r.start));
                    // A missing key is named inside the table that lacks it.
                    let missing = e.message().contains("missing field `");
                    if let (true, Some(p), Some(k)) = (missing, &mut path, key_from_toml_error(&e))
                    {
                        p.push(OwnedSeg::Key(k));
                    }
                    let (key, line) = match &path {
                        Some(p) => (owned_path_text(p), owned_line_of(src, p)),
                        None => (
                            key_from_toml_error(&e).unwrap_or_else(|| "(syntax)".into()),
                            e.span().map(|r| line_at(&text, r.start)),
                        ),
                    };
                    errors.push(ConfigError {
                        key,
                        line,
                        message: plain_types(e.message().trim()),
                    });
                    // Set the offending key aside and read the rest; a
                    // missing key or a syntax error ends the reading.
                    match path.and_then(|p| without(&text, &p)) {
                        Some(rest) if errors.len() < 100 => text = rest,
                        _ => break None,
                    }
                }
            }
        };
        let Some(mut cfg) = cfg else {
            errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
            return Err(errors);
        };
        cfg.base_dir = base_dir.to_path_buf();
        errors.extend(
            cfg.check_all()
                .into_iter()
                .map(|(path, message)| ConfigError {
                    key: path_text(&path),
                    line: line_of(src, &path),
                    message,
                }),
        );
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        match errors.is_empty() {
            true => Ok(cfg),
            false => Err(errors),
        }
    }
}

/// The development node's flow: the dental example, compiled in so the
/// node converses wherever it is started from.
pub const DEV_FLOW: (&str, &str) = (
    "examples/flows/dental.toml (built in)",
    include_str!("../../examples/flows/dental.toml"),
);

impl Config {
    /// The development node: one `demo` tenant running the dental example
    /// flow, the sandbox provider, one demo agent, fixed tokens printed at
    /// start.
    pub fn dev() -> Config {
        Config {
            server: Server {
                admin_token: "dev-admin-token".into(),
                supervisor_token: None,
                ..Server::default()
            },
            runtime: Runtime::default(),
            providers: Providers::default(),
            tenants: vec![Tenant {
                id: "demo".into(),
                name: "Demo Business".into(),
                timezone: "America/New_York".into(),
                sms_numbers: vec!["+15550000100".into()],
                whatsapp_phone_number_id: None,
                owner_phone: Some("+15550000199".into()),
                help_text: "Demo Business: reply STOP to opt out.".into(),
                gateway_token: "gw-demo".into(),
                inactive_after_secs: default_inactive_after(),
                close_after_secs: default_close_after(),
                revoke_all: true,
                opt_out_keywords: vec![],
                opt_in_keywords: vec![],
                help_keywords: vec![],
                language_packs: vec![],
                quiet_hours_states: default_quiet_states(),
                voice_assistant: false,
                missed_call_text: None,
                stalled_after_minutes: default_stalled_after_minutes(),
                whatsapp_templates: Default::default(),
                outreach_basis: default_outreach_basis(),
                chat_frame_ancestors: Vec::new(),
                quiet_hours_abroad: default_quiet_hours_abroad(),
                quiet_hours_by_country: Default::default(),
                flow: None,
                builtin_flow: Some(DEV_FLOW),
            }],
            agents: vec![Agent {
                id: "demo-agent".into(),
                name: "Demo Agent".into(),
                token: "agent-demo".into(),
                tenants: vec!["demo".into()],
                skills: vec!["en".into()],
                capacity: BTreeMap::from([("chat".into(), 3), ("voice".into(), 1)]),
                phone: None,
            }],
            cluster: None,
            telemetry: Telemetry::default(),
            base_dir: PathBuf::from("."),
        }
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.server
            .http
            .parse()
            .expect("validated at load: server.http is a socket address")
    }

    pub fn tenant(&self, id: &str) -> Option<&Tenant> {
        self.tenants.iter().find(|t| t.id == id)
    }

    /// The consent and lifecycle settings the actors need, per tenant.
    pub fn tenant_policies(
        &self,
    ) -> std::collections::HashMap<String, threadline_actors::conversation::core::TenantPolicy>
    {
        use threadline_actors::consent::keywords::Keywords;
        use threadline_actors::consent::policy::Rule;
        use threadline_actors::conversation::core::{Lifecycle, TenantPolicy};
        self.tenants
            .iter()
            .map(|t| {
                let name = if t.name.is_empty() {
                    t.id.clone()
                } else {
                    t.name.clone()
                };
                let missed = format!(
                    "Sorry we missed your call at {name}! How can we help? Reply here and we will get back to you."
                );
                let policy = TenantPolicy {
                    help_text: if t.help_text.is_empty() {
                        format!("{name}: reply STOP to opt out.")
                    } else {
                        t.help_text.clone()
                    },
                    name,
                    keywords: Keywords::new(
                        &t.opt_out_keywords,
                        &t.opt_in_keywords,
                        &t.help_keywords,
                        &t.language_packs,
                    ),
                    revoke_all: t.revoke_all,
                    outreach_basis: threadline_actors::consent::policy::OutreachBasis::parse(
                        &t.outreach_basis,
                    )
                    .unwrap_or_default(),
                    abroad: threadline_actors::consent::policy::AbroadHours {
                        default: parse_window(&t.quiet_hours_abroad).unwrap_or((480, 1260)),
                        by_country: t
                            .quiet_hours_by_country
                            .iter()
                            .filter_map(|(c, w)| Some((c.to_ascii_uppercase(), parse_window(w)?)))
                            .collect(),
                    },
                    zone: t.timezone.parse().unwrap_or(chrono_tz::UTC),
                    strict_rules: t
                        .quiet_hours_states
                        .iter()
                        .filter_map(|s| Rule::for_state(s))
                        .collect(),
                    lifecycle: Lifecycle {
                        inactive_after_ms: t.inactive_after_secs as i64 * 1000,
                        close_after_ms: t.close_after_secs as i64 * 1000,
                    },
                    // Filled by the runtime from the configured provider.
                    providers: Vec::new(),
                    owner_phone: t.owner_phone.clone(),
                    voice_assistant: t.voice_assistant,
                    missed_call_text: t.missed_call_text.clone().unwrap_or(missed),
                    whatsapp_templates: t.whatsapp_templates.keys().cloned().collect(),
                };
                (t.id.clone(), policy)
            })
            .collect()
    }

    /// Checks every semantic rule (after flags changed the parsed file).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check().map_err(|(path, message)| ConfigError {
            key: path_text(&path),
            line: None,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[server]
http = "127.0.0.1:0"
admin_token = "admin-secret"

[[tenants]]
id = "acme"
timezone = "America/New_York"
sms_numbers = ["+15557654321"]
gateway_token = "gw-acme"

[[tenants]]
id = "beta"
timezone = "Europe/Berlin"
gateway_token = "gw-beta"

[[agents]]
id = "sarah"
token = "agent-sarah"
tenants = ["acme"]
capacity = { chat = 3, voice = 1 }
"#;

    #[test]
    fn a_good_config_loads_with_defaults() {
        let c = Config::parse(GOOD).unwrap();
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.server.max_body_bytes, 64 * 1024);
        assert_eq!(c.runtime.max_resident_conversations, 200_000);
    }

    fn error_of(src: &str) -> ConfigError {
        Config::parse(src).unwrap_err()
    }

    #[test]
    fn semantic_errors_name_the_key_and_its_line() {
        let e = error_of(&GOOD.replace("Europe/Berlin", "Mars/Olympus"));
        assert_eq!(e.key, "tenants[1].timezone");
        assert_eq!(e.line, Some(14));
        assert!(e.message.contains("Mars/Olympus"));

        let e = error_of(&GOOD.replace("+15557654321", "555-1234"));
        assert_eq!(e.key, "tenants[0].sms_numbers[0]");
        assert_eq!(e.line, Some(9));

        let e = error_of(&GOOD.replace("127.0.0.1:0", "localhost"));
        assert_eq!(e.key, "server.http");
        assert_eq!(e.line, Some(3));

        let e = error_of(&GOOD.replace("tenants = [\"acme\"]", "tenants = [\"nope\"]"));
        assert_eq!(e.key, "agents[0].tenants[0]");
        assert_eq!(e.line, Some(20));

        let e = error_of(&GOOD.replace("gw-beta", "gw-acme"));
        assert_eq!(e.key, "tenants[1].gateway_token");

        let e = error_of(&GOOD.replace(
            "http = \"127.0.0.1:0\"",
            "http = \"127.0.0.1:0\"\nmax_in_flight_per_gateway = 0",
        ));
        assert_eq!(e.key, "server.max_in_flight_per_gateway");
        assert_eq!(e.line, Some(4));

        let e = error_of(&GOOD.replace(
            "gateway_token = \"gw-beta\"",
            "gateway_token = \"gw-beta\"\nopt_in_keywords = [\" \"]",
        ));
        assert_eq!(e.key, "tenants[1].opt_in_keywords");
    }

    #[test]
    fn syntax_and_unknown_keys_name_the_line() {
        let errors = Config::parse_all(&GOOD.replace("admin_token", "admin_tokn"), Path::new("."))
            .unwrap_err();
        let e = errors
            .iter()
            .find(|e| e.key == "server.admin_tokn")
            .unwrap();
        assert_eq!(e.line, Some(4));
        let e = error_of("[server\nhttp = 1");
        assert_eq!(e.line, Some(1));
        let e = error_of(&GOOD.replace("id = \"beta\"\n", ""));
        assert_eq!(
            e.key, "tenants[1].id",
            "a missing key is named in its table"
        );
    }

    /// A supervisor token must not be the admin token (it would write).
    #[test]
    fn a_supervisor_token_equal_to_the_admin_token_is_refused() {
        let src = GOOD.replace(
            "admin_token = \"admin-secret\"",
            "admin_token = \"admin-secret\"\nsupervisor_token = \"admin-secret\"",
        );
        let errors = Config::parse_all(&src, Path::new(".")).unwrap_err();
        assert_eq!(errors[0].key, "server.supervisor_token", "{errors:?}");
        let src = GOOD.replace(
            "admin_token = \"admin-secret\"",
            "admin_token = \"admin-secret\"\nsupervisor_token = \"reads-only-please\"",
        );
        Config::parse_all(&src, Path::new(".")).unwrap();
    }

    /// Five broken keys of three kinds (a wrong type, an unknown key, three
    /// rules) are all reported in one run, each with its path and line.
    #[test]
    fn every_error_is_reported_at_once_with_its_key_and_line() {
        let src = GOOD
            .replace(
                "http = \"127.0.0.1:0\"",
                "http = \"127.0.0.1:0\"\nmax_body_bytes = \"64k\"\nbogus = 1",
            )
            .replace("admin_token = \"admin-secret\"", "admin_token = \"short\"")
            .replace("America/New_York", "America/NewYork")
            .replace(
                "gateway_token = \"gw-beta\"",
                "gateway_token = \"gw-beta\"\nsms_numbers = [\"555\"]",
            );
        let errors = Config::parse_all(&src, Path::new(".")).unwrap_err();
        let got: Vec<(String, Option<usize>)> =
            errors.iter().map(|e| (e.key.clone(), e.line)).collect();
        assert_eq!(
            got,
            [
                ("server.max_body_bytes".to_owned(), Some(4)),
                ("server.bogus".to_owned(), Some(5)),
                ("server.admin_token".to_owned(), Some(6)),
                ("tenants[0].timezone".to_owned(), Some(10)),
                ("tenants[1].sms_numbers[0]".to_owned(), Some(18)),
            ],
            "{errors:?}"
        );
        assert!(errors[0].message.contains("64k"), "{}", errors[0]);
        assert!(
            errors[0].message.contains("expected a whole number"),
            "{}",
            errors[0]
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let src = include_str!("../../threadline.example.toml");
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = Config::parse_all(src, base).unwrap_or_else(|e| panic!("{e:?}"));
        crate::http::flows::load(&cfg).unwrap();
    }

    #[test]
    fn the_dev_config_is_valid() {
        Config::dev().validate().unwrap();
    }

    #[test]
    fn e164_check() {
        assert!(is_e164("+15551234567"));
        for bad in [
            "15551234567",
            "+1555",
            "+0123456789",
            "+1555123456a",
            "+1234567890123456",
        ] {
            assert!(!is_e164(bad), "{bad}");
        }
    }
}
