//! The destination seam. Every destination (JMAP, Microsoft Graph) takes a step's copies, each
//! an item for one mapped user, and settles each into one of the ledger's outcomes
//! ([`crate::ledger::CopyOutcome`]): imported, duplicate (the mailbox holds it already, found by
//! its deterministic Message-ID), refused with the server's reason (no such mailbox, too large,
//! refused), or transient (the item stays staged). A copy an earlier attempt may have begun is
//! looked up before it is made, so a copy is never made twice and never counted while partial.
//!
//! This module also reads what the admin's destination check (`GET /api/destination`) found,
//! in words an admin can act on.

use serde::Serialize;

use crate::graph::{GraphError, LoginError};

/// One check of the destination's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub check: String,
    pub ok: bool,
    pub detail: String,
}

impl Check {
    pub fn passed(check: &str, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            ok: true,
            detail: detail.into(),
        }
    }

    pub fn failed(check: &str, detail: impl Into<String>) -> Check {
        Check {
            check: check.into(),
            ok: false,
            detail: detail.into(),
        }
    }
}

/// What the destination check found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub destination: String,
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    pub fn new(destination: &str, checks: Vec<Check>) -> Report {
        Report {
            destination: destination.into(),
            ok: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}

/// The application permission the Graph destination needs.
pub const GRAPH_PERMISSION: &str = "Mail.ReadWrite";

/// The Graph login's check.
pub fn graph_login(result: &Result<(), LoginError>) -> Check {
    match result {
        Ok(()) => Check::passed("login", "the app logged in with its client secret"),
        Err(e) => Check::failed("login", e.to_string()),
    }
}

/// Whether the app holds [`GRAPH_PERMISSION`]: granted tenant-wide, an app-only token lists it
/// in its `roles` claim, which stays empty until an admin grants consent
/// (<https://learn.microsoft.com/en-us/entra/identity-platform/access-token-claims-reference>);
/// granted through Exchange's RBAC for Applications instead, the token does not list it and
/// only a mailbox the app reaches shows it (`reached_a_mailbox`).
pub fn graph_permission(roles: Option<Vec<String>>, reached_a_mailbox: bool) -> Check {
    match roles {
        Some(roles) if roles.iter().any(|r| r == GRAPH_PERMISSION) => Check::passed(
            "permission",
            format!("the app has the application permission {GRAPH_PERMISSION}"),
        ),
        _ if reached_a_mailbox => Check::passed(
            "permission",
            format!(
                "the app reaches mailboxes through an Exchange role (RBAC for Applications: \
                 Application {GRAPH_PERMISSION})"
            ),
        ),
        Some(roles) => Check::failed(
            "permission",
            format!(
                "the app's token grants {} but not {GRAPH_PERMISSION}: add the application \
                 permission {GRAPH_PERMISSION} (Microsoft Graph, Application, not Delegated) \
                 under API permissions and grant admin consent, or assign the app the Exchange \
                 role \"Application {GRAPH_PERMISSION}\" (RBAC for Applications)",
                match roles.is_empty() {
                    true => "no application permission".to_string(),
                    false => roles.join(", "),
                }
            ),
        ),
        None => Check::failed(
            "permission",
            "the token's permissions could not be read, and no mailbox could be reached",
        ),
    }
}

/// What a mailbox probe (listing the archive folder in `user`'s mailbox) answered.
pub fn graph_mailbox(user: &str, status: u16, body: &[u8]) -> Check {
    let check = format!("mailbox {user}");
    if status < 300 {
        return Check::passed(&check, "the app may reach this mailbox");
    }
    let error = GraphError::of(status, body);
    match status {
        404 => Check::failed(
            &check,
            format!(
                "the tenant has no mailbox {user} ({}): check the mapping, or the user's \
                 Exchange Online licence",
                error.code
            ),
        ),
        403 => Check::failed(
            &check,
            format!(
                "the app may not reach {user}'s mailbox ({}): grant admin consent for \
                 {GRAPH_PERMISSION}, and if the app is scoped with RBAC for Applications, \
                 include this mailbox in its management scope",
                error.code
            ),
        ),
        _ => Check::failed(
            &check,
            format!("Microsoft Graph answered {status} {}", error.code),
        ),
    }
}

/// The JMAP session's check.
pub fn jmap_session(answer: Result<u16, String>) -> Check {
    match answer {
        Ok(200) => Check::passed("login", "the service account logged in to the JMAP session"),
        Ok(401 | 403) => Check::failed(
            "login",
            "the mail server refused the service account: check jmap_username and jmap_password",
        ),
        Ok(status) => Check::failed(
            "login",
            format!("the mail server's JMAP session answered {status}: check jmap_session_url"),
        ),
        Err(e) => Check::failed("login", format!("the mail server is unreachable: {e}")),
    }
}

/// Whether the service account may write to `user`'s mailbox.
pub fn jmap_mailbox(user: &str, reachable: bool) -> Check {
    let check = format!("mailbox {user}");
    match reachable {
        true => Check::passed(&check, "the service account may write to this mailbox"),
        false => Check::failed(
            &check,
            format!(
                "the service account has no access to a mailbox {user}: share the mailbox with \
                 it, or check the mapping"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_without_the_permission_says_what_to_grant() {
        let missing = graph_permission(Some(vec![]), false);
        assert!(!missing.ok);
        assert!(
            missing.detail.contains("grant admin consent"),
            "{missing:?}"
        );
        let other = graph_permission(Some(vec!["User.Read.All".into()]), false);
        assert!(!other.ok && other.detail.contains("User.Read.All"));
        assert!(graph_permission(Some(vec!["Mail.ReadWrite".into()]), false).ok);
        // Granted by an Exchange role: not in the token, but a mailbox answers.
        assert!(graph_permission(Some(vec![]), true).ok);
    }

    #[test]
    fn a_mailbox_out_of_scope_and_one_missing_are_told_apart() {
        let body = br#"{"error":{"code":"ErrorAccessDenied","message":"Access is denied."}}"#;
        let scoped = graph_mailbox("a@x", 403, body);
        assert!(!scoped.ok && scoped.detail.contains("RBAC"), "{scoped:?}");
        let body = br#"{"error":{"code":"ErrorInvalidUser","message":"no"}}"#;
        let missing = graph_mailbox("a@x", 404, body);
        assert!(!missing.ok && missing.detail.contains("no mailbox a@x"));
        assert!(graph_mailbox("a@x", 200, b"{}").ok);
        let report = Report::new("graph", vec![scoped, Check::passed("login", "")]);
        assert!(!report.ok);
    }
}
