//! OperationOutcome (R4 §2.37): the one body shape every fhirbox error uses.

use serde_json::{json, Value};

/// `OperationOutcome.issue.severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueSeverity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl IssueSeverity {
    pub fn code(self) -> &'static str {
        match self {
            IssueSeverity::Fatal => "fatal",
            IssueSeverity::Error => "error",
            IssueSeverity::Warning => "warning",
            IssueSeverity::Information => "information",
        }
    }
}

/// `OperationOutcome.issue.code`: the subset of the IssueType value set fhirbox emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Security,
    Login,
    Forbidden,
    NotSupported,
    Conflict,
    Duplicate,
    MultipleMatches,
    NotFound,
    Deleted,
    TooLong,
    CodeInvalid,
    BusinessRule,
    Exception,
    Transient,
    Informational,
    Processing,
}

impl IssueType {
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Structure => "structure",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::Invariant => "invariant",
            IssueType::Security => "security",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::NotSupported => "not-supported",
            IssueType::Conflict => "conflict",
            IssueType::Duplicate => "duplicate",
            IssueType::MultipleMatches => "multiple-matches",
            IssueType::NotFound => "not-found",
            IssueType::Deleted => "deleted",
            IssueType::TooLong => "too-long",
            IssueType::CodeInvalid => "code-invalid",
            IssueType::BusinessRule => "business-rule",
            IssueType::Exception => "exception",
            IssueType::Transient => "transient",
            IssueType::Informational => "informational",
            IssueType::Processing => "processing",
        }
    }

    /// The type whose `code()` is `code`.
    pub fn from_code(code: &str) -> Option<IssueType> {
        const ALL: &[IssueType] = &[
            IssueType::Invalid,
            IssueType::Structure,
            IssueType::Required,
            IssueType::Value,
            IssueType::Invariant,
            IssueType::Security,
            IssueType::Login,
            IssueType::Forbidden,
            IssueType::NotSupported,
            IssueType::Conflict,
            IssueType::Duplicate,
            IssueType::MultipleMatches,
            IssueType::NotFound,
            IssueType::Deleted,
            IssueType::TooLong,
            IssueType::CodeInvalid,
            IssueType::BusinessRule,
            IssueType::Exception,
            IssueType::Transient,
            IssueType::Informational,
            IssueType::Processing,
        ];
        ALL.iter().copied().find(|t| t.code() == code)
    }
}

/// One issue of an OperationOutcome.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: IssueSeverity,
    pub code: IssueType,
    pub diagnostics: String,
    /// FHIRPath-like locations of the problem (`Patient.id`, `Bundle.entry[2]`).
    pub expression: Vec<String>,
}

/// An OperationOutcome under construction.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OperationOutcome {
    pub issues: Vec<Issue>,
}

impl OperationOutcome {
    /// An outcome with a single issue.
    pub fn single(
        severity: IssueSeverity,
        code: IssueType,
        diagnostics: impl Into<String>,
    ) -> Self {
        OperationOutcome {
            issues: vec![Issue {
                severity,
                code,
                diagnostics: diagnostics.into(),
                expression: Vec::new(),
            }],
        }
    }

    /// Shorthand for one `error` issue.
    pub fn error(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self::single(IssueSeverity::Error, code, diagnostics)
    }

    /// Shorthand for one `information` issue.
    pub fn information(diagnostics: impl Into<String>) -> Self {
        Self::single(
            IssueSeverity::Information,
            IssueType::Informational,
            diagnostics,
        )
    }

    /// The outcome of a failure: its listed issues when there are any,
    /// otherwise one issue (`fatal` for the server's fault, else `error`)
    /// with the message at `expression`.
    pub fn of_error(
        server_fault: bool,
        code: IssueType,
        message: &str,
        expression: Option<&str>,
        issues: &[Issue],
    ) -> Self {
        if !issues.is_empty() {
            return OperationOutcome {
                issues: issues.to_vec(),
            };
        }
        let severity = if server_fault {
            IssueSeverity::Fatal
        } else {
            IssueSeverity::Error
        };
        let outcome = Self::single(severity, code, message);
        match expression {
            Some(at) => outcome.at(at),
            None => outcome,
        }
    }

    /// Attaches an expression (location) to the last issue.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        if let Some(issue) = self.issues.last_mut() {
            issue.expression.push(expression.into());
        }
        self
    }

    pub fn to_json(&self) -> Value {
        let issues: Vec<Value> = self
            .issues
            .iter()
            .map(|issue| {
                let mut v = json!({
                    "severity": issue.severity.code(),
                    "code": issue.code.code(),
                    "diagnostics": issue.diagnostics,
                });
                if !issue.expression.is_empty() {
                    v["expression"] = json!(issue.expression);
                }
                v
            })
            .collect();
        json!({"resourceType": "OperationOutcome", "issue": issues})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_issue_with_expression() {
        let oo = OperationOutcome::error(IssueType::Invalid, "id is malformed").at("Patient.id");
        let v = oo.to_json();
        assert_eq!(v["resourceType"], "OperationOutcome");
        assert_eq!(v["issue"][0]["severity"], "error");
        assert_eq!(v["issue"][0]["code"], "invalid");
        assert_eq!(v["issue"][0]["diagnostics"], "id is malformed");
        assert_eq!(v["issue"][0]["expression"][0], "Patient.id");
    }

    #[test]
    fn issue_types_round_trip_through_their_codes() {
        for code in [
            "invalid",
            "structure",
            "invariant",
            "code-invalid",
            "processing",
        ] {
            assert_eq!(IssueType::from_code(code).map(IssueType::code), Some(code));
        }
        assert_eq!(IssueType::from_code("nope"), None);
    }

    #[test]
    fn omits_empty_expression() {
        let v = OperationOutcome::information("ok").to_json();
        assert!(v["issue"][0].get("expression").is_none());
        assert_eq!(v["issue"][0]["code"], "informational");
    }
}
