//! The HTTP error type and the one place that turns any failure into a status
//! code and an OperationOutcome: the server's own (transport, media types,
//! authentication) and, through `From<RestError>`, every failed FHIR
//! interaction. Internal detail is logged, never sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use fhirbox_fhir::{Issue, IssueType, OperationOutcome};
use fhirbox_rest::RestError;
use fhirbox_store::StoreError;

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
    /// Every problem, when there are several (a failed structural
    /// validation); the OperationOutcome then lists these.
    pub issues: Vec<Issue>,
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
            issues: Vec::new(),
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> ApiError {
        self.expression = Some(expression.into());
        self
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, IssueType::Invalid, message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, IssueType::NotFound, message)
    }

    pub fn not_supported(status: StatusCode, message: impl Into<String>) -> ApiError {
        Self::new(status, IssueType::NotSupported, message)
    }

    pub fn outcome(&self) -> OperationOutcome {
        OperationOutcome::of_error(
            self.status.is_server_error(),
            self.code,
            &self.message,
            self.expression.as_deref(),
            &self.issues,
        )
    }
}

/// A failed FHIR interaction keeps its issue code, message and location;
/// its kind chooses the status.
impl From<RestError> for ApiError {
    fn from(e: RestError) -> ApiError {
        ApiError {
            status: StatusCode::from_u16(e.kind.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            code: e.code,
            message: e.message,
            expression: e.expression,
            issues: e.issues,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        RestError::from(e).into()
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
    use fhirbox_rest::ErrorKind;

    #[test]
    fn every_rest_error_kind_keeps_its_status() {
        for kind in [
            ErrorKind::BadRequest,
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::Conflict,
            ErrorKind::Gone,
            ErrorKind::PreconditionFailed,
            ErrorKind::Unprocessable,
            ErrorKind::Internal,
            ErrorKind::Unavailable,
        ] {
            let e = ApiError::from(RestError::new(kind, IssueType::Invalid, "m").at("X.y"));
            assert_eq!(e.status.as_u16(), kind.status());
            assert_eq!(e.status.canonical_reason(), kind.status_text().get(4..));
            assert_eq!(
                (e.code, e.message.as_str(), e.expression.as_deref()),
                (IssueType::Invalid, "m", Some("X.y"))
            );
        }
    }

    #[test]
    fn store_errors_reach_the_caller_through_the_rest_kinds() {
        let e = ApiError::from(StoreError::Contention);
        assert_eq!(e.status, StatusCode::CONFLICT);
        let e = ApiError::from(StoreError::Corrupt("secret table layout".into()));
        assert_eq!(e.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("secret table layout"));
    }
}
