//! The HTTP error type and the one place that turns any failure into a status
//! code and an OperationOutcome. Internal detail is logged here, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fhirbox_fhir::{IssueSeverity, IssueType, OperationOutcome};
use fhirbox_store::{Refusal, RefusalKind, StoreError};

use crate::response::fhir_json;

/// An error on its way to the client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: IssueType,
    /// What the client should know and do; never internal detail.
    pub message: String,
    /// Where in the request the problem is (`Patient.id`, `Bundle.entry[2]`).
    pub expression: Option<String>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

impl ApiError {
    pub fn new(status: StatusCode, code: IssueType, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            expression: None,
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> ApiError {
        self.expression = Some(expression.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, IssueType::Invalid, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::Processing,
            message,
        )
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, IssueType::NotFound, message)
    }

    pub fn not_supported(status: StatusCode, message: impl Into<String>) -> ApiError {
        Self::new(status, IssueType::NotSupported, message)
    }

    /// A failure whose detail must stay in the log.
    pub fn internal(detail: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            "the server could not complete the request; the cause has been logged",
        )
    }

    pub fn outcome(&self) -> OperationOutcome {
        let severity = if self.status.is_server_error() {
            IssueSeverity::Fatal
        } else {
            IssueSeverity::Error
        };
        let oo = OperationOutcome::single(severity, self.code, self.message.clone());
        match &self.expression {
            Some(e) => oo.at(e.clone()),
            None => oo,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> ApiError {
        match err {
            StoreError::NotFound { resource_type, id } => ApiError::not_found(format!(
                "{resource_type}/{id} does not exist"
            )),
            StoreError::Gone {
                resource_type,
                id,
                version_id,
            } => ApiError::new(
                StatusCode::GONE,
                IssueType::Deleted,
                format!("{resource_type}/{id} was deleted (version {version_id})"),
            ),
            e @ StoreError::VersionConflict { .. } => ApiError::new(
                StatusCode::PRECONDITION_FAILED,
                IssueType::Conflict,
                format!("{e}; read the resource again and retry with its current ETag"),
            ),
            e @ StoreError::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, IssueType::Duplicate, e.to_string())
            }
            e @ StoreError::Contention => {
                ApiError::new(StatusCode::CONFLICT, IssueType::Conflict, e.to_string())
            }
            StoreError::InvalidCursor => ApiError::bad_request(
                "the _cursor parameter is not valid for this query; start again from the first page",
            ),
            StoreError::Rejected(refusal) => refusal.into(),
            StoreError::Unavailable(e) => {
                tracing::error!(error = %e, "database unavailable");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    IssueType::Transient,
                    "the database is unavailable; retry later",
                )
            }
            e @ (StoreError::Database(_) | StoreError::Config(_) | StoreError::Corrupt(_)) => {
                ApiError::internal(&DisplayChain(&e))
            }
        }
    }
}

/// A refusal of a write rule, as the caller sees it.
impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        let error = match refusal.kind {
            RefusalKind::Invalid => ApiError::unprocessable(refusal.message),
            RefusalKind::NotSupported => {
                ApiError::not_supported(StatusCode::UNPROCESSABLE_ENTITY, refusal.message)
            }
            // A corrupt stored body or a failed hash is the server's fault:
            // logged, and a 500 for the caller.
            RefusalKind::Internal => return ApiError::internal(&refusal.message),
        };
        match refusal.location {
            Some(at) => error.at(at),
            None => error,
        }
    }
}

/// A rule a write hook enforces, on its way through the store: a server
/// error is `Internal` (its message stays in the log), a refused feature
/// `NotSupported`, anything else the caller's to fix (`Invalid`, 422).
impl From<ApiError> for Refusal {
    fn from(e: ApiError) -> Refusal {
        let kind = if e.status.is_server_error() {
            RefusalKind::Internal
        } else if e.code == IssueType::NotSupported {
            RefusalKind::NotSupported
        } else {
            RefusalKind::Invalid
        };
        Refusal {
            kind,
            message: e.message,
            location: e.expression,
        }
    }
}

/// Displays an error with its sources, for logs.
struct DisplayChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = fhir_json(self.status, self.outcome().to_json().to_string());
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"fhirbox\""),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(e: StoreError) -> StatusCode {
        ApiError::from(e).status
    }

    #[test]
    fn store_errors_map_to_fhir_statuses() {
        let (t, i) = ("Patient".to_owned(), "a".to_owned());
        assert_eq!(
            status_of(StoreError::NotFound {
                resource_type: t.clone(),
                id: i.clone()
            }),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            status_of(StoreError::Gone {
                resource_type: t.clone(),
                id: i.clone(),
                version_id: 2
            }),
            StatusCode::GONE
        );
        assert_eq!(
            status_of(StoreError::VersionConflict {
                resource_type: t.clone(),
                id: i.clone(),
                expected: 1,
                current: Some(2)
            }),
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            status_of(StoreError::AlreadyExists {
                resource_type: t,
                id: i
            }),
            StatusCode::CONFLICT
        );
        assert_eq!(status_of(StoreError::Contention), StatusCode::CONFLICT);
        assert_eq!(
            status_of(StoreError::InvalidCursor),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            status_of(StoreError::Unavailable(Box::new(std::io::Error::other(
                "closed"
            )))),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let rejected = StoreError::Rejected(ApiError::unprocessable("nope").into());
        assert_eq!(status_of(rejected), StatusCode::UNPROCESSABLE_ENTITY);
        // A refusal that is the server's fault (e.g. a corrupt stored body) is a 500.
        let corrupt =
            StoreError::Rejected(fhirbox_store::Refusal::internal("stored body is not JSON"));
        let api = ApiError::from(corrupt);
        assert_eq!(api.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            !api.message.contains("not JSON"),
            "the detail stays in the log"
        );
        let off = StoreError::Rejected(
            ApiError::not_supported(StatusCode::UNPROCESSABLE_ENTITY, "off")
                .at("Client.secret")
                .into(),
        );
        let api = ApiError::from(off);
        assert_eq!(
            (api.status, api.code),
            (StatusCode::UNPROCESSABLE_ENTITY, IssueType::NotSupported)
        );
        assert_eq!(api.expression.as_deref(), Some("Client.secret"));
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let e = ApiError::from(StoreError::Corrupt("secret table layout".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("secret table layout"));
    }
}
