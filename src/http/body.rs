//! Reading requests: bounded bodies, JSON, path parameters, query pairs and
//! field limits.

use super::*;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use threadline_protocol::{ConversationId, Timestamp};

use crate::routes::{BodyKind, Operation};

/// A path parameter the matched template has.
pub(super) fn param<'v>(params: &matchit::Params<'_, 'v>, name: &str) -> &'v str {
    params.get(name).unwrap_or_default()
}

pub(super) fn conversation_id(id: &str) -> Result<ConversationId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad("invalid_id", format!("{id:?} is not a conversation id")))
}

/// The content-type rule, from the route table: an operation that takes
/// JSON gets `application/json`, a Twilio webhook gets a form; an
/// optional body may be absent. Anything else is 415 before the handler.
pub(super) fn check_content_type(op: &Operation, req: &Request<Body>) -> Result<(), ApiError> {
    let want = match op.body {
        BodyKind::None => return Ok(()),
        BodyKind::OptionalJson(_) if !has_body(req) => return Ok(()),
        BodyKind::Json(_) | BodyKind::OptionalJson(_) => "application/json",
        BodyKind::Form => "application/x-www-form-urlencoded",
    };
    let ct = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case(want) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("Content-Type must be {want} (got {ct:?})"),
        ))
    }
}

/// Whether the request says it has a body.
pub(super) fn has_body(req: &Request<Body>) -> bool {
    let h = req.headers();
    h.contains_key(hyper::header::TRANSFER_ENCODING)
        || h.get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() != "0")
}

/// A request body of `bytes`.
pub(super) fn body_of(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub(crate) fn decode_segment(s: &str) -> Result<String, ApiError> {
    let d = percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_err(|_| ApiError::bad("invalid_path", "the address is not valid UTF-8"))?;
    if d.is_empty() || d.len() > MAX_ID_BYTES {
        return Err(ApiError::bad(
            "invalid_path",
            "the address is empty or too long",
        ));
    }
    Ok(d.into_owned())
}

/// Bodies up to this size are read and discarded when refused, so the
/// client gets to read the 413 instead of a reset connection; larger ones
/// just close the connection.
pub(super) const DRAIN_REFUSED_BODY: usize = 4 << 20;

/// Reads the body, refusing more than `limit` bytes.
pub(crate) async fn read_body(req: Request<Body>, limit: usize) -> Result<Bytes, ApiError> {
    let declared = req
        .headers()
        .get(hyper::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let deadline = req.extensions().get::<BodyDeadline>().map(|d| d.0);
    let body = req.into_body();
    if let Some(deadline) = deadline {
        return match tokio::time::timeout_at(deadline, read_limited(body, declared, limit)).await {
            Ok(r) => r,
            Err(_) => Err(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive in time".to_owned(),
            )),
        };
    }
    read_limited(body, declared, limit).await
}

/// `read_body` without the deadline.
pub(super) async fn read_limited(
    mut body: Body,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds {limit} bytes"),
        )
    };
    if declared.is_some_and(|len| len > limit as u64) {
        if declared.is_some_and(|len| len <= DRAIN_REFUSED_BODY as u64) {
            let _ = Limited::new(body, DRAIN_REFUSED_BODY).collect().await;
        }
        return Err(too_large());
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::bad("body_unreadable", e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                let rest = DRAIN_REFUSED_BODY.saturating_sub(buf.len() + data.len());
                let _ = Limited::new(body, rest).collect().await;
                return Err(too_large());
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

pub(crate) fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::bad("invalid_utf8", format!("the body is not valid UTF-8: {e}")))?;
    serde_json::from_str(text).map_err(|e| {
        let code = if e.is_data() {
            "invalid_field"
        } else {
            "invalid_json"
        };
        ApiError::bad(code, e.to_string())
    })
}

pub(crate) fn field_len(name: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.len() > max {
        return Err(ApiError::bad(
            "field_too_long",
            format!("`{name}` is {} bytes; at most {max} are accepted", v.len()),
        ));
    }
    Ok(())
}

pub fn parse_rfc3339(name: &str, s: &str) -> Result<Timestamp, ApiError> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| Timestamp(d.timestamp_millis()))
        .map_err(|e| ApiError::bad("invalid_field", format!("`{name}` is not RFC 3339: {e}")))
}

/// `GET /api/v1/tenants/{t}/audit?contact=&since=`: the tenant's audit
/// records as NDJSON, in chain order. Without filters the export is the
/// whole chain and `threadline audit verify` can check it.
/// The `key=value` pairs of a query string, values percent-decoded.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(&str, String)>, ApiError> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map(|v| (k, v.into_owned()))
                .map_err(|_| ApiError::bad("invalid_query", "query values must be UTF-8"))
        })
        .collect()
}
