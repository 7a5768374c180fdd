//! Key/value access, for applying commands and for reads: [`KvRead`] (the sled tree in
//! production, a map in tests), [`Staged`] (writes staged over a read view, which the
//! caller commits all together or not at all), the JSON helpers over them, and
//! [`StoreError`].

use std::collections::BTreeMap;

use serde::Serialize;

use crate::command::Change;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    #[error("corrupt value under key {key}: {source}")]
    Corrupt {
        key: String,
        source: serde_json::Error,
    },
    #[error("encode: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("command version {version} is not supported by this server (it supports {supported}); upgrade this server")]
    UnsupportedVersion { version: u32, supported: u32 },
}

/// Read access to state (the sled tree in production, a map in tests).
pub trait KvRead {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Every key/value pair whose key starts with `prefix`, in key order.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvList, StoreError>;
}

/// Key/value pairs in key order.
pub type KvList = Vec<(Vec<u8>, Vec<u8>)>;

impl KvRead for sled::Tree {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sled::Tree::get(self, key)?.map(|v| v.to_vec()))
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvList, StoreError> {
        sled::Tree::scan_prefix(self, prefix)
            .map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(Into::into))
            .collect()
    }
}

impl KvRead for BTreeMap<Vec<u8>, Vec<u8>> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(BTreeMap::get(self, key).cloned())
    }

    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvList, StoreError> {
        Ok(self
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

/// Writes staged over a read view; reads see staged writes first.
pub struct Staged<'a, R: KvRead + ?Sized> {
    base: &'a R,
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub changes: Vec<Change>,
}

impl<R: KvRead + ?Sized> KvRead for Staged<'_, R> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.get_raw(key)
    }

    /// The base's pairs overlaid with the staged writes and deletes.
    fn scan_prefix(&self, prefix: &[u8]) -> Result<KvList, StoreError> {
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> =
            self.base.scan_prefix(prefix)?.into_iter().collect();
        for (k, v) in self
            .writes
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
        {
            match v {
                Some(v) => merged.insert(k.clone(), v.clone()),
                None => merged.remove(k),
            };
        }
        Ok(merged.into_iter().collect())
    }
}

impl<'a, R: KvRead + ?Sized> Staged<'a, R> {
    pub fn new(base: &'a R) -> Self {
        Staged {
            base,
            writes: BTreeMap::new(),
            changes: Vec::new(),
        }
    }

    fn get_raw(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    pub fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match self.get_raw(key)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v)
                .map(Some)
                .map_err(|source| StoreError::Corrupt {
                    key: String::from_utf8_lossy(key).into_owned(),
                    source,
                }),
        }
    }

    pub fn put_json<T: Serialize>(&mut self, key: Vec<u8>, value: &T) -> Result<(), StoreError> {
        self.writes.insert(key, Some(serde_json::to_vec(value)?));
        Ok(())
    }

    pub fn delete(&mut self, key: Vec<u8>) {
        self.writes.insert(key, None);
    }
}

pub(crate) fn get_json<R: KvRead + ?Sized, T: serde::de::DeserializeOwned>(
    kv: &R,
    key: &[u8],
) -> Result<Option<T>, StoreError> {
    match kv.get(key)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|source| StoreError::Corrupt {
                key: String::from_utf8_lossy(key).into_owned(),
                source,
            }),
    }
}

pub(crate) fn scan_json<R: KvRead + ?Sized, T: serde::de::DeserializeOwned>(
    kv: &R,
    prefix: &[u8],
) -> Result<Vec<T>, StoreError> {
    kv.scan_prefix(prefix)?
        .into_iter()
        .map(|(k, v)| {
            serde_json::from_slice(&v).map_err(|source| StoreError::Corrupt {
                key: String::from_utf8_lossy(&k).into_owned(),
                source,
            })
        })
        .collect()
}
