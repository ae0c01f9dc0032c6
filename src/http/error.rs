//! The one error type of the HTTP layer and its one `IntoResponse`: every failure leaves as a SCIM
//! error document (RFC 7644 §3.12). Internal causes are logged where they happen, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use scimlog_projections::query::QueryError;
use scimlog_schemas::{urn, SchemaError, ScimType};
use serde::Serialize;

use crate::command::Refusal;
use crate::log::writer::WriteError;
use crate::log::LogError;

#[derive(Debug)]
pub enum ApiError {
    /// The request is malformed or invalid (400; 409 for uniqueness).
    Invalid(SchemaError),
    /// The command was refused by the rules of the directory.
    Refused(Refusal),
    Unauthorized(&'static str),
    Forbidden(&'static str),
    NotFound(String),
    UnsupportedMediaType(String),
    PayloadTooLarge {
        limit: usize,
    },
    /// RFC 7644 §3.7.4: more bulk operations than `maxOperations`.
    PayloadTooLargeOperations {
        count: usize,
        limit: usize,
    },
    MethodNotAllowed,
    NotImplemented(&'static str),
    /// Try again later: the write queue is full, or the store failed. Nothing was written.
    Unavailable(String),
    /// A bug on our side (a panic while deciding a write); the cause is logged, never sent.
    Internal(&'static str),
    /// The client sent its body too slowly.
    RequestTimeout {
        limit_ms: u64,
    },
    /// The token is over its rate (`--rate-limit-per-s`).
    TooManyRequests {
        retry_after_s: u64,
    },
}

impl From<SchemaError> for ApiError {
    fn from(e: SchemaError) -> Self {
        ApiError::Invalid(e)
    }
}
impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        ApiError::Refused(r)
    }
}
impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let scim_type = match e {
            QueryError::ScanTooLarge { .. } | QueryError::ListTooLarge { .. } | QueryError::StartTooFar { .. } => {
                ScimType::TooMany
            }
            QueryError::MemberFilter { .. } => ScimType::InvalidFilter,
        };
        ApiError::Invalid(SchemaError::new(scim_type, e.to_string()))
    }
}
impl From<scimlog_projections::access::TooLarge> for ApiError {
    fn from(e: scimlog_projections::access::TooLarge) -> Self {
        ApiError::Invalid(SchemaError::new(ScimType::TooMany, e.to_string()))
    }
}
impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Refused(r) => ApiError::Refused(r),
            WriteError::QueueFull { depth } => {
                ApiError::Unavailable(format!("the write queue is full ({depth} writes waiting); retry shortly"))
            }
            WriteError::TenantQueueFull { share } => ApiError::Unavailable(format!(
                "this tenant has {share} writes waiting, its share of the queue (--write-queue-per-tenant); retry shortly"
            )),
            WriteError::Storage => {
                ApiError::Unavailable("the store could not commit the write; nothing was written".into())
            }
            WriteError::Closed => ApiError::Unavailable("the writer has stopped; nothing was written".into()),
            WriteError::Internal => ApiError::Internal("internal error while deciding the write; nothing was written"),
            WriteError::NotLeader => ApiError::Unavailable(
                "this node does not lead the cluster now (leadership is moving); nothing was written: retry shortly"
                    .into(),
            ),
            WriteError::OutcomeUnknown => ApiError::Unavailable(
                "this node lost the cluster's lead while appending the write; whether it was written is not \
                 known: retry shortly (a retried create may answer 409 uniqueness if it was)"
                    .into(),
            ),
            WriteError::Copy => ApiError::NotImplemented(
                "this server is an outbound runner (scimlog outbound run), a read copy of a directory: \
                 send writes to the directory itself; nothing was written",
            ),
            WriteError::ClusterUnavailable => {
                ApiError::Unavailable("the replicated log did not take the write; nothing was written: retry shortly".into())
            }
        }
    }
}
impl From<LogError> for ApiError {
    fn from(e: LogError) -> Self {
        tracing::error!(error = %e, "read from the store failed");
        ApiError::Unavailable("the store could not be read".into())
    }
}

impl ApiError {
    pub fn parts(&self) -> (StatusCode, Option<&'static str>, String) {
        match self {
            ApiError::Invalid(e) => {
                let status =
                    if e.scim_type == ScimType::Uniqueness { StatusCode::CONFLICT } else { StatusCode::BAD_REQUEST };
                (status, Some(e.scim_type.as_str()), e.detail.clone())
            }
            ApiError::Refused(Refusal::NotFound { kind, id }) => {
                (StatusCode::NOT_FOUND, None, format!("{} {id:?} not found", kind.as_str()))
            }
            ApiError::Refused(Refusal::Invalid(e)) => ApiError::Invalid(e.clone()).parts(),
            ApiError::Refused(Refusal::Uniqueness(d)) => (StatusCode::CONFLICT, Some("uniqueness"), d.clone()),
            ApiError::Refused(Refusal::Unresolved(d)) => (StatusCode::CONFLICT, None, d.clone()),
            ApiError::Refused(Refusal::VersionMismatch { current, expected }) => (
                StatusCode::PRECONDITION_FAILED,
                None,
                format!("If-Match names version W/\"{expected}\" but the resource is at W/\"{current}\""),
            ),
            ApiError::Unauthorized(d) => (StatusCode::UNAUTHORIZED, None, (*d).into()),
            ApiError::Forbidden(d) => (StatusCode::FORBIDDEN, None, (*d).into()),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, None, d.clone()),
            ApiError::UnsupportedMediaType(ct) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                None,
                format!("content type {ct:?} is not accepted; send application/scim+json or application/json"),
            ),
            ApiError::PayloadTooLarge { limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                None,
                format!("the request body is larger than the limit of {limit} bytes"),
            ),
            ApiError::PayloadTooLargeOperations { count, limit } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Some("tooMany"),
                format!("{count} bulk operations, more than maxOperations ({limit})"),
            ),
            ApiError::MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, None, "method not allowed on this endpoint".into())
            }
            ApiError::NotImplemented(d) => (StatusCode::NOT_IMPLEMENTED, None, (*d).into()),
            ApiError::Unavailable(d) => (StatusCode::SERVICE_UNAVAILABLE, None, d.clone()),
            ApiError::Internal(d) => (StatusCode::INTERNAL_SERVER_ERROR, None, (*d).into()),
            ApiError::TooManyRequests { retry_after_s } => (
                StatusCode::TOO_MANY_REQUESTS,
                None,
                format!("this token is over its rate limit (--rate-limit-per-s); retry in {retry_after_s} s"),
            ),
            ApiError::RequestTimeout { limit_ms } => {
                (StatusCode::REQUEST_TIMEOUT, None, format!("the request body did not arrive within {limit_ms} ms"))
            }
        }
    }
}

impl ApiError {
    /// The status and the SCIM error document (also used inside bulk responses).
    pub fn document(&self) -> (StatusCode, serde_json::Value) {
        let (status, _, body) = self.document_with_type();
        (status, body)
    }

    /// The status, the scimType (for the metrics) and the SCIM error body, from one `parts`.
    fn document_with_type(&self) -> (StatusCode, Option<&'static str>, serde_json::Value) {
        let (status, scim_type, detail) = self.parts();
        let doc = ScimErrorDoc {
            schemas: vec![urn::ERROR.to_string()],
            status: status.as_u16().to_string(),
            detail,
            scim_type: scim_type.map(str::to_string),
        };
        (status, scim_type, serde_json::to_value(doc).expect("an error document serialises"))
    }
}

/// A SCIM error document (RFC 7644 §3.12), as every error of both APIs is answered.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScimErrorDoc {
    /// `["urn:ietf:params:scim:api:messages:2.0:Error"]`.
    schemas: Vec<String>,
    /// The HTTP status, as a string.
    status: String,
    /// What was wrong, naming the offending value.
    detail: String,
    /// The SCIM error type (`invalidValue`, `uniqueness`, `mutability`, ...), when one applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    scim_type: Option<String>,
}

/// The scimType of an error response, read by the metrics of the token gate (`http::counted`).
#[derive(Clone, Copy, Debug)]
pub struct ScimTypeTag(pub &'static str);

/// The `detail` of an error response, for the request log (`http::request_context`).
#[derive(Clone, Debug)]
pub struct DetailTag(pub String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let retry_after = match &self {
            ApiError::TooManyRequests { retry_after_s } => Some(*retry_after_s),
            _ => None,
        };
        let (status, scim_type, body) = self.document_with_type();
        let mut resp = super::scim_response(status, &body);
        // For the metrics middleware: which scimType this answer carried.
        resp.extensions_mut().insert(ScimTypeTag(scim_type.unwrap_or("")));
        if let Some(detail) = body.get("detail").and_then(serde_json::Value::as_str) {
            resp.extensions_mut().insert(DetailTag(detail.to_string()));
        }
        match status {
            StatusCode::UNAUTHORIZED => {
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"scimlog\""));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let seconds = retry_after.unwrap_or(1).to_string();
                if let Ok(v) = HeaderValue::from_str(&seconds) {
                    resp.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            _ => {}
        }
        resp
    }
}
