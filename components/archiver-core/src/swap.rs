//! Compare-and-swap when the store's answer may be wrong.
//!
//! Spin's key-value stores offer `wasi:keyvalue/atomics`: a `cas` made on a key reads it, and
//! `swap` writes a value only if the key is unchanged since. On SQLite the answer is true. On
//! Redis (Spin 3.5 and 4.0, `crates/key-value-redis`) the swap itself is right (`WATCH`, then
//! `MULTI`/`SET`/`EXEC`) but it then sends `UNWATCH <key>`, which Redis refuses, and returns that
//! refusal as a failed swap: every swap answers "failed", whether it wrote or not. A writer that
//! tried again on "failed" would apply its change twice (a run's figures added twice) or never
//! stop. So a "failed" swap is never retried blind: the key is read back, and the writer decides
//! from what it holds whether its write landed ([`Landed`]), which it can tell because every
//! value it writes carries something only that write has (an id, or the holder and expiry of a
//! lease). Only a write that did not land is tried again, on the value that won.

use crate::state::{Change, Landed, StoreError};

/// One compare-and-swap, as a store offers it.
pub trait Swap {
    type Handle;

    /// Begins a swap on `key`: a handle and what the key holds now (`None`: nothing).
    fn begin(&self, key: &str) -> Result<(Self::Handle, Option<Vec<u8>>), StoreError>;

    /// Writes `value` if the key is unchanged since [`Swap::begin`]. `Ok(false)`: the store
    /// says it did not, which may be untrue.
    fn swap(&self, handle: Self::Handle, value: &[u8]) -> Result<bool, StoreError>;

    /// Reads `key` plainly.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError>;
}

/// What a writer makes of a key's value in [`decide_and_swap`].
pub enum Decision<T> {
    /// Swap this value in.
    Write(Vec<u8>),
    /// Write nothing: the outcome is this.
    Done(T),
}

/// What [`decide_and_swap`] asks of the key's value (`None`: nothing).
pub type Decide<'a, T> = dyn FnMut(Option<&[u8]>) -> Result<Decision<T>, StoreError> + 'a;

/// How an attempt of [`decide_and_swap`] ended.
pub enum Outcome<T> {
    /// The value written (its write landed).
    Written(Vec<u8>),
    /// The decision wrote nothing.
    Done(T),
}

/// Swaps in what `decide` makes of the key's value; when the store answers "failed", reads the
/// key back and asks `landed` whether the write took effect all the same, and only if not
/// decides again on the value that won. Gives up after `attempts` writes that did not land.
pub fn decide_and_swap<S: Swap, T>(
    store: &S,
    key: &str,
    attempts: usize,
    decide: &mut Decide<'_, T>,
    landed: &Landed<'_>,
) -> Result<Outcome<T>, StoreError> {
    for _ in 0..attempts {
        let (handle, current) = store.begin(key)?;
        let value = match decide(current.as_deref())? {
            Decision::Done(outcome) => return Ok(Outcome::Done(outcome)),
            Decision::Write(value) => value,
        };
        if store.swap(handle, &value)? {
            return Ok(Outcome::Written(value));
        }
        let read_back = store.get(key)?;
        if landed(read_back.as_deref(), &value) {
            return Ok(Outcome::Written(value));
        }
    }
    Err(StoreError(format!(
        "{key}: other writers changed it {attempts} times in a row"
    )))
}

/// [`crate::state::KeyValue::update`] on a store's compare-and-swap.
pub fn update<S: Swap>(
    store: &S,
    key: &str,
    attempts: usize,
    change: &mut Change<'_>,
    landed: &Landed<'_>,
) -> Result<Vec<u8>, StoreError> {
    let outcome = decide_and_swap::<S, ()>(
        store,
        key,
        attempts,
        &mut |current| change(current).map(Decision::Write),
        landed,
    )?;
    match outcome {
        Outcome::Written(value) => Ok(value),
        Outcome::Done(()) => Err(StoreError(format!("{key}: nothing was written"))),
    }
}

#[cfg(test)]
pub(crate) mod testing {
    use super::{Change, Landed, StoreError, Swap, update};
    use crate::state::{KeyValue, MemoryStore};
    use std::cell::RefCell;

    /// Another writer's change, made between a swap's read and its write.
    pub type OtherWriter = Box<dyn FnOnce(&MemoryStore)>;

    /// A store in memory whose compare-and-swap is right, and answers truly (as Spin's SQLite
    /// store) or, `lying`, always "failed" (as Spin's Redis store); another writer may be let in
    /// once between a writer's read and its swap.
    #[derive(Default)]
    pub struct TestSwap {
        pub store: MemoryStore,
        pub other: RefCell<Option<OtherWriter>>,
        pub swaps: RefCell<usize>,
        pub lying: bool,
    }

    impl TestSwap {
        pub fn truthful() -> TestSwap {
            TestSwap::default()
        }

        pub fn lying() -> TestSwap {
            TestSwap {
                lying: true,
                ..TestSwap::default()
            }
        }
    }

    impl Swap for TestSwap {
        type Handle = (String, Option<Vec<u8>>);

        fn begin(&self, key: &str) -> Result<(Self::Handle, Option<Vec<u8>>), StoreError> {
            let seen = self.store.get(key)?;
            Ok(((key.to_string(), seen.clone()), seen))
        }

        fn swap(&self, (key, seen): Self::Handle, value: &[u8]) -> Result<bool, StoreError> {
            *self.swaps.borrow_mut() += 1;
            if let Some(other) = self.other.borrow_mut().take() {
                other(&self.store);
            }
            let written = self.store.get(&key)? == seen;
            if written {
                self.store.set(&key, value)?;
            }
            Ok(written && !self.lying)
        }

        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.store.get(key)
        }
    }

    impl KeyValue for TestSwap {
        fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
            self.store.get(key)
        }
        fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
            self.store.set(key, value)
        }
        fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.store.delete(key)
        }
        fn update(
            &self,
            key: &str,
            change: &mut Change<'_>,
            landed: &Landed<'_>,
        ) -> Result<Vec<u8>, StoreError> {
            update(self, key, 5, change, landed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::TestSwap;
    use crate::state::KeyValue;

    fn counter(bytes: Option<&[u8]>) -> u64 {
        bytes
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .and_then(|text| text.split(' ').next()?.parse().ok())
            .unwrap_or(0)
    }

    #[test]
    fn a_swap_answered_failed_that_landed_is_not_done_again() {
        let store = TestSwap::lying();
        // Each write is "count id": the id tells this write from any other.
        let landed = |read_back: Option<&[u8]>, written: &[u8]| read_back == Some(written);
        for n in 0..3 {
            let id = format!("w{n}");
            store
                .update(
                    "k",
                    &mut |current| Ok(format!("{} {id}", counter(current) + 1).into_bytes()),
                    &landed,
                )
                .unwrap();
        }
        assert_eq!(counter(store.store.get("k").unwrap().as_deref()), 3);
        assert_eq!(
            *store.swaps.borrow(),
            3,
            "one swap each, none retried blind"
        );

        // Retried blind, as a writer that believes the answer does, the change is applied again
        // on top of itself until the attempts run out.
        let blind = TestSwap::lying();
        let error = blind
            .update(
                "k",
                &mut |current| Ok(format!("{} x", counter(current) + 1).into_bytes()),
                &|_, _| false,
            )
            .unwrap_err();
        assert!(error.0.contains("5 times"), "{error}");
        assert_eq!(counter(blind.store.get("k").unwrap().as_deref()), 5);
    }

    #[test]
    fn a_write_that_lost_to_another_is_decided_again_on_the_winner() {
        let store = TestSwap::lying();
        store.store.set("k", b"1 start").unwrap();
        *store.other.borrow_mut() = Some(Box::new(|s| s.set("k", b"10 other").unwrap()));
        let landed = |read_back: Option<&[u8]>, written: &[u8]| read_back == Some(written);
        let written = store
            .update(
                "k",
                &mut |current| Ok(format!("{} mine", counter(current) + 1).into_bytes()),
                &landed,
            )
            .unwrap();
        assert_eq!(written, b"11 mine");
        assert_eq!(store.store.get("k").unwrap().unwrap(), b"11 mine");
        assert_eq!(*store.swaps.borrow(), 2);
    }
}
