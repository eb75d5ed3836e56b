//! Conversion of source records into email: golden files and round trips.
//!
//! Each `fixtures/<case>.json` holds a source record, the connector's settings, its mapping file,
//! the attachment bytes to use, and the fields the email must show (`expect`). The built email
//! must equal `fixtures/<case>.eml` byte for byte; on a mismatch the runner writes
//! `<case>.actual.eml` beside it and fails. `BLESS=1 cargo test` rewrites the expected files.
//! Every built email is also parsed back with mail-parser and checked field by field.

use std::path::{Path, PathBuf};

use archiver_core::conversation::ConversationKey;
use archiver_core::digest::sha256_hex;
use archiver_core::email::{
    ConversionError, EmailOptions, EmailStream, StreamError, build_email, clean_header_text,
    conversation_id, email_layout, message_id,
};
use archiver_core::mapping::{MappingTable, parse_mapping_csv};
use archiver_core::phone::Region;
use archiver_core::resolve::MappingRules;
use archiver_core::source::{Message, parse_message};
use mail_parser::{MessageParser, MimeHeaders};
use serde_json::{Value, json};

struct Case {
    name: String,
    path: PathBuf,
    spec: Value,
    message: Message,
    table: MappingTable,
    attachments: Vec<Vec<u8>>,
}

impl Case {
    fn connector(&self, field: &str) -> &str {
        self.spec["connector"][field]
            .as_str()
            .expect("connector field")
    }

    fn options(&self) -> EmailOptions<'_> {
        EmailOptions {
            connector_id: self.connector("id"),
            network: self.connector("network"),
            address_domain: self.connector("address_domain"),
        }
    }

    fn rules(&self) -> MappingRules<'_> {
        MappingRules {
            table: &self.table,
            automatic_mapping: self.spec["connector"]["automatic_mapping"] == json!(true),
        }
    }

    fn build(&self) -> Vec<u8> {
        let slices: Vec<&[u8]> = self.attachments.iter().map(Vec::as_slice).collect();
        build_email(&self.message, &self.rules(), &slices, &self.options())
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Attachment bytes from a fixture: `{"text": ...}` as UTF-8, or `{"pattern": ..., "len": n}`
/// repeating the pattern's UTF-8 bytes to `n` bytes.
fn attachment_bytes(spec: &Value) -> Vec<u8> {
    if let Some(text) = spec["text"].as_str() {
        return text.as_bytes().to_vec();
    }
    let pattern = spec["pattern"]
        .as_str()
        .expect("text or pattern")
        .as_bytes();
    let len = spec["len"].as_u64().expect("len") as usize;
    pattern.iter().copied().cycle().take(len).collect()
}

fn load_case(path: &Path) -> Case {
    let text = std::fs::read_to_string(path).expect("fixture readable");
    let spec: Value = serde_json::from_str(&text).expect("fixture is JSON");
    let mut record = spec["record"].clone();
    let mut attachments = Vec::new();
    if let Some(items) = record["attachments"].as_array_mut() {
        for item in items {
            let id = item["id"].as_str().expect("attachment id").to_string();
            let bytes = attachment_bytes(&spec["attachments"][&id]);
            // "fill" lets a fixture state bytes, not their digest.
            if item["size"] == json!("fill") {
                item["size"] = json!(bytes.len());
            }
            if item["sha256"] == json!("fill") {
                item["sha256"] = json!(sha256_hex(&bytes));
            }
            attachments.push(bytes);
        }
    }
    let message = parse_message(&record.to_string(), Region::US).expect("fixture record valid");
    let csv = spec["mapping_csv"].as_str().unwrap_or_default();
    let table = if csv.is_empty() {
        MappingTable::default()
    } else {
        parse_mapping_csv(csv.as_bytes(), Region::US).expect("fixture mapping valid")
    };
    Case {
        name: path.file_stem().unwrap().to_string_lossy().into_owned(),
        path: path.to_path_buf(),
        spec,
        message,
        table,
        attachments,
    }
}

fn cases() -> Vec<Case> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures folder")
        .map(|entry| entry.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    let cases: Vec<Case> = paths.iter().map(|p| load_case(p)).collect();
    assert!(
        cases.len() >= 5,
        "expected the conversion fixtures, found {}",
        cases.len()
    );
    cases
}

#[test]
fn built_emails_match_their_golden_files() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut mismatches = Vec::new();
    for case in cases() {
        let built = case.build();
        let expected_path = case.path.with_extension("eml");
        let actual_path = case.path.with_extension("actual.eml");
        if bless {
            std::fs::write(&expected_path, &built).unwrap();
            continue;
        }
        let expected = std::fs::read(&expected_path)
            .unwrap_or_else(|_| panic!("{} is missing: run with BLESS=1", expected_path.display()));
        if expected == built {
            let _ = std::fs::remove_file(&actual_path);
        } else {
            std::fs::write(&actual_path, &built).unwrap();
            mismatches.push(actual_path.display().to_string());
        }
    }
    assert!(
        mismatches.is_empty(),
        "emails differ from golden files; see {mismatches:?}"
    );
}

fn header_text(parsed: &mail_parser::Message, name: &str) -> Vec<String> {
    parsed
        .headers()
        .iter()
        .filter(|h| h.name().eq_ignore_ascii_case(name))
        .map(|h| match h.value().as_text() {
            Some(text) => text.to_string(),
            None => panic!("header {name} is not text: {:?}", h.value()),
        })
        .collect()
}

fn single_header(parsed: &mail_parser::Message, name: &str) -> String {
    let values = header_text(parsed, name);
    assert_eq!(values.len(), 1, "header {name}: {values:?}");
    values.into_iter().next().unwrap()
}

fn crlf_to_lf(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

#[test]
fn every_built_email_parses_back_with_every_field() {
    for case in cases() {
        let name = &case.name;
        let built = case.build();
        let parsed = MessageParser::default()
            .parse(&built)
            .unwrap_or_else(|| panic!("{name}: unparsable"));
        let m = &case.message;
        let expect = &case.spec["expect"];
        let options = case.options();

        let id = message_id(options.connector_id, &m.id, options.address_domain);
        assert_eq!(parsed.message_id(), Some(id.as_str()), "{name}: Message-ID");
        let thread = conversation_id(
            &ConversationKey::of(m),
            options.connector_id,
            options.address_domain,
        );
        assert_eq!(
            parsed.in_reply_to().as_text(),
            Some(thread.as_str()),
            "{name}"
        );
        assert_eq!(
            parsed.references().as_text(),
            Some(thread.as_str()),
            "{name}"
        );
        assert_eq!(
            parsed.date().map(|d| d.to_timestamp()),
            Some(m.sent_at.timestamp()),
            "{name}: Date"
        );

        let from = parsed.from().and_then(|a| a.first()).expect("From");
        assert_eq!(from.name(), expect["from"][0].as_str(), "{name}: From name");
        assert_eq!(
            from.address(),
            expect["from"][1].as_str(),
            "{name}: From address"
        );
        let to: Vec<(Option<&str>, Option<&str>)> = parsed
            .to()
            .expect("To")
            .iter()
            .map(|a| (a.name(), a.address()))
            .collect();
        let expected_to: Vec<(Option<&str>, Option<&str>)> = expect["to"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pair| (pair[0].as_str(), pair[1].as_str()))
            .collect();
        assert_eq!(to, expected_to, "{name}: To");
        assert_eq!(
            parsed.subject(),
            expect["subject"].as_str(),
            "{name}: Subject"
        );

        // An MMS subject opens the body, as the email's subject names the conversation.
        let body = parsed.body_text(0).unwrap_or_default();
        let mms_subject = parsed
            .header("X-Archive-Mms-Subject")
            .and_then(|h| h.as_text());
        let expected_body = match mms_subject {
            Some(subject) => format!("Subject: {subject}\n\n{}", m.body),
            None => m.body.clone(),
        };
        assert_eq!(mms_subject, expect["mms_subject"].as_str(), "{name}");
        assert_eq!(
            crlf_to_lf(&body),
            crlf_to_lf(&expected_body),
            "{name}: body"
        );

        let attachments: Vec<_> = parsed.attachments().collect();
        assert_eq!(
            attachments.len(),
            case.attachments.len(),
            "{name}: attachments"
        );
        for (i, (part, bytes)) in attachments.iter().zip(&case.attachments).enumerate() {
            assert_eq!(
                part.contents(),
                bytes.as_slice(),
                "{name}: attachment {i} bytes"
            );
            assert_eq!(
                part.attachment_name(),
                expect["attachment_names"][i].as_str(),
                "{name}: attachment {i} name"
            );
            let content_type = part.content_type().expect("attachment content type");
            let essence = format!(
                "{}/{}",
                content_type.ctype(),
                content_type.subtype().unwrap_or_default()
            );
            assert_eq!(
                Some(essence.as_str()),
                expect["attachment_types"][i].as_str(),
                "{name}"
            );
        }

        let evidence = [
            ("X-Archive-Source-Id", m.id.clone()),
            ("X-Archive-Network", options.network.to_string()),
            ("X-Archive-Connector", options.connector_id.to_string()),
            ("X-Archive-Kind", m.kind.as_str().to_string()),
            ("X-Archive-Direction", m.direction.as_str().to_string()),
            ("X-Archive-From-Number", m.from.address.to_string()),
            ("X-Archive-Record-SHA256", m.record_sha256.clone()),
        ];
        for (header, value) in evidence {
            assert_eq!(single_header(&parsed, header), value, "{name}: {header}");
        }
        let to_numbers: Vec<String> = m.to.iter().map(|p| p.address.to_string()).collect();
        assert_eq!(
            header_text(&parsed, "X-Archive-To-Number"),
            to_numbers,
            "{name}"
        );
        let sent =
            chrono::DateTime::parse_from_rfc3339(&single_header(&parsed, "X-Archive-Sent-At"));
        assert_eq!(sent.unwrap(), m.sent_at, "{name}: X-Archive-Sent-At");
        let archived =
            chrono::DateTime::parse_from_rfc3339(&single_header(&parsed, "X-Archive-Archived-At"));
        assert_eq!(
            archived.unwrap(),
            m.archived_at,
            "{name}: X-Archive-Archived-At"
        );
        let digests: Vec<String> = case.attachments.iter().map(|b| sha256_hex(b)).collect();
        assert_eq!(
            header_text(&parsed, "X-Archive-Attachment-SHA256"),
            digests,
            "{name}"
        );
        for ((part, meta), digest) in attachments.iter().zip(&m.attachments).zip(&digests) {
            let part_header = |header: &str| {
                part.headers()
                    .iter()
                    .find(|h| h.name().eq_ignore_ascii_case(header))
                    .and_then(|h| h.value().as_text())
                    .map(str::to_string)
            };
            assert_eq!(
                part_header("X-Archive-Attachment-Id"),
                Some(meta.id.clone()),
                "{name}"
            );
            assert_eq!(
                part_header("X-Archive-Attachment-SHA256").as_ref(),
                Some(digest),
                "{name}"
            );
        }
    }
}

/// The header block of a raw email, up to the first empty line.
fn header_block(raw: &[u8]) -> &[u8] {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    &raw[..end + 2]
}

#[test]
fn every_line_ends_with_crlf_and_headers_are_plain_ascii() {
    for case in cases() {
        let built = case.build();
        for (i, &byte) in built.iter().enumerate() {
            if byte == b'\n' {
                assert!(
                    i > 0 && built[i - 1] == b'\r',
                    "{}: bare LF at byte {i}",
                    case.name
                );
            }
        }
        let headers = header_block(&built);
        assert!(
            headers.iter().all(|&b| b.is_ascii() && b != 0),
            "{}: header block must be 7-bit ASCII without NUL",
            case.name
        );
    }
}

#[test]
fn hostile_input_cannot_add_headers_or_parts() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "hostile-input")
        .unwrap();
    let built = case.build();
    let parsed = MessageParser::default().parse(&built).unwrap();
    let names: Vec<String> = parsed
        .headers()
        .iter()
        .map(|h| h.name().to_ascii_lowercase())
        .collect();
    for injected in ["bcc", "x-injected", "x-evil", "content-type"] {
        let count = names.iter().filter(|n| *n == injected).count();
        let allowed = usize::from(injected == "content-type");
        assert_eq!(
            count, allowed,
            "header {injected} appears {count} times: {names:?}"
        );
    }
    assert!(parsed.bcc().is_none());
    // One text part and the one attachment: the fake boundary in the body split nothing.
    assert_eq!(parsed.parts.len(), 3, "root, text and attachment");
    assert_eq!(parsed.text_body_count(), 1);
}

#[test]
fn a_100_kb_body_round_trips_unchanged() {
    let mut case = cases()
        .into_iter()
        .find(|c| c.name == "unicode-text")
        .unwrap();
    let line = "Quarterly numbers 📈 — שלום — 你好 — café\n";
    case.message.body = line.repeat(100 * 1024 / line.len() + 1);
    assert!(case.message.body.len() >= 100 * 1024);
    let built = case.build();
    let parsed = MessageParser::default().parse(&built).unwrap();
    assert_eq!(crlf_to_lf(&parsed.body_text(0).unwrap()), case.message.body);
    let longest_line = built.split(|&b| b == b'\n').map(<[u8]>::len).max().unwrap();
    assert!(
        longest_line <= 998,
        "RFC 5322 line limit, found {longest_line}"
    );
}

#[test]
fn building_is_deterministic_and_ids_depend_on_connector_and_source_id() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "mms-group-inbound")
        .unwrap();
    assert_eq!(case.build(), case.build());
    let a = message_id("att-main", "m-1", "sms.archive.invalid");
    assert_eq!(a, message_id("att-main", "m-1", "sms.archive.invalid"));
    assert_ne!(a, message_id("att-other", "m-1", "sms.archive.invalid"));
    assert_ne!(a, message_id("att-main", "m-2", "sms.archive.invalid"));
    assert!(a.ends_with("@sms.archive.invalid"));
}

#[test]
fn a_group_listed_in_another_order_threads_with_the_first() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "mms-group-inbound")
        .unwrap();
    let mut reordered = case.spec["record"].clone();
    let alice = reordered["to"][0].clone();
    reordered["from"] = alice;
    reordered["to"] = json!([
        { "phone": "+12025550102", "email": "bob@acme.example", "name": "Bob Ruiz" },
        { "phone": "13125550199" }
    ]);
    reordered["id"] = json!("m-reply");
    reordered["attachments"] = json!([]);
    let reply = parse_message(&reordered.to_string(), Region::US).unwrap();
    let built = build_email(&reply, &case.rules(), &[], &case.options()).unwrap();
    let parsed = MessageParser::default().parse(&built).unwrap();
    let first = case.build();
    let first = MessageParser::default().parse(&first).unwrap();
    assert_eq!(
        parsed.in_reply_to().as_text(),
        first.in_reply_to().as_text()
    );
    assert_ne!(parsed.message_id(), first.message_id());
}

#[test]
fn attachment_bytes_that_do_not_match_the_source_are_refused() {
    let case = cases()
        .into_iter()
        .find(|c| c.name == "mms-group-inbound")
        .unwrap();
    let (rules, options) = (case.rules(), case.options());
    let mut tampered = case.attachments.clone();
    tampered[0][10] ^= 0xff;
    let slices: Vec<&[u8]> = tampered.iter().map(Vec::as_slice).collect();
    assert_eq!(
        build_email(&case.message, &rules, &slices, &options),
        Err(ConversionError::AttachmentDigest {
            id: "a-19".into(),
            expected: case.message.attachments[0].sha256.clone()
        })
    );
    let short = [&case.attachments[0][..10], case.attachments[1].as_slice()];
    assert!(matches!(
        build_email(&case.message, &rules, &short, &options),
        Err(ConversionError::AttachmentSize { .. })
    ));
    assert!(matches!(
        build_email(&case.message, &rules, &[], &options),
        Err(ConversionError::AttachmentCount {
            expected: 2,
            actual: 0
        })
    ));
}

#[test]
fn header_text_is_cleaned_of_line_breaks_and_controls() {
    assert_eq!(
        clean_header_text("a\r\nBcc: x\u{0}\u{2028}b  c "),
        "a Bcc: x b c"
    );
    assert_eq!(clean_header_text("\r\n"), "");
    assert_eq!(clean_header_text("שלום 🎉"), "שלום 🎉");
}

/// The case's email streamed with attachments read in chunks of `chunk` bytes.
fn streamed(case: &Case, chunk: usize) -> Result<Vec<u8>, StreamError> {
    let layout = email_layout(&case.message, &case.rules(), &case.options());
    let stream = EmailStream::new(&layout, |attachment, n| {
        let bytes = &case.attachments[attachment];
        Ok(bytes
            .chunks(chunk)
            .nth(n)
            .map(<[u8]>::to_vec)
            .unwrap_or_default())
    });
    let mut email = Vec::new();
    for piece in stream {
        email.extend_from_slice(&piece?);
    }
    assert_eq!(email.len() as u64, layout.len(), "{}", case.name);
    Ok(email)
}

#[test]
fn streamed_emails_equal_built_ones_whatever_the_chunk_size() {
    let mut cases = cases();
    // Attachment sizes around the 57-byte base64 line, and one of several chunks.
    let mut edges = cases
        .iter()
        .find(|c| c.name == "mms-group-inbound")
        .map(|c| load_case(&c.path))
        .unwrap();
    edges.name = "edges".into();
    let sizes = [0usize, 1, 56, 57, 58, 114, 300_000];
    let template = edges.message.attachments[0].clone();
    edges.message.attachments = sizes
        .iter()
        .enumerate()
        .map(|(n, size)| {
            let mut meta = template.clone();
            meta.id = format!("a-{n}");
            meta.size = *size as u64;
            meta
        })
        .collect();
    edges.attachments = sizes
        .iter()
        .map(|size| (0..*size).map(|i| (i * 7 % 251) as u8).collect())
        .collect();
    for (meta, bytes) in edges.message.attachments.iter_mut().zip(&edges.attachments) {
        meta.sha256 = sha256_hex(bytes);
    }
    cases.push(edges);
    for case in &cases {
        let built = case.build();
        for chunk in [1, 57, 1000, 262_116] {
            assert!(
                streamed(case, chunk).unwrap() == built,
                "{} in chunks of {chunk}",
                case.name
            );
        }
    }
}

#[test]
fn a_wrong_chunk_stops_the_stream_before_the_email_ends() {
    let mut case = cases()
        .into_iter()
        .find(|c| !c.attachments.is_empty())
        .unwrap();
    let built = case.build();
    case.attachments[0][3] ^= 0x01;
    let error = streamed(&case, 1000).unwrap_err();
    assert!(
        matches!(
            error,
            StreamError::Conversion(ConversionError::AttachmentDigest { .. })
        ),
        "{error:?}"
    );
    // Bytes short of the announced size are an error too.
    case.attachments[0][3] ^= 0x01;
    case.attachments[0].pop();
    assert!(streamed(&case, 1000).is_err());
    assert!(!built.is_empty());
}
