//! Who among a message's participants is a user, and who gets a copy.
//!
//! The rule, as the seed applies it: the uploaded mapping first (the row valid when the message
//! was sent); then, if automatic mapping is on, the participant's `email` property; otherwise the
//! participant is unmapped. A message goes to every mapped user once, however often they appear;
//! a message with no mapped participant is not imported and is reported as unmapped.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::mapping::MappingTable;
use crate::source::{Message, Participant};

/// How one participant was resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Resolution {
    /// A row of the uploaded mapping names the mailbox.
    Mapped {
        email: String,
        by: MappedBy,
    },
    Unmapped {
        reason: UnmappedReason,
    },
}

impl Resolution {
    pub fn email(&self) -> Option<&str> {
        match self {
            Resolution::Mapped { email, .. } => Some(email),
            Resolution::Unmapped { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MappedBy {
    /// The uploaded mapping file.
    MappingFile,
    /// The participant's `email` property (automatic mapping).
    EmailProperty,
}

/// Why a participant is not a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedReason {
    #[error("not in the mapping file and automatic mapping is off")]
    NotInMappingAutomaticOff,
    #[error("not in the mapping file and has no email property")]
    NoEmailProperty,
    #[error("not in the mapping file and its email property {0:?} is not a valid address")]
    InvalidEmailProperty(String),
}

/// The mapping rules of one connector.
#[derive(Debug, Clone, Copy)]
pub struct MappingRules<'a> {
    pub table: &'a MappingTable,
    pub automatic_mapping: bool,
}

/// A user who gets a copy, and which participants of the message they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    pub email: String,
    pub by: MappedBy,
    /// Normalised addresses of the participants that resolved to this user.
    pub as_participants: Vec<String>,
}

/// A participant that is nobody's mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnmappedParticipant {
    pub address: String,
    pub reason: UnmappedReason,
}

/// Everyone of one message, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// One entry per user, in the order the users first appear in the message.
    pub recipients: Vec<Recipient>,
    pub unmapped: Vec<UnmappedParticipant>,
}

impl Delivery {
    /// An item with no mapped participant is not imported.
    pub fn is_unmapped(&self) -> bool {
        self.recipients.is_empty()
    }

    /// A one-line reason for an item that goes to no one.
    pub fn unmapped_summary(&self) -> String {
        let parts: Vec<String> = self
            .unmapped
            .iter()
            .map(|p| format!("{}: {}", p.address, p.reason))
            .collect();
        format!("no participant maps to a user ({})", parts.join("; "))
    }
}

impl MappingRules<'_> {
    /// Resolves one participant as of `at` (the message's `sent_at`).
    pub fn resolve(&self, participant: &Participant, at: DateTime<Utc>) -> Resolution {
        if let Some(email) = self.table.lookup(&participant.address, at) {
            return Resolution::Mapped {
                email: email.to_string(),
                by: MappedBy::MappingFile,
            };
        }
        if !self.automatic_mapping {
            return Resolution::Unmapped {
                reason: UnmappedReason::NotInMappingAutomaticOff,
            };
        }
        match participant.email.as_deref().map(str::trim) {
            None | Some("") => Resolution::Unmapped {
                reason: UnmappedReason::NoEmailProperty,
            },
            Some(email) if is_deliverable_address(email) => Resolution::Mapped {
                email: email.to_string(),
                by: MappedBy::EmailProperty,
            },
            Some(email) => Resolution::Unmapped {
                reason: UnmappedReason::InvalidEmailProperty(email.to_string()),
            },
        }
    }

    /// Resolves every participant of `message` and groups them by user.
    pub fn delivery(&self, message: &Message) -> Delivery {
        let mut recipients: Vec<Recipient> = Vec::new();
        let mut unmapped = Vec::new();
        for participant in message.participants() {
            let address = participant.address.key();
            match self.resolve(participant, message.sent_at) {
                Resolution::Mapped { email, by } => {
                    match recipients
                        .iter_mut()
                        .find(|r| r.email.eq_ignore_ascii_case(&email))
                    {
                        Some(existing) => {
                            if !existing.as_participants.contains(&address) {
                                existing.as_participants.push(address);
                            }
                        }
                        None => recipients.push(Recipient {
                            email,
                            by,
                            as_participants: vec![address],
                        }),
                    }
                }
                Resolution::Unmapped { reason } => {
                    if !unmapped
                        .iter()
                        .any(|u: &UnmappedParticipant| u.address == address)
                    {
                        unmapped.push(UnmappedParticipant { address, reason });
                    }
                }
            }
        }
        Delivery {
            recipients,
            unmapped,
        }
    }
}

/// An address we can deliver to and write into a header without quoting surprises.
pub fn is_deliverable_address(email: &str) -> bool {
    email_address::EmailAddress::is_valid(email)
        && !email.contains(['<', '>', ',', '"', ' '])
        && !email.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::parse_mapping_csv;
    use crate::phone::Region;
    use crate::testing::{message, sms_record};
    use serde_json::json;

    fn table(csv: &str) -> MappingTable {
        parse_mapping_csv(csv.as_bytes(), Region::US).unwrap()
    }

    fn emails(delivery: &Delivery) -> Vec<&str> {
        delivery
            .recipients
            .iter()
            .map(|r| r.email.as_str())
            .collect()
    }

    #[test]
    fn maps_number_before_email_property() {
        let t = table("phone,email\n+12025550101,alice.ng@corp.example\n");
        let rules = MappingRules {
            table: &t,
            automatic_mapping: true,
        };
        let d = rules.delivery(&message(&sms_record()));
        assert_eq!(emails(&d), ["alice.ng@corp.example"]);
        assert_eq!(d.recipients[0].by, MappedBy::MappingFile);
    }

    #[test]
    fn falls_back_to_the_email_property_only_when_automatic_mapping_is_on() {
        let t = MappingTable::default();
        let on = MappingRules {
            table: &t,
            automatic_mapping: true,
        };
        let d = on.delivery(&message(&sms_record()));
        assert_eq!(emails(&d), ["alice@acme.example"]);
        assert_eq!(d.recipients[0].by, MappedBy::EmailProperty);
        assert_eq!(d.unmapped.len(), 1);
        assert_eq!(d.unmapped[0].address, "+13125550199");
        assert_eq!(d.unmapped[0].reason, UnmappedReason::NoEmailProperty);

        let off = MappingRules {
            table: &t,
            automatic_mapping: false,
        };
        let d = off.delivery(&message(&sms_record()));
        assert!(d.is_unmapped());
        assert_eq!(
            d.unmapped[0].reason,
            UnmappedReason::NotInMappingAutomaticOff
        );
        assert!(
            d.unmapped_summary()
                .contains("+12025550101: not in the mapping file")
        );
    }

    #[test]
    fn an_invalid_email_property_is_unmapped_with_its_reason() {
        let mut record = sms_record();
        record["from"]["email"] = json!("alice at acme");
        let t = MappingTable::default();
        let rules = MappingRules {
            table: &t,
            automatic_mapping: true,
        };
        let d = rules.delivery(&message(&record));
        assert!(d.is_unmapped());
        assert_eq!(
            d.unmapped[0].reason,
            UnmappedReason::InvalidEmailProperty("alice at acme".into())
        );
    }

    #[test]
    fn fans_out_one_copy_per_user_even_when_a_user_appears_twice() {
        let mut record = sms_record();
        record["kind"] = json!("mms");
        record["to"] = json!([
            { "phone": "+12025550102", "email": "bob@acme.example", "name": "Bob Ruiz" },
            { "phone": "+12025550103", "email": "ALICE@acme.example", "name": "Alice (2nd phone)" },
            { "phone": "202-555-0102", "email": "bob@acme.example", "name": "Bob again" },
        ]);
        let t = MappingTable::default();
        let rules = MappingRules {
            table: &t,
            automatic_mapping: true,
        };
        let d = rules.delivery(&message(&record));
        assert_eq!(emails(&d), ["alice@acme.example", "bob@acme.example"]);
        assert_eq!(
            d.recipients[0].as_participants,
            ["+12025550101", "+12025550103"]
        );
        assert_eq!(d.recipients[1].as_participants, ["+12025550102"]);
        assert!(d.unmapped.is_empty());
    }

    #[test]
    fn a_reassigned_number_follows_the_row_valid_when_sent() {
        let t = table(
            "phone,email,valid_from,valid_to\n\
             +13125550199,old@acme.example,,2026-11-24\n\
             +13125550199,new@acme.example,2026-11-25,\n",
        );
        let rules = MappingRules {
            table: &t,
            automatic_mapping: false,
        };
        let mut record = sms_record();
        let d = rules.delivery(&message(&record));
        assert_eq!(emails(&d), ["new@acme.example"]);
        record["sent_at"] = json!("2026-11-24T23:00:00Z");
        let d = rules.delivery(&message(&record));
        assert_eq!(emails(&d), ["old@acme.example"]);
    }
}
