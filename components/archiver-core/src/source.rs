//! The carrier archive's message model (source API version 1) and its validation.
//!
//! A page is parsed in two steps: first into one raw JSON value per message, then each message
//! on its own, so that one bad message is rejected alone with a precise reason while the rest of
//! the page is kept. Unknown fields are ignored.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::digest::sha256_hex;
use crate::phone::{self, PhoneAddress, Region};

/// SMS or MMS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sms,
    Mms,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sms => "sms",
            Kind::Mms => "mms",
        }
    }

    /// The word people use: `SMS` or `MMS`.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Sms => "SMS",
            Kind::Mms => "MMS",
        }
    }
}

/// Seen from the registered phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Inbound,
    Outbound,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A sender or recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    /// The address as the network wrote it.
    pub phone: String,
    /// The normalised address.
    pub address: PhoneAddress,
    /// The registered user's address, when the participant is a registered subscriber.
    pub email: Option<String>,
    pub name: Option<String>,
}

/// An attachment's metadata; the bytes are fetched separately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    pub id: String,
    pub filename: String,
    pub content_type: String,
    pub size: u64,
    /// Lowercase hex SHA-256 of the bytes.
    pub sha256: String,
}

/// One validated SMS or MMS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub id: String,
    pub kind: Kind,
    pub direction: Direction,
    pub sent_at: DateTime<Utc>,
    pub archived_at: DateTime<Utc>,
    pub from: Participant,
    pub to: Vec<Participant>,
    pub subject: Option<String>,
    pub body: String,
    pub attachments: Vec<AttachmentMeta>,
    /// SHA-256 of the canonical source record (see [`canonical_json`]).
    pub record_sha256: String,
}

impl Message {
    /// Sender first, then recipients, as the network listed them.
    pub fn participants(&self) -> impl Iterator<Item = &Participant> {
        std::iter::once(&self.from).chain(self.to.iter())
    }
}

/// `GET /v1/account`: the archive account the credentials open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub account_id: String,
    pub organization: String,
    pub network: String,
    #[serde(default)]
    pub time_zone: Option<String>,
}

/// A phone registered for archiving, with the address its user was registered under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscriber {
    pub phone: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
}

/// One page of `GET /v1/subscribers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriberPage {
    pub subscribers: Vec<Subscriber>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// Parses the body of `GET /v1/account`.
pub fn parse_account(bytes: &[u8]) -> Result<Account, PageError> {
    serde_json::from_slice(bytes).map_err(|e| PageError(format!("account: {e}")))
}

/// Parses one page of `GET /v1/subscribers`.
pub fn parse_subscriber_page(bytes: &[u8]) -> Result<SubscriberPage, PageError> {
    serde_json::from_slice(bytes).map_err(|e| PageError(format!("subscribers: {e}")))
}

/// A message the archive returned but that cannot be archived as it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidMessage {
    /// The message's `id`, when it has a readable one.
    pub id: Option<String>,
    /// Position in the page, from 0.
    pub index: usize,
    pub reason: String,
    /// SHA-256 of the raw record as received, so the report can be matched to the source.
    pub raw_sha256: String,
}

/// One page of `GET /v1/messages`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessagePage {
    pub messages: Vec<Message>,
    pub invalid: Vec<InvalidMessage>,
    pub next_cursor: Option<String>,
}

/// A response of the archive that cannot be read as a whole; nothing of it can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the archive's response is not valid: {0}")]
pub struct PageError(pub String);

#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(borrow)]
    messages: Vec<&'a RawValue>,
    next_cursor: Option<String>,
}

/// Parses one page of messages. Bytes that are not UTF-8 inside a string are confined to the
/// message that holds them, which is then rejected as not UTF-8.
pub fn parse_page(bytes: &[u8], region: Region) -> Result<MessagePage, PageError> {
    let text = utf8_with_markers(bytes);
    let page: RawPage = serde_json::from_str(&text).map_err(|e| PageError(e.to_string()))?;
    let mut messages = Vec::with_capacity(page.messages.len());
    let mut invalid = Vec::new();
    for (index, raw) in page.messages.into_iter().enumerate() {
        match parse_message(raw.get(), region) {
            Ok(message) => messages.push(message),
            Err(rejection) => invalid.push(InvalidMessage {
                id: rejection.id,
                index,
                reason: rejection.reason,
                raw_sha256: sha256_hex(raw.get().as_bytes()),
            }),
        }
    }
    Ok(MessagePage {
        messages,
        invalid,
        next_cursor: page.next_cursor,
    })
}

/// A lone low surrogate escape is valid JSON syntax but no Unicode scalar value: substituting it
/// for each invalid byte keeps the page parseable and makes exactly the affected string fail.
const INVALID_BYTE_MARKER: &str = "\\udc80";

fn utf8_with_markers(bytes: &[u8]) -> std::borrow::Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return text.into();
    }
    let mut text = String::with_capacity(bytes.len() + 16);
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for _ in chunk.invalid() {
            text.push_str(INVALID_BYTE_MARKER);
        }
    }
    text.into()
}

/// Why one record was rejected, with its id when readable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("message {}: {reason}", id.as_deref().unwrap_or("without id"))]
pub struct Rejection {
    pub id: Option<String>,
    pub reason: String,
}

/// Parses and validates one message record given as JSON text.
pub fn parse_message(json: &str, region: Region) -> Result<Message, Rejection> {
    let value: serde_json::Value = serde_json::from_str(json).map_err(|e| Rejection {
        id: id_only(json),
        reason: describe_json_error(json, &e),
    })?;
    let object = value.as_object().ok_or_else(|| Rejection {
        id: None,
        reason: "the record is not a JSON object".into(),
    })?;
    let id = object
        .get("id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let reject = |reason: String| Rejection {
        id: id.clone(),
        reason,
    };
    let fields = Fields { object };

    let message_id = fields.required_str("id").map_err(reject)?;
    if message_id.trim().is_empty() || message_id.chars().any(char::is_control) {
        return Err(reject(
            "field `id` is empty or holds control characters".into(),
        ));
    }
    let kind = fields
        .enumeration::<Kind>("kind", "`sms` or `mms`")
        .map_err(reject)?;
    let direction = fields
        .enumeration::<Direction>("direction", "`inbound` or `outbound`")
        .map_err(reject)?;
    let sent_at = fields.instant("sent_at").map_err(reject)?;
    let archived_at = fields.instant("archived_at").map_err(reject)?;
    let from =
        participant(fields.required("from").map_err(reject)?, "from", region).map_err(reject)?;
    let to_values = fields
        .required("to")
        .map_err(reject)?
        .as_array()
        .ok_or_else(|| reject("field `to` must be a list of participants".into()))?;
    if to_values.is_empty() {
        return Err(reject("field `to` lists no participant".into()));
    }
    let to = to_values
        .iter()
        .enumerate()
        .map(|(i, v)| participant(v, &format!("to[{i}]"), region))
        .collect::<Result<Vec<_>, _>>()
        .map_err(reject)?;
    let subject = fields.optional_str("subject").map_err(reject)?;
    let body = fields.required_str("body").map_err(reject)?;
    let attachments = match object.get("attachments") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| attachment(v, i))
            .collect::<Result<Vec<_>, _>>()
            .map_err(reject)?,
        Some(_) => return Err(reject("field `attachments` must be a list".into())),
    };
    if kind == Kind::Sms && !attachments.is_empty() {
        return Err(reject("an SMS cannot carry attachments".into()));
    }

    Ok(Message {
        id: message_id,
        kind,
        direction,
        sent_at,
        archived_at,
        from,
        to,
        subject,
        body,
        attachments,
        record_sha256: sha256_hex(canonical_json(&value).as_bytes()),
    })
}

/// The canonical form of a source record: object keys sorted at every depth, no insignificant
/// whitespace. The same record always hashes the same, however the archive formatted it.
pub fn canonical_json(value: &serde_json::Value) -> String {
    let mut out = String::new();
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &serde_json::Value, out: &mut String) {
    match value {
        serde_json::Value::Object(map) => {
            let sorted: BTreeMap<&String, &serde_json::Value> = map.iter().collect();
            out.push('{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(item, out);
            }
            out.push('}');
        }
        serde_json::Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The record's `id` when the rest of it cannot be read (skipped fields are not decoded).
fn id_only(json: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    serde_json::from_str::<IdOnly>(json).ok()?.id
}

fn describe_json_error(json: &str, error: &serde_json::Error) -> String {
    if !error.to_string().contains("surrogate") {
        return format!("the record is not valid JSON: {error}");
    }
    match field_before(json, error.line(), error.column()) {
        Some(field) => format!("field `{field}` is not valid UTF-8"),
        None => "a text field is not valid UTF-8".into(),
    }
}

/// The name of the object key closest before a (1-based) line and column of `json`.
fn field_before(json: &str, line: usize, column: usize) -> Option<&str> {
    let line_start: usize = json
        .split_inclusive('\n')
        .take(line - 1)
        .map(str::len)
        .sum();
    let before = json.get(..(line_start + column).min(json.len()))?;
    let colon = before.rfind("\":")?;
    let start = before[..colon].rfind('"')? + 1;
    Some(&before[start..colon])
}

struct Fields<'a> {
    object: &'a serde_json::Map<String, serde_json::Value>,
}

impl<'a> Fields<'a> {
    fn required(&self, name: &str) -> Result<&'a serde_json::Value, String> {
        match self.object.get(name) {
            None | Some(serde_json::Value::Null) => {
                Err(format!("required field `{name}` is missing"))
            }
            Some(value) => Ok(value),
        }
    }

    fn required_str(&self, name: &str) -> Result<String, String> {
        self.required(name)?
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("field `{name}` must be a string"))
    }

    fn optional_str(&self, name: &str) -> Result<Option<String>, String> {
        match self.object.get(name) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(format!("field `{name}` must be a string or null")),
        }
    }

    fn enumeration<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
        expected: &str,
    ) -> Result<T, String> {
        let text = self.required_str(name)?;
        serde_json::from_value(serde_json::Value::String(text.clone()))
            .map_err(|_| format!("field `{name}` is {text:?}, expected {expected}"))
    }

    fn instant(&self, name: &str) -> Result<DateTime<Utc>, String> {
        let text = self.required_str(name)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| format!("field `{name}` is {text:?}, not an RFC 3339 time ({e})"))
    }
}

fn participant(
    value: &serde_json::Value,
    path: &str,
    region: Region,
) -> Result<Participant, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("field `{path}` must be an object"))?;
    let fields = Fields { object };
    let phone = fields
        .required_str("phone")
        .map_err(|e| format!("in `{path}`: {e}"))?;
    let address =
        phone::normalize(&phone, region).map_err(|e| format!("field `{path}.phone`: {e}"))?;
    Ok(Participant {
        phone,
        address,
        email: fields
            .optional_str("email")
            .map_err(|e| format!("in `{path}`: {e}"))?,
        name: fields
            .optional_str("name")
            .map_err(|e| format!("in `{path}`: {e}"))?,
    })
}

fn attachment(value: &serde_json::Value, index: usize) -> Result<AttachmentMeta, String> {
    let path = format!("attachments[{index}]");
    let object = value
        .as_object()
        .ok_or_else(|| format!("field `{path}` must be an object"))?;
    let fields = Fields { object };
    let within = |e: String| format!("in `{path}`: {e}");
    let id = fields.required_str("id").map_err(within)?;
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_graphic() && c != '/') {
        return Err(format!(
            "field `{path}.id` must be printable ASCII without `/`"
        ));
    }
    let size = fields
        .required("size")
        .map_err(within)?
        .as_u64()
        .ok_or_else(|| format!("field `{path}.size` must be a whole number of bytes"))?;
    let sha256 = fields
        .required_str("sha256")
        .map_err(within)?
        .to_ascii_lowercase();
    if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("field `{path}.sha256` must be 64 hex digits"));
    }
    Ok(AttachmentMeta {
        id,
        filename: fields
            .optional_str("filename")
            .map_err(within)?
            .unwrap_or_default(),
        content_type: fields
            .optional_str("content_type")
            .map_err(within)?
            .unwrap_or_else(|| "application/octet-stream".into()),
        size,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{message, sms_record};
    use serde_json::json;

    fn rejection(record: &serde_json::Value) -> Rejection {
        parse_message(&record.to_string(), Region::US).expect_err("record must be rejected")
    }

    fn page(messages: Vec<serde_json::Value>) -> Vec<u8> {
        json!({ "messages": messages, "next_cursor": "c2" })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn reads_every_field_of_a_valid_sms() {
        let m = message(&sms_record());
        assert_eq!(m.id, "m-7f3c9a10");
        assert_eq!(m.kind, Kind::Sms);
        assert_eq!(m.direction, Direction::Outbound);
        assert_eq!(m.sent_at.to_rfc3339(), "2026-11-25T14:03:11+00:00");
        assert_eq!(m.archived_at.to_rfc3339(), "2026-11-25T14:03:12+00:00");
        assert_eq!(m.from.address, PhoneAddress::E164("+12025550101".into()));
        assert_eq!(m.from.email.as_deref(), Some("alice@acme.example"));
        assert_eq!(m.from.name.as_deref(), Some("Alice Ng"));
        assert_eq!(m.to.len(), 1);
        assert_eq!(m.to[0].email, None);
        assert_eq!(m.subject, None);
        assert_eq!(m.body, "Running 10 minutes late, start without me");
        assert!(m.attachments.is_empty());
        assert_eq!(m.record_sha256.len(), 64);
    }

    #[test]
    fn reads_attachment_metadata_of_an_mms() {
        let mut record = sms_record();
        record["kind"] = json!("mms");
        record["subject"] = json!("Site photos");
        record["attachments"] = json!([{ "id": "a-19", "filename": "IMG_0042.jpg",
            "content_type": "image/jpeg", "size": 2483021, "sha256": "AB".repeat(32) }]);
        let m = message(&record);
        assert_eq!(m.subject.as_deref(), Some("Site photos"));
        assert_eq!(m.attachments[0].size, 2483021);
        assert_eq!(m.attachments[0].sha256, "ab".repeat(32));
        assert_eq!(m.attachments[0].content_type, "image/jpeg");
    }

    #[test]
    fn ignores_unknown_fields() {
        let mut record = sms_record();
        record["carrier_flags"] = json!({ "x": 1 });
        record["from"]["imsi"] = json!("310150123456789");
        assert_eq!(message(&record).id, "m-7f3c9a10");
    }

    #[test]
    fn names_the_missing_required_field() {
        for field in [
            "id",
            "kind",
            "direction",
            "sent_at",
            "archived_at",
            "from",
            "to",
            "body",
        ] {
            let mut record = sms_record();
            record.as_object_mut().unwrap().remove(field);
            let r = rejection(&record);
            assert!(
                r.reason.contains(&format!("`{field}`")),
                "{field}: {}",
                r.reason
            );
        }
        let mut record = sms_record();
        record["to"][0].as_object_mut().unwrap().remove("phone");
        assert!(rejection(&record).reason.contains("`to[0]`"));
    }

    #[test]
    fn rejects_unknown_kind_and_direction_with_the_value() {
        let mut record = sms_record();
        record["kind"] = json!("rcs");
        let r = rejection(&record);
        assert_eq!(r.id.as_deref(), Some("m-7f3c9a10"));
        assert!(
            r.reason.contains("\"rcs\"") && r.reason.contains("`sms` or `mms`"),
            "{}",
            r.reason
        );
        let mut record = sms_record();
        record["direction"] = json!("sideways");
        assert!(rejection(&record).reason.contains("\"sideways\""));
    }

    #[test]
    fn rejects_unparsable_times() {
        let mut record = sms_record();
        record["sent_at"] = json!("25/11/2026 14:03");
        let r = rejection(&record);
        assert!(
            r.reason.contains("`sent_at`") && r.reason.contains("RFC 3339"),
            "{}",
            r.reason
        );
    }

    #[test]
    fn rejects_bad_participants_and_attachments() {
        let mut record = sms_record();
        record["to"] = json!([]);
        assert!(rejection(&record).reason.contains("no participant"));
        let mut record = sms_record();
        record["to"][0]["phone"] = json!("+1");
        assert!(rejection(&record).reason.contains("`to[0].phone`"));
        let mut record = sms_record();
        record["kind"] = json!("mms");
        record["attachments"] = json!([{ "id": "a/../b", "size": 1, "sha256": "00".repeat(32) }]);
        assert!(rejection(&record).reason.contains("attachments[0].id"));
        record["attachments"] = json!([{ "id": "a-1", "size": -1, "sha256": "00".repeat(32) }]);
        assert!(rejection(&record).reason.contains("attachments[0].size"));
        record["attachments"] = json!([{ "id": "a-1", "size": 1, "sha256": "xyz" }]);
        assert!(rejection(&record).reason.contains("attachments[0].sha256"));
    }

    #[test]
    fn a_page_with_one_bad_message_keeps_the_others() {
        let mut bad = sms_record();
        bad["id"] = json!("m-bad");
        bad["kind"] = json!("fax");
        let mut good = sms_record();
        good["id"] = json!("m-good");
        let parsed = parse_page(&page(vec![sms_record(), bad, good]), Region::US).unwrap();
        let ids: Vec<&str> = parsed.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m-7f3c9a10", "m-good"]);
        assert_eq!(parsed.invalid.len(), 1);
        assert_eq!(parsed.invalid[0].id.as_deref(), Some("m-bad"));
        assert_eq!(parsed.invalid[0].index, 1);
        assert_eq!(parsed.next_cursor.as_deref(), Some("c2"));
    }

    #[test]
    fn a_body_that_is_not_utf8_is_rejected_alone() {
        let marker = "BODY-PLACEHOLDER";
        let mut bad = sms_record();
        bad["id"] = json!("m-latin1");
        bad["body"] = json!(marker);
        let text = String::from_utf8(page(vec![sms_record(), bad])).unwrap();
        // "café" in Latin-1: the é is the lone byte 0xE9.
        let bytes = text.replace(marker, "caf\u{1}").into_bytes();
        let bytes: Vec<u8> = bytes
            .into_iter()
            .map(|b| if b == 1 { 0xE9 } else { b })
            .collect();
        assert!(std::str::from_utf8(&bytes).is_err());
        let parsed = parse_page(&bytes, Region::US).unwrap();
        assert_eq!(parsed.messages.len(), 1);
        assert_eq!(parsed.invalid[0].reason, "field `body` is not valid UTF-8");
        assert_eq!(parsed.invalid[0].id.as_deref(), Some("m-latin1"));

        let escaped = text.replace(marker, "bad \\udc80 surrogate");
        let parsed = parse_page(escaped.as_bytes(), Region::US).unwrap();
        assert_eq!(parsed.messages.len(), 1);
        assert_eq!(parsed.invalid[0].reason, "field `body` is not valid UTF-8");
    }

    #[test]
    fn an_unreadable_page_is_an_error_not_an_empty_page() {
        assert!(parse_page(b"{\"messages\": [", Region::US).is_err());
        assert!(parse_page(b"<html>busy</html>", Region::US).is_err());
        assert!(parse_page(b"{\"next_cursor\": null}", Region::US).is_err());
    }

    #[test]
    fn record_digest_ignores_formatting_and_key_order_but_not_content() {
        let record = sms_record();
        let reordered: serde_json::Value = serde_json::from_str(&format!(
            "{{ \"body\": {}, \"id\": \"m-7f3c9a10\", {} }}",
            json!(record["body"]),
            record
                .to_string()
                .trim_start_matches('{')
                .trim_end_matches('}')
        ))
        .unwrap();
        assert_eq!(
            message(&record).record_sha256,
            message(&reordered).record_sha256
        );
        let mut changed = sms_record();
        changed["body"] = json!("Running 11 minutes late, start without me");
        assert_ne!(
            message(&record).record_sha256,
            message(&changed).record_sha256
        );
    }

    #[test]
    fn reads_account_and_subscribers_ignoring_unknown_fields() {
        let account = parse_account(
            br#"{"account_id":"acme-att-01","organization":"Acme Corp","network":"AT&T",
                "time_zone":"America/New_York","plan":"gold"}"#,
        )
        .unwrap();
        assert_eq!(account.network, "AT&T");
        assert_eq!(account.time_zone.as_deref(), Some("America/New_York"));
        let page = parse_subscriber_page(
            br#"{"subscribers":[{"phone":"+12025550101","email":"alice@acme.example",
                "name":"Alice Ng","imei":"x"}],"next_cursor":null}"#,
        )
        .unwrap();
        assert_eq!(
            page.subscribers[0].email.as_deref(),
            Some("alice@acme.example")
        );
        assert_eq!(page.next_cursor, None);
        let error = parse_account(br#"{"organization":"Acme"}"#).unwrap_err();
        assert!(error.to_string().contains("account_id"), "{error}");
    }

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let value = json!({ "b": { "z": 1, "a": [ { "y": 2, "x": 3 } ] }, "a": "é" });
        assert_eq!(
            canonical_json(&value),
            r#"{"a":"é","b":{"a":[{"x":3,"y":2}],"z":1}}"#
        );
    }
}
