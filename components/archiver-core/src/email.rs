//! One SMS or MMS as an RFC 5322/MIME email that stands as evidence.
//!
//! - `From`/`To` carry every participant: the mapped user's address where known, else a stable
//!   synthetic address under the configured domain (`13125550199@sms.archive.invalid`).
//! - `Message-ID` is derived from the connector and the source id, so a re-run builds the same
//!   message; `References`/`In-Reply-To` point at one id per conversation, so clients thread it.
//! - `X-Archive-*` headers record the source facts and SHA-256 digests of the source record and
//!   of each attachment.
//! - Nothing from the source reaches a header raw: control characters (CR, LF, NUL...) are
//!   replaced, non-ASCII text is RFC 2047-encoded by mail-builder, content types are checked.
//! - The output is byte-for-byte deterministic: the MIME boundary is derived from the record's
//!   digest, which no body can contain (it would have to contain its own hash).

use base64::Engine;
use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address;
use mail_builder::headers::content_type::ContentType;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::text::Text;
use mail_builder::mime::{BodyPart, MimePart};

use crate::conversation::ConversationKey;
use crate::digest::{StreamingSha256, fields_sha256_hex, sha256_hex};
use crate::phone::PhoneAddress;
use crate::resolve::MappingRules;
use crate::source::{Message, Participant};

/// How many participants a generated subject names before it says "and N more".
const SUBJECT_NAMES: usize = 5;
/// Hex digits of a digest used in ids: 128 bits, ample against collision.
const ID_HEX_DIGITS: usize = 32;

/// Per-connector settings of the conversion.
#[derive(Debug, Clone, Copy)]
pub struct EmailOptions<'a> {
    pub connector_id: &'a str,
    /// The mobile network or carrier, e.g. `AT&T`.
    pub network: &'a str,
    /// Domain of synthetic addresses and ids, e.g. `sms.archive.invalid`.
    pub address_domain: &'a str,
}

/// Why an email cannot be built; the item must be reported, never archived wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConversionError {
    #[error("expected the bytes of {expected} attachment(s), got {actual}")]
    AttachmentCount { expected: usize, actual: usize },
    #[error("attachment {id} has {actual} bytes, the source announced {expected}")]
    AttachmentSize {
        id: String,
        expected: u64,
        actual: u64,
    },
    #[error("attachment {id} does not match its SHA-256 {expected}")]
    AttachmentDigest { id: String, expected: String },
    #[error("{0}")]
    Stream(String),
}

/// The deterministic `Message-ID` (without angle brackets) of a source message.
pub fn message_id(connector_id: &str, source_id: &str, address_domain: &str) -> String {
    let digest = fields_sha256_hex(&["message", connector_id, source_id]);
    format!("{}@{}", &digest[..ID_HEX_DIGITS], address_domain)
}

/// The id every message of a conversation refers to, so mail clients thread them together.
pub fn conversation_id(key: &ConversationKey, connector_id: &str, address_domain: &str) -> String {
    format!(
        "conversation.{}@{}",
        &key.digest(connector_id)[..ID_HEX_DIGITS],
        address_domain
    )
}

/// Builds the email for `message`. `attachments` holds the bytes of each of the message's
/// attachments, in order; each is checked against the size and digest the source announced.
pub fn build_email(
    message: &Message,
    rules: &MappingRules<'_>,
    attachments: &[&[u8]],
    options: &EmailOptions<'_>,
) -> Result<Vec<u8>, ConversionError> {
    verify_attachments(message, attachments)?;
    let layout = email_layout(message, rules, options);
    let mut email = Vec::with_capacity(layout.len() as usize);
    let stream = EmailStream::new(&layout, |attachment, _chunk| {
        Ok(attachments[attachment].to_vec())
    });
    for piece in stream {
        email.extend_from_slice(&piece.map_err(|e| ConversionError::Stream(e.to_string()))?);
    }
    Ok(email)
}

/// An email with its attachments' bodies left out: what goes around them, and what they are.
/// Writing it never needs an attachment whole in memory (see [`EmailStream`]).
#[derive(Debug, Clone)]
pub struct EmailLayout {
    /// The bytes before the first attachment's body, between consecutive ones, and after the
    /// last: one more than there are attachments.
    pieces: Vec<Vec<u8>>,
    /// Each attachment's announced size and SHA-256.
    attachments: Vec<(String, u64, String)>,
}

impl EmailLayout {
    /// The length of the whole email.
    pub fn len(&self) -> u64 {
        let pieces: u64 = self.pieces.iter().map(|p| p.len() as u64).sum();
        let bodies: u64 = self
            .attachments
            .iter()
            .map(|(_, size, _)| base64_lines_len(*size))
            .sum();
        pieces + bodies
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The email of `message` as an [`EmailLayout`].
pub fn email_layout(
    message: &Message,
    rules: &MappingRules<'_>,
    options: &EmailOptions<'_>,
) -> EmailLayout {
    let key = ConversationKey::of(message);
    let thread_id = conversation_id(&key, options.connector_id, options.address_domain);
    let address_of = |p: &Participant| mail_address(p, rules, message, options);
    let recipients: Vec<Address> = message.to.iter().map(address_of).collect();

    let mut builder = MessageBuilder::new()
        .message_id(MessageId::new(message_id(
            options.connector_id,
            &message.id,
            options.address_domain,
        )))
        .date(Date::new(message.sent_at.timestamp()))
        .from(address_of(&message.from))
        .to(Address::new_list(recipients))
        .subject(subject(message))
        .in_reply_to(MessageId::new(thread_id.clone()))
        .references(MessageId::new(thread_id));
    for (name, value) in evidence_headers(message, options) {
        builder = builder.header(name, Text::new(value));
    }
    // The MMS subject as the network gave it (the email's subject names the conversation).
    if let Some(mms_subject) = message.subject.as_deref().map(clean_header_text)
        && !mms_subject.is_empty()
    {
        builder = builder.header("X-Archive-Mms-Subject", Text::new(mms_subject));
    }

    // Each attachment's body is a placeholder no message can contain (it holds the digest of
    // the record itself), in a part marked base64 so it is written as is; the placeholders are
    // then cut out, and the base64 lines of the bytes go in their place.
    let digest = &message.record_sha256[..ID_HEX_DIGITS];
    let placeholder = |n: usize| format!("=_archive_attachment_{n}_{digest}");
    let text = text_part(body_text(message));
    let body = if message.attachments.is_empty() {
        text
    } else {
        let mut parts = Vec::with_capacity(message.attachments.len() + 1);
        parts.push(text);
        for (n, meta) in message.attachments.iter().enumerate() {
            let filename = match clean_header_text(&meta.filename) {
                name if name.is_empty() => format!("attachment-{}", clean_header_text(&meta.id)),
                name => name,
            };
            parts.push(
                MimePart::new(
                    content_type(&meta.content_type),
                    placeholder(n).into_bytes(),
                )
                .attachment(filename)
                .header(
                    "X-Archive-Attachment-Id",
                    Text::new(clean_header_text(&meta.id)),
                )
                .header(
                    "X-Archive-Attachment-SHA256",
                    Text::new(meta.sha256.clone()),
                )
                .transfer_encoding("base64"),
            );
        }
        let boundary = format!("=_archive_{digest}");
        MimePart::new(
            ContentType::new("multipart/mixed").attribute("boundary", boundary),
            parts,
        )
    };
    let mut rest = builder.body(body).write_to_vec().unwrap_or_default();
    let mut pieces = Vec::with_capacity(message.attachments.len() + 1);
    for n in 0..message.attachments.len() {
        let token = placeholder(n);
        let at = rest
            .windows(token.len())
            .position(|window| window == token.as_bytes())
            .unwrap_or(rest.len());
        let after = rest.split_off(at);
        pieces.push(std::mem::replace(
            &mut rest,
            after.get(token.len()..).unwrap_or_default().to_vec(),
        ));
    }
    pieces.push(rest);
    EmailLayout {
        pieces,
        attachments: message
            .attachments
            .iter()
            .map(|a| (a.id.clone(), a.size, a.sha256.clone()))
            .collect(),
    }
}

/// Bytes of base64 input per MIME line (76 characters).
const BASE64_LINE_INPUT: usize = 57;

/// The length of `size` bytes as MIME base64 lines, each ended by CRLF.
pub fn base64_lines_len(size: u64) -> u64 {
    let line = BASE64_LINE_INPUT as u64;
    let (full, rest) = (size / line, size % line);
    full * 78
        + if rest > 0 {
            rest.div_ceil(3) * 4 + 2
        } else {
            0
        }
}

/// MIME base64 written piece by piece: 57 input bytes per line, the remainder carried over.
#[derive(Debug, Default)]
struct Base64Lines {
    carry: Vec<u8>,
}

impl Base64Lines {
    fn update(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) {
        if !self.carry.is_empty() {
            let take = (BASE64_LINE_INPUT - self.carry.len()).min(bytes.len());
            self.carry.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.carry.len() < BASE64_LINE_INPUT {
                return;
            }
            let line = std::mem::take(&mut self.carry);
            write_line(&line, out);
        }
        let mut lines = bytes.chunks_exact(BASE64_LINE_INPUT);
        for line in &mut lines {
            write_line(line, out);
        }
        self.carry.extend_from_slice(lines.remainder());
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.carry.is_empty() {
            let line = std::mem::take(&mut self.carry);
            write_line(&line, out);
        }
    }
}

fn write_line(line: &[u8], out: &mut Vec<u8>) {
    let mut encoded = String::with_capacity(78);
    base64::engine::general_purpose::STANDARD.encode_string(line, &mut encoded);
    out.extend_from_slice(encoded.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Why a streamed email stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("reading attachment {id}: {reason}")]
    Read { id: String, reason: String },
    #[error(transparent)]
    Conversion(#[from] ConversionError),
}

/// The bytes of an [`EmailLayout`]'s email in pieces of at most one attachment chunk (as
/// base64), reading attachment `n`'s chunk `k` through `read(n, k)` only when it is due. Each
/// attachment is checked against its announced size and SHA-256 as it passes: a mismatch ends
/// the stream with an error, so a wrong email is never finished.
pub struct EmailStream<'a, F> {
    layout: &'a EmailLayout,
    read: F,
    /// Next piece of the layout to give, or the attachment being streamed.
    piece: usize,
    attachment: Option<Attachment>,
    failed: bool,
}

struct Attachment {
    index: usize,
    chunk: usize,
    received: u64,
    digest: StreamingSha256,
    encoder: Base64Lines,
}

impl<'a, F> EmailStream<'a, F>
where
    F: FnMut(usize, usize) -> Result<Vec<u8>, String>,
{
    pub fn new(layout: &'a EmailLayout, read: F) -> Self {
        EmailStream {
            layout,
            read,
            piece: 0,
            attachment: None,
            failed: false,
        }
    }

    fn next_attachment_piece(&mut self) -> Result<Vec<u8>, StreamError> {
        let Some(current) = self.attachment.as_mut() else {
            return Ok(Vec::new());
        };
        let (id, size, sha256) = &self.layout.attachments[current.index];
        let mut out = Vec::new();
        if current.received < *size {
            let bytes =
                (self.read)(current.index, current.chunk).map_err(|reason| StreamError::Read {
                    id: id.clone(),
                    reason,
                })?;
            current.chunk += 1;
            current.received += bytes.len() as u64;
            if bytes.is_empty() || current.received > *size {
                return Err(ConversionError::AttachmentSize {
                    id: id.clone(),
                    expected: *size,
                    actual: current.received,
                }
                .into());
            }
            current.digest.update(&bytes);
            current.encoder.update(&bytes, &mut out);
        }
        if current.received == *size {
            current.encoder.finish(&mut out);
            let digest = std::mem::take(&mut current.digest).finish_hex();
            if digest != *sha256 {
                return Err(ConversionError::AttachmentDigest {
                    id: id.clone(),
                    expected: sha256.clone(),
                }
                .into());
            }
            self.attachment = None;
        }
        Ok(out)
    }
}

impl<F> Iterator for EmailStream<'_, F>
where
    F: FnMut(usize, usize) -> Result<Vec<u8>, String>,
{
    type Item = Result<Vec<u8>, StreamError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.attachment.is_some() {
            let piece = self.next_attachment_piece();
            self.failed = piece.is_err();
            return Some(piece);
        }
        let piece = self.layout.pieces.get(self.piece)?.clone();
        if self.piece < self.layout.attachments.len() {
            self.attachment = Some(Attachment {
                index: self.piece,
                chunk: 0,
                received: 0,
                digest: StreamingSha256::default(),
                encoder: Base64Lines::default(),
            });
        }
        self.piece += 1;
        Some(Ok(piece))
    }
}

fn verify_attachments(message: &Message, attachments: &[&[u8]]) -> Result<(), ConversionError> {
    if attachments.len() != message.attachments.len() {
        return Err(ConversionError::AttachmentCount {
            expected: message.attachments.len(),
            actual: attachments.len(),
        });
    }
    for (meta, bytes) in message.attachments.iter().zip(attachments) {
        if bytes.len() as u64 != meta.size {
            return Err(ConversionError::AttachmentSize {
                id: meta.id.clone(),
                expected: meta.size,
                actual: bytes.len() as u64,
            });
        }
        if sha256_hex(bytes) != meta.sha256 {
            return Err(ConversionError::AttachmentDigest {
                id: meta.id.clone(),
                expected: meta.sha256.clone(),
            });
        }
    }
    Ok(())
}

/// A participant's display name and address as the email names them.
pub fn participant_mailbox(
    participant: &Participant,
    rules: &MappingRules<'_>,
    message: &Message,
    options: &EmailOptions<'_>,
) -> (String, String) {
    let email = match rules.resolve(participant, message.sent_at).email() {
        Some(email) => email.to_string(),
        None => synthetic_address(&participant.address, options.address_domain),
    };
    (display_name(participant), email)
}

fn mail_address<'x>(
    participant: &Participant,
    rules: &MappingRules<'_>,
    message: &Message,
    options: &EmailOptions<'_>,
) -> Address<'x> {
    let (name, email) = participant_mailbox(participant, rules, message, options);
    Address::new_address(Some(name), email)
}

/// A stable address for a participant who is not a user.
pub fn synthetic_address(address: &PhoneAddress, domain: &str) -> String {
    match address.local_part() {
        local if local.is_empty() => {
            let digest = sha256_hex(address.key().as_bytes());
            format!("id-{}@{domain}", &digest[..16])
        }
        local => format!("{local}@{domain}"),
    }
}

fn display_name(participant: &Participant) -> String {
    match participant.name.as_deref().map(clean_header_text) {
        Some(name) if !name.is_empty() => name,
        _ => participant.address.to_string(),
    }
}

/// Who the conversation is with: the same for every message of a conversation, SMS or MMS,
/// whatever its MMS subject or the names the network gave, because Cyrus, Exchange and Gmail
/// join a thread only while the normalised subject stays the same. Built from the conversation
/// key alone (every participant's number, sorted); an MMS subject goes into the body and the
/// evidence headers instead.
pub fn subject(message: &Message) -> String {
    let key = ConversationKey::of(message);
    let numbers = key.participants();
    let shown = numbers.len().min(SUBJECT_NAMES);
    let mut subject = format!("Texts with {}", numbers[..shown].join(", "));
    if numbers.len() > shown {
        subject.push_str(&format!(" and {} more", numbers.len() - shown));
    }
    subject
}

/// The text part's content: the MMS subject first, when there is one, so a reader sees it
/// though the email's subject names the conversation.
pub fn body_text(message: &Message) -> String {
    let body = normalize_line_breaks(&message.body);
    match message.subject.as_deref().map(clean_header_text) {
        Some(subject) if !subject.is_empty() => format!("Subject: {subject}\r\n\r\n{body}"),
        _ => body,
    }
}

/// One value per header, each short enough never to need encoding or folding.
pub fn evidence_headers(
    message: &Message,
    options: &EmailOptions<'_>,
) -> Vec<(&'static str, String)> {
    let time =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true);
    let mut headers = vec![
        ("X-Archive-Source-Id", clean_header_text(&message.id)),
        ("X-Archive-Network", clean_header_text(options.network)),
        (
            "X-Archive-Connector",
            clean_header_text(options.connector_id),
        ),
        ("X-Archive-Kind", message.kind.as_str().to_string()),
        (
            "X-Archive-Direction",
            message.direction.as_str().to_string(),
        ),
        ("X-Archive-From-Number", message.from.address.to_string()),
    ];
    for recipient in &message.to {
        headers.push(("X-Archive-To-Number", recipient.address.to_string()));
    }
    headers.extend([
        ("X-Archive-Sent-At", time(message.sent_at)),
        ("X-Archive-Archived-At", time(message.archived_at)),
        ("X-Archive-Record-SHA256", message.record_sha256.clone()),
    ]);
    for attachment in &message.attachments {
        headers.push(("X-Archive-Attachment-SHA256", attachment.sha256.clone()));
    }
    headers
}

/// Text safe for any header: control characters (CR, LF, NUL, tab...) and Unicode line and
/// paragraph separators become spaces, runs of spaces collapse, ends are trimmed.
pub fn clean_header_text(text: &str) -> String {
    let mut clean = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') {
            ' '
        } else {
            c
        };
        if c == ' ' && (clean.is_empty() || clean.ends_with(' ')) {
            continue;
        }
        clean.push(c);
    }
    clean.truncate(clean.trim_end().len());
    clean
}

/// The body as `text/plain` UTF-8. mail-builder sends a body with NUL or other control
/// characters as 7bit, which RFC 5322 forbids and servers refuse, so such a body is base64.
fn text_part<'x>(body: String) -> MimePart<'x> {
    let has_control = body
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\r' | '\n' | '\t'));
    if !has_control {
        return MimePart::new("text/plain", body);
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(body.as_bytes());
    let mut wrapped = String::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    for line in encoded.as_bytes().chunks(76) {
        wrapped.push_str(std::str::from_utf8(line).unwrap_or_default());
        wrapped.push_str("\r\n");
    }
    MimePart::new(
        ContentType::new("text/plain").attribute("charset", "utf-8"),
        BodyPart::Text(wrapped.into()),
    )
    .transfer_encoding("base64")
}

/// Bodies are sent with CRLF line ends, whatever the phone used.
fn normalize_line_breaks(body: &str) -> String {
    let mut out = String::with_capacity(body.len() + body.len() / 32);
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("\r\n");
            }
            '\n' => out.push_str("\r\n"),
            c => out.push(c),
        }
    }
    out
}

/// A `type/subtype` of RFC 2045 tokens, lowercased; anything else is sent as octet-stream.
fn content_type(declared: &str) -> String {
    let essence = declared
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
    };
    match essence.split_once('/') {
        Some((kind, sub)) if is_token(kind) && is_token(sub) && kind != "multipart" => essence,
        _ => "application/octet-stream".into(),
    }
}
