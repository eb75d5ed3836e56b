//! The SMS/MMS archiver's logic, free of I/O and of Spin types.
//!
//! - [`source`]: the carrier archive's message model and its validation.
//! - [`phone`]: phone numbers, short codes and sender ids in one normal form.
//! - [`conversation`]: one key per conversation, whatever order the network lists people in.
//! - [`mapping`]: the uploaded mobile-number-to-mailbox CSV.
//! - [`resolve`]: who among a message's participants is a user, and who gets a copy.
//! - [`email`]: one message as an RFC 5322/MIME email that stands as evidence.
//! - [`connector`], [`runs`], [`state`]: connectors, runs and status, and their key-value layout.
//! - [`lease`]: one run at a time per connector, by compare-and-swap.
//! - [`merge`]: the run record as a run's fetch and import both change it.
//! - [`secrets`]: passwords sealed at rest, the admin token checked in constant time.
//! - [`source_client`]: requests to the carrier archive, built and read without I/O.
//! - [`api`]: the admin API's errors as HTTP statuses and bodies.
//! - [`console`]: the admin console's session cookie and its cross-site checks.
//! - [`timer`]: the daily timer's request to the app, on a trigger that cannot chain.
//! - [`write_behind`]: a step's plain writes sent to the store in ordered batches.
//!
//! Clocks, ids and configuration are arguments, so every output can be golden-tested.

pub mod api;
pub mod connector;
pub mod console;
pub mod conversation;
pub mod destination;
pub mod digest;
pub mod email;
pub mod graph;
pub mod jmap;
pub mod lease;
pub mod ledger;
pub mod mapping;
pub mod merge;
pub mod phone;
pub mod pipeline;
pub mod resolve;
pub mod runs;
pub mod secrets;
pub mod source;
pub mod source_client;
pub mod state;
pub mod swap;
pub mod timer;
pub mod write_behind;

#[cfg(test)]
pub(crate) mod testing;
