//! Authorization: the admin and supervisor tokens, compared in constant time;
//! which tenants exist.

use super::*;

use hyper::header::AUTHORIZATION;
use hyper::{Request, StatusCode};
use subtle::ConstantTimeEq;

pub(crate) fn bearer(req: &Request<Body>) -> Option<&str> {
    let v = req.headers().get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

pub(crate) fn ct_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Whether `token` is the supervisor token (which reads only).
pub(crate) fn is_supervisor(app: &App, token: &str) -> bool {
    app.cfg
        .server
        .supervisor_token
        .as_deref()
        .is_some_and(|s| ct_eq(token, s))
}

pub(crate) fn admin(app: &App, req: &Request<Body>) -> Result<(), ApiError> {
    let reads = matches!(*req.method(), hyper::Method::GET | hyper::Method::HEAD);
    match bearer(req) {
        Some(t) if ct_eq(t, &app.cfg.server.admin_token) => Ok(()),
        Some(t) if is_supervisor(app, t) && reads => Ok(()),
        Some(t) if is_supervisor(app, t) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the supervisor token only reads; changes need the admin token",
        )),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is not the admin token",
        )),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an `Authorization: Bearer <admin_token>` header is required",
        )),
    }
}

pub(crate) fn known_tenant(app: &App, t: &str) -> Result<String, ApiError> {
    app.cfg
        .tenant(t)
        .map(|t| t.id.clone())
        .ok_or_else(|| ApiError::not_found(format!("unknown tenant {t:?}")))
}
