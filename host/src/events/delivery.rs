//! Handing one event to a subscriber's handler, with the bus's retries: a handler that
//! fails (error, panic, or no answer within `handler_timeout`) is called again after
//! `retry_backoff`, doubling, up to `max_retries` times. The in-process and Kafka
//! engines deliver this way; JetStream retries through the broker (`nak` with delay).

use std::panic::AssertUnwindSafe;

use abi_stable::std_types::RResult;
use futures_util::FutureExt as _;
use modhost_plugin_api::ffi::{FfiEvent, FfiEventHandlerBox};

use super::BusSettings;

/// Delivers one event with retries; returns the final error, if any.
pub async fn deliver(
    handler: &FfiEventHandlerBox,
    event: &FfiEvent,
    s: &BusSettings,
) -> Result<(), (u32, String)> {
    let mut delay = s.retry_backoff;
    let attempts = s.max_retries.saturating_add(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        let mut e = event.clone();
        e.attempt = attempt;
        let call = AssertUnwindSafe(handler.handle(e)).catch_unwind();
        last = match tokio::time::timeout(s.handler_timeout, call).await {
            Ok(Ok(RResult::ROk(()))) => return Ok(()),
            Ok(Ok(RResult::RErr(msg))) => msg.into_string(),
            Ok(Err(_)) => "the handler panicked".to_string(),
            Err(_) => format!("the handler did not finish within {:?}", s.handler_timeout),
        };
        if attempt < attempts {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    Err((attempts, last))
}
