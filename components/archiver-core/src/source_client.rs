//! Requests to the carrier archive, built and read without doing I/O: the component sends them.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::source::{Account, parse_account};

/// An HTTP request for the component to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRequest {
    pub method: &'static str,
    pub url: String,
    /// Header name and value; the `Authorization` value holds the password: never log it.
    pub headers: Vec<(&'static str, String)>,
}

/// Why the archive did not confirm the account.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("the archive refused the username or password (401)")]
    BadCredentials,
    #[error("the archive account may not read this organisation (403)")]
    Forbidden,
    #[error("the archive has no API at this URL ({0})")]
    NotFound(u16),
    #[error("the archive is unavailable ({0}); try again later")]
    Unavailable(u16),
    #[error("the archive answered with unexpected status {0}")]
    UnexpectedStatus(u16),
    #[error("the archive's answer is not a valid account: {0}")]
    BadAnswer(String),
    #[error("the archive could not be reached: {0}")]
    Unreachable(String),
}

impl SourceError {
    /// Whether the caller can fix it (credentials, URL) rather than wait for the archive.
    pub fn is_callers_fault(&self) -> bool {
        matches!(
            self,
            SourceError::BadCredentials | SourceError::Forbidden | SourceError::NotFound(_)
        )
    }
}

/// The `Authorization` value of HTTP Basic authentication; it holds the password: never log it.
pub fn basic_auth(username: &str, password: &str) -> String {
    format!("Basic {}", BASE64.encode(format!("{username}:{password}")))
}

/// `GET {base}/v1/account` with the archive account's credentials.
pub fn account_request(base: &str, username: &str, password: &str) -> SourceRequest {
    SourceRequest {
        method: "GET",
        url: format!("{}/v1/account", base.trim_end_matches('/')),
        headers: vec![
            ("authorization", basic_auth(username, password)),
            ("accept", "application/json".into()),
        ],
    }
}

/// Reads the archive's answer to [`account_request`].
pub fn read_account_response(status: u16, body: &[u8]) -> Result<Account, SourceError> {
    match status {
        200 => parse_account(body).map_err(|e| SourceError::BadAnswer(e.to_string())),
        401 => Err(SourceError::BadCredentials),
        403 => Err(SourceError::Forbidden),
        404 | 405 => Err(SourceError::NotFound(status)),
        429 | 500..=599 => Err(SourceError::Unavailable(status)),
        other => Err(SourceError::UnexpectedStatus(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_basic_auth_account_request() {
        let request = account_request("https://archive.example.net/api/", "att-admin", "p:w");
        assert_eq!(request.url, "https://archive.example.net/api/v1/account");
        let auth = &request.headers[0].1;
        let decoded = BASE64.decode(auth.strip_prefix("Basic ").unwrap()).unwrap();
        assert_eq!(decoded, b"att-admin:p:w");
    }

    #[test]
    fn reads_each_kind_of_answer() {
        let ok = br#"{"account_id":"a","organization":"Acme","network":"AT&T"}"#;
        assert_eq!(read_account_response(200, ok).unwrap().organization, "Acme");
        assert_eq!(
            read_account_response(401, b""),
            Err(SourceError::BadCredentials)
        );
        assert_eq!(read_account_response(403, b""), Err(SourceError::Forbidden));
        assert_eq!(
            read_account_response(503, b""),
            Err(SourceError::Unavailable(503))
        );
        assert!(matches!(
            read_account_response(200, b"<html>"),
            Err(SourceError::BadAnswer(_))
        ));
        assert!(SourceError::BadCredentials.is_callers_fault());
        assert!(!SourceError::Unavailable(503).is_callers_fault());
    }
}
