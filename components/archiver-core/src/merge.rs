//! Three-way merge of a record two writers change at once.
//!
//! A run's fetch steps and import steps go on at the same time, each writing the run record.
//! Each writer changes only the fields it owns (the fetch its checkpoint and the texts it
//! fetched, the import its checkpoint and the copies it settled) and adds to shared counters
//! (the figures of a day, the step count). So a writer that read `base`, made `mine` of it and
//! finds `current` in the store commits `merge(base, mine, current)`: what it changed, over
//! what the other writer changed meanwhile, counters adding up.

use serde_json::Value;

/// `current` with the changes from `base` to `mine` applied: objects field by field; whole
/// numbers by their difference (a counter both writers raised adds both raises; a field only
/// one writer sets ends as that writer set it); any other value as `mine` has it where it
/// differs from `base`, else as `current` has it.
pub fn merge(base: &Value, mine: &Value, current: &Value) -> Value {
    if mine == base {
        return current.clone();
    }
    if current == base {
        return mine.clone();
    }
    match (base, mine, current) {
        (Value::Object(_) | Value::Null, Value::Object(mine), Value::Object(current)) => {
            let empty = serde_json::Map::new();
            let base = base.as_object().unwrap_or(&empty);
            let mut merged = current.clone();
            for (key, mine_value) in mine {
                let base_value = base.get(key).unwrap_or(&Value::Null);
                let merged_value = match current.get(key) {
                    Some(current_value) => merge(base_value, mine_value, current_value),
                    None => mine_value.clone(),
                };
                merged.insert(key.clone(), merged_value);
            }
            // A field this writer removed (no record field is removed by either writer today).
            for key in base.keys().filter(|key| !mine.contains_key(*key)) {
                merged.remove(key);
            }
            Value::Object(merged)
        }
        (base, Value::Number(mine), Value::Number(current)) => {
            let base = match base {
                Value::Number(base) => base.as_i64().map(i128::from),
                Value::Null => Some(0),
                _ => None,
            };
            match (base, mine.as_i64(), current.as_i64()) {
                (Some(base), Some(mine), Some(current)) => {
                    let sum = i128::from(current) + i128::from(mine) - base;
                    i64::try_from(sum)
                        .ok()
                        .filter(|sum| *sum >= 0)
                        .map(Value::from)
                        .unwrap_or_else(|| Value::from(mine))
                }
                _ => Value::Number(mine.clone()),
            }
        }
        (_, mine, _) => mine.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_writer_keeps_its_own_changes_and_counters_add_up() {
        let base = json!({
            "state": "running",
            "figures": { "fetched": 10, "imported": 4 },
            "progress": { "cursor": "a", "position": 300, "imported_pages": 1 },
            "days": { "2026-11-25": { "fetched": 10, "imported": 4 } },
            "steps": 5
        });
        // The fetch: a page further, ten more texts, one on a new day.
        let fetch = json!({
            "state": "running",
            "figures": { "fetched": 20, "imported": 4 },
            "progress": { "cursor": "b", "position": 0, "imported_pages": 1 },
            "days": {
                "2026-11-25": { "fetched": 19, "imported": 4 },
                "2026-11-26": { "fetched": 1 }
            },
            "steps": 6
        });
        // The import, meanwhile: a page imported, six more copies, one on the new day.
        let import = json!({
            "state": "running",
            "figures": { "fetched": 10, "imported": 10 },
            "progress": { "cursor": "a", "position": 300, "imported_pages": 2 },
            "days": {
                "2026-11-25": { "fetched": 10, "imported": 9 },
                "2026-11-26": { "imported": 1 }
            },
            "steps": 6
        });
        let expected = json!({
            "state": "running",
            "figures": { "fetched": 20, "imported": 10 },
            "progress": { "cursor": "b", "position": 0, "imported_pages": 2 },
            "days": {
                "2026-11-25": { "fetched": 19, "imported": 9 },
                "2026-11-26": { "fetched": 1, "imported": 1 }
            },
            "steps": 7
        });
        assert_eq!(merge(&base, &fetch, &import), expected);
        // Whichever commits first, the record ends the same.
        assert_eq!(merge(&base, &import, &fetch), expected);
    }

    #[test]
    fn a_writer_that_changed_nothing_leaves_the_record_as_it_is() {
        let base = json!({ "a": 1, "b": "x" });
        let current = json!({ "a": 3, "b": "y" });
        assert_eq!(merge(&base, &base, &current), current);
        let mine = json!({ "a": 2, "b": "x" });
        assert_eq!(merge(&base, &mine, &base), mine);
    }

    #[test]
    fn values_that_are_not_counters_are_taken_whole_from_the_writer_that_changed_them() {
        let base =
            json!({ "state": "running", "error": null, "delivering": [1, 2], "partial": null });
        let failed = json!({ "state": "failed", "error": "the archive refused", "delivering": [1, 2], "partial": null });
        let import =
            json!({ "state": "running", "error": null, "delivering": [3, 0], "partial": null });
        assert_eq!(
            merge(&base, &import, &failed),
            json!({ "state": "failed", "error": "the archive refused", "delivering": [3, 0], "partial": null })
        );
        // A value set where there was none is the writer's, numbers inside it included.
        let partial = json!({ "state": "running", "error": null, "delivering": [1, 2],
            "partial": { "item": "k", "received": 7 } });
        assert_eq!(
            merge(&base, &partial, &import),
            json!({ "state": "running", "error": null, "delivering": [3, 0],
                "partial": { "item": "k", "received": 7 } })
        );
    }

    #[test]
    fn a_counter_set_back_by_its_owner_is_set_back() {
        let base = json!({ "position": 500, "imported": 3 });
        let mine = json!({ "position": 0, "imported": 3 });
        let current = json!({ "position": 500, "imported": 9 });
        assert_eq!(
            merge(&base, &mine, &current),
            json!({ "position": 0, "imported": 9 })
        );
    }
}
