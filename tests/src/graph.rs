//! Microsoft Graph and its login service as Exchange Online answers them, on loopback: a
//! contract server that enforces the rules the service documents (each with its page) and
//! keeps what it stores readable by the tests. Upload sessions are served on a second origin,
//! as Exchange serves them on `outlook.office.com`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use archiver_core::digest::sha256_hex;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use percent_encoding::percent_decode_str;
use serde_json::{Value, json};
// The upload session's running digest is `sha2`'s own hasher rather than the product's
// `StreamingSha256`, so the server checks what it receives independently of the code under test.
use sha2::{Digest, Sha256};

/// The largest request body (<https://learn.microsoft.com/en-us/graph/outlook-large-attachments>:
/// a request over 4 MB fails; larger attachments go through an upload session).
const REQUEST_LIMIT: usize = 4 * 1024 * 1024;
/// An attachment added in one request is under 3 MB (same page).
const INLINE_LIMIT: u64 = 3 * 1024 * 1024;
/// An upload session takes files up to 150 MB (same page).
const SESSION_LIMIT: u64 = 150 * 1024 * 1024;
/// Each range is at most 4 MB and, but for the last, a multiple of 320 KiB (same page, and
/// <https://learn.microsoft.com/en-us/graph/api/driveitem-createuploadsession#upload-bytes-to-the-upload-session>).
const RANGE_UNIT: u64 = 320 * 1024;
/// Custom headers Exchange Online takes per message: not in the reference
/// (<https://learn.microsoft.com/en-us/graph/api/resources/internetmessageheader> says only that
/// names begin with `x-`), reported by users of the API, and enforced here as real.
const MAX_HEADERS: usize = 5;
/// Requests one app may have in flight against one mailbox
/// (<https://learn.microsoft.com/en-us/graph/throttling-limits#outlook-service-limits>).
const MAILBOX_CONCURRENCY: usize = 4;
/// Requests one JSON batch holds (<https://learn.microsoft.com/en-us/graph/json-batching>).
const BATCH_LIMIT: usize = 20;
/// The default maximum message size of a tenant
/// (<https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/message-size-limits>).
pub const DEFAULT_MESSAGE_LIMIT: u64 = 35 * 1024 * 1024;

/// A message as the mailbox holds it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub id: String,
    pub folder: String,
    /// The create request's JSON as sent (attachments' bytes left out).
    pub json: Value,
    /// Stored as a draft: created without message flags that make it a received item
    /// (<https://learn.microsoft.com/en-us/graph/api/user-post-messages>: a message created
    /// this way is a draft unless PidTagMessageFlags says otherwise).
    pub is_draft: bool,
    /// `PidTagMessageDeliveryTime` and `PidTagClientSubmitTime` as given, else none.
    pub received: Option<String>,
    pub sent: Option<String>,
    /// Each attachment as received.
    pub attachments: Vec<StoredAttachment>,
}

/// An attachment as the mailbox holds it: its size and SHA-256, not its bytes, so a day of
/// 100,000 texts fits in the server's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAttachment {
    pub name: String,
    pub content_type: String,
    pub size: u64,
    pub sha256: String,
}

impl StoredAttachment {
    fn of(name: &str, content_type: &str, bytes: &[u8]) -> StoredAttachment {
        StoredAttachment {
            name: name.to_string(),
            content_type: content_type.to_string(),
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        }
    }
}

impl StoredMessage {
    pub fn header(&self, name: &str) -> Option<String> {
        self.json["internetMessageHeaders"]
            .as_array()?
            .iter()
            .find(|h| h["name"].as_str() == Some(name))
            .and_then(|h| h["value"].as_str().map(str::to_string))
    }

    fn size(&self) -> u64 {
        let attachments: u64 = self.attachments.iter().map(|a| a.size).sum();
        self.json.to_string().len() as u64 + attachments
    }
}

struct UploadSession {
    user: String,
    message: String,
    name: String,
    content_type: String,
    size: u64,
    /// How many bytes the ranges so far brought, and their digest.
    received: u64,
    digest: Sha256,
    expires: Instant,
}

struct Inner {
    tenant: String,
    client_id: String,
    client_secret: String,
    token_lifetime: Duration,
    /// The application permissions admin consent granted the app.
    roles: Vec<String>,
    /// Mailboxes the app's RBAC management scope leaves out.
    out_of_scope: Vec<String>,
    /// Users whose next folder list misses a folder just created by someone else.
    racing: Vec<String>,
    /// How long each upload range waits before it is taken.
    upload_delay: Duration,
    /// Token -> when it stops being taken.
    tokens: BTreeMap<String, Instant>,
    /// User principal name (lowercase) -> folders (id, name).
    users: BTreeMap<String, Vec<(String, String)>>,
    messages: BTreeMap<String, (String, StoredMessage)>,
    sessions: BTreeMap<String, UploadSession>,
    session_lifetime: Duration,
    message_limit: u64,
    /// Requests in flight per mailbox.
    in_flight: BTreeMap<String, usize>,
    /// Method (any when empty), path fragment -> statuses to answer with, one per request.
    faults: Vec<(String, String, Vec<u16>)>,
    /// Requests answered 429 because a mailbox had four in flight.
    throttled: usize,
    /// Every request: method, path and query.
    pub requests: Vec<(String, String)>,
    next_id: u64,
    upload_origin: String,
}

/// A running contract server; it stops when the test's runtime ends.
#[derive(Clone)]
pub struct GraphServer {
    inner: Arc<Mutex<Inner>>,
    address: SocketAddr,
    upload_address: SocketAddr,
}

type Answer = hyper::Response<Full<Bytes>>;

fn answer(status: u16, body: &Value) -> Answer {
    hyper::Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// Graph's error shape (<https://learn.microsoft.com/en-us/graph/errors>).
fn error(status: u16, code: &str, message: &str) -> Answer {
    answer(
        status,
        &json!({ "error": { "code": code, "message": message } }),
    )
}

fn throttled(code: &str) -> Answer {
    let mut response = error(
        429,
        code,
        "Application is over its MailboxConcurrency limit.",
    );
    response
        .headers_mut()
        .insert("retry-after", http::HeaderValue::from_static("1"));
    response
}

fn decode(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// The string literal of an OData filter `field eq '...'` on `field`.
fn filter_value(query: &BTreeMap<String, String>, field: &str) -> Option<String> {
    let filter = query.get("$filter")?;
    let (name, literal) = filter.split_once(" eq ")?;
    let literal = literal.trim().strip_prefix('\'')?.strip_suffix('\'')?;
    (name.trim() == field).then(|| literal.replace("''", "'"))
}

async fn serve(listener: tokio::net::TcpListener, inner: Arc<Mutex<Inner>>, uploads: bool) {
    while let Ok((stream, _)) = listener.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: hyper::Request<hyper::body::Incoming>| {
                    let inner = inner.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let response = match uploads {
                            true => {
                                let delay =
                                    inner.lock().map(|i| i.upload_delay).unwrap_or_default();
                                tokio::time::sleep(delay).await;
                                upload(&inner, &parts, &body)
                            }
                            false => graph(&inner, &parts, &body).await,
                        };
                        Ok::<_, std::convert::Infallible>(response)
                    }
                },
            );
            let io = wasmtime_wasi_http::io::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

impl GraphServer {
    /// Starts with one tenant, one app registration and the given users' mailboxes.
    pub async fn start(tenant: &str, client_id: &str, secret: &str, users: &[&str]) -> GraphServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let uploads = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let upload_address = uploads.local_addr().expect("address");
        let inner = Arc::new(Mutex::new(Inner {
            tenant: tenant.into(),
            client_id: client_id.into(),
            client_secret: secret.into(),
            token_lifetime: Duration::from_secs(3599),
            roles: vec!["Mail.ReadWrite".into()],
            out_of_scope: Vec::new(),
            racing: Vec::new(),
            upload_delay: Duration::ZERO,
            tokens: BTreeMap::new(),
            users: users
                .iter()
                .map(|u| (u.to_lowercase(), Vec::new()))
                .collect(),
            messages: BTreeMap::new(),
            sessions: BTreeMap::new(),
            session_lifetime: Duration::from_secs(900),
            message_limit: DEFAULT_MESSAGE_LIMIT,
            in_flight: BTreeMap::new(),
            faults: Vec::new(),
            throttled: 0,
            requests: Vec::new(),
            next_id: 1,
            upload_origin: format!("http://{upload_address}"),
        }));
        tokio::spawn(serve(listener, inner.clone(), false));
        tokio::spawn(serve(uploads, inner.clone(), true));
        GraphServer {
            inner,
            address,
            upload_address,
        }
    }

    /// The origin of Graph and of the login service.
    pub fn origin(&self) -> String {
        format!("http://{}", self.address)
    }

    /// The origin upload sessions are served on.
    pub fn upload_origin(&self) -> String {
        format!("http://{}", self.upload_address)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        f(&mut self.inner.lock().expect("graph lock"))
    }

    /// How long tokens issued from now on are taken.
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.with(|i| i.token_lifetime = lifetime);
    }

    /// The application permissions tokens issued from now on grant (consent not granted: none).
    pub fn set_roles(&self, roles: &[&str]) {
        self.with(|i| i.roles = roles.iter().map(|r| r.to_string()).collect());
    }

    /// Leaves `user`'s mailbox out of the app's RBAC for Applications scope.
    pub fn leave_out_of_scope(&self, user: &str) {
        self.with(|i| i.out_of_scope.push(user.to_lowercase()));
    }

    /// Another step creates `user`'s folder `name` just after the app listed the folders:
    /// the next list misses it, and creating it answers that it exists.
    pub fn create_folder_behind(&self, user: &str, name: &str) {
        self.with(|i| {
            let user = user.to_lowercase();
            let id = i.id("folder-");
            if let Some(folders) = i.users.get_mut(&user) {
                folders.push((id, name.to_string()));
            }
            i.racing.push(user);
        });
    }

    /// Makes each upload range wait this long before it is taken.
    pub fn set_upload_delay(&self, delay: Duration) {
        self.with(|i| i.upload_delay = delay);
    }

    /// How long upload sessions created from now on last.
    pub fn set_session_lifetime(&self, lifetime: Duration) {
        self.with(|i| i.session_lifetime = lifetime);
    }

    /// The tenant's maximum message size.
    pub fn set_message_limit(&self, bytes: u64) {
        self.with(|i| i.message_limit = bytes);
    }

    /// Answers the next requests whose path contains `fragment` with these statuses (429 and
    /// 503 with `Retry-After: 1`), before serving normally.
    pub fn fail(&self, fragment: &str, statuses: &[u16]) {
        self.fail_method("", fragment, statuses);
    }

    /// Like [`GraphServer::fail`], for requests of one method only.
    pub fn fail_method(&self, method: &str, fragment: &str, statuses: &[u16]) {
        self.with(|i| {
            i.faults
                .push((method.into(), fragment.into(), statuses.to_vec()))
        });
    }

    /// Every message of `user`'s folder named `folder`.
    pub fn messages(&self, user: &str, folder: &str) -> Vec<StoredMessage> {
        self.with(|i| {
            let Some(folders) = i.users.get(&user.to_lowercase()) else {
                return Vec::new();
            };
            let Some((folder_id, _)) = folders.iter().find(|(_, name)| name == folder) else {
                return Vec::new();
            };
            i.messages
                .values()
                .filter(|(owner, m)| *owner == user.to_lowercase() && &m.folder == folder_id)
                .map(|(_, m)| m.clone())
                .collect()
        })
    }

    /// The names of `user`'s top-level folders.
    pub fn folders(&self, user: &str) -> Vec<String> {
        self.with(|i| {
            i.users
                .get(&user.to_lowercase())
                .map(|f| f.iter().map(|(_, name)| name.clone()).collect())
                .unwrap_or_default()
        })
    }

    /// Requests answered 429 for a mailbox's concurrency.
    pub fn throttled(&self) -> usize {
        self.with(|i| i.throttled)
    }

    /// Every request: method, then path and query.
    pub fn requests(&self) -> Vec<(String, String)> {
        self.with(|i| i.requests.clone())
    }
}

impl Inner {
    fn fault(&mut self, method: &str, path: &str) -> Option<Answer> {
        let (_, _, statuses) = self.faults.iter_mut().find(|(m, fragment, statuses)| {
            (m.is_empty() || m == method)
                && path.contains(fragment.as_str())
                && !statuses.is_empty()
        })?;
        let status = statuses.remove(0);
        let mut response = error(status, "ServiceUnavailable", "fault injected by the test");
        if matches!(status, 429 | 503) {
            response
                .headers_mut()
                .insert("retry-after", http::HeaderValue::from_static("1"));
        }
        Some(response)
    }

    fn id(&mut self, prefix: &str) -> String {
        self.next_id += 1;
        format!("{prefix}{:06}", self.next_id)
    }

    /// The token endpoint (<https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow>).
    fn token(&mut self, tenant: &str, body: &[u8]) -> Answer {
        let form: BTreeMap<String, String> = String::from_utf8_lossy(body)
            .split('&')
            .filter_map(|pair| pair.split_once('='))
            .map(|(k, v)| (decode(k), decode(&v.replace('+', " "))))
            .collect();
        let aad = |status: u16, error: &str, code: u64, text: &str| {
            answer(
                status,
                &json!({ "error": error, "error_description": format!("AADSTS{code}: {text}"),
                    "error_codes": [code] }),
            )
        };
        if tenant != self.tenant {
            return aad(400, "invalid_request", 90002, "Tenant not found.");
        }
        if form.get("grant_type").map(String::as_str) != Some("client_credentials") {
            return aad(
                400,
                "unsupported_grant_type",
                70003,
                "The app requested an unsupported grant type.",
            );
        }
        if form.get("scope").map(String::as_str) != Some("https://graph.microsoft.com/.default") {
            return aad(
                400,
                "invalid_scope",
                1002012,
                "The provided value for scope is not valid.",
            );
        }
        if form.get("client_id") != Some(&self.client_id) {
            return aad(
                400,
                "unauthorized_client",
                700016,
                "Application not found in the directory.",
            );
        }
        if form.get("client_secret") != Some(&self.client_secret) {
            return aad(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided.",
            );
        }
        // A JWT whose payload lists the granted application permissions in `roles`
        // (<https://learn.microsoft.com/en-us/entra/identity-platform/access-token-claims-reference>).
        let claims = json!({ "aud": "https://graph.microsoft.com", "tid": self.tenant,
            "appid": self.client_id, "roles": self.roles, "uti": self.id("uti-") });
        let encode = |value: &Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
        };
        let token = format!(
            "{}.{}.signature",
            encode(&json!({ "typ": "JWT", "alg": "RS256" })),
            encode(&claims)
        );
        self.tokens
            .insert(token.clone(), Instant::now() + self.token_lifetime);
        answer(
            200,
            &json!({ "token_type": "Bearer", "expires_in": self.token_lifetime.as_secs(),
                "ext_expires_in": self.token_lifetime.as_secs(), "access_token": token }),
        )
    }

    /// Every Graph call carries a valid bearer token
    /// (<https://learn.microsoft.com/en-us/graph/auth-v2-service>).
    fn authorised(&self, parts: &http::request::Parts) -> bool {
        let Some(value) = parts
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some(token) = value.strip_prefix("Bearer ") else {
            return false;
        };
        self.tokens
            .get(token)
            .is_some_and(|expires| Instant::now() < *expires)
    }

    fn folder_of(&self, user: &str, folder: &str) -> bool {
        self.users
            .get(user)
            .is_some_and(|folders| folders.iter().any(|(id, _)| id == folder))
    }

    fn route(
        &mut self,
        method: &str,
        user: &str,
        rest: &[String],
        query: &BTreeMap<String, String>,
        body: &[u8],
    ) -> Answer {
        if !self.users.contains_key(user) {
            // <https://learn.microsoft.com/en-us/graph/errors>: a user the tenant lacks.
            return error(
                404,
                "ErrorInvalidUser",
                &format!("The requested user '{user}' is invalid."),
            );
        }
        // Without Mail.ReadWrite, or outside the app's scope, mail calls are denied
        // (<https://learn.microsoft.com/en-us/graph/permissions-reference#mailreadwrite>,
        // <https://learn.microsoft.com/en-us/exchange/permissions-exo/application-rbac>).
        if !self.roles.iter().any(|r| r == "Mail.ReadWrite")
            || self.out_of_scope.iter().any(|u| u == user)
        {
            return error(
                403,
                "ErrorAccessDenied",
                "Access is denied. Check credentials and try again.",
            );
        }
        let rest: Vec<&str> = rest.iter().map(String::as_str).collect();
        match (method, rest.as_slice()) {
            // <https://learn.microsoft.com/en-us/graph/api/user-list-mailfolders>
            ("GET", ["mailFolders"]) => {
                if let Some(at) = self.racing.iter().position(|u| u == user) {
                    self.racing.remove(at);
                    return answer(200, &json!({ "value": [] }));
                }
                let name = filter_value(query, "displayName");
                let list: Vec<Value> = self.users[user]
                    .iter()
                    .filter(|(_, n)| {
                        name.as_ref()
                            .is_none_or(|x| x.to_lowercase() == n.to_lowercase())
                    })
                    .map(|(id, n)| json!({ "id": id, "displayName": n }))
                    .collect();
                answer(200, &json!({ "value": list }))
            }
            // <https://learn.microsoft.com/en-us/graph/api/user-post-mailfolders>
            ("POST", ["mailFolders"]) => {
                let request: Value = serde_json::from_slice(body).unwrap_or_default();
                let Some(name) = request["displayName"].as_str() else {
                    return error(400, "ErrorInvalidRequest", "displayName is required");
                };
                if self.users[user]
                    .iter()
                    .any(|(_, n)| n.to_lowercase() == name.to_lowercase())
                {
                    return error(
                        409,
                        "ErrorFolderExists",
                        "A folder with the specified name already exists.",
                    );
                }
                let id = self.id("folder-");
                self.users
                    .get_mut(user)
                    .unwrap()
                    .push((id.clone(), name.to_string()));
                answer(201, &json!({ "id": id, "displayName": name }))
            }
            ("GET", ["mailFolders", folder, "messages"]) => {
                if !self.folder_of(user, folder) {
                    return error(
                        404,
                        "ErrorItemNotFound",
                        "The specified object was not found in the store.",
                    );
                }
                let wanted = filter_value(query, "internetMessageId");
                let list: Vec<Value> = self
                    .messages
                    .values()
                    .filter(|(owner, m)| owner == user && m.folder == *folder)
                    .filter(|(_, m)| {
                        wanted
                            .as_ref()
                            .is_none_or(|w| m.json["internetMessageId"] == w.as_str())
                    })
                    .map(
                        |(_, m)| json!({ "id": m.id, "hasAttachments": !m.attachments.is_empty() }),
                    )
                    .collect();
                answer(200, &json!({ "value": list }))
            }
            ("POST", ["mailFolders", folder, "messages"]) => {
                if !self.folder_of(user, folder) {
                    return error(
                        404,
                        "ErrorItemNotFound",
                        "The specified object was not found in the store.",
                    );
                }
                self.create_message(user, folder, body)
            }
            // <https://learn.microsoft.com/en-us/graph/api/message-delete>
            ("DELETE", ["messages", id]) => match self.messages.remove(*id) {
                Some(_) => hyper::Response::builder()
                    .status(204)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
                None => error(
                    404,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                ),
            },
            // <https://learn.microsoft.com/en-us/graph/api/message-list-attachments>
            ("GET", ["messages", id, "attachments"]) => match self.messages.get(*id) {
                Some((_, m)) => {
                    let list: Vec<Value> = m.attachments.iter().enumerate()
                        .map(|(n, a)| json!({ "id": format!("att-{n}"), "name": a.name, "size": a.size }))
                        .collect();
                    answer(200, &json!({ "value": list }))
                }
                None => error(
                    404,
                    "ErrorItemNotFound",
                    "The specified object was not found in the store.",
                ),
            },
            // <https://learn.microsoft.com/en-us/graph/api/message-post-attachments>: under 3 MB.
            ("POST", ["messages", id, "attachments"]) => {
                let request: Value = serde_json::from_slice(body).unwrap_or_default();
                let Some(bytes) = request["contentBytes"]
                    .as_str()
                    .and_then(|b| BASE64.decode(b).ok())
                else {
                    return error(400, "ErrorInvalidRequest", "contentBytes is required");
                };
                if bytes.len() as u64 >= INLINE_LIMIT {
                    return error(
                        400,
                        "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize",
                        "use an upload session for 3 MB or more",
                    );
                }
                let attachment = StoredAttachment::of(
                    request["name"].as_str().unwrap_or_default(),
                    request["contentType"].as_str().unwrap_or_default(),
                    &bytes,
                );
                self.add_attachment(id, attachment)
            }
            // <https://learn.microsoft.com/en-us/graph/api/attachment-createuploadsession>
            ("POST", ["messages", id, "attachments", "createUploadSession"]) => {
                if !self.messages.contains_key(*id) {
                    return error(
                        404,
                        "ErrorItemNotFound",
                        "The specified object was not found in the store.",
                    );
                }
                let request: Value = serde_json::from_slice(body).unwrap_or_default();
                let item = &request["AttachmentItem"];
                let size = item["size"].as_u64().unwrap_or(0);
                if item["attachmentType"] != "file" || item["name"].as_str().is_none() || size == 0
                {
                    return error(
                        400,
                        "ErrorInvalidRequest",
                        "AttachmentItem needs attachmentType file, name and size",
                    );
                }
                if size > SESSION_LIMIT {
                    return error(
                        400,
                        "ErrorAttachmentSizeExceeded",
                        "attachments are at most 150 MB",
                    );
                }
                let token = self.id("session-");
                let expires = Instant::now() + self.session_lifetime;
                self.sessions.insert(
                    token.clone(),
                    UploadSession {
                        user: user.to_string(),
                        message: id.to_string(),
                        name: item["name"].as_str().unwrap_or_default().into(),
                        content_type: item["contentType"].as_str().unwrap_or_default().into(),
                        size,
                        received: 0,
                        digest: Sha256::new(),
                        expires,
                    },
                );
                answer(
                    201,
                    &json!({
                        "uploadUrl": format!("{}/upload/{token}?authtoken=opaque", self.upload_origin),
                        "expirationDateTime": (chrono::Utc::now() + chrono::Duration::from_std(self.session_lifetime).unwrap()).to_rfc3339(),
                        "nextExpectedRanges": ["0-"],
                    }),
                )
            }
            _ => error(
                400,
                "BadRequest",
                &format!("no such route: {method} {}", rest.join("/")),
            ),
        }
    }

    fn create_message(&mut self, user: &str, folder: &str, body: &[u8]) -> Answer {
        let Ok(mut request) = serde_json::from_slice::<Value>(body) else {
            return error(400, "RequestBodyRead", "the body is not JSON");
        };
        // <https://learn.microsoft.com/en-us/graph/api/resources/internetmessageheader>: only
        // `x-` headers may be set; Exchange Online keeps five.
        let headers = request["internetMessageHeaders"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if headers.iter().any(|h| {
            !h["name"]
                .as_str()
                .unwrap_or_default()
                .to_ascii_lowercase()
                .starts_with("x-")
        }) {
            return error(
                400,
                "InvalidInternetMessageHeader",
                "The internet message header name should start with 'x-' or 'X-'.",
            );
        }
        if headers.len() > MAX_HEADERS {
            return error(
                400,
                "InvalidInternetMessageHeaderCollection",
                "Maximum number of headers in one message should be less than or equal to 5.",
            );
        }
        // Read-only on creation (<https://learn.microsoft.com/en-us/graph/api/resources/message>).
        for field in ["sentDateTime", "receivedDateTime", "isDraft"] {
            if request.get(field).is_some() {
                return error(
                    400,
                    "ErrorInvalidProperty",
                    &format!("{field} is read-only"),
                );
            }
        }
        let property = |id: &str| {
            request["singleValueExtendedProperties"]
                .as_array()
                .and_then(|p| {
                    p.iter().find(|p| {
                        p["id"].as_str().map(str::to_lowercase) == Some(id.to_lowercase())
                    })
                })
                .and_then(|p| p["value"].as_str().map(str::to_string))
        };
        // MSGFLAG_UNSENT (8) marks a draft; with no flags given, Exchange makes a draft.
        let is_draft = match property("Integer 0x0E07").and_then(|v| v.parse::<u32>().ok()) {
            Some(flags) => flags & 8 != 0,
            None => true,
        };
        let (received, sent) = (property("SystemTime 0x0E06"), property("SystemTime 0x0039"));
        let mut attachments = Vec::new();
        for attachment in request["attachments"]
            .as_array()
            .cloned()
            .unwrap_or_default()
        {
            let Some(bytes) = attachment["contentBytes"]
                .as_str()
                .and_then(|b| BASE64.decode(b).ok())
            else {
                return error(
                    400,
                    "ErrorInvalidRequest",
                    "an attachment without contentBytes",
                );
            };
            attachments.push(StoredAttachment::of(
                attachment["name"].as_str().unwrap_or_default(),
                attachment["contentType"].as_str().unwrap_or_default(),
                &bytes,
            ));
        }
        if let Some(object) = request.as_object_mut() {
            object.remove("attachments");
        }
        let id = self.id("message-");
        let message = StoredMessage {
            id: id.clone(),
            folder: folder.to_string(),
            json: request,
            is_draft,
            received,
            sent,
            attachments,
        };
        if message.size() > self.message_limit {
            return self.too_large();
        }
        self.messages
            .insert(id.clone(), (user.to_string(), message));
        answer(201, &json!({ "id": id, "isDraft": is_draft }))
    }

    /// Above the tenant's maximum message size
    /// (<https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/message-size-limits>).
    fn too_large(&self) -> Answer {
        error(
            413,
            "ErrorMessageSizeExceeded",
            &format!(
                "The message exceeds the maximum supported size of {} bytes.",
                self.message_limit
            ),
        )
    }

    fn add_attachment(&mut self, id: &str, attachment: StoredAttachment) -> Answer {
        let limit = self.message_limit;
        let Some((_, message)) = self.messages.get_mut(id) else {
            return error(
                404,
                "ErrorItemNotFound",
                "The specified object was not found in the store.",
            );
        };
        message.attachments.push(attachment);
        if message.size() > limit {
            message.attachments.pop();
            return self.too_large();
        }
        answer(
            201,
            &json!({ "id": format!("att-{}", message.attachments.len() - 1) }),
        )
    }
}

/// Graph and the login service.
async fn graph(inner: &Arc<Mutex<Inner>>, parts: &http::request::Parts, body: &[u8]) -> Answer {
    let path = parts.uri.path().to_string();
    let query = parse_query(parts.uri.query().unwrap_or_default());
    let segments: Vec<String> = path.trim_matches('/').split('/').map(decode).collect();
    let user = {
        let mut i = inner.lock().expect("graph lock");
        i.requests
            .push((parts.method.to_string(), parts.uri.to_string()));
        if let Some(fault) = i.fault(parts.method.as_str(), &path) {
            return fault;
        }
        if body.len() > REQUEST_LIMIT {
            return error(
                413,
                "RequestEntityTooLarge",
                "The request is larger than 4 MB.",
            );
        }
        if let [tenant, oauth, version, token] = segments.as_slice()
            && oauth == "oauth2"
            && version == "v2.0"
            && token == "token"
            && parts.method == "POST"
        {
            // The token request is a form post
            // (<https://learn.microsoft.com/en-us/entra/identity-platform/v2-oauth2-client-creds-grant-flow#first-case-access-token-request-with-a-shared-secret>).
            if !content_type_is(parts, "application/x-www-form-urlencoded") {
                return error(
                    400,
                    "invalid_request",
                    "The request body must be application/x-www-form-urlencoded.",
                );
            }
            let tenant = tenant.clone();
            return i.token(&tenant, body);
        }
        // A call with a JSON body names it: "Content-Type: application/json. Required." in the
        // request headers of user-post-messages, message-post-attachments and
        // attachment-createuploadsession; json-batching's requests likewise.
        if matches!(parts.method.as_str(), "POST" | "PATCH")
            && !content_type_is(parts, "application/json")
        {
            return error(
                415,
                "UnsupportedMediaType",
                "Content-Type: application/json is required.",
            );
        }
        if !i.authorised(parts) {
            return error(
                401,
                "InvalidAuthenticationToken",
                "Access token has expired or is not yet valid.",
            );
        }
        if segments == ["v1.0", "$batch"] && parts.method == "POST" {
            None
        } else {
            let [version, users, user, ..] = segments.as_slice() else {
                return error(400, "BadRequest", "no such route");
            };
            if version != "v1.0" || users != "users" {
                return error(400, "BadRequest", "no such route");
            }
            let user = user.to_lowercase();
            let busy = i.in_flight.entry(user.clone()).or_default();
            if *busy >= MAILBOX_CONCURRENCY {
                i.throttled += 1;
                return throttled("ApplicationThrottled");
            }
            *busy += 1;
            Some(user)
        }
    };
    let Some(user) = user else {
        return batch(inner, body).await;
    };
    // Each request takes a little while, as the service's do, so that concurrency shows.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut i = inner.lock().expect("graph lock");
    let response = i.route(parts.method.as_str(), &user, &segments[3..], &query, body);
    if let Some(busy) = i.in_flight.get_mut(&user) {
        *busy -= 1;
    }
    response
}

/// A JSON batch (<https://learn.microsoft.com/en-us/graph/json-batching>): at most 20 requests,
/// each answered on its own, in any order; each counts against its mailbox's concurrency
/// (<https://learn.microsoft.com/en-us/graph/throttling#throttling-and-batching>), so one
/// request of a batch can be throttled while the others succeed.
async fn batch(inner: &Arc<Mutex<Inner>>, body: &[u8]) -> Answer {
    let request: Value = serde_json::from_slice(body).unwrap_or_default();
    let Some(requests) = request["requests"].as_array() else {
        return error(400, "BadRequest", "a batch needs requests");
    };
    if requests.len() > BATCH_LIMIT {
        return error(400, "BadRequest", "A batch holds at most 20 requests.");
    }
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut answers = Vec::new();
    {
        let mut i = inner.lock().expect("graph lock");
        let mut in_batch: BTreeMap<String, usize> = BTreeMap::new();
        for request in requests {
            let id = request["id"].as_str().unwrap_or_default().to_string();
            let method = request["method"].as_str().unwrap_or("GET").to_string();
            let url = request["url"].as_str().unwrap_or_default();
            i.requests
                .push((format!("BATCH {method}"), url.to_string()));
            let (path, query) = url.split_once('?').unwrap_or((url, ""));
            let query = parse_query(query);
            let segments: Vec<String> = path.trim_matches('/').split('/').map(decode).collect();
            let body = request["body"].to_string().into_bytes();
            let response = if let Some(fault) = i.fault(&method, path) {
                fault
            } else if let [users, user, rest @ ..] = segments.as_slice()
                && users == "users"
            {
                let user = user.to_lowercase();
                let busy = i.in_flight.get(&user).copied().unwrap_or(0);
                let taken = in_batch.entry(user.clone()).or_default();
                if busy + *taken >= MAILBOX_CONCURRENCY {
                    i.throttled += 1;
                    throttled("ApplicationThrottled")
                } else {
                    *taken += 1;
                    i.route(&method, &user, rest, &query, &body)
                }
            } else {
                error(400, "BadRequest", "no such route")
            };
            answers.push((id, response));
        }
    }
    let mut responses = Vec::new();
    for (id, response) in answers.into_iter().rev() {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let bytes = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let mut headers = json!({ "Content-Type": "application/json" });
        if let Some(retry_after) = retry_after {
            headers["Retry-After"] = json!(retry_after);
        }
        responses.push(json!({ "id": id, "status": status, "headers": headers, "body": body }));
    }
    answer(200, &json!({ "responses": responses }))
}

/// Whether the request's Content-Type is `media_type` (parameters such as `charset` aside).
fn content_type_is(parts: &http::request::Parts, media_type: &str) -> bool {
    parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(media_type))
}

fn parse_query(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

/// An upload session's `PUT`s
/// (<https://learn.microsoft.com/en-us/graph/outlook-large-attachments#step-2-use-the-upload-session-to-upload-a-range-of-bytes-of-the-file>).
fn upload(inner: &Arc<Mutex<Inner>>, parts: &http::request::Parts, body: &[u8]) -> Answer {
    let mut i = inner.lock().expect("graph lock");
    i.requests
        .push((parts.method.to_string(), format!("upload:{}", parts.uri)));
    if let Some(fault) = i.fault(parts.method.as_str(), "upload:") {
        return fault;
    }
    // The upload URL is pre-authenticated: a request that also carries an Authorization
    // header fails.
    if parts.headers.contains_key("authorization") {
        return error(
            401,
            "InvalidAuthenticationToken",
            "Do not send an Authorization header to the upload URL.",
        );
    }
    let token = parts.uri.path().trim_start_matches("/upload/").to_string();
    if parts.method != "PUT" {
        return error(405, "MethodNotAllowed", "PUT byte ranges");
    }
    // Step 2's request headers: Content-Length ("The number of bytes being uploaded in this
    // operation ... Required"), Content-Range (`bytes {start}-{end}/{total}`, required) and
    // Content-Type (`application/octet-stream`, required). A body sent chunked, with no
    // Content-Length, is refused as Exchange Online refuses it.
    if parts.headers.contains_key(http::header::TRANSFER_ENCODING)
        || !parts.headers.contains_key(http::header::CONTENT_LENGTH)
    {
        return error(
            411,
            "LengthRequired",
            "A Content-Length header is required on the request.",
        );
    }
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared != Some(body.len() as u64) {
        return error(
            400,
            "InvalidRequest",
            "Content-Length is not the number of bytes uploaded.",
        );
    }
    if !content_type_is(parts, "application/octet-stream") {
        return error(
            415,
            "UnsupportedMediaType",
            "Specify Content-Type: application/octet-stream.",
        );
    }
    let Some(session) = i.sessions.get_mut(&token) else {
        return error(
            404,
            "ErrorItemNotFound",
            "The upload session does not exist.",
        );
    };
    if Instant::now() > session.expires {
        i.sessions.remove(&token);
        return error(404, "ErrorItemNotFound", "The upload session has expired.");
    }
    let range = parts
        .headers
        .get("content-range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split_once('/'))
        .and_then(|(span, total)| {
            let (start, end) = span.split_once('-')?;
            Some((
                start.parse::<u64>().ok()?,
                end.parse::<u64>().ok()?,
                total.parse::<u64>().ok()?,
            ))
        });
    let Some((start, end, total)) = range else {
        return error(
            400,
            "InvalidRange",
            "Content-Range bytes start-end/total is required",
        );
    };
    // The range arithmetic: the range starts where the session's bytes end, and spans exactly
    // the Content-Length bytes of the body.
    let length = body.len() as u64;
    let last = end + 1 == session.size;
    let valid = total == session.size
        && start == session.received
        && end >= start
        && end - start + 1 == length
        && length <= REQUEST_LIMIT as u64
        && (last || length.is_multiple_of(RANGE_UNIT));
    if !valid {
        return error(
            400,
            "InvalidRange",
            &format!(
                "expected the range from {} of {}",
                session.received, session.size
            ),
        );
    }
    session.digest.update(body);
    session.received += length;
    if !last {
        let next = session.received;
        return answer(
            200,
            &json!({ "expirationDateTime": chrono::Utc::now().to_rfc3339(), "nextExpectedRanges": [next.to_string()] }),
        );
    }
    let session = i.sessions.remove(&token).expect("session");
    let owner_ok = i
        .messages
        .get(&session.message)
        .is_some_and(|(owner, _)| *owner == session.user);
    if !owner_ok {
        return error(404, "ErrorItemNotFound", "The message has gone.");
    }
    let attachment = StoredAttachment {
        name: session.name,
        content_type: session.content_type,
        size: session.received,
        sha256: hex::encode(session.digest.finalize()),
    };
    let added = i.add_attachment(&session.message, attachment);
    if added.status() != 201 {
        return added;
    }
    let mut response = hyper::Response::builder()
        .status(201)
        .body(Full::new(Bytes::new()))
        .expect("response");
    response.headers_mut().insert(
        "location",
        http::HeaderValue::from_static("https://outlook.office.com/api/v2.0/attachments"),
    );
    response
}
