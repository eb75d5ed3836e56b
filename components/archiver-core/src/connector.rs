//! Connectors: one carrier archive account feeding the organisation's mailboxes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The folder users see, unless a connector names another.
pub const DEFAULT_FOLDER: &str = "AT&T SMS/MMS Network Archiver";
const MAX_ID_LEN: usize = 64;
const MAX_TEXT_LEN: usize = 200;

/// What is wrong with a connector request; every variant is the caller's fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    #[error("connector id {0:?} must be 1 to 64 of a-z, 0-9 and -")]
    BadId(String),
    #[error("the request body is not valid: {0}")]
    BadBody(String),
    #[error("field `{field}` {problem}")]
    BadField {
        field: &'static str,
        problem: String,
    },
    #[error("field `password` is required when creating a connector")]
    PasswordRequired,
}

/// Checks a connector id from a URL path.
pub fn check_id(id: &str) -> Result<(), ConnectorError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(ConnectorError::BadId(id.chars().take(80).collect()))
    }
}

/// The body of `PUT /api/connectors/{id}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorInput {
    pub display_name: String,
    pub network: String,
    pub source_url: String,
    pub username: String,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub folder: Option<String>,
    pub automatic_mapping: bool,
    #[serde(default)]
    pub enabled: Option<bool>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("id", &self.id)
            .field("source_url", &self.source_url)
            .field("username", &self.username)
            .field("password_sealed", &"..")
            .finish_non_exhaustive()
    }
}

/// Parses and validates a connector body; the password is checked for presence, not kept here.
pub fn parse_input(body: &[u8]) -> Result<ConnectorInput, ConnectorError> {
    let input: ConnectorInput =
        serde_json::from_slice(body).map_err(|e| ConnectorError::BadBody(without_secrets(&e)))?;
    text_field("display_name", &input.display_name)?;
    text_field("network", &input.network)?;
    text_field("username", &input.username)?;
    if let Some(folder) = &input.folder {
        text_field("folder", folder)?;
    }
    if let Some(password) = &input.password
        && password.is_empty()
    {
        return Err(ConnectorError::BadField {
            field: "password",
            problem: "must not be empty".into(),
        });
    }
    source_base(&input.source_url)?;
    Ok(input)
}

/// Whether saving `input` over the stored `previous` needs the archive to confirm credentials:
/// a new connector, a new password, another username or another archive does. Anything else
/// (enabling, disabling, renaming, the folder, automatic mapping) changes nothing the archive
/// knows, so it is saved without asking it: an admin must be able to disable a connector while
/// its archive is down, which is when they most want to.
pub fn needs_credential_check(input: &ConnectorInput, previous: Option<&Connector>) -> bool {
    let Some(previous) = previous else {
        return true;
    };
    let same_archive = source_base(&input.source_url).is_ok_and(|base| base == previous.source_url);
    input.password.is_some() || input.username != previous.username || !same_archive
}

/// serde's messages may quote the offending value, which may be a password: keep the kind of
/// problem, field names and what was expected, never a value.
fn without_secrets(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let message = text.split(" at line ").next().unwrap_or_default();
    let reason = if message.starts_with("unknown field") || message.starts_with("missing field") {
        message
            .split(", expected")
            .next()
            .unwrap_or(message)
            .to_string()
    } else if error.classify() == serde_json::error::Category::Data {
        let kind = message.split(':').next().unwrap_or(message);
        match message.find("expected ") {
            Some(at) => format!("{kind}, {}", &message[at..]),
            None => kind.to_string(),
        }
    } else {
        message.to_string()
    };
    format!(
        "{reason} (line {}, column {})",
        error.line(),
        error.column()
    )
}

fn text_field(field: &'static str, value: &str) -> Result<(), ConnectorError> {
    let problem = if value.trim().is_empty() {
        "must not be empty"
    } else if value.chars().count() > MAX_TEXT_LEN {
        "is longer than 200 characters"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(ConnectorError::BadField {
        field,
        problem: problem.into(),
    })
}

/// The archive's base URL without a trailing slash: `https://...`, or `http://` on loopback.
pub fn source_base(url: &str) -> Result<String, ConnectorError> {
    let bad = |problem: &str| ConnectorError::BadField {
        field: "source_url",
        problem: problem.into(),
    };
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("must be an absolute URL"))?;
    let host = rest.split(['/', ':']).next().unwrap_or_default();
    if host.is_empty() || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("must be an absolute URL with a host"));
    }
    if rest.contains(['?', '#', '@']) {
        return Err(bad("must not have a query, fragment or user info"));
    }
    let loopback = matches!(host, "127.0.0.1" | "localhost" | "[::1]");
    match scheme {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(bad("must use https (plain http only on loopback)")),
    }
    Ok(url.trim_end_matches('/').to_string())
}

/// The origin (`scheme://host[:port]`) of a URL that passed [`source_base`].
pub fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(slash) => &url[..after_scheme + slash],
        None => url,
    }
}

/// A stored connector. The password is sealed (see [`crate::secrets`]) and never leaves the
/// store in a response or a log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connector {
    pub id: String,
    pub display_name: String,
    pub network: String,
    pub source_url: String,
    pub username: String,
    pub password_sealed: String,
    pub folder: String,
    pub automatic_mapping: bool,
    pub enabled: bool,
    /// From the archive's `GET /v1/account` when the credentials were checked.
    pub account_id: String,
    pub organization: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Connector {
    /// What the API shows: everything but the password.
    pub fn view(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "display_name": self.display_name,
            "network": self.network,
            "source_url": self.source_url,
            "username": self.username,
            "password_set": !self.password_sealed.is_empty(),
            "folder": self.folder,
            "automatic_mapping": self.automatic_mapping,
            "enabled": self.enabled,
            "account_id": self.account_id,
            "organization": self.organization,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(extra: &str) -> Vec<u8> {
        format!(
            r#"{{"display_name":"AT&T Network","network":"AT&T",
            "source_url":"https://archive.example.net/api","username":"att-admin",
            "automatic_mapping":true{extra}}}"#
        )
        .into_bytes()
    }

    fn stored() -> Connector {
        let at = DateTime::<Utc>::from_timestamp(1_700_000_000, 0).unwrap();
        Connector {
            id: "att-main".into(),
            display_name: "AT&T Network".into(),
            network: "AT&T".into(),
            source_url: "https://archive.example.net/api".into(),
            username: "att-admin".into(),
            password_sealed: "sealed".into(),
            folder: DEFAULT_FOLDER.into(),
            automatic_mapping: true,
            enabled: true,
            account_id: "acme".into(),
            organization: "Acme".into(),
            created_at: at,
            updated_at: at,
        }
    }

    #[test]
    fn only_a_change_of_credentials_or_archive_asks_the_archive() {
        let previous = stored();
        let unchanged = |extra: &str| parse_input(&body(extra)).unwrap();
        for extra in [
            r#","enabled":false"#,
            r#","enabled":true"#,
            r#","folder":"Texts""#,
            "",
        ] {
            assert!(
                !needs_credential_check(&unchanged(extra), Some(&previous)),
                "{extra}"
            );
        }
        // The same archive written with a trailing slash is the same archive.
        let slash = String::from_utf8(body(r#","enabled":false"#))
            .unwrap()
            .replace("/api\"", "/api/\"");
        assert!(!needs_credential_check(
            &parse_input(slash.as_bytes()).unwrap(),
            Some(&previous)
        ));
        assert!(needs_credential_check(&unchanged(""), None));
        assert!(needs_credential_check(
            &unchanged(r#","password":"new""#),
            Some(&previous)
        ));
        let other_user = String::from_utf8(body(""))
            .unwrap()
            .replace("att-admin", "att-other");
        assert!(needs_credential_check(
            &parse_input(other_user.as_bytes()).unwrap(),
            Some(&previous)
        ));
        let other_archive = String::from_utf8(body(""))
            .unwrap()
            .replace("archive.example.net/api", "archive.example.net/v2");
        assert!(needs_credential_check(
            &parse_input(other_archive.as_bytes()).unwrap(),
            Some(&previous)
        ));
    }

    #[test]
    fn ids_are_short_kebab_case() {
        assert!(check_id("att-main-01").is_ok());
        for bad in ["", "ATT", "a/b", "..", "a.b", "a_b", &"a".repeat(65)] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_a_full_body_and_applies_no_defaults_silently() {
        let input =
            parse_input(&body(r#","password":"p","folder":"Texts","enabled":false"#)).unwrap();
        assert_eq!(input.folder.as_deref(), Some("Texts"));
        assert_eq!(input.enabled, Some(false));
        let input = parse_input(&body("")).unwrap();
        assert_eq!(
            (input.password, input.folder, input.enabled),
            (None, None, None)
        );
    }

    #[test]
    fn rejects_unknown_fields_bad_types_and_bad_urls_without_echoing_secrets() {
        let error = parse_input(&body(r#","pasword":"hunter2""#))
            .unwrap_err()
            .to_string();
        assert!(error.contains("pasword"), "{error}");
        let error = parse_input(&body(r#","password":42"#))
            .unwrap_err()
            .to_string();
        assert!(error.contains("invalid type"), "{error}");
        let error = parse_input(br#"{"display_name": "x", "password": "hunter2"#)
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        for url in [
            "ftp://a.example",
            "http://archive.example.net",
            "https://",
            "https://a.example/?x=1",
            "https://u:p@a.example",
        ] {
            let input = String::from_utf8(body(""))
                .unwrap()
                .replace("https://archive.example.net/api", url);
            assert!(parse_input(input.as_bytes()).is_err(), "{url}");
        }
        let loopback = String::from_utf8(body("")).unwrap().replace(
            "https://archive.example.net/api",
            "http://127.0.0.1:8080/api/",
        );
        assert_eq!(
            parse_input(loopback.as_bytes()).unwrap().source_url,
            "http://127.0.0.1:8080/api/"
        );
        assert_eq!(
            source_base("http://127.0.0.1:8080/api/").unwrap(),
            "http://127.0.0.1:8080/api"
        );
        assert_eq!(origin("http://127.0.0.1:8080/api"), "http://127.0.0.1:8080");
        assert_eq!(
            origin("https://archive.example.net"),
            "https://archive.example.net"
        );
    }

    #[test]
    fn rejects_empty_or_control_text() {
        let input = String::from_utf8(body(""))
            .unwrap()
            .replace("AT&T Network", "");
        assert!(
            parse_input(input.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("display_name")
        );
        let input = String::from_utf8(body(""))
            .unwrap()
            .replace("att-admin", "att\\nadmin");
        assert!(
            parse_input(input.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("username")
        );
    }
}
