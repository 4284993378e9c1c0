//! JSON errors and plain responses: every error is
//! `{"error": {"code": ..., "message": ...}}`.

use super::*;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use threadline_actors::DeliverError;

/// An HTTP error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// For 405: the methods the path takes (`Allow`).
    allow: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }
    /// 405 for a path that exists with other methods, naming them.
    pub(crate) fn method_not_allowed(req: &Request<Body>, allowed: Vec<&Method>) -> Self {
        let allow = allowed
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        ApiError {
            allow: Some(allow.clone()),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!(
                    "{} is not supported on {} (allowed: {allow})",
                    req.method(),
                    req.uri().path()
                ),
            )
        }
    }
    pub(crate) fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub(crate) fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", what)
    }
    /// Storage refused a write or read: 503 `storage_failed` with
    /// `Retry-After` (nothing was acknowledged; the caller tries again, on
    /// this node once it is restarted or on another).
    pub(crate) fn storage(e: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_failed",
            e.to_string(),
        )
    }
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<DeliverError> for ApiError {
    fn from(e: DeliverError) -> Self {
        match e {
            DeliverError::Unavailable(m) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
            DeliverError::Storage(m) => ApiError::storage(m),
        }
    }
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(v.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    r
}

pub(super) fn error_response(e: ApiError) -> Resp {
    let mut r = json_response(
        e.status,
        &json!({"error": {"code": e.code, "message": e.message}}),
    );
    if e.status == StatusCode::SERVICE_UNAVAILABLE {
        r.headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    if e.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"threadline\""),
        );
    }
    if let Some(allow) = e.allow.and_then(|a| HeaderValue::from_str(&a).ok()) {
        r.headers_mut().insert(hyper::header::ALLOW, allow);
    }
    if e.status == StatusCode::REQUEST_TIMEOUT {
        // The rest of its body may still come: the connection ends here.
        r.headers_mut()
            .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

pub(crate) fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A page of ours (the web chat, the agent desktop) with the headers a
/// browser needs to keep it safe: a Content-Security-Policy allowing only
/// the page's own inline scripts (by hash) and same-origin connections,
/// who may frame it (`frame_ancestors`, CSP syntax: `'none'`, `'self'` or
/// origins), no MIME sniffing, no referrer.
pub(crate) fn html_page(html: String, frame_ancestors: &str) -> Resp {
    use base64::Engine as _;
    use sha2::Digest as _;
    let mut scripts = String::new();
    let mut rest = html.as_str();
    while let Some(start) = rest.find("<script>") {
        let body = &rest[start + "<script>".len()..];
        let Some(end) = body.find("</script>") else {
            break;
        };
        let digest = sha2::Sha256::digest(&body.as_bytes()[..end]);
        scripts.push_str(&format!(
            " 'sha256-{}'",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ));
        rest = &body[end..];
    }
    let csp = format!(
        "default-src 'none'; script-src{scripts}; style-src 'self' 'unsafe-inline'; \
         img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; \
         frame-ancestors {frame_ancestors}"
    );
    let mut r = text_response(StatusCode::OK, "text/html; charset=utf-8", html);
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        h.insert(hyper::header::CONTENT_SECURITY_POLICY, v);
    }
    h.insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        hyper::header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}
