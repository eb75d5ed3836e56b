//! The lease that lets one run at a time work on a connector: the timer's run and a manual one,
//! or runs on two hosts sharing a store, must never deliver the same item twice.
//!
//! The lease is one key-value record changed only by compare-and-swap; this module decides what
//! to write, the host does the swap. A lease ends when its holder releases it or when it
//! expires, so a run killed mid-way blocks the connector for at most one lease duration.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// How long a lease lasts unless renewed; every step of a run renews it, and a step is bounded
/// well below this.
pub const LEASE_DURATION: Duration = Duration::minutes(10);

/// The key of a connector's lease.
pub fn lease_key(connector: &str) -> String {
    format!("connector/{connector}/lease")
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The run holding it.
    pub holder: String,
    pub expires_at: DateTime<Utc>,
}

/// What to do about the lease, given what the store holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Swap this value in (take a free or expired lease, or extend our own).
    Write(Vec<u8>),
    /// Another run holds it until its expiry.
    HeldBy(Lease),
}

/// A way of deciding on the lease ([`acquire`] or [`take`]) from the stored value, the holder,
/// the time and the duration.
pub type Decide = fn(Option<&[u8]>, &str, DateTime<Utc>, Duration) -> LeaseDecision;

/// The lease a stored value holds, if it is one.
pub fn decode(current: Option<&[u8]>) -> Option<Lease> {
    // A value that is not a lease (written by no version of this code) never blocks the
    // connector for ever: it counts as free.
    current.and_then(|bytes| serde_json::from_slice(bytes).ok())
}

/// Taking (or renewing) the lease for `holder` at `now`, given the stored value.
pub fn acquire(
    current: Option<&[u8]>,
    holder: &str,
    now: DateTime<Utc>,
    duration: Duration,
) -> LeaseDecision {
    match decode(current) {
        Some(lease) if lease.holder != holder && lease.expires_at > now => {
            LeaseDecision::HeldBy(lease)
        }
        _ => LeaseDecision::Write(encode(&Lease {
            holder: holder.to_string(),
            expires_at: now + duration,
        })),
    }
}

/// Taking the lease for a run that starts now: unlike [`acquire`], a live lease is refused
/// whoever holds it, so two invocations starting the same queued run never both get it.
pub fn take(
    current: Option<&[u8]>,
    holder: &str,
    now: DateTime<Utc>,
    duration: Duration,
) -> LeaseDecision {
    match decode(current) {
        Some(lease) if lease.expires_at > now => LeaseDecision::HeldBy(lease),
        _ => acquire(None, holder, now, duration),
    }
}

/// Giving the lease up: `None` when `holder` does not hold it (nothing to write), else the value
/// that frees it (expired now, so any run may take it at once).
pub fn release(current: Option<&[u8]>, holder: &str, now: DateTime<Utc>) -> Option<Vec<u8>> {
    match decode(current) {
        Some(lease) if lease.holder == holder && lease.expires_at > now => Some(encode(&Lease {
            holder: holder.to_string(),
            expires_at: now,
        })),
        _ => None,
    }
}

fn encode(lease: &Lease) -> Vec<u8> {
    serde_json::to_vec(lease).unwrap_or_default()
}

/// The reason a run gives when it finds its connector leased by another run.
pub fn busy_reason(lease: &Lease) -> String {
    format!(
        "run {} of this connector is in progress (its lease expires at {}); this run did nothing \
         and the items are left to that run or the next one",
        lease.holder,
        lease.expires_at.to_rfc3339()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &str) -> DateTime<Utc> {
        t.parse().unwrap()
    }

    fn stored(holder: &str, expires: &str) -> Vec<u8> {
        encode(&Lease {
            holder: holder.into(),
            expires_at: at(expires),
        })
    }

    fn written(decision: LeaseDecision) -> Lease {
        match decision {
            LeaseDecision::Write(bytes) => serde_json::from_slice(&bytes).unwrap(),
            LeaseDecision::HeldBy(lease) => panic!("expected a write, held by {lease:?}"),
        }
    }

    #[test]
    fn a_free_or_expired_lease_is_taken_and_a_live_one_of_another_run_is_not() {
        let now = at("2026-11-26T02:00:00Z");
        let taken = written(acquire(None, "run-a", now, LEASE_DURATION));
        assert_eq!(taken.holder, "run-a");
        assert_eq!(taken.expires_at, at("2026-11-26T02:10:00Z"));

        let expired = stored("run-b", "2026-11-26T01:59:59Z");
        assert_eq!(
            written(acquire(Some(&expired), "run-a", now, LEASE_DURATION)).holder,
            "run-a"
        );

        let live = stored("run-b", "2026-11-26T02:05:00Z");
        match acquire(Some(&live), "run-a", now, LEASE_DURATION) {
            LeaseDecision::HeldBy(lease) => assert_eq!(lease.holder, "run-b"),
            other => panic!("a live lease was overridden: {other:?}"),
        }
    }

    #[test]
    fn a_starting_run_takes_only_a_free_lease_even_one_held_in_its_own_name() {
        let now = at("2026-11-26T02:00:00Z");
        let live = stored("run-a", "2026-11-26T02:05:00Z");
        assert!(matches!(
            take(Some(&live), "run-a", now, LEASE_DURATION),
            LeaseDecision::HeldBy(lease) if lease.holder == "run-a"
        ));
        let freed = stored("run-a", "2026-11-26T02:00:00Z");
        assert_eq!(
            written(take(Some(&freed), "run-a", now, LEASE_DURATION)).holder,
            "run-a"
        );
        assert_eq!(
            written(take(None, "run-b", now, LEASE_DURATION)).expires_at,
            at("2026-11-26T02:10:00Z")
        );
    }

    #[test]
    fn the_holder_renews_and_releases_its_own_lease_only() {
        let now = at("2026-11-26T02:00:00Z");
        let mine = stored("run-a", "2026-11-26T02:03:00Z");
        let renewed = written(acquire(Some(&mine), "run-a", now, LEASE_DURATION));
        assert_eq!(renewed.expires_at, at("2026-11-26T02:10:00Z"));

        let freed: Lease =
            serde_json::from_slice(&release(Some(&mine), "run-a", now).unwrap()).unwrap();
        assert_eq!(freed.expires_at, now);
        assert_eq!(
            written(acquire(Some(&encode(&freed)), "run-b", now, LEASE_DURATION)).holder,
            "run-b"
        );

        let theirs = stored("run-b", "2026-11-26T02:03:00Z");
        assert_eq!(release(Some(&theirs), "run-a", now), None);
        assert_eq!(release(None, "run-a", now), None);
    }

    #[test]
    fn an_unreadable_value_does_not_block_the_connector() {
        let now = at("2026-11-26T02:00:00Z");
        assert_eq!(
            written(acquire(Some(b"not json"), "run-a", now, LEASE_DURATION)).holder,
            "run-a"
        );
    }
}
