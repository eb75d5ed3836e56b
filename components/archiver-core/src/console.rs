//! The admin console's door: a session cookie in place of the bearer token, and the checks that
//! keep another site from acting with it.
//!
//! The cookie is sealed (XChaCha20-Poly1305 under the `staging_key`, bound to its purpose) and
//! holds its expiry, a per-session CSRF token and a digest of the admin token it was issued
//! for, so changing the admin token ends every session. The server keeps no session state:
//! every replica reads every cookie.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::api::ApiError;
use crate::secrets::{self, NONCE_BYTES, SecretKey};

/// The cookie's name.
pub const COOKIE_NAME: &str = "archiver_session";
/// How long a session lasts from sign-in.
pub const LIFETIME_SECONDS: i64 = 8 * 60 * 60;
/// The header a console request carries its session's CSRF token in (a form on another site
/// cannot set it).
pub const CSRF_HEADER: &str = "x-csrf-token";
/// What a sealed cookie is bound to, so no other sealed value of the app opens as a session.
const SEAL_OWNER: &str = "console-session";

/// A session as the cookie holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Seconds since the Unix epoch after which the cookie is refused.
    pub expires_at: i64,
    /// Sent back by the console on every state-changing request.
    pub csrf: String,
    /// The first bytes of SHA-256 of the admin token the session was opened with, in hex.
    admin: String,
}

impl Session {
    pub fn expires(&self) -> Option<DateTime<Utc>> {
        DateTime::from_timestamp(self.expires_at, 0)
    }
}

/// The body of `POST /api/session`: the admin token.
pub fn parse_sign_in(body: &[u8]) -> Result<String, ApiError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SignIn {
        token: String,
    }
    // serde's message could quote the value: the error names only the shape expected.
    let input: SignIn = serde_json::from_slice(body)
        .map_err(|_| ApiError::BadBody("expected {\"token\": \"...\"}".to_string()))?;
    Ok(input.token)
}

/// The body of `POST /api/source/check`: archive credentials to try, saving nothing.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceLogin {
    pub source_url: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for SourceLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLogin")
            .field("source_url", &self.source_url)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

pub fn parse_source_login(body: &[u8]) -> Result<SourceLogin, ApiError> {
    serde_json::from_slice(body).map_err(|_| {
        ApiError::BadBody(
            "expected {\"source_url\", \"username\", \"password\"}, all strings".to_string(),
        )
    })
}

/// Why a request is not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DoorError {
    #[error("missing or wrong bearer token, and no valid console session")]
    Unauthorized,
    #[error("cross-site request refused: {0}")]
    CrossSite(&'static str),
}

fn admin_digest(admin_token: &str) -> String {
    hex::encode(&Sha256::digest(admin_token.as_bytes())[..12])
}

/// Opens a session for `admin_token`: the cookie's value and the session it holds.
/// `nonce` and `csrf` are fresh random bytes drawn by the caller.
pub fn issue(
    key: &SecretKey,
    admin_token: &str,
    now: DateTime<Utc>,
    nonce: [u8; NONCE_BYTES],
    csrf: [u8; 16],
) -> (String, Session) {
    let session = Session {
        expires_at: now.timestamp() + LIFETIME_SECONDS,
        csrf: hex::encode(csrf),
        admin: admin_digest(admin_token),
    };
    let json = serde_json::to_vec(&session).unwrap_or_default();
    (secrets::seal(key, nonce, SEAL_OWNER, &json), session)
}

/// The session a cookie value holds, if it was sealed by this app for the current admin token
/// and has not expired.
pub fn verify(
    key: &SecretKey,
    admin_token: &str,
    cookie: &str,
    now: DateTime<Utc>,
) -> Option<Session> {
    let opened = secrets::open(key, SEAL_OWNER, cookie).ok()?;
    let session: Session = serde_json::from_slice(&opened).ok()?;
    let current = admin_digest(admin_token);
    let same_admin: bool = session.admin.as_bytes().ct_eq(current.as_bytes()).into();
    (same_admin && session.expires_at > now.timestamp()).then_some(session)
}

/// The value of the session cookie in a `Cookie` header.
pub fn cookie_value(cookie_header: &str) -> Option<&str> {
    cookie_header.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE_NAME && !value.is_empty()).then_some(value)
    })
}

/// Whether the app is reached on a loopback name, where a browser keeps a cookie without
/// `Secure` over plain HTTP; everywhere else the cookie is `Secure`.
pub fn is_loopback(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost") || name == "127.0.0.1" || name == "::1"
}

/// The `Set-Cookie` value that opens a session.
pub fn set_cookie(value: &str, secure: bool) -> String {
    format!(
        "{COOKIE_NAME}={value}; Path=/; Max-Age={LIFETIME_SECONDS}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that ends a session in the browser.
pub fn clear_cookie(secure: bool) -> String {
    format!(
        "{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

/// What a request to the API shows of itself at the door.
#[derive(Debug, Clone, Copy, Default)]
pub struct Knock<'a> {
    pub method: &'a str,
    pub authorization: Option<&'a str>,
    pub cookie: Option<&'a str>,
    pub csrf: Option<&'a str>,
    /// The `Origin` header, which browsers send with every cross-origin and every POST request.
    pub origin: Option<&'a str>,
    /// `Sec-Fetch-Site`, sent by current browsers.
    pub fetch_site: Option<&'a str>,
    /// The authority the request was sent to (`Host`).
    pub host: Option<&'a str>,
}

/// How a request was let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    Bearer,
    Session(Session),
}

/// Lets in a request with the admin bearer token (the API, as before), or with a valid session
/// cookie; a state-changing request on a cookie must also come from the console itself: its
/// session's CSRF token in [`CSRF_HEADER`], and no sign of another origin.
pub fn admit(
    knock: &Knock<'_>,
    key: &SecretKey,
    admin_token: &str,
    now: DateTime<Utc>,
) -> Result<Admitted, DoorError> {
    if secrets::bearer_matches(knock.authorization, admin_token) {
        return Ok(Admitted::Bearer);
    }
    let session = knock
        .cookie
        .and_then(cookie_value)
        .and_then(|value| verify(key, admin_token, value, now))
        .ok_or(DoorError::Unauthorized)?;
    let reads_only = matches!(knock.method, "GET" | "HEAD" | "OPTIONS");
    if !reads_only {
        check_same_origin(knock)?;
        let sent = knock.csrf.unwrap_or("");
        let matches: bool = sent.as_bytes().ct_eq(session.csrf.as_bytes()).into();
        if !matches {
            return Err(DoorError::CrossSite(
                "the console's CSRF token is missing or wrong",
            ));
        }
    }
    Ok(Admitted::Session(session))
}

/// Refuses a request a browser marked as coming from another origin. Used for sign-in too, so
/// another site cannot sign a browser in (login CSRF).
pub fn check_same_origin(knock: &Knock<'_>) -> Result<(), DoorError> {
    if let Some(site) = knock.fetch_site
        && !matches!(site, "same-origin" | "none")
    {
        return Err(DoorError::CrossSite(
            "the browser says it came from another site",
        ));
    }
    if let Some(origin) = knock.origin {
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let same = match (authority, knock.host) {
            (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
            _ => false,
        };
        if !same {
            return Err(DoorError::CrossSite("its Origin is not the console's"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        "11".repeat(32).parse().unwrap()
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000, 0).unwrap()
    }

    fn signed_in() -> (String, Session) {
        issue(&key(), "admin-token", now(), [7; NONCE_BYTES], [9; 16])
    }

    fn knock<'a>(method: &'a str, cookie: &'a str, csrf: Option<&'a str>) -> Knock<'a> {
        Knock {
            method,
            cookie: Some(cookie),
            csrf,
            host: Some("127.0.0.1:3000"),
            ..Knock::default()
        }
    }

    #[test]
    fn a_session_opens_until_it_expires_and_only_for_the_same_admin_token() {
        let (cookie, session) = signed_in();
        assert_eq!(
            verify(&key(), "admin-token", &cookie, now()),
            Some(session.clone())
        );
        let last_second = now() + chrono::Duration::seconds(LIFETIME_SECONDS - 1);
        assert!(verify(&key(), "admin-token", &cookie, last_second).is_some());
        let expired = now() + chrono::Duration::seconds(LIFETIME_SECONDS);
        assert_eq!(verify(&key(), "admin-token", &cookie, expired), None);
        assert_eq!(verify(&key(), "new-admin-token", &cookie, now()), None);
        let other: SecretKey = "22".repeat(32).parse().unwrap();
        assert_eq!(verify(&other, "admin-token", &cookie, now()), None);
        let mut tampered = cookie.clone().into_bytes();
        tampered[10] ^= 1;
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(verify(&key(), "admin-token", &tampered, now()), None);
        assert!(!cookie.contains("admin-token"));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_set_with_its_attributes() {
        let header = format!("theme=dark; {COOKIE_NAME}=abc+/=; other=1");
        assert_eq!(cookie_value(&header), Some("abc+/="));
        assert_eq!(cookie_value("theme=dark"), None);
        assert_eq!(cookie_value(&format!("{COOKIE_NAME}=")), None);
        let set = set_cookie("v", true);
        for attribute in [
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/",
            "Max-Age=28800",
        ] {
            assert!(set.contains(attribute), "{set} lacks {attribute}");
        }
        assert!(!set_cookie("v", false).contains("Secure"));
        assert!(clear_cookie(false).contains("Max-Age=0"));
    }

    #[test]
    fn sign_in_and_login_bodies_are_read_and_refused_without_quoting_them() {
        assert_eq!(parse_sign_in(br#"{"token":"t0k"}"#).unwrap(), "t0k");
        for bad in [&br#"{"token":12345}"#[..], br#"{"tokn":"x"}"#, b"token=x"] {
            let error = parse_sign_in(bad).unwrap_err();
            assert_eq!(error.status(), 400);
            assert!(!error.to_string().contains("12345"), "{error}");
        }
        let login = parse_source_login(
            br#"{"source_url":"http://a/api","username":"u","password":"p4ss"}"#,
        )
        .unwrap();
        assert_eq!(
            (login.username.as_str(), login.password.as_str()),
            ("u", "p4ss")
        );
        assert!(!format!("{login:?}").contains("p4ss"));
        let error = parse_source_login(br#"{"source_url":"x","username":"u","password":98765}"#)
            .unwrap_err();
        assert_eq!(error.status(), 400);
        assert!(!error.to_string().contains("98765"), "{error}");
    }

    #[test]
    fn only_loopback_names_go_without_secure() {
        for host in [
            "127.0.0.1:3000",
            "localhost",
            "LOCALHOST:80",
            "[::1]:3000",
            "127.0.0.1",
        ] {
            assert!(is_loopback(host), "{host}");
        }
        for host in [
            "archiver.example",
            "127.0.0.2:3000",
            "localhost.example:3000",
            "10.0.0.1",
        ] {
            assert!(!is_loopback(host), "{host}");
        }
    }

    #[test]
    fn the_bearer_token_or_a_valid_cookie_lets_a_read_in() {
        let (cookie, session) = signed_in();
        let header = format!("{COOKIE_NAME}={cookie}");
        let bearer = Knock {
            method: "POST",
            authorization: Some("Bearer admin-token"),
            ..Knock::default()
        };
        assert_eq!(
            admit(&bearer, &key(), "admin-token", now()),
            Ok(Admitted::Bearer)
        );
        assert_eq!(
            admit(&knock("GET", &header, None), &key(), "admin-token", now()),
            Ok(Admitted::Session(session))
        );
        assert_eq!(
            admit(
                &knock("GET", "theme=dark", None),
                &key(),
                "admin-token",
                now()
            ),
            Err(DoorError::Unauthorized)
        );
        assert_eq!(
            admit(&Knock::default(), &key(), "admin-token", now()),
            Err(DoorError::Unauthorized)
        );
    }

    #[test]
    fn a_change_on_a_cookie_needs_the_csrf_token_and_the_consoles_origin() {
        let (cookie, session) = signed_in();
        let header = format!("{COOKIE_NAME}={cookie}");
        let csrf = session.csrf.clone();
        let admitted = |knock: Knock<'_>| admit(&knock, &key(), "admin-token", now());
        assert!(admitted(knock("PUT", &header, Some(&csrf))).is_ok());
        assert!(matches!(
            admitted(knock("POST", &header, None)),
            Err(DoorError::CrossSite(_))
        ));
        assert!(matches!(
            admitted(knock("DELETE", &header, Some("0".repeat(32).as_str()))),
            Err(DoorError::CrossSite(_))
        ));
        let mut from_elsewhere = knock("POST", &header, Some(&csrf));
        from_elsewhere.origin = Some("http://127.0.0.1:8700");
        assert!(matches!(
            admitted(from_elsewhere),
            Err(DoorError::CrossSite(_))
        ));
        from_elsewhere.origin = Some("null");
        assert!(matches!(
            admitted(from_elsewhere),
            Err(DoorError::CrossSite(_))
        ));
        let mut same = knock("POST", &header, Some(&csrf));
        same.origin = Some("http://127.0.0.1:3000");
        same.fetch_site = Some("same-origin");
        assert!(admitted(same).is_ok());
        same.fetch_site = Some("same-site");
        assert!(matches!(admitted(same), Err(DoorError::CrossSite(_))));
    }
}
