//! The account of one import: what became of every copy, kept so that the run's figures always
//! satisfy `available = imported + partially + skipped + failed` and every copy not imported is
//! listed with its reason.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};

use crate::jmap::ImportOutcome;
use crate::resolve::Delivery;
use crate::runs::{Figures, NotImported, NotImportedReason, Run};

/// What became of one user's copy of an item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    Imported,
    /// The mailbox already held it.
    Duplicate,
    /// Will not succeed by retrying (no mailbox, refused by the server, damaged attachment).
    Refused(NotImportedReason, String),
    /// May succeed later (server down, 5xx): the item stays staged.
    Transient(String),
}

impl CopyOutcome {
    /// What the mail server's answer for one email of an `Email/import` means for the copy
    /// (none: the server left it out), and whether the answer says the folder has gone, so
    /// that it is looked up again next time.
    pub fn of_import(answer: Option<&ImportOutcome>) -> (CopyOutcome, bool) {
        match answer {
            Some(ImportOutcome::Created(_)) => (CopyOutcome::Imported, false),
            Some(ImportOutcome::AlreadyExists(_)) => (CopyOutcome::Duplicate, false),
            Some(ImportOutcome::Refused(reason)) => (
                CopyOutcome::Refused(NotImportedReason::DestinationRefused, reason.clone()),
                false,
            ),
            Some(ImportOutcome::Failed(reason)) => (
                CopyOutcome::Transient(format!(
                    "the mail server did not import an email: {reason}"
                )),
                reason.contains("mailboxIds"),
            ),
            None => (
                CopyOutcome::Transient("the mail server did not answer for an email".into()),
                false,
            ),
        }
    }
}

/// The outcomes of one run's import.
#[derive(Debug, Clone)]
pub struct Ledger {
    run: String,
    at: DateTime<Utc>,
    /// The run's figures and days the ledger began from: what it adds is the difference.
    start: (Figures, BTreeMap<NaiveDate, Figures>),
    pub figures: Figures,
    /// What the run adds to each day of texts (see `Run::days`): final outcomes only.
    pub days: BTreeMap<NaiveDate, Figures>,
    pub not_imported: Vec<NotImported>,
    /// Items with a copy that failed transiently.
    kept: Vec<bool>,
    /// The last transient failure, for the run's error.
    pub transient: Option<String>,
}

impl Ledger {
    /// A ledger for `items` items, continuing the figures and records the run has so far.
    pub fn new(
        run: &str,
        items: usize,
        figures: Figures,
        days: BTreeMap<NaiveDate, Figures>,
        not_imported: Vec<NotImported>,
        at: DateTime<Utc>,
    ) -> Ledger {
        Ledger {
            run: run.to_string(),
            at,
            start: (figures, days.clone()),
            figures,
            days,
            not_imported,
            kept: vec![false; items],
            transient: None,
        }
    }

    /// Adds what this ledger counted to `run`'s figures and days. `run` may be newer than the
    /// record the ledger began from (the step committed meanwhile, over the fetch's counts):
    /// only the ledger's own counts are added, so the fetch's are never taken back.
    pub fn apply_to(&self, run: &mut Run) {
        run.figures.add(&self.figures.since(&self.start.0));
        let days = run.days.get_or_insert_with(Default::default);
        for (day, figures) in &self.days {
            let start = self.start.1.get(day).copied().unwrap_or_default();
            days.entry(*day).or_default().add(&figures.since(&start));
        }
    }

    /// An item no participant of which is a user: counted (in its day too) and listed per
    /// participant.
    pub fn unmapped(&mut self, item_id: &str, delivery: &Delivery, day: NaiveDate) {
        self.figures.unmapped += 1;
        self.days.entry(day).or_default().unmapped += 1;
        for participant in &delivery.unmapped {
            self.not_imported.push(NotImported {
                run: self.run.clone(),
                item_id: item_id.to_string(),
                participant: Some(participant.address.clone()),
                target_user: None,
                reason: NotImportedReason::Unmapped,
                detail: participant.reason.to_string(),
                at: self.at,
            });
        }
    }

    /// A copy the run must account for.
    pub fn expect_copy(&mut self) {
        self.figures.available_for_import += 1;
    }

    /// Records a copy's outcome. A final one (all but a transient failure) also counts in the
    /// item's `day`, unless `day` is `None`: the copy was settled for good by an earlier run.
    /// Returns whether the user now holds the item.
    pub fn settle(
        &mut self,
        index: usize,
        item_id: &str,
        user: &str,
        participant: Option<String>,
        outcome: CopyOutcome,
        day: Option<NaiveDate>,
    ) -> bool {
        if let Some(day) = day.filter(|_| !matches!(outcome, CopyOutcome::Transient(_))) {
            let figures = self.days.entry(day).or_default();
            figures.available_for_import += 1;
            match outcome {
                CopyOutcome::Imported => figures.imported += 1,
                CopyOutcome::Duplicate => figures.skipped_duplicate += 1,
                _ => figures.failed += 1,
            }
        }
        let (reason, detail) = match outcome {
            CopyOutcome::Imported => {
                self.figures.imported += 1;
                return true;
            }
            CopyOutcome::Duplicate => {
                self.figures.skipped_duplicate += 1;
                return true;
            }
            CopyOutcome::Refused(reason, detail) => (reason, detail),
            CopyOutcome::Transient(detail) => {
                if let Some(kept) = self.kept.get_mut(index) {
                    *kept = true;
                }
                self.transient = Some(detail.clone());
                let detail = format!("{detail}; kept for the next attempt");
                (NotImportedReason::DestinationRefused, detail)
            }
        };
        self.figures.failed += 1;
        self.not_imported.push(NotImported {
            run: self.run.clone(),
            item_id: item_id.to_string(),
            participant,
            target_user: Some(user.to_string()),
            reason,
            detail,
            at: self.at,
        });
        false
    }

    /// Whether the item must stay staged for another attempt.
    pub fn is_kept(&self, index: usize) -> bool {
        self.kept.get(index).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapping::MappingTable;
    use crate::resolve::MappingRules;
    use crate::testing::{message, sms_record};

    #[test]
    fn import_answers_become_copy_outcomes() {
        let of = |answer: ImportOutcome| CopyOutcome::of_import(Some(&answer));
        assert_eq!(
            of(ImportOutcome::Created("E".into())).0,
            CopyOutcome::Imported
        );
        assert_eq!(
            of(ImportOutcome::AlreadyExists("E".into())).0,
            CopyOutcome::Duplicate
        );
        assert!(matches!(
            of(ImportOutcome::Refused("invalidEmail".into())).0,
            CopyOutcome::Refused(NotImportedReason::DestinationRefused, _)
        ));
        let (outcome, folder_gone) = of(ImportOutcome::Failed(
            "invalidProperties (mailboxIds)".into(),
        ));
        assert!(matches!(outcome, CopyOutcome::Transient(_)) && folder_gone);
        let (outcome, folder_gone) = of(ImportOutcome::Failed("serverFail".into()));
        assert!(matches!(outcome, CopyOutcome::Transient(_)) && !folder_gone);
        assert!(matches!(
            CopyOutcome::of_import(None),
            (CopyOutcome::Transient(_), false)
        ));
    }

    fn day() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 25).unwrap()
    }

    fn ledger(items: usize) -> Ledger {
        let at = "2026-11-26T02:00:00Z".parse().unwrap();
        Ledger::new(
            "r1",
            items,
            Figures::default(),
            BTreeMap::new(),
            Vec::new(),
            at,
        )
    }

    #[test]
    fn every_copy_has_one_outcome_and_the_invariant_holds() {
        let mut l = ledger(3);
        let outcomes = [
            CopyOutcome::Imported,
            CopyOutcome::Duplicate,
            CopyOutcome::Refused(NotImportedReason::NoSuchMailbox, "no mailbox".into()),
            CopyOutcome::Transient("503".into()),
        ];
        for (n, outcome) in outcomes.into_iter().enumerate() {
            l.expect_copy();
            let holds = l.settle(n.min(2), "m1", "u@acme.example", None, outcome, Some(day()));
            assert_eq!(holds, n < 2);
        }
        assert_eq!(l.figures.available_for_import, 4);
        assert_eq!(
            (
                l.figures.imported,
                l.figures.skipped_duplicate,
                l.figures.failed
            ),
            (1, 1, 2)
        );
        assert!(l.figures.invariant_holds());
        // The day counts the three final outcomes; the transient one waits for its retry.
        let d = l.days[&day()];
        assert_eq!(
            (
                d.available_for_import,
                d.imported,
                d.skipped_duplicate,
                d.failed
            ),
            (3, 1, 1, 1)
        );
        assert!(d.invariant_holds());
        // A copy settled for good by an earlier run is not counted in its day again.
        l.settle(
            0,
            "m1",
            "u@acme.example",
            None,
            CopyOutcome::Duplicate,
            None,
        );
        assert_eq!(l.days[&day()].skipped_duplicate, 1);
        assert_eq!(l.not_imported.len(), 2);
        assert_eq!(
            l.not_imported[1].reason,
            NotImportedReason::DestinationRefused
        );
        assert!(
            l.not_imported[1]
                .detail
                .contains("kept for the next attempt")
        );
        assert!(l.is_kept(2) && !l.is_kept(0) && !l.is_kept(7));
        assert_eq!(l.transient.as_deref(), Some("503"));
    }

    #[test]
    fn only_the_ledgers_own_counts_reach_a_record_the_fetch_changed_since() {
        let mut run = crate::testing::run("c", "r");
        run.figures.fetched = 5;
        run.days = Some(BTreeMap::from([(
            day(),
            Figures {
                fetched: 5,
                ..Figures::default()
            },
        )]));
        let mut ledger = Ledger::new(
            "r",
            1,
            run.figures,
            run.days.clone().unwrap_or_default(),
            Vec::new(),
            "2026-11-26T02:00:00Z".parse().unwrap(),
        );
        ledger.expect_copy();
        ledger.days.entry(day()).or_default().available_for_import += 1;
        // The fetch counts another text meanwhile.
        run.figures.fetched = 6;
        run.days.as_mut().unwrap().get_mut(&day()).unwrap().fetched = 6;
        ledger.apply_to(&mut run);
        assert_eq!(
            (run.figures.fetched, run.figures.available_for_import),
            (6, 1)
        );
        let day_figures = run.days.unwrap()[&day()];
        assert_eq!(
            (day_figures.fetched, day_figures.available_for_import),
            (6, 1)
        );
    }

    #[test]
    fn an_unmapped_item_is_listed_once_per_participant() {
        let table = MappingTable::default();
        let rules = MappingRules {
            table: &table,
            automatic_mapping: false,
        };
        let delivery = rules.delivery(&message(&sms_record()));
        let mut l = ledger(1);
        l.unmapped("m-7f3c9a10", &delivery, day());
        assert_eq!(l.figures.unmapped, 1);
        assert_eq!(l.not_imported.len(), 2);
        assert!(
            l.not_imported
                .iter()
                .all(|n| n.reason == NotImportedReason::Unmapped)
        );
        assert!(l.figures.invariant_holds());
    }
}
