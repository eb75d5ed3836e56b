//! The lease that lets one run at a time work on a connector: the timer's run and a manual one,
//! or runs on two hosts sharing a store, must never deliver the same item twice.
//!
//! The lease is one key-value record changed only by compare-and-swap; this module decides what
//! to write, the host does the swap. A lease ends when its holder releases it or when it
//! expires, so a run killed mid-way blocks the connector for at most one lease duration.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::state::StoreError;
use crate::swap::{Decision, Outcome, Swap, decide_and_swap};

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

/// How often a lease swap is decided again after losing to another writer.
const SWAP_ATTEMPTS: usize = 5;

/// What [`swap_lease`] does with the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseSwap {
    /// Take a free lease or renew our own ([`acquire`]).
    Acquire,
    /// Take a free lease for a run starting now ([`take`]).
    Take,
}

/// Takes or renews the lease of `connector` for `holder` by the store's compare-and-swap:
/// `Ok(Err(lease))` when another run holds it (also when that run took it between our read
/// and our swap). A swap answered "failed" is read back (see [`crate::swap`]): a renewal landed
/// when the holder's lease lasts at least as long as the one written (the run's other side may
/// have renewed it since); a take only if the very value written is there, since the other
/// writer may be a second start of the same run.
pub fn swap_lease<S: Swap>(
    store: &S,
    connector: &str,
    holder: &str,
    now: DateTime<Utc>,
    kind: LeaseSwap,
) -> Result<Result<(), Lease>, StoreError> {
    let (decide, taking): (Decide, bool) = match kind {
        LeaseSwap::Acquire => (acquire, false),
        LeaseSwap::Take => (take, true),
    };
    let landed = |read_back: Option<&[u8]>, written: &[u8]| match taking {
        true => read_back == Some(written),
        false => match (decode(read_back), decode(Some(written))) {
            (Some(now), Some(written)) => {
                now.holder == written.holder && now.expires_at >= written.expires_at
            }
            _ => false,
        },
    };
    let outcome = decide_and_swap(
        store,
        &lease_key(connector),
        SWAP_ATTEMPTS,
        &mut |current| {
            Ok(match decide(current, holder, now, LEASE_DURATION) {
                LeaseDecision::HeldBy(other) => Decision::Done(Err(other)),
                LeaseDecision::Write(value) => Decision::Write(value),
            })
        },
        &landed,
    )?;
    Ok(match outcome {
        Outcome::Written(_) => Ok(()),
        Outcome::Done(held) => held,
    })
}

/// Gives the lease of `connector` up if `holder` holds it, by compare-and-swap; done when the
/// store then shows it free of `holder` (whoever freed it).
pub fn swap_release<S: Swap>(
    store: &S,
    connector: &str,
    holder: &str,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let still_held = |value: Option<&[u8]>| {
        decode(value).is_some_and(|lease| lease.holder == holder && lease.expires_at > now)
    };
    decide_and_swap(
        store,
        &lease_key(connector),
        SWAP_ATTEMPTS,
        &mut |current| {
            Ok(match release(current, holder, now) {
                None => Decision::Done(()),
                Some(value) => Decision::Write(value),
            })
        },
        &|read_back, _| !still_held(read_back),
    )
    .map(drop)
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
    fn on_a_store_that_answers_every_swap_failed_the_lease_is_taken_renewed_and_released_once() {
        use crate::state::KeyValue;
        use crate::swap::testing::TestSwap;
        let store = TestSwap::lying();
        let now = at("2026-11-26T02:00:00Z");
        assert_eq!(
            swap_lease(&store, "c", "run-a", now, LeaseSwap::Take).unwrap(),
            Ok(())
        );
        assert_eq!(*store.swaps.borrow(), 1, "taken at the first swap");
        // A second start of the same run finds the lease held, as another run would.
        let again = swap_lease(&store, "c", "run-a", now, LeaseSwap::Take).unwrap();
        assert_eq!(again.unwrap_err().holder, "run-a");
        assert_eq!(
            swap_lease(&store, "c", "run-a", now, LeaseSwap::Acquire).unwrap(),
            Ok(())
        );
        let refused = swap_lease(&store, "c", "run-b", now, LeaseSwap::Acquire).unwrap();
        assert_eq!(refused.unwrap_err().holder, "run-a");
        assert_eq!(*store.swaps.borrow(), 2, "each write swapped once");

        // The run's other side renews between our read and our swap: ours did not land (the
        // key changed), but the holder's lease lasts longer than ours would: renewed.
        let later = now + Duration::seconds(30);
        *store.other.borrow_mut() = Some(Box::new(move |s| {
            s.set(
                &lease_key("c"),
                &encode(&Lease {
                    holder: "run-a".into(),
                    expires_at: later + LEASE_DURATION,
                }),
            )
            .unwrap()
        }));
        assert_eq!(
            swap_lease(&store, "c", "run-a", now, LeaseSwap::Acquire).unwrap(),
            Ok(())
        );
        assert_eq!(*store.swaps.borrow(), 3);

        swap_release(&store, "c", "run-a", later).unwrap();
        assert_eq!(
            swap_lease(&store, "c", "run-b", later, LeaseSwap::Take).unwrap(),
            Ok(())
        );
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
