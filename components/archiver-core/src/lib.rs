//! The SMS/MMS archiver's logic, free of I/O and of Spin types.
//!
//! - [`source`]: the carrier archive's message model and its validation.
//! - [`phone`]: phone numbers, short codes and sender ids in one normal form.
//! - [`conversation`]: one key per conversation, whatever order the network lists people in.
//! - [`mapping`]: the uploaded mobile-number-to-mailbox CSV.
//! - [`resolve`]: who among a message's participants is a user, and who gets a copy.
//! - [`email`]: one message as an RFC 5322/MIME email that stands as evidence.
//!
//! Clocks, ids and configuration are arguments, so every output can be golden-tested.

pub mod conversation;
pub mod digest;
pub mod email;
pub mod mapping;
pub mod phone;
pub mod resolve;
pub mod source;

#[cfg(test)]
pub(crate) mod testing;
