//! The admin API's errors, each mapped once to an HTTP status and a JSON body.
//!
//! 4xx name the caller's problem precisely; 5xx say only that the server failed (the component
//! logs the details once, without secrets).

use crate::connector::ConnectorError;
use crate::mapping::MappingErrors;
use crate::runs::RunRequestError;
use crate::source_client::SourceError;
use crate::state::StoreError;

/// Largest JSON body the API reads.
pub const MAX_JSON_BYTES: usize = 64 * 1024;
/// Largest mapping file the API reads (about 100,000 rows).
pub const MAX_CSV_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or wrong bearer token")]
    Unauthorized,
    #[error("cross-site request refused: {0}")]
    CrossSite(&'static str),
    #[error("bad request body: {0}")]
    BadBody(String),
    #[error("no connector {0:?}")]
    NoSuchConnector(String),
    #[error("no run {0:?}")]
    NoSuchRun(String),
    #[error("no route for {0}")]
    NoRoute(String),
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("expected content type {expected}, got {got:?}")]
    UnsupportedMediaType { expected: &'static str, got: String },
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Connector(#[from] ConnectorError),
    #[error(transparent)]
    RunRequest(#[from] RunRequestError),
    #[error("the mapping file was rejected")]
    Mapping(MappingErrors),
    #[error("the archive did not accept the connector: {0}")]
    Source(SourceError),
    #[error("source_url must be on {allowed} (the source_origin variable allows only that origin)")]
    SourceNotAllowed { allowed: String },
    #[error("the request needs a password, and the connector has none stored")]
    NoStoredPassword,
    #[error(transparent)]
    Timer(#[from] crate::timer::TimerError),
    #[error("the runs of the timer event could not be started: {0}")]
    TimerNotStarted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("server configuration: {0}")]
    Config(String),
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Unauthorized => 401,
            ApiError::CrossSite(_) => 403,
            ApiError::BadBody(_) => 400,
            ApiError::NoSuchConnector(_) | ApiError::NoSuchRun(_) | ApiError::NoRoute(_) => 404,
            ApiError::MethodNotAllowed(_) => 405,
            ApiError::UnsupportedMediaType { .. } => 415,
            ApiError::TooLarge { .. } => 413,
            ApiError::Connector(ConnectorError::BadId(_) | ConnectorError::BadBody(_)) => 400,
            ApiError::RunRequest(RunRequestError::BadBody(_)) => 400,
            ApiError::Connector(_) | ApiError::RunRequest(_) | ApiError::Mapping(_) => 422,
            ApiError::SourceNotAllowed { .. } | ApiError::NoStoredPassword => 422,
            ApiError::Source(e) if e.is_callers_fault() => 422,
            ApiError::Source(_) => 502,
            ApiError::Timer(_) => 400,
            ApiError::Store(_) | ApiError::Config(_) | ApiError::TimerNotStarted(_) => 500,
        }
    }

    /// The JSON body: the message for 4xx (and the archive's state for 502), a generic one for
    /// 500; mapping rejections list every bad row with line and column.
    pub fn body(&self) -> serde_json::Value {
        let status = self.status();
        let message = if status >= 500 && status != 502 {
            "internal error; the details are in the server log".to_string()
        } else {
            self.to_string()
        };
        let mut body = serde_json::json!({ "error": message });
        if let ApiError::Mapping(errors) = self {
            body["rows"] = serde_json::to_value(&errors.0).unwrap_or_default();
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::RowError;

    #[test]
    fn client_errors_are_precise_and_server_errors_generic() {
        let mapping = ApiError::Mapping(MappingErrors(vec![RowError {
            line: 3,
            column: 2,
            reason: "bad".into(),
        }]));
        assert_eq!(mapping.status(), 422);
        assert_eq!(mapping.body()["rows"][0]["line"], 3);
        let store = ApiError::Store(StoreError("disk full at /var/secret".into()));
        assert_eq!(store.status(), 500);
        assert!(!store.body().to_string().contains("disk full"));
        assert_eq!(ApiError::Source(SourceError::BadCredentials).status(), 422);
        assert_eq!(
            ApiError::Source(SourceError::Unavailable(503)).status(),
            502
        );
        assert_eq!(
            ApiError::Connector(ConnectorError::BadId("..".into())).status(),
            400
        );
        assert_eq!(ApiError::TooLarge { limit: 1 }.status(), 413);
    }
}
