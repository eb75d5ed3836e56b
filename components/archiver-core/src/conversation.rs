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
