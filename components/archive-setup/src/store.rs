//! The core's key-value operations on Spin's `default` store.

use archiver_core::state::{KeyValue, StoreError};
use spin_sdk::key_value::Store;

pub struct SpinStore(Store);

impl SpinStore {
    pub fn open() -> Result<SpinStore, StoreError> {
        Store::open_default()
            .map(SpinStore)
            .map_err(|e| StoreError(format!("opening the default store: {e}")))
    }
}

impl KeyValue for SpinStore {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.0
            .get(key)
            .map_err(|e| StoreError(format!("get {key}: {e}")))
    }

    fn set(&self, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.0
            .set(key, value)
            .map_err(|e| StoreError(format!("set {key}: {e}")))
    }

    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.0
            .delete(key)
            .map_err(|e| StoreError(format!("delete {key}: {e}")))
    }
}
