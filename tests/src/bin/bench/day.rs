//! A generated, realistic day of texts, the same for the same seed.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// One attachment the simulated archive serves.
pub struct Attachment {
    pub id: String,
    pub content_type: &'static str,
    pub bytes: Vec<u8>,
}

pub struct Day {
    /// Message records as the archive's contract shows them.
    pub messages: Vec<Value>,
    pub attachments: Vec<Attachment>,
    /// The mapping file: every user's number and address.
    pub mapping_csv: String,
    /// Bytes of attachments, and how many messages are MMS, group MMS, unmapped.
    pub attachment_bytes: u64,
    pub mms: usize,
    pub group_mms: usize,
    pub unmapped: usize,
}

/// Sentences in several scripts; bodies are made of them, so lengths and encodings vary.
const SENTENCES: [&str; 12] = [
    "Running 10 minutes late, start without me.",
    "Can you send the signed contract before noon?",
    "Client call moved to 3pm 👍",
    "Trade confirmed at 101.25, 5,000 shares.",
    "Shipment arrived, two pallets damaged 📦📸",
    "مرحبا، هل الاجتماع ما زال في موعده؟",
    "שלום, אני בדרך למשרד.",
    "你好，明天的会议改到上午十点。",
    "Привет! Отчёт готов, отправлю вечером.",
    "Thanks!! 🙏🎉",
    "Please call me back on this number when you can.",
    "ok",
];

const IMAGE_TYPES: [(&str, &str); 4] = [
    ("image/jpeg", "jpg"),
    ("image/png", "png"),
    ("video/mp4", "mp4"),
    ("application/pdf", "pdf"),
];

/// The user number `n` (also their address's local part).
pub fn user_phone(n: usize) -> String {
    format!("+1212{:07}", 2_000_000 + n)
}

pub fn user_email(n: usize, domain: &str) -> String {
    format!("u{:04}@{domain}", n + 1)
}

fn outside_phone(n: usize) -> String {
    format!("+1312{:07}", 3_000_000 + n)
}

fn body(rng: &mut StdRng) -> String {
    // Most texts are short; some run to several hundred characters, a few to thousands.
    let target = match rng.random_range(0..100) {
        0..70 => rng.random_range(2..160),
        70..95 => rng.random_range(160..480),
        _ => rng.random_range(480..2000),
    };
    let mut text = String::new();
    while text.chars().count() < target {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(SENTENCES[rng.random_range(0..SENTENCES.len())]);
    }
    text
}

/// Attachment sizes: mostly tens or hundreds of KB (log-uniform from 20 KB to 2 MB).
fn attachment_size(rng: &mut StdRng) -> usize {
    let (low, high) = ((20_000f64).ln(), (2_000_000f64).ln());
    rng.random_range(low..high).exp() as usize
}

/// `messages` texts of one day (archived in `[since, since + 24 h)`) among `users` users.
pub fn generate(messages: usize, users: usize, seed: u64, domain: &str, since: i64) -> Day {
    let mut rng = StdRng::seed_from_u64(seed);
    let outsiders = (users * 4).max(10);
    let person = |rng: &mut StdRng, user: Option<usize>| match user {
        Some(n) => {
            // The archive knows some users' addresses; the mapping file knows them all.
            let email = rng.random_bool(0.5).then(|| user_email(n, domain));
            json!({ "phone": user_phone(n), "email": email, "name": format!("User {}", n + 1) })
        }
        None => json!({ "phone": outside_phone(rng.random_range(0..outsiders)),
                        "email": null, "name": null }),
    };
    let large = (messages / 10_000).max(1);
    let mut day = Day {
        messages: Vec::with_capacity(messages),
        attachments: Vec::new(),
        mapping_csv: (0..users)
            .map(|n| format!("{},{}\n", user_phone(n), user_email(n, domain)))
            .collect::<String>(),
        attachment_bytes: 0,
        mms: 0,
        group_mms: 0,
        unmapped: 0,
    };
    day.mapping_csv.insert_str(0, "phone,email\n");
    for n in 0..messages {
        let id = format!("bench-{seed}-{n:07}");
        // Spread over the day, clear of its end (archived one second after sending).
        let at = since + (n as i64 * 86_000) / messages as i64;
        let sent = chrono::DateTime::from_timestamp(at, 0).unwrap_or_default();
        let archived = sent + chrono::Duration::seconds(1);
        let unmapped = rng.random_bool(0.03);
        let is_mms = n % 20 == 0 || n < large;
        let group = is_mms && rng.random_bool(0.3);
        let user = rng.random_range(0..users);
        let (from, to) = if unmapped {
            day.unmapped += 1;
            (person(&mut rng, None), vec![person(&mut rng, None)])
        } else if group {
            let others = rng.random_range(2..6);
            let to = (0..others)
                .map(|_| {
                    let someone = rng.random_bool(0.5).then(|| rng.random_range(0..users));
                    person(&mut rng, someone)
                })
                .collect();
            (person(&mut rng, Some(user)), to)
        } else if rng.random_bool(0.2) {
            let colleague = rng.random_range(0..users);
            (
                person(&mut rng, Some(user)),
                vec![person(&mut rng, Some(colleague))],
            )
        } else {
            (person(&mut rng, Some(user)), vec![person(&mut rng, None)])
        };
        let (from, to) = if rng.random_bool(0.5) && !group {
            (to[0].clone(), vec![from])
        } else {
            (from, to)
        };
        let mut attachments = Vec::new();
        if is_mms {
            day.mms += 1;
            day.group_mms += usize::from(group);
            let count = if n < large { 1 } else { rng.random_range(1..3) };
            for a in 0..count {
                let size = if n < large {
                    rng.random_range(10_500_000..12_500_000)
                } else {
                    attachment_size(&mut rng)
                };
                let (content_type, extension) = IMAGE_TYPES[rng.random_range(0..IMAGE_TYPES.len())];
                let mut bytes = vec![0u8; size];
                rng.fill(&mut bytes[..]);
                let attachment_id = format!("{id}-a{a}");
                attachments.push(json!({
                    "id": attachment_id, "filename": format!("IMG_{n:05}_{a}.{extension}"),
                    "content_type": content_type, "size": size,
                    "sha256": archiver_core::digest::sha256_hex(&bytes),
                }));
                day.attachment_bytes += size as u64;
                day.attachments.push(Attachment {
                    id: attachment_id,
                    content_type,
                    bytes,
                });
            }
        }
        let direction = if rng.random_bool(0.5) {
            "outbound"
        } else {
            "inbound"
        };
        day.messages.push(json!({
            "id": id, "kind": if is_mms { "mms" } else { "sms" }, "direction": direction,
            "sent_at": sent.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "archived_at": archived.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "from": from, "to": to,
            "subject": if is_mms && rng.random_bool(0.3) { json!("Photos") } else { Value::Null },
            "body": body(&mut rng), "attachments": attachments,
        }));
    }
    day
}
