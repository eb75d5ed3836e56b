//! One key per conversation: the sorted, de-duplicated set of all participants' normalised
//! addresses, so a group MMS is one conversation whatever order the network lists people in.

use crate::digest::fields_sha256_hex;
use crate::source::Message;

/// The participants of a conversation, normalised, sorted and de-duplicated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConversationKey(Vec<String>);

impl ConversationKey {
    pub fn of(message: &Message) -> Self {
        let mut keys: Vec<String> = message.participants().map(|p| p.address.key()).collect();
        keys.sort();
        keys.dedup();
        ConversationKey(keys)
    }

    /// The participants' keys, in order.
    pub fn participants(&self) -> &[String] {
        &self.0
    }

    /// A stable hex digest of the key, scoped to a connector, for thread ids.
    pub fn digest(&self, connector_id: &str) -> String {
        let mut fields: Vec<&str> = vec!["conversation", connector_id];
        fields.extend(self.0.iter().map(String::as_str));
        fields_sha256_hex(&fields)
    }
}

impl std::fmt::Display for ConversationKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{message, sms_record};
    use serde_json::json;

    fn group(from: &str, to: &[&str]) -> Message {
        let mut record = sms_record();
        record["kind"] = json!("mms");
        record["from"] = json!({ "phone": from });
        record["to"] = to.iter().map(|p| json!({ "phone": p })).collect();
        message(&record)
    }

    #[test]
    fn a_group_is_one_conversation_whatever_the_order_or_spelling() {
        let a = group("+12025550101", &["+12025550102", "+13125550199"]);
        let b = group("(312) 555-0199", &["12025550101", "+1 202 555 0102"]);
        let c = group(
            "+12025550102",
            &["+13125550199", "+12025550101", "+12025550101"],
        );
        assert_eq!(ConversationKey::of(&a), ConversationKey::of(&b));
        assert_eq!(ConversationKey::of(&a), ConversationKey::of(&c));
        assert_eq!(
            ConversationKey::of(&a).to_string(),
            "+12025550101,+12025550102,+13125550199"
        );
    }

    #[test]
    fn different_people_are_different_conversations() {
        let a = group("+12025550101", &["+12025550102"]);
        let b = group("+12025550101", &["+12025550102", "+13125550199"]);
        assert_ne!(ConversationKey::of(&a), ConversationKey::of(&b));
        assert_ne!(
            ConversationKey::of(&a).digest("c1"),
            ConversationKey::of(&b).digest("c1")
        );
        assert_ne!(
            ConversationKey::of(&a).digest("c1"),
            ConversationKey::of(&a).digest("c2")
        );
    }
}
