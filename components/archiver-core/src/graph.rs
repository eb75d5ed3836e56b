//! Microsoft Graph (Exchange Online) as a destination, without I/O: the requests that log in,
//! find or create the folder, look a copy up, create it with its attachments, and what the
//! answers mean. Each rule names the documentation page it follows.
//!
//! - App-only login: OAuth 2.0 client credentials
//!   (<https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow>).
//! - A copy is a message created in the folder as a received item: the message flags and the
//!   delivery and submit times are extended properties, settable only at creation
//!   (<https://learn.microsoft.com/en-us/graph/api/user-post-messages>,
//!   <https://learn.microsoft.com/en-us/office/client-developer/outlook/mapi/pidtagmessageflags-canonical-property>).
//! - Custom headers must be named `x-...`
//!   (<https://learn.microsoft.com/en-us/graph/api/resources/internetmessageheader>); Exchange
//!   Online keeps at most five per message, so five carry the key facts and the whole evidence
//!   record ends the body.
//! - Attachments under 3 MB go in the create request while it stays under the 4 MB request
//!   limit, larger ones through an upload session of byte ranges
//!   (<https://learn.microsoft.com/en-us/graph/outlook-large-attachments>).

use chrono::{DateTime, Utc};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde_json::{Value, json};

use crate::email::{
    EmailOptions, body_text, clean_header_text, evidence_headers, message_id, participant_mailbox,
    subject,
};
use crate::resolve::MappingRules;
use crate::source::{AttachmentMeta, Message};
use crate::source_client::SourceRequest;

/// The scope of an app-only token: every application permission the app was granted.
pub const SCOPE: &str = "https://graph.microsoft.com/.default";
/// The largest request body Graph takes (a larger one answers 413).
pub const REQUEST_LIMIT: u64 = 4 * 1024 * 1024;
/// Attachments from this size on go through an upload session.
pub const INLINE_ATTACHMENT_LIMIT: u64 = 3 * 1024 * 1024;
/// One range of an upload session: at most 4 MB and a multiple of 320 KiB (the last excepted).
pub const UPLOAD_RANGE: u64 = 12 * 320 * 1024;
/// The largest attachment an upload session takes.
pub const ATTACHMENT_LIMIT: u64 = 150 * 1024 * 1024;
/// Custom `internetMessageHeaders` Exchange Online keeps per message.
pub const MAX_CUSTOM_HEADERS: usize = 5;
/// The evidence fields sent as headers; the body's evidence record holds every field.
const HEADER_FIELDS: [&str; MAX_CUSTOM_HEADERS] = [
    "X-Archive-Source-Id",
    "X-Archive-Connector",
    "X-Archive-Network",
    "X-Archive-Kind",
    "X-Archive-Record-SHA256",
];
/// A token is renewed this long before Graph would stop taking it.
const TOKEN_MARGIN_SECONDS: i64 = 300;

/// Characters escaped in a path segment or a query value.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn encode(text: &str) -> String {
    utf8_percent_encode(text, COMPONENT).to_string()
}

/// An OData string literal: quoted, a quote inside doubled.
fn odata_string(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// Where the tenant's Graph is and which app logs in.
#[derive(Debug, Clone)]
pub struct GraphSettings {
    /// `https://graph.microsoft.com`, or a local server in tests.
    pub graph_origin: String,
    /// `https://login.microsoftonline.com`.
    pub login_origin: String,
    pub tenant: String,
    pub client_id: String,
}

impl GraphSettings {
    fn user(&self, upn: &str) -> String {
        format!("{}/v1.0/users/{}", self.graph_origin, encode(upn))
    }

    /// The token request and its form body. The body holds the secret: never log it.
    pub fn token_request(&self, client_secret: &str) -> (SourceRequest, String) {
        let form = [
            ("client_id", self.client_id.as_str()),
            ("client_secret", client_secret),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
        ]
        .iter()
        .map(|(name, value)| format!("{name}={}", encode(value)))
        .collect::<Vec<_>>()
        .join("&");
        let request = SourceRequest {
            method: "POST",
            url: format!(
                "{}/{}/oauth2/v2.0/token",
                self.login_origin,
                encode(&self.tenant)
            ),
            headers: Vec::new(),
        };
        (request, form)
    }

    /// The top-level folder named `name` in `upn`'s mailbox.
    pub fn find_folder_url(&self, upn: &str, name: &str) -> String {
        let filter = format!("displayName eq {}", odata_string(name));
        format!(
            "{}/mailFolders?$filter={}&$select=id,displayName",
            self.user(upn),
            encode(&filter)
        )
    }

    /// Creating the top-level folder `name`: the URL and its JSON body.
    pub fn create_folder(&self, upn: &str, name: &str) -> (String, Vec<u8>) {
        let body = json!({ "displayName": name, "isHidden": false });
        (
            format!("{}/mailFolders", self.user(upn)),
            body.to_string().into_bytes(),
        )
    }

    /// The messages of the folder whose `internetMessageId` is `<id>`.
    pub fn find_message_url(&self, upn: &str, folder: &str, id: &str) -> String {
        let filter = format!("internetMessageId eq {}", odata_string(&format!("<{id}>")));
        format!(
            "{}/mailFolders/{}/messages?$filter={}&$select=id,hasAttachments",
            self.user(upn),
            encode(folder),
            encode(&filter)
        )
    }

    /// Where messages are created in the folder.
    pub fn create_message_url(&self, upn: &str, folder: &str) -> String {
        format!("{}/mailFolders/{}/messages", self.user(upn), encode(folder))
    }

    /// One message (to delete it), or with `tail` one of its collections or actions.
    pub fn message_url(&self, upn: &str, message: &str, tail: &str) -> String {
        format!("{}/messages/{}{tail}", self.user(upn), encode(message))
    }
}

/// Requests one `$batch` holds at most
/// (<https://learn.microsoft.com/en-us/graph/json-batching>).
pub const BATCH_LIMIT: usize = 20;

/// One request of a `$batch`: its id, and where it goes (an absolute URL of this Graph).
#[derive(Debug, Clone)]
pub struct BatchItem {
    pub id: String,
    pub method: &'static str,
    pub url: String,
    pub body: Option<Value>,
}

/// What one request of a `$batch` answered.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchAnswer {
    pub status: u16,
    pub retry_after: Option<u64>,
    pub body: Value,
}

impl GraphSettings {
    /// Where `$batch` requests go.
    pub fn batch_url(&self) -> String {
        format!("{}/v1.0/$batch", self.graph_origin)
    }

    /// The JSON body of a `$batch`: each request's URL relative to the version, as the
    /// service takes it.
    pub fn batch_body(&self, items: &[BatchItem]) -> Value {
        let root = format!("{}/v1.0", self.graph_origin);
        let requests: Vec<Value> = items
            .iter()
            .map(|item| {
                let url = item.url.strip_prefix(&root).unwrap_or(&item.url);
                let mut request = json!({ "id": item.id, "method": item.method, "url": url });
                if let Some(body) = &item.body {
                    request["body"] = body.clone();
                    request["headers"] = json!({ "Content-Type": "application/json" });
                }
                request
            })
            .collect();
        json!({ "requests": requests })
    }
}

/// A `$batch` answer: each request's answer by its id; they come in any order.
pub fn parse_batch(body: &[u8]) -> Result<std::collections::BTreeMap<String, BatchAnswer>, String> {
    let answer: Value = serde_json::from_slice(body)
        .map_err(|e| format!("Graph's batch answer is not JSON: {e}"))?;
    let responses = answer["responses"]
        .as_array()
        .ok_or("Graph's batch answer has no responses")?;
    let mut answers = std::collections::BTreeMap::new();
    for response in responses {
        let Some(id) = response["id"].as_str() else {
            continue;
        };
        let headers = response["headers"].as_object();
        let retry_after = headers
            .and_then(|h| {
                h.iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
            })
            .and_then(|(_, v)| {
                v.as_str()
                    .and_then(|v| v.trim().parse().ok())
                    .or(v.as_u64())
            });
        answers.insert(
            id.to_string(),
            BatchAnswer {
                status: response["status"].as_u64().unwrap_or(0) as u16,
                retry_after,
                body: response["body"].clone(),
            },
        );
    }
    Ok(answers)
}

/// An access token and when to stop using it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AccessToken {
    pub value: String,
    pub renew_at: DateTime<Utc>,
}

impl AccessToken {
    pub fn is_fresh(&self, now: DateTime<Utc>) -> bool {
        now < self.renew_at
    }

    pub fn bearer(&self) -> String {
        format!("Bearer {}", self.value)
    }
}

/// The application permissions an app-only access token grants (its `roles` claim), when the
/// token is a JWT whose payload can be read; `Some(empty)` when it grants none.
pub fn token_roles(token: &str) -> Option<Vec<String>> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    Some(
        claims["roles"]
            .as_array()
            .map(|roles| {
                roles
                    .iter()
                    .filter_map(|r| r.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// Why the app could not log in, in words an admin can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    #[error(
        "Microsoft Entra ID refused the client secret (AADSTS7000215): set graph_client_secret to the secret's value (not its id)"
    )]
    WrongSecret,
    #[error(
        "the client secret has expired (AADSTS7000222): create a new one for the app and set graph_client_secret"
    )]
    SecretExpired,
    #[error(
        "the tenant has no application with this client id (AADSTS700016): check graph_client_id and graph_tenant"
    )]
    UnknownApplication,
    #[error("there is no tenant {0:?} (AADSTS90002): check graph_tenant")]
    UnknownTenant(String),
    #[error("the login service is unavailable ({0}); try again later")]
    Unavailable(u16),
    #[error("the login service refused the app ({status}): {detail}")]
    Refused { status: u16, detail: String },
    #[error("the login service's answer is not a token: {0}")]
    BadAnswer(String),
    #[error("the login service could not be reached; check graph_login_origin")]
    Unreachable,
}

impl LoginError {
    /// Whether waiting can help (rather than an admin fixing the settings).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            LoginError::Unavailable(_) | LoginError::BadAnswer(_) | LoginError::Unreachable
        )
    }
}

/// Reads the token endpoint's answer.
pub fn parse_token(
    status: u16,
    body: &[u8],
    tenant: &str,
    now: DateTime<Utc>,
) -> Result<AccessToken, LoginError> {
    let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    if status == 200 {
        let value = answer["access_token"].as_str().unwrap_or_default();
        let lifetime = match &answer["expires_in"] {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        };
        return match (value.is_empty(), lifetime) {
            (false, Some(seconds)) if seconds > 0 => Ok(AccessToken {
                value: value.to_string(),
                renew_at: now
                    + chrono::Duration::seconds((seconds - TOKEN_MARGIN_SECONDS).max(seconds / 2)),
            }),
            _ => Err(LoginError::BadAnswer(
                "no access_token with an expires_in".into(),
            )),
        };
    }
    if status >= 500 || status == 429 {
        return Err(LoginError::Unavailable(status));
    }
    let codes: Vec<i64> = answer["error_codes"]
        .as_array()
        .map(|codes| codes.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    let description = answer["error_description"].as_str().unwrap_or_default();
    let has = |code: i64| codes.contains(&code) || description.contains(&format!("AADSTS{code}:"));
    Err(if has(7_000_215) {
        LoginError::WrongSecret
    } else if has(7_000_222) {
        LoginError::SecretExpired
    } else if has(700_016) {
        LoginError::UnknownApplication
    } else if has(90_002) {
        LoginError::UnknownTenant(tenant.to_string())
    } else {
        // The first line only: later lines carry trace and correlation ids.
        let first = description.lines().next().unwrap_or("no description");
        LoginError::Refused {
            status,
            detail: clean_header_text(first),
        }
    })
}

/// An error answer of Graph: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl GraphError {
    pub fn of(status: u16, body: &[u8]) -> GraphError {
        let answer: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        GraphError {
            status,
            code: answer["error"]["code"].as_str().unwrap_or_default().into(),
            message: clean_header_text(answer["error"]["message"].as_str().unwrap_or_default()),
        }
    }

    fn describe(&self) -> String {
        match (self.code.is_empty(), self.message.is_empty()) {
            (true, _) => format!("{}", self.status),
            (false, true) => format!("{} {}", self.status, self.code),
            (false, false) => format!("{} {}: {}", self.status, self.code, self.message),
        }
    }

    /// What the error means for the copy being made
    /// (<https://learn.microsoft.com/en-us/graph/errors>,
    /// <https://learn.microsoft.com/en-us/graph/throttling>).
    pub fn meaning(&self) -> Failure {
        let detail = self.describe();
        match (self.status, self.code.as_str()) {
            (401, _) => Failure::TokenRejected,
            (_, "ErrorMessageSizeExceeded") => Failure::TooLarge(detail),
            (413, _) => Failure::TooLarge(detail),
            (404, "ErrorItemNotFound") => Failure::FolderGone(detail),
            (404, _) | (_, "ErrorInvalidUser" | "MailboxNotEnabledForRESTAPI") => {
                Failure::NoSuchMailbox(detail)
            }
            (403, _) => Failure::Forbidden(detail),
            (429 | 500..=599, _) => Failure::Transient(detail),
            _ => Failure::Refused(detail),
        }
    }
}

/// What a failed Graph call means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The token expired or was revoked: log in again, then retry once.
    TokenRejected,
    /// The tenant has no such user, or the user no Exchange Online mailbox.
    NoSuchMailbox(String),
    /// The folder id remembered is gone: look the folder up again.
    FolderGone(String),
    /// Consent or a permission is missing, or the app's scope leaves this mailbox out: an
    /// admin can fix it, so the copy waits staged.
    Forbidden(String),
    /// Above the tenant's maximum message size, or the request limit.
    TooLarge(String),
    /// Throttled or unavailable: worth a retry.
    Transient(String),
    /// Refused for good, with the service's reason.
    Refused(String),
}

impl Failure {
    /// What the service said.
    pub fn detail(&self) -> &str {
        match self {
            Failure::TokenRejected => "the token was refused (401)",
            Failure::NoSuchMailbox(d)
            | Failure::FolderGone(d)
            | Failure::Forbidden(d)
            | Failure::TooLarge(d)
            | Failure::Transient(d)
            | Failure::Refused(d) => d,
        }
    }
}

/// The id in a created folder's, message's or attachment's answer.
pub fn parse_id(body: &[u8]) -> Result<String, String> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| format!("Graph's answer is not JSON: {e}"))?;
    answer["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| "Graph's answer has no id".to_string())
}

/// The ids of a collection answer (`{"value": [{"id": ...}]}`), and whether each has attachments.
pub fn parse_ids(body: &[u8]) -> Result<Vec<(String, bool)>, String> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| format!("Graph's answer is not JSON: {e}"))?;
    let list = answer["value"]
        .as_array()
        .ok_or("Graph's answer has no value list")?;
    Ok(list
        .iter()
        .filter_map(|entry| {
            let id = entry["id"].as_str()?;
            Some((id.to_string(), entry["hasAttachments"] == true))
        })
        .collect())
}

/// The folder named `name` in a folder list answer. Exchange compares folder names without
/// regard to case, as the `$filter` did.
pub fn parse_folder(body: &[u8], name: &str) -> Result<Option<String>, String> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| format!("Graph's answer is not JSON: {e}"))?;
    let list = answer["value"]
        .as_array()
        .ok_or("Graph's answer has no value list")?;
    Ok(list
        .iter()
        .find(|f| {
            f["displayName"]
                .as_str()
                .is_some_and(|n| n.to_lowercase() == name.to_lowercase())
        })
        .and_then(|f| f["id"].as_str())
        .map(str::to_string))
}

/// The names of a message's attachments (`GET .../messages/{id}/attachments?$select=name`).
pub fn parse_attachment_names(body: &[u8]) -> Result<Vec<String>, String> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| format!("Graph's answer is not JSON: {e}"))?;
    let list = answer["value"]
        .as_array()
        .ok_or("Graph's answer has no value list")?;
    Ok(list
        .iter()
        .map(|a| a["name"].as_str().unwrap_or_default().to_string())
        .collect())
}

/// The name an attachment gets in the mailbox.
pub fn attachment_name(meta: &AttachmentMeta) -> String {
    match clean_header_text(&meta.filename) {
        name if name.is_empty() => format!("attachment-{}", clean_header_text(&meta.id)),
        name => name,
    }
}

/// Whether every attachment goes in the create request: each under 3 MB, and the request
/// (base64 grows bytes by a third) under the 4 MB limit with room for the rest.
pub fn attachments_inline(message: &Message) -> bool {
    let encoded: u64 = message
        .attachments
        .iter()
        .map(|a| a.size.div_ceil(3) * 4)
        .sum();
    let text = (message.body.len() as u64) * 6 + 64 * 1024;
    message
        .attachments
        .iter()
        .all(|a| a.size < INLINE_ATTACHMENT_LIMIT)
        && encoded + text < REQUEST_LIMIT
}

/// The create request's body: a received, read message in the folder, dated `sent_at`, its
/// evidence in five headers and whole at the end of the body. `attachments` are the bytes
/// of each attachment when they go inline (see [`attachments_inline`]), else empty.
pub fn message_json(
    message: &Message,
    rules: &MappingRules<'_>,
    options: &EmailOptions<'_>,
    attachments: &[Vec<u8>],
) -> Value {
    use base64::Engine;
    let recipient = |p| {
        let (name, address) = participant_mailbox(p, rules, message, options);
        json!({ "emailAddress": { "name": name, "address": address } })
    };
    let evidence = evidence_headers(message, options);
    let headers: Vec<Value> = HEADER_FIELDS
        .iter()
        .filter_map(|field| {
            let value = evidence.iter().find(|(name, _)| name == field)?;
            Some(json!({ "name": field.to_ascii_lowercase(), "value": value.1 }))
        })
        .collect();
    let mut record = String::from("\r\n\r\n-- \r\nArchive evidence\r\n");
    for (name, value) in &evidence {
        record.push_str(&format!("{name}: {value}\r\n"));
    }
    let time = message
        .sent_at
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut body = json!({
        "subject": subject(message),
        "body": { "contentType": "text", "content": body_text(message) + &record },
        "from": recipient(&message.from),
        "toRecipients": message.to.iter().map(recipient).collect::<Vec<_>>(),
        "internetMessageId": format!(
            "<{}>",
            message_id(options.connector_id, &message.id, options.address_domain)
        ),
        "internetMessageHeaders": headers,
        "isRead": true,
        "singleValueExtendedProperties": [
            // PidTagMessageFlags: MSGFLAG_READ, and not MSGFLAG_UNSENT: a received item.
            { "id": "Integer 0x0E07", "value": "1" },
            // PidTagMessageDeliveryTime and PidTagClientSubmitTime.
            { "id": "SystemTime 0x0E06", "value": time },
            { "id": "SystemTime 0x0039", "value": time },
        ],
    });
    if !attachments.is_empty() {
        body["attachments"] = message
            .attachments
            .iter()
            .zip(attachments)
            .map(|(meta, bytes)| {
                json!({
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    "name": attachment_name(meta),
                    "contentType": meta.content_type,
                    "contentBytes": base64::engine::general_purpose::STANDARD.encode(bytes),
                })
            })
            .collect();
    }
    body
}

/// The body of `POST .../attachments/createUploadSession` for one attachment.
pub fn upload_session_json(meta: &AttachmentMeta) -> Value {
    json!({ "AttachmentItem": {
        "attachmentType": "file",
        "name": attachment_name(meta),
        "size": meta.size,
        "contentType": meta.content_type,
    } })
}

/// The upload URL of a new upload session.
pub fn parse_upload_session(body: &[u8]) -> Result<String, String> {
    let answer: Value =
        serde_json::from_slice(body).map_err(|e| format!("Graph's answer is not JSON: {e}"))?;
    answer["uploadUrl"]
        .as_str()
        .filter(|url| url.starts_with("https://") || url.starts_with("http://"))
        .map(str::to_string)
        .ok_or_else(|| "the upload session has no uploadUrl".into())
}

/// The byte ranges an attachment of `size` bytes is uploaded in, in order.
pub fn upload_ranges(size: u64) -> Vec<std::ops::Range<u64>> {
    (0..size.div_ceil(UPLOAD_RANGE))
        .map(|n| n * UPLOAD_RANGE..((n + 1) * UPLOAD_RANGE).min(size))
        .collect()
}

/// The `Content-Range` of one range of an upload.
pub fn content_range(range: &std::ops::Range<u64>, total: u64) -> String {
    format!("bytes {}-{}/{total}", range.start, range.end - 1)
}

/// What an admin is told when a copy is above the tenant's message size limit.
pub fn too_large_reason(size: u64, detail: &str) -> String {
    format!(
        "the message with its attachments is {:.1} MB, above the tenant's maximum message size \
         ({detail}); an Exchange admin can raise the limit up to 150 MB (Set-Mailbox \
         -MaxReceiveSize, or Set-MailboxPlan for new mailboxes) so that larger texts are \
         archived; this one stays in the archive source",
        size as f64 / 1_000_000.0
    )
}

/// The `Retry-After` of a throttled answer, in seconds.
pub fn retry_after(value: Option<&str>) -> Option<u64> {
    value?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> GraphSettings {
        GraphSettings {
            graph_origin: "https://graph.microsoft.com".into(),
            login_origin: "https://login.microsoftonline.com".into(),
            tenant: "contoso.onmicrosoft.com".into(),
            client_id: "app-1".into(),
        }
    }

    #[test]
    fn the_folder_filter_quotes_and_encodes_the_name() {
        let url = settings().find_folder_url("a.b@contoso.com", "AT&T SMS/MMS Network's Archiver");
        assert_eq!(
            url,
            "https://graph.microsoft.com/v1.0/users/a.b%40contoso.com/mailFolders?$filter=\
             displayName%20eq%20%27AT%26T%20SMS%2FMMS%20Network%27%27s%20Archiver%27\
             &$select=id,displayName"
        );
    }

    #[test]
    fn the_token_request_encodes_the_secret_in_the_form() {
        let (request, form) = settings().token_request("a+b/c=");
        assert_eq!(
            request.url,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert!(form.contains("client_secret=a%2Bb%2Fc%3D"), "{form}");
        assert!(form.contains("grant_type=client_credentials"));
        assert!(form.contains("scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"));
    }

    #[test]
    fn login_refusals_say_what_to_fix() {
        let now: DateTime<Utc> = "2026-12-01T09:00:00Z".parse().unwrap();
        let wrong = br#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided.","error_codes":[7000215]}"#;
        assert_eq!(
            parse_token(401, wrong, "t", now),
            Err(LoginError::WrongSecret)
        );
        let tenant = br#"{"error":"invalid_request","error_description":"AADSTS90002: Tenant 'x' not found.","error_codes":[90002]}"#;
        assert_eq!(
            parse_token(400, tenant, "x", now),
            Err(LoginError::UnknownTenant("x".into()))
        );
        assert_eq!(
            parse_token(503, b"", "t", now),
            Err(LoginError::Unavailable(503))
        );
        let token = parse_token(
            200,
            br#"{"token_type":"Bearer","expires_in":3599,"access_token":"tok"}"#,
            "t",
            now,
        )
        .unwrap();
        assert!(token.is_fresh(now + chrono::Duration::minutes(50)));
        assert!(!token.is_fresh(now + chrono::Duration::minutes(56)));
    }

    #[test]
    fn a_tokens_roles_are_read_from_its_payload() {
        use base64::Engine;
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(br#"{"aud":"https://graph.microsoft.com","roles":["Mail.ReadWrite"]}"#);
        let token = format!("eyJ0eXAiOiJKV1QifQ.{payload}.signature");
        assert_eq!(
            token_roles(&token),
            Some(vec!["Mail.ReadWrite".to_string()])
        );
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"aud":"x"}"#);
        assert_eq!(token_roles(&format!("h.{payload}.s")), Some(vec![]));
        assert_eq!(token_roles("opaque"), None);
    }

    #[test]
    fn a_batch_names_each_request_relative_to_the_version_and_its_answers_by_id() {
        let settings = settings();
        let url = settings.create_message_url("a@x", "f1");
        let body = settings.batch_body(&[BatchItem {
            id: "7".into(),
            method: "POST",
            url,
            body: Some(json!({ "subject": "s" })),
        }]);
        assert_eq!(
            body["requests"][0]["url"],
            "/users/a%40x/mailFolders/f1/messages"
        );
        assert_eq!(
            body["requests"][0]["headers"]["Content-Type"],
            "application/json"
        );
        let answers = parse_batch(
            br#"{"responses":[{"id":"2","status":429,"headers":{"Retry-After":"3"},"body":{}},
                {"id":"1","status":201,"body":{"id":"m"}}]}"#,
        )
        .unwrap();
        assert_eq!(answers["1"].status, 201);
        assert_eq!(answers["2"].retry_after, Some(3));
    }

    #[test]
    fn errors_mean_what_the_service_says() {
        let of = |status, code: &str| {
            GraphError::of(
                status,
                json!({"error": {"code": code, "message": "m"}})
                    .to_string()
                    .as_bytes(),
            )
            .meaning()
        };
        assert!(matches!(
            of(404, "ErrorInvalidUser"),
            Failure::NoSuchMailbox(_)
        ));
        assert!(matches!(
            of(404, "ResourceNotFound"),
            Failure::NoSuchMailbox(_)
        ));
        assert!(matches!(
            of(404, "ErrorItemNotFound"),
            Failure::FolderGone(_)
        ));
        assert!(matches!(
            of(400, "ErrorMessageSizeExceeded"),
            Failure::TooLarge(_)
        ));
        assert_eq!(
            of(401, "InvalidAuthenticationToken"),
            Failure::TokenRejected
        );
        assert!(matches!(
            of(403, "ErrorAccessDenied"),
            Failure::Forbidden(_)
        ));
        assert!(matches!(
            of(429, "ApplicationThrottled"),
            Failure::Transient(_)
        ));
        assert!(matches!(
            of(400, "ErrorInvalidProperty"),
            Failure::Refused(_)
        ));
    }

    #[test]
    fn a_copy_is_a_received_item_dated_when_sent_with_five_headers_and_the_whole_record() {
        use crate::mapping::MappingTable;
        use crate::testing::{message, sms_record};
        let table = MappingTable::default();
        let rules = MappingRules {
            table: &table,
            automatic_mapping: true,
        };
        let options = EmailOptions {
            connector_id: "att-main",
            network: "AT&T",
            address_domain: "sms.archive.invalid",
        };
        let sms = message(&sms_record());
        let json = message_json(&sms, &rules, &options, &[]);
        let properties = json["singleValueExtendedProperties"].as_array().unwrap();
        let property = |id: &str| {
            properties
                .iter()
                .find(|p| p["id"] == id)
                .map(|p| p["value"].clone())
        };
        assert_eq!(property("Integer 0x0E07"), Some(json!("1")));
        assert_eq!(
            property("SystemTime 0x0E06"),
            Some(json!("2026-11-25T14:03:11Z"))
        );
        assert_eq!(
            property("SystemTime 0x0039"),
            Some(json!("2026-11-25T14:03:11Z"))
        );
        let headers = json["internetMessageHeaders"].as_array().unwrap();
        assert_eq!(headers.len(), MAX_CUSTOM_HEADERS);
        assert!(
            headers
                .iter()
                .all(|h| h["name"].as_str().unwrap().starts_with("x-"))
        );
        assert_eq!(headers[0]["value"], "m-7f3c9a10");
        let content = json["body"]["content"].as_str().unwrap();
        for (name, value) in evidence_headers(&sms, &options) {
            assert!(content.contains(&format!("{name}: {value}")), "{name}");
        }
        assert_eq!(
            json["from"]["emailAddress"]["address"],
            "alice@acme.example"
        );
        assert_eq!(
            json["toRecipients"][0]["emailAddress"]["address"],
            "13125550199@sms.archive.invalid"
        );
        assert!(json["internetMessageId"].as_str().unwrap().starts_with('<'));
        assert!(json.get("attachments").is_none());
    }

    #[test]
    fn upload_ranges_are_multiples_of_320_kib_under_4_mb() {
        let size = 12 * 1024 * 1024 + 5;
        let ranges = upload_ranges(size);
        assert_eq!(ranges.first().unwrap().start, 0);
        assert_eq!(ranges.last().unwrap().end, size);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for range in &ranges[..ranges.len() - 1] {
            let length = range.end - range.start;
            assert!(length <= 4 * 1024 * 1024 && length.is_multiple_of(320 * 1024));
        }
        assert_eq!(content_range(&(0..10), 10), "bytes 0-9/10");
    }
}
