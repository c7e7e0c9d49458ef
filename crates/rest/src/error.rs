//! `RestError`: every way a FHIR interaction can fail, as a kind (which the
//! server turns into an HTTP status), an OperationOutcome issue code, a
//! message for the caller and where in the request the problem is. Internal
//! detail is logged here and never carried in the message.

use fhirbox_fhir::{Issue, IssueSeverity, IssueType, OperationOutcome};
use fhirbox_store::{Refusal, RefusalIssue, RefusalKind, StoreError};

/// What went wrong, in the terms of the FHIR RESTful API (R4 §3.1.0.4):
/// each kind has one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the request cannot be understood or is not allowed as sent.
    BadRequest,
    /// 403: access control refused the request.
    Forbidden,
    /// 404: no such resource, version or type.
    NotFound,
    /// 409: the write lost a race, or the resource already exists.
    Conflict,
    /// 410: the resource was deleted.
    Gone,
    /// 412: `If-Match` named another version.
    PreconditionFailed,
    /// 422: well-formed, but breaks a rule of the resource or of the server.
    Unprocessable,
    /// 500: the server's fault; the cause is in the log.
    Internal,
    /// 503: the database cannot be reached.
    Unavailable,
}

impl ErrorKind {
    /// The HTTP status code of this kind.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BadRequest => 400,
            ErrorKind::Forbidden => 403,
            ErrorKind::NotFound => 404,
            ErrorKind::Conflict => 409,
            ErrorKind::Gone => 410,
            ErrorKind::PreconditionFailed => 412,
            ErrorKind::Unprocessable => 422,
            ErrorKind::Internal => 500,
            ErrorKind::Unavailable => 503,
        }
    }

    /// The status line a bundle entry's `response.status` carries.
    pub fn status_text(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "400 Bad Request",
            ErrorKind::Forbidden => "403 Forbidden",
            ErrorKind::NotFound => "404 Not Found",
            ErrorKind::Conflict => "409 Conflict",
            ErrorKind::Gone => "410 Gone",
            ErrorKind::PreconditionFailed => "412 Precondition Failed",
            ErrorKind::Unprocessable => "422 Unprocessable Entity",
            ErrorKind::Internal => "500 Internal Server Error",
            ErrorKind::Unavailable => "503 Service Unavailable",
        }
    }
}

/// A failed FHIR interaction, on its way to the caller.
#[derive(Debug, Clone)]
pub struct RestError {
    pub kind: ErrorKind,
    pub code: IssueType,
    /// What the client should know and do; never internal detail.
    pub message: String,
    /// Where in the request the problem is (`Patient.id`, `Bundle.entry[2]`).
    pub expression: Option<String>,
    /// Every problem, when there are several (a structural validation lists
    /// each); the OperationOutcome then carries these instead of `message`.
    pub issues: Vec<Issue>,
}

impl std::fmt::Display for RestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.status(), self.message)
    }
}

impl std::error::Error for RestError {}

impl RestError {
    pub fn new(kind: ErrorKind, code: IssueType, message: impl Into<String>) -> RestError {
        RestError {
            kind,
            code,
            message: message.into(),
            expression: None,
            issues: Vec::new(),
        }
    }

    /// Where the problem is. An error that lists issues keeps each issue's
    /// own location and adds this one after it (`Bundle.entry[2]`).
    pub fn at(mut self, expression: impl Into<String>) -> RestError {
        let expression = expression.into();
        for issue in &mut self.issues {
            issue.expression.push(expression.clone());
        }
        self.expression = Some(expression);
        self
    }

    /// Puts `text` before the message (`"the transaction was not applied: …"`),
    /// and before the first issue's.
    pub fn prefixed(mut self, text: &str) -> RestError {
        self.message = format!("{text}: {}", self.message);
        if let Some(first) = self.issues.first_mut() {
            first.diagnostics = format!("{text}: {}", first.diagnostics);
        }
        self
    }

    /// A request whose resource does not have the structure its type
    /// defines (400): one issue per problem.
    pub fn malformed(message: impl Into<String>, issues: Vec<Issue>) -> RestError {
        RestError {
            issues,
            ..Self::new(ErrorKind::BadRequest, IssueType::Structure, message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> RestError {
        Self::new(ErrorKind::BadRequest, IssueType::Invalid, message)
    }

    pub fn unprocessable(message: impl Into<String>) -> RestError {
        Self::new(ErrorKind::Unprocessable, IssueType::Processing, message)
    }

    pub fn not_found(message: impl Into<String>) -> RestError {
        Self::new(ErrorKind::NotFound, IssueType::NotFound, message)
    }

    pub fn forbidden(message: impl Into<String>) -> RestError {
        Self::new(ErrorKind::Forbidden, IssueType::Forbidden, message)
    }

    /// A feature or value the server does not support, answered with `kind`.
    pub fn not_supported(kind: ErrorKind, message: impl Into<String>) -> RestError {
        Self::new(kind, IssueType::NotSupported, message)
    }

    /// A failure whose detail must stay in the log.
    pub fn internal(detail: &dyn std::fmt::Display) -> RestError {
        tracing::error!(error = %detail, "internal error");
        Self::new(
            ErrorKind::Internal,
            IssueType::Exception,
            "the server could not complete the request; the cause has been logged",
        )
    }

    /// The message with every issue, on one line: for logs and start-up
    /// errors, where there is no OperationOutcome to carry the issues.
    pub fn describe(&self) -> String {
        if self.issues.is_empty() {
            return self.message.clone();
        }
        let issues: Vec<String> = self
            .issues
            .iter()
            .map(|i| match i.expression.first() {
                Some(at) => format!("{at}: {}", i.diagnostics),
                None => i.diagnostics.clone(),
            })
            .collect();
        format!("{}: {}", self.message, issues.join("; "))
    }

    pub fn outcome(&self) -> OperationOutcome {
        OperationOutcome::of_error(
            self.kind.status() >= 500,
            self.code,
            &self.message,
            self.expression.as_deref(),
            &self.issues,
        )
    }
}

impl From<StoreError> for RestError {
    fn from(err: StoreError) -> RestError {
        match err {
            StoreError::NotFound { resource_type, id } => {
                RestError::not_found(format!("{resource_type}/{id} does not exist"))
            }
            StoreError::Gone {
                resource_type,
                id,
                version_id,
            } => RestError::new(
                ErrorKind::Gone,
                IssueType::Deleted,
                format!("{resource_type}/{id} was deleted (version {version_id})"),
            ),
            e @ StoreError::VersionConflict { .. } => RestError::new(
                ErrorKind::PreconditionFailed,
                IssueType::Conflict,
                format!("{e}; read the resource again and retry with its current ETag"),
            ),
            e @ StoreError::AlreadyExists { .. } => {
                RestError::new(ErrorKind::Conflict, IssueType::Duplicate, e.to_string())
            }
            e @ StoreError::MultipleMatches { .. } => RestError::new(
                ErrorKind::PreconditionFailed,
                IssueType::MultipleMatches,
                format!("{e}; make the criteria more selective"),
            ),
            e @ StoreError::NoMatch { .. } => RestError::not_found(e.to_string()),
            e @ (StoreError::MatchAppeared { .. } | StoreError::MatchChanged { .. }) => RestError::new(
                ErrorKind::Conflict,
                IssueType::Conflict,
                format!("{e}; nothing was stored"),
            ),
            e @ StoreError::Contention => {
                RestError::new(ErrorKind::Conflict, IssueType::Conflict, e.to_string())
            }
            StoreError::InvalidCursor => RestError::bad_request(
                "the _cursor parameter is not valid for this query; start again from the first page",
            ),
            StoreError::Rejected(refusal) => refusal.into(),
            StoreError::Unavailable(e) => {
                tracing::error!(error = %e, "database unavailable");
                RestError::new(
                    ErrorKind::Unavailable,
                    IssueType::Transient,
                    "the database is unavailable; retry later",
                )
            }
            e @ (StoreError::Database(_) | StoreError::Config(_) | StoreError::Corrupt(_)) => {
                RestError::internal(&DisplayChain(&e))
            }
        }
    }
}

/// A refusal of a write rule, as the caller sees it.
impl From<Refusal> for RestError {
    fn from(refusal: Refusal) -> RestError {
        let issues: Vec<Issue> = refusal
            .issues
            .into_iter()
            .map(|i| Issue {
                severity: if i.code == IssueType::Informational.code() {
                    IssueSeverity::Information
                } else {
                    IssueSeverity::Error
                },
                code: IssueType::from_code(&i.code).unwrap_or(IssueType::Processing),
                diagnostics: i.message,
                expression: i.location.into_iter().collect(),
            })
            .collect();
        let error = match refusal.kind {
            RefusalKind::Malformed => RestError::malformed(refusal.message, Vec::new()),
            RefusalKind::Invalid => RestError::unprocessable(refusal.message),
            RefusalKind::Forbidden => RestError::forbidden(refusal.message),
            RefusalKind::NotSupported => {
                RestError::not_supported(ErrorKind::Unprocessable, refusal.message)
            }
            // A corrupt stored body or a failed hash is the server's fault:
            // logged, and a 500 for the caller.
            RefusalKind::Internal => return RestError::internal(&refusal.message),
        };
        let error = RestError { issues, ..error };
        match refusal.location {
            Some(at) => error.at(at),
            None => error,
        }
    }
}

/// A rule a write hook enforces, on its way through the store: a server
/// error is `Internal` (its message stays in the log), a refused feature
/// `NotSupported`, anything else the caller's to fix (`Invalid`, 422).
impl From<RestError> for Refusal {
    fn from(e: RestError) -> Refusal {
        let kind = if e.kind.status() >= 500 {
            RefusalKind::Internal
        } else if e.kind == ErrorKind::Forbidden {
            RefusalKind::Forbidden
        } else if e.kind == ErrorKind::BadRequest && !e.issues.is_empty() {
            RefusalKind::Malformed
        } else if e.code == IssueType::NotSupported {
            RefusalKind::NotSupported
        } else {
            RefusalKind::Invalid
        };
        let issues = e
            .issues
            .into_iter()
            .map(|i| RefusalIssue {
                code: i.code.code().to_owned(),
                message: i.diagnostics,
                location: i.expression.into_iter().next(),
            })
            .collect();
        Refusal {
            kind,
            message: e.message,
            location: e.expression,
            issues,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kind_of(e: StoreError) -> ErrorKind {
        RestError::from(e).kind
    }

    #[test]
    fn store_errors_map_to_fhir_kinds() {
        let (t, i) = ("Patient".to_owned(), "a".to_owned());
        assert_eq!(
            kind_of(StoreError::NotFound {
                resource_type: t.clone(),
                id: i.clone()
            }),
            ErrorKind::NotFound
        );
        assert_eq!(
            kind_of(StoreError::Gone {
                resource_type: t.clone(),
                id: i.clone(),
                version_id: 2
            }),
            ErrorKind::Gone
        );
        assert_eq!(
            kind_of(StoreError::VersionConflict {
                resource_type: t.clone(),
                id: i.clone(),
                expected: 1,
                current: Some(2)
            }),
            ErrorKind::PreconditionFailed
        );
        assert_eq!(
            kind_of(StoreError::AlreadyExists {
                resource_type: t,
                id: i
            }),
            ErrorKind::Conflict
        );
        assert_eq!(kind_of(StoreError::Contention), ErrorKind::Conflict);
        assert_eq!(kind_of(StoreError::InvalidCursor), ErrorKind::BadRequest);
        assert_eq!(
            kind_of(StoreError::Unavailable(Box::new(std::io::Error::other(
                "closed"
            )))),
            ErrorKind::Unavailable
        );
        let rejected = StoreError::Rejected(RestError::unprocessable("nope").into());
        assert_eq!(kind_of(rejected), ErrorKind::Unprocessable);
        // A refusal that is the server's fault (e.g. a corrupt stored body) is a 500.
        let corrupt = StoreError::Rejected(Refusal::internal("stored body is not JSON"));
        let e = RestError::from(corrupt);
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(
            !e.message.contains("not JSON"),
            "the detail stays in the log"
        );
        let off = StoreError::Rejected(
            RestError::not_supported(ErrorKind::Unprocessable, "off")
                .at("Client.secret")
                .into(),
        );
        let e = RestError::from(off);
        assert_eq!(
            (e.kind, e.code),
            (ErrorKind::Unprocessable, IssueType::NotSupported)
        );
        assert_eq!(e.expression.as_deref(), Some("Client.secret"));
    }

    #[test]
    fn internal_errors_hide_their_detail() {
        let e = RestError::from(StoreError::Corrupt("secret table layout".into()));
        assert_eq!(e.kind, ErrorKind::Internal);
        assert!(!e.message.contains("secret table layout"));
    }

    #[test]
    fn every_kind_has_a_matching_status_line() {
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
            assert!(
                kind.status_text()
                    .starts_with(&format!("{} ", kind.status())),
                "{kind:?}"
            );
        }
    }
}
