//! Twilio's wire format: request signatures (`X-Twilio-Signature`), the
//! form-encoded webhook bodies, and TwiML answers.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;

/// Most parameters a webhook may carry (Twilio sends about 20; MMS adds
/// two per medium, at most 10 media).
pub const MAX_PARAMS: usize = 200;

/// `Base64(HMAC-SHA1(auth_token, url + each name+value sorted by name))`.
pub fn signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    // By name; repeated names keep a stable order by value.
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The URLs Twilio may have signed for a request to `path_and_query` of a
/// node reachable at `public_url`: as configured, and with the scheme's
/// default port added or removed. Never another scheme: a proxy that turned
/// https into http is refused, not guessed.
pub fn candidate_urls(public_url: &str, path_and_query: &str) -> Vec<String> {
    let base = public_url.trim_end_matches('/');
    let mut out = vec![format!("{base}{path_and_query}")];
    let Some((scheme, rest)) = base.split_once("://") else {
        return out;
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "https" => "443",
        "http" => "80",
        _ => return out,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    // An IPv6 literal keeps its colons inside brackets.
    let port_at = authority
        .rfind(':')
        .filter(|&i| !authority[i..].contains(']'));
    let other = match port_at {
        Some(i) if &authority[i + 1..] == default_port => authority[..i].to_owned(),
        Some(_) => return out,
        None => format!("{authority}:{default_port}"),
    };
    out.push(format!("{scheme}://{other}{path}{path_and_query}"));
    out
}

/// Whether `header` is Twilio's signature of this request.
pub fn verify(
    auth_token: &str,
    public_url: &str,
    path_and_query: &str,
    params: &[(String, String)],
    header: &str,
) -> bool {
    candidate_urls(public_url, path_and_query)
        .iter()
        .any(|url| {
            bool::from(
                signature(auth_token, url, params)
                    .as_bytes()
                    .ct_eq(header.as_bytes()),
            )
        })
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormError {
    #[error("the form body is not valid UTF-8 after percent-decoding")]
    Utf8,
    #[error("the form body has more than {MAX_PARAMS} parameters")]
    TooMany,
    #[error("the form body has a parameter without a name")]
    EmptyName,
}

/// Parses an `application/x-www-form-urlencoded` body strictly: invalid
/// UTF-8 (raw or percent-encoded) is an error, not replaced.
pub fn parse_form(body: &[u8]) -> Result<Vec<(String, String)>, FormError> {
    let text = std::str::from_utf8(body).map_err(|_| FormError::Utf8)?;
    let mut out = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        if out.len() == MAX_PARAMS {
            return Err(FormError::TooMany);
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            let plus = s.replace('+', " ");
            percent_encoding::percent_decode_str(&plus)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| FormError::Utf8)
        };
        let k = decode(k)?;
        if k.is_empty() {
            return Err(FormError::EmptyName);
        }
        out.push((k, decode(v)?));
    }
    Ok(out)
}

/// The first value of parameter `name`.
pub fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// How a `<Gather>` listens: the flow's `[voice]` settings.
pub type Listen = threadline_actors::flows::engine::VoiceSpec;

/// A TwiML document under construction; text and attributes are escaped.
#[derive(Default)]
pub struct Twiml {
    body: String,
}

fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    quick_xml::escape::escape(s)
}

impl Twiml {
    pub fn new() -> Twiml {
        Twiml::default()
    }
    pub fn say(mut self, text: &str) -> Twiml {
        self.body.push_str(&format!("<Say>{}</Say>", esc(text)));
        self
    }
    /// `<Gather input="speech dtmf" action=...>` saying `prompt`: the
    /// caller answers in words or with one key, heard as `listen` says
    /// (language, hints, how long a silence lasts).
    pub fn gather_speech(mut self, action: &str, prompt: &str, listen: &Listen) -> Twiml {
        let hints = match listen.hints.is_empty() {
            true => String::new(),
            false => format!(" hints=\"{}\"", esc(&listen.hints.join(","))),
        };
        self.body.push_str(&format!(
            "<Gather input=\"speech dtmf\" numDigits=\"1\" action=\"{}\" method=\"POST\" language=\"{}\"{hints} speechTimeout=\"auto\" timeout=\"{}\"><Say language=\"{}\">{}</Say></Gather>",
            esc(action),
            esc(&listen.language),
            listen.timeout_seconds,
            esc(&listen.language),
            esc(prompt)
        ));
        self
    }
    /// `<Dial action=...><Number url=...>number</Number></Dial>`; `whisper`
    /// is TwiML the answering person hears before being connected.
    pub fn dial(mut self, action: &str, number: &str, whisper: Option<&str>) -> Twiml {
        let url = whisper
            .map(|w| format!(" url=\"{}\"", esc(w)))
            .unwrap_or_default();
        self.body.push_str(&format!(
            "<Dial action=\"{}\" method=\"POST\" timeout=\"20\"><Number{url}>{}</Number></Dial>",
            esc(action),
            esc(number)
        ));
        self
    }
    pub fn pause(mut self, seconds: u32) -> Twiml {
        self.body
            .push_str(&format!("<Pause length=\"{seconds}\"/>"));
        self
    }
    /// Continues the call with the TwiML at `url`.
    pub fn redirect(mut self, url: &str) -> Twiml {
        self.body.push_str(&format!(
            "<Redirect method=\"POST\">{}</Redirect>",
            esc(url)
        ));
        self
    }
    pub fn hangup(mut self) -> Twiml {
        self.body.push_str("<Hangup/>");
        self
    }
    pub fn render(self) -> String {
        if self.body.is_empty() {
            return "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>".into();
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response>{}</Response>",
            self.body
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn vector_params() -> Vec<(String, String)> {
        p(&[
            ("From", "+15551234567"),
            ("To", "+15557654321"),
            ("Body", "Hello"),
            ("MessageSid", "SM123"),
        ])
    }

    #[test]
    fn signature_matches_the_compliance_vector() {
        let sig = signature(
            "12345",
            "https://example.com/webhooks/twilio/sms",
            &vector_params(),
        );
        assert_eq!(sig, "Z5F7eJI8UI3tSdmo4x+GNuNuox8=");
    }

    #[test]
    fn a_changed_scheme_is_refused_not_guessed() {
        let good = "Z5F7eJI8UI3tSdmo4x+GNuNuox8=";
        assert!(verify(
            "12345",
            "https://example.com",
            "/webhooks/twilio/sms",
            &vector_params(),
            good
        ));
        assert!(!verify(
            "12345",
            "http://example.com",
            "/webhooks/twilio/sms",
            &vector_params(),
            good
        ));
        assert!(!verify(
            "54321",
            "https://example.com",
            "/webhooks/twilio/sms",
            &vector_params(),
            good
        ));
        let mut tampered = vector_params();
        tampered[2].1 = "Hello!".into();
        assert!(!verify(
            "12345",
            "https://example.com",
            "/webhooks/twilio/sms",
            &tampered,
            good
        ));
    }

    #[test]
    fn default_ports_are_accepted_both_ways() {
        let with_port = signature(
            "12345",
            "https://example.com:443/webhooks/twilio/sms",
            &vector_params(),
        );
        assert!(verify(
            "12345",
            "https://example.com",
            "/webhooks/twilio/sms",
            &vector_params(),
            &with_port
        ));
        let without = signature(
            "12345",
            "https://example.com/webhooks/twilio/sms",
            &vector_params(),
        );
        assert!(verify(
            "12345",
            "https://example.com:443",
            "/webhooks/twilio/sms",
            &vector_params(),
            &without
        ));
        assert_eq!(
            candidate_urls("http://h.example:80/base/", "/x?a=1"),
            vec![
                "http://h.example:80/base/x?a=1",
                "http://h.example/base/x?a=1"
            ]
        );
        // A non-default port is only ever itself.
        assert_eq!(
            candidate_urls("https://h:8443", "/x"),
            vec!["https://h:8443/x"]
        );
        assert_eq!(
            candidate_urls("https://[::1]", "/x"),
            vec!["https://[::1]/x", "https://[::1]:443/x"]
        );
    }

    #[test]
    fn forms_decode_strictly() {
        assert_eq!(
            parse_form(b"Body=Hi+there%21&To=%2B1555&Empty=").unwrap(),
            p(&[("Body", "Hi there!"), ("To", "+1555"), ("Empty", "")])
        );
        assert_eq!(parse_form(b"Body=%FF"), Err(FormError::Utf8));
        assert_eq!(parse_form(b"Body=\xff"), Err(FormError::Utf8));
        assert_eq!(parse_form(b"=x"), Err(FormError::EmptyName));
        let many: Vec<u8> = (0..=MAX_PARAMS)
            .map(|i| format!("k{i}=v&"))
            .collect::<String>()
            .into_bytes();
        assert_eq!(parse_form(&many), Err(FormError::TooMany));
    }

    #[test]
    fn twiml_escapes_text_and_attributes() {
        let x = Twiml::new()
            .say("Tom & Jerry <said> \"hi\"")
            .dial("/a?x=1&y=2", "+15550001111", None)
            .render();
        assert!(
            x.contains("<Say>Tom &amp; Jerry &lt;said&gt; &quot;hi&quot;</Say>"),
            "{x}"
        );
        assert!(x.contains("action=\"/a?x=1&amp;y=2\""), "{x}");
        assert_eq!(
            Twiml::new().render(),
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>"
        );
    }
}
