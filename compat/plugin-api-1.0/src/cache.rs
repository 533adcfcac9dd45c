//! [`Cache`]: a key-value cache with TTLs, in this module's own namespace. Keys of
//! different modules never meet. Entries may vanish early under memory pressure.

use std::time::Duration;

use abi_stable::std_types::{ROption, RResult};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    clients::{CallError, CallErrorKind},
    ffi::FfiHostBox,
};

/// This module's cache. Cheap to clone into handlers.
#[derive(Clone)]
pub struct Cache {
    pub(crate) host: FfiHostBox,
}

fn millis(ttl: Option<Duration>) -> u64 {
    ttl.map_or(0, |d| {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
    })
}

impl Cache {
    /// The bytes under `key`, if present and not expired.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, CallError> {
        match self.host.cache_get(key.into()).await {
            RResult::ROk(ROption::RSome(v)) => Ok(Some(v.into_vec())),
            RResult::ROk(ROption::RNone) => Ok(None),
            RResult::RErr(e) => Err(CallError::from_ffi(e)),
        }
    }

    /// Stores `value` under `key` for `ttl` (`None`: the host's default TTL).
    pub async fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> Result<(), CallError> {
        match self
            .host
            .cache_set(key.into(), value.into(), millis(ttl))
            .await
        {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(CallError::from_ffi(e)),
        }
    }

    /// Removes `key`.
    pub async fn delete(&self, key: &str) -> Result<(), CallError> {
        match self.host.cache_delete(key.into()).await {
            RResult::ROk(()) => Ok(()),
            RResult::RErr(e) => Err(CallError::from_ffi(e)),
        }
    }

    /// The JSON value under `key`, deserialised.
    pub async fn get_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, CallError> {
        match self.get(key).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                CallError::new(
                    CallErrorKind::Failed,
                    format!("cached `{key}` is not the expected JSON: {e}"),
                )
            }),
        }
    }

    /// Stores `value` as JSON.
    pub async fn set_json<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Option<Duration>,
    ) -> Result<(), CallError> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| CallError::new(CallErrorKind::BadRequest, e.to_string()))?;
        self.set(key, bytes, ttl).await
    }
}

/// The host's timer, for plugins (which have no runtime of their own).
#[derive(Clone)]
pub struct Timer {
    pub(crate) host: FfiHostBox,
}

impl Timer {
    /// Resolves after `d`.
    pub async fn sleep(&self, d: Duration) {
        self.host
            .sleep(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .await;
    }
}
