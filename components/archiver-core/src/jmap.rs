//! JMAP (RFC 8620/8621) requests built and responses read without I/O: the component sends them.
//!
//! The service account's session lists the users' accounts it may write to; a user's account is
//! the one whose `name` is their address. The folder is found (never created twice) and else
//! created: first as one mailbox with the full name, and, on servers that refuse `/` in a name
//! (Cyrus), as the hierarchy its `/` describes, which IMAP clients show as the same path.

use std::collections::BTreeMap;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use serde_json::{Value, json};

const USING: [&str; 2] = ["urn:ietf:params:jmap:core", "urn:ietf:params:jmap:mail"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JmapError {
    #[error("the JMAP server's answer is not valid: {0}")]
    BadAnswer(String),
    #[error("the JMAP server refused {method}: {kind} {description}")]
    MethodError {
        method: String,
        kind: String,
        description: String,
    },
}

/// One method call's answer, or its method-level error.
pub type CallResult<T> = Result<T, JmapError>;

/// A folder creation's outcome: the new mailbox's id, or the server's refusal.
pub type FolderCreation = Result<String, String>;

fn bad(what: impl std::fmt::Display) -> JmapError {
    JmapError::BadAnswer(what.to_string())
}

/// The parts of the service account's session the archiver uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub api_url: String,
    upload_url: String,
    /// Account name (an address, lowercased) -> account id.
    accounts: BTreeMap<String, String>,
    /// The most method calls the server takes in one request.
    pub max_calls_in_request: usize,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSession {
    api_url: String,
    upload_url: String,
    accounts: BTreeMap<String, RawAccount>,
    #[serde(default)]
    capabilities: Value,
}

#[derive(Deserialize)]
struct RawAccount {
    name: String,
}

/// Resolves a possibly relative URL of the session against the session's own URL.
fn resolve(url: &str, session_url: &str) -> String {
    if url.contains("://") {
        return url.to_string();
    }
    let after_scheme = session_url.find("://").map_or(0, |i| i + 3);
    let origin_end = session_url[after_scheme..]
        .find('/')
        .map_or(session_url.len(), |i| after_scheme + i);
    if url.starts_with('/') {
        format!("{}{url}", &session_url[..origin_end])
    } else {
        let folder_end = session_url.rfind('/').map_or(session_url.len(), |i| i + 1);
        format!("{}{url}", &session_url[..folder_end])
    }
}

impl Session {
    pub fn parse(body: &[u8], session_url: &str) -> Result<Session, JmapError> {
        let raw: RawSession = serde_json::from_slice(body).map_err(bad)?;
        Ok(Session {
            api_url: resolve(&raw.api_url, session_url),
            upload_url: resolve(&raw.upload_url, session_url),
            accounts: raw
                .accounts
                .into_iter()
                .map(|(id, account)| (account.name.to_ascii_lowercase(), id))
                .collect(),
            // RFC 8620 requires the figure; a server that leaves it out gets a modest one.
            max_calls_in_request:
                raw.capabilities["urn:ietf:params:jmap:core"]["maxCallsInRequest"]
                    .as_u64()
                    .map_or(16, |n| n.max(1) as usize),
        })
    }

    /// The account of the user with this address, if the service account may write to it.
    pub fn account_for(&self, email: &str) -> Option<&str> {
        self.accounts
            .get(&email.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Where to upload a blob into `account_id`.
    pub fn upload_url(&self, account_id: &str) -> String {
        self.upload_url.replace("{accountId}", account_id)
    }
}

/// A mailbox as `Mailbox/get` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mailbox {
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
}

/// `Mailbox/get` of every mailbox of each account, one call per account in one request.
pub fn mailboxes_request(accounts: &[&str]) -> Value {
    let calls: Vec<Value> = accounts
        .iter()
        .enumerate()
        .map(|(n, account)| {
            json!(["Mailbox/get", {
                "accountId": account, "ids": null, "properties": ["id", "name", "parentId"]
            }, format!("m{n}")])
        })
        .collect();
    json!({ "using": USING, "methodCalls": calls })
}

/// The responses of a JMAP request, each checked for a method-level error.
fn responses(body: &[u8]) -> Result<Vec<(String, Value)>, JmapError> {
    each_response(body)?.into_iter().collect()
}

/// The responses of a JMAP request, each its result or its method-level error: one account's
/// error leaves the other calls' answers usable.
fn each_response(body: &[u8]) -> Result<Vec<CallResult<(String, Value)>>, JmapError> {
    let value: Value = serde_json::from_slice(body).map_err(bad)?;
    let calls = value["methodResponses"]
        .as_array()
        .ok_or_else(|| bad("no methodResponses"))?;
    Ok(calls
        .iter()
        .map(|call| {
            let name = call[0].as_str().unwrap_or_default().to_string();
            if name == "error" {
                return Err(JmapError::MethodError {
                    method: call[2].as_str().unwrap_or_default().to_string(),
                    kind: call[1]["type"].as_str().unwrap_or_default().to_string(),
                    description: call[1]["description"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                });
            }
            Ok((name, call[1].clone()))
        })
        .collect())
}

/// The answers of a request of `count` calls, one per call; fewer or more is an error.
fn answers_of(body: &[u8], count: usize, what: &str) -> Result<Vec<CallResult<Value>>, JmapError> {
    let answers = each_response(body)?;
    if answers.len() != count {
        return Err(bad(format!(
            "{count} {what} calls answered {} times",
            answers.len()
        )));
    }
    Ok(answers
        .into_iter()
        .map(|answer| answer.map(|(_, result)| result))
        .collect())
}

/// Each account's mailboxes, in the order of [`mailboxes_request`], or its call's error.
pub fn parse_mailboxes(
    body: &[u8],
    count: usize,
) -> Result<Vec<CallResult<Vec<Mailbox>>>, JmapError> {
    Ok(answers_of(body, count, "Mailbox/get")?
        .into_iter()
        .map(|answer| serde_json::from_value(answer?["list"].clone()).map_err(bad))
        .collect())
}

/// The segments of a folder name when it must be a hierarchy.
fn segments(folder: &str) -> Vec<&str> {
    folder
        .split('/')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// The folder's mailbox id: a top-level mailbox with the full name, or the hierarchy its `/`
/// describes.
pub fn find_folder(mailboxes: &[Mailbox], folder: &str) -> Option<String> {
    let child = |parent: Option<&str>, name: &str| {
        mailboxes
            .iter()
            .find(|m| m.parent_id.as_deref() == parent && m.name == name)
    };
    if let Some(flat) = child(None, folder) {
        return Some(flat.id.clone());
    }
    let mut parent: Option<&Mailbox> = None;
    for segment in segments(folder) {
        parent = Some(child(parent.map(|p| p.id.as_str()), segment)?);
    }
    parent.map(|m| m.id.clone())
}

/// `Mailbox/set` calls creating the folder in each account (with the mailboxes it has): as one
/// mailbox, or (`as_hierarchy`) as the missing levels of its path, reusing the levels that
/// exist. Creation ids are unique in the request (`a{account}f{level}`), as JMAP requires.
pub fn create_folder_request(
    accounts: &[(&str, &[Mailbox])],
    folder: &str,
    as_hierarchy: bool,
) -> Value {
    let calls: Vec<Value> = accounts
        .iter()
        .enumerate()
        .map(|(n, (account, mailboxes))| {
            let create = folder_creation(n, mailboxes, folder, as_hierarchy);
            json!(["Mailbox/set", { "accountId": account, "create": create }, format!("c{n}")])
        })
        .collect();
    json!({ "using": USING, "methodCalls": calls })
}

fn folder_creation(
    account: usize,
    mailboxes: &[Mailbox],
    folder: &str,
    as_hierarchy: bool,
) -> serde_json::Map<String, Value> {
    let mut create = serde_json::Map::new();
    if !as_hierarchy {
        create.insert(
            format!("a{account}f0"),
            json!({ "name": folder, "parentId": null, "isSubscribed": true }),
        );
        return create;
    }
    let mut parent: Option<Value> = None;
    let mut existing_parent: Option<String> = None;
    for (level, segment) in segments(folder).into_iter().enumerate() {
        let found = match (&parent, &existing_parent) {
            (None, parent_id) => mailboxes
                .iter()
                .find(|m| m.parent_id == *parent_id && m.name == segment),
            _ => None,
        };
        if let Some(found) = found {
            existing_parent = Some(found.id.clone());
            continue;
        }
        let key = format!("a{account}f{level}");
        let parent_id = parent
            .clone()
            .or_else(|| existing_parent.clone().map(Value::String))
            .unwrap_or(Value::Null);
        create.insert(
            key.clone(),
            json!({ "name": segment, "parentId": parent_id, "isSubscribed": true }),
        );
        parent = Some(Value::String(format!("#{key}")));
    }
    create
}

/// The outcome of each folder creation of [`create_folder_request`], in order: the id of the
/// deepest mailbox created, or the server's refusal (`invalidProperties` for a name it does not
/// take), or the call's error.
pub fn parse_create_folder(
    body: &[u8],
    count: usize,
) -> Result<Vec<CallResult<FolderCreation>>, JmapError> {
    Ok(answers_of(body, count, "Mailbox/set")?
        .into_iter()
        .map(|answer| created_folder(&answer?))
        .collect())
}

fn created_folder(result: &Value) -> CallResult<FolderCreation> {
    if let Some(refused) = result["notCreated"]
        .as_object()
        .and_then(|m| m.values().next())
    {
        let kind = refused["type"].as_str().unwrap_or("refused");
        let description = refused["description"].as_str().unwrap_or_default();
        return Ok(Err(format!("{kind} {description}").trim().to_string()));
    }
    let created = result["created"]
        .as_object()
        .ok_or_else(|| bad("Mailbox/set created nothing"))?;
    let level = |key: &str| {
        key.rsplit_once('f')
            .and_then(|(_, level)| level.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let deepest = created
        .keys()
        .max_by_key(|k| level(k))
        .and_then(|k| created[k]["id"].as_str())
        .ok_or_else(|| bad("Mailbox/set created no id"))?;
    Ok(Ok(deepest.to_string()))
}

/// The blob id of an upload answer.
pub fn parse_upload(body: &[u8]) -> Result<String, JmapError> {
    let value: Value = serde_json::from_slice(body).map_err(bad)?;
    value["blobId"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| bad("upload answer without blobId"))
}

/// One email to import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportItem {
    /// The caller's handle for this item in the answer.
    pub key: String,
    pub blob_id: String,
    pub received_at: DateTime<Utc>,
}

/// `Email/import` of several emails into one mailbox, without the `$draft` keyword.
pub fn import_request(account_id: &str, mailbox_id: &str, items: &[ImportItem]) -> Value {
    let emails: serde_json::Map<String, Value> = items
        .iter()
        .map(|item| {
            (
                item.key.clone(),
                json!({
                    "blobId": item.blob_id,
                    "mailboxIds": { mailbox_id: true },
                    "keywords": {},
                    "receivedAt": item.received_at.to_rfc3339_opts(SecondsFormat::Secs, true),
                }),
            )
        })
        .collect();
    json!({
        "using": USING,
        "methodCalls": [["Email/import", { "accountId": account_id, "emails": emails }, "i"]]
    })
}

/// What became of one imported email.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    Created(String),
    /// The server already holds these bytes: success, nothing added.
    AlreadyExists(String),
    /// The server will never take this email (too large, not a valid message, forbidden).
    Refused(String),
    /// The server could not take it now (server failure, rate limit, quota, a lost upload):
    /// another attempt may succeed.
    Failed(String),
}

/// `notCreated` types that say the email itself is unacceptable; any other type (including one
/// this code does not know) is worth another attempt, so nothing is given up on a guess.
const REFUSALS: [&str; 4] = ["tooLarge", "invalidEmail", "invalidProperties", "forbidden"];

pub fn parse_import(body: &[u8]) -> Result<BTreeMap<String, ImportOutcome>, JmapError> {
    let (_, result) = responses(body)?
        .into_iter()
        .next()
        .ok_or_else(|| bad("empty Email/import answer"))?;
    Ok(import_outcomes(&result))
}

/// One request of several `Email/import` calls (account, mailbox, emails), so many accounts'
/// copies cost one round trip.
pub fn import_calls_request(calls: &[(String, String, Vec<ImportItem>)]) -> Value {
    let calls: Vec<Value> = calls
        .iter()
        .enumerate()
        .map(|(n, (account, mailbox, items))| {
            let mut call = import_request(account, mailbox, items)["methodCalls"][0].clone();
            call[2] = json!(format!("i{n}"));
            call
        })
        .collect();
    json!({ "using": USING, "methodCalls": calls })
}

/// The outcomes of each call of [`import_calls_request`], in order; an answer that does not
/// cover every call is an error.
pub fn parse_import_calls(
    body: &[u8],
    count: usize,
) -> Result<Vec<BTreeMap<String, ImportOutcome>>, JmapError> {
    answers_of(body, count, "Email/import")?
        .into_iter()
        .map(|answer| answer.map(|result| import_outcomes(&result)))
        .collect()
}

fn import_outcomes(result: &Value) -> BTreeMap<String, ImportOutcome> {
    let mut outcomes = BTreeMap::new();
    if let Some(created) = result["created"].as_object() {
        for (key, email) in created {
            let id = email["id"].as_str().unwrap_or_default().to_string();
            outcomes.insert(key.clone(), ImportOutcome::Created(id));
        }
    }
    if let Some(refused) = result["notCreated"].as_object() {
        for (key, error) in refused {
            let kind = error["type"].as_str().unwrap_or_default();
            let detail = format!(
                "{kind} {}",
                error["description"].as_str().unwrap_or_default()
            )
            .trim()
            .to_string();
            // Cyrus names an unknown (expired) upload or a vanished folder as an invalid
            // property: a new upload or folder lookup on the next attempt fixes either.
            let properties: Vec<&str> = error["properties"]
                .as_array()
                .map(|p| p.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let stale_reference = kind == "invalidProperties"
                && !properties.is_empty()
                && properties
                    .iter()
                    .all(|p| *p == "blobId" || *p == "mailboxIds");
            let detail = if properties.is_empty() {
                detail
            } else {
                format!("{detail} ({})", properties.join(", "))
            };
            let outcome = match (kind, error["existingId"].as_str()) {
                ("alreadyExists", Some(id)) => ImportOutcome::AlreadyExists(id.to_string()),
                _ if stale_reference => ImportOutcome::Failed(detail),
                _ if REFUSALS.contains(&kind) => ImportOutcome::Refused(detail),
                _ => ImportOutcome::Failed(detail),
            };
            outcomes.insert(key.clone(), outcome);
        }
    }
    outcomes
}

/// One request of `Email/query` calls, one per (account, `Message-ID` without angle brackets):
/// which of these emails the accounts already hold. Many lookups cost one round trip.
pub fn find_messages_request(lookups: &[(String, String)]) -> Value {
    let calls: Vec<Value> = lookups
        .iter()
        .enumerate()
        .map(|(n, (account_id, id))| {
            json!(["Email/query", {
                "accountId": account_id,
                "filter": { "header": ["Message-ID", format!("<{id}>")] },
                "limit": 1
            }, format!("q{n}")])
        })
        .collect();
    json!({ "using": USING, "methodCalls": calls })
}

/// For each lookup of [`find_messages_request`], in order, whether the email is there. An
/// answer that does not cover every lookup is an error: nothing is assumed absent.
pub fn parse_find_messages(body: &[u8], count: usize) -> Result<Vec<bool>, JmapError> {
    answers_of(body, count, "Email/query")?
        .into_iter()
        .map(|answer| {
            answer.map(|result| result["ids"].as_array().is_some_and(|ids| !ids.is_empty()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_session_with_relative_urls_and_finds_accounts_by_name() {
        let body = br#"{"apiUrl":"/jmap/","uploadUrl":"/jmap/upload/{accountId}/",
            "downloadUrl":"/jmap/download/{accountId}/{blobId}/{name}",
            "accounts":{"alice@acme.example":{"name":"alice@acme.example","isPersonal":false},
                        "archiver@acme.example":{"name":"archiver@acme.example"}},
            "primaryAccounts":{}, "capabilities":{}, "username":"archiver@acme.example"}"#;
        let session = Session::parse(body, "http://127.0.0.1:18080/jmap/").unwrap();
        assert_eq!(session.api_url, "http://127.0.0.1:18080/jmap/");
        assert_eq!(
            session.upload_url("alice@acme.example"),
            "http://127.0.0.1:18080/jmap/upload/alice@acme.example/"
        );
        assert_eq!(
            session.account_for("Alice@Acme.Example"),
            Some("alice@acme.example")
        );
        assert_eq!(session.account_for("nobody@acme.example"), None);
        assert!(Session::parse(b"{}", "http://x/").is_err());
    }

    fn mailbox(id: &str, name: &str, parent: Option<&str>) -> Mailbox {
        Mailbox {
            id: id.into(),
            name: name.into(),
            parent_id: parent.map(str::to_string),
        }
    }

    #[test]
    fn finds_the_folder_flat_or_as_a_hierarchy() {
        let folder = "AT&T SMS/MMS Network Archiver";
        let flat = [mailbox("1", "Inbox", None), mailbox("2", folder, None)];
        assert_eq!(find_folder(&flat, folder).as_deref(), Some("2"));
        let nested = [
            mailbox("1", "Inbox", None),
            mailbox("3", "AT&T SMS", None),
            mailbox("4", "MMS Network Archiver", Some("3")),
            mailbox("5", "MMS Network Archiver", None),
        ];
        assert_eq!(find_folder(&nested, folder).as_deref(), Some("4"));
        assert_eq!(find_folder(&nested[..2], folder), None);
    }

    #[test]
    fn creates_only_the_missing_levels_in_each_account() {
        let folder = "AT&T SMS/MMS Network Archiver";
        let existing = [mailbox("3", "AT&T SMS", None)];
        let request = create_folder_request(&[("a", &[]), ("b", &existing)], folder, true);
        let calls = request["methodCalls"].as_array().unwrap();
        let create = &calls[0][1]["create"];
        assert_eq!(create["a0f0"]["name"], "AT&T SMS");
        assert_eq!(create["a0f1"]["parentId"], "#a0f0");
        let create = &calls[1][1]["create"];
        assert_eq!(calls[1][1]["accountId"], "b");
        assert!(create.get("a1f0").is_none());
        assert_eq!(create["a1f1"]["parentId"], "3");
        let flat = create_folder_request(&[("a", &[])], folder, false);
        assert_eq!(flat["methodCalls"][0][1]["create"]["a0f0"]["name"], folder);

        let answer = br#"{"methodResponses":[
            ["Mailbox/set",{"created":{"a0f0":{"id":"P"},"a0f1":{"id":"C"}}},"c0"],
            ["Mailbox/set",{"notCreated":{"a1f1":{"type":"serverFail","description":"Invalid mailbox name"}}},"c1"],
            ["error",{"type":"accountNotFound"},"c2"]]}"#;
        let outcomes = parse_create_folder(answer, 3).unwrap();
        assert_eq!(outcomes[0], Ok(Ok("C".into())));
        assert_eq!(
            outcomes[1],
            Ok(Err("serverFail Invalid mailbox name".into()))
        );
        assert!(matches!(outcomes[2], Err(JmapError::MethodError { .. })));
        assert!(
            parse_create_folder(answer, 2).is_err(),
            "an unexpected answer"
        );
    }

    #[test]
    fn lists_the_mailboxes_of_several_accounts_in_one_request() {
        let request = mailboxes_request(&["a", "b"]);
        let calls = request["methodCalls"].as_array().unwrap();
        assert_eq!(calls[1][1]["accountId"], "b");
        assert_eq!(calls[1][2], "m1");
        let answer = br#"{"methodResponses":[
            ["Mailbox/get",{"list":[{"id":"1","name":"Inbox","parentId":null}]},"m0"],
            ["error",{"type":"forbidden"},"m1"]]}"#;
        let lists = parse_mailboxes(answer, 2).unwrap();
        assert_eq!(lists[0], Ok(vec![mailbox("1", "Inbox", None)]));
        assert!(lists[1].is_err());
        assert!(parse_mailboxes(answer, 1).is_err());
    }

    #[test]
    fn reads_import_outcomes() {
        let items = [ImportItem {
            key: "k1".into(),
            blob_id: "b1".into(),
            received_at: "2026-11-25T14:03:11Z".parse().unwrap(),
        }];
        let request = import_request("a", "m", &items);
        let email = &request["methodCalls"][0][1]["emails"]["k1"];
        assert_eq!(email["receivedAt"], "2026-11-25T14:03:11Z");
        assert_eq!(email["keywords"], json!({}));
        assert_eq!(email["mailboxIds"]["m"], true);
        let answer = br#"{"methodResponses":[["Email/import",{"created":{"k1":{"id":"E1"}},
            "notCreated":{"k2":{"type":"alreadyExists","existingId":"E0"},
                          "k3":{"type":"invalidEmail","description":"bare LF"},
                          "k4":{"type":"blobNotFound"},
                          "k5":{"type":"somethingNew"},
                          "k6":{"type":"invalidProperties","properties":["blobId"]},
                          "k7":{"type":"invalidProperties","properties":["receivedAt"]}}},"i"]]}"#;
        let outcomes = parse_import(answer).unwrap();
        assert_eq!(outcomes["k1"], ImportOutcome::Created("E1".into()));
        assert_eq!(outcomes["k2"], ImportOutcome::AlreadyExists("E0".into()));
        assert_eq!(
            outcomes["k3"],
            ImportOutcome::Refused("invalidEmail bare LF".into())
        );
        assert_eq!(outcomes["k4"], ImportOutcome::Failed("blobNotFound".into()));
        assert_eq!(outcomes["k5"], ImportOutcome::Failed("somethingNew".into()));
        assert_eq!(
            outcomes["k6"],
            ImportOutcome::Failed("invalidProperties (blobId)".into())
        );
        assert_eq!(
            outcomes["k7"],
            ImportOutcome::Refused("invalidProperties (receivedAt)".into())
        );
        let error = br#"{"methodResponses":[["error",{"type":"accountNotFound"},"i"]]}"#;
        assert!(matches!(
            parse_import(error),
            Err(JmapError::MethodError { .. })
        ));
    }

    #[test]
    fn looks_up_many_message_ids_in_one_request() {
        let ids = vec![
            ("acc".to_string(), "a@x".to_string()),
            ("other".to_string(), "b@x".to_string()),
        ];
        let request = find_messages_request(&ids);
        let calls = request["methodCalls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1][1]["filter"]["header"][1], "<b@x>");
        assert_eq!(calls[1][2], "q1");
        assert_eq!(calls[1][1]["accountId"], "other");
        let answer = br#"{"methodResponses":[["Email/query",{"ids":["E1"]},"q0"],
            ["Email/query",{"ids":[]},"q1"]]}"#;
        assert_eq!(parse_find_messages(answer, 2).unwrap(), [true, false]);
        assert!(
            parse_find_messages(answer, 3).is_err(),
            "a lookup left unanswered"
        );
        let error = br#"{"methodResponses":[["error",{"type":"serverFail"},"q0"]]}"#;
        assert!(parse_find_messages(error, 1).is_err());
    }

    #[test]
    fn imports_into_several_accounts_in_one_request() {
        let item = |key: &str| ImportItem {
            key: key.into(),
            blob_id: format!("B-{key}"),
            received_at: "2026-11-25T14:03:11Z".parse().unwrap(),
        };
        let request = import_calls_request(&[
            ("a1".into(), "m1".into(), vec![item("e0")]),
            ("a2".into(), "m2".into(), vec![item("e0"), item("e1")]),
        ]);
        let calls = request["methodCalls"].as_array().unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1][1]["accountId"], "a2");
        assert_eq!(calls[1][1]["emails"]["e1"]["mailboxIds"]["m2"], true);
        assert_eq!(calls[1][2], "i1");
        let answer = br#"{"methodResponses":[
            ["Email/import",{"created":{"e0":{"id":"E1"}}},"i0"],
            ["Email/import",{"created":{"e0":{"id":"E2"}},"notCreated":{"e1":{"type":"serverFail"}}},"i1"]]}"#;
        let outcomes = parse_import_calls(answer, 2).unwrap();
        assert_eq!(outcomes[0]["e0"], ImportOutcome::Created("E1".into()));
        assert_eq!(
            outcomes[1]["e1"],
            ImportOutcome::Failed("serverFail".into())
        );
        assert!(parse_import_calls(answer, 3).is_err());
    }

    #[test]
    fn the_session_says_how_many_calls_a_request_may_hold() {
        let session = br#"{"apiUrl":"/jmap/","uploadUrl":"/jmap/upload/{accountId}/","accounts":{},
            "capabilities":{"urn:ietf:params:jmap:core":{"maxCallsInRequest":50}}}"#;
        assert_eq!(
            Session::parse(session, "http://h/jmap/")
                .unwrap()
                .max_calls_in_request,
            50
        );
        let bare = br#"{"apiUrl":"/jmap/","uploadUrl":"/u/{accountId}","accounts":{}}"#;
        assert_eq!(
            Session::parse(bare, "http://h/jmap/")
                .unwrap()
                .max_calls_in_request,
            16
        );
    }
}
