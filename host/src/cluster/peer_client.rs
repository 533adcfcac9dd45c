//! Calls to other hosts' providers (`modhost.module.v1.Peer`), one gRPC channel per
//! host address, connected before first use. The caller's deadline is the gRPC
//! deadline; the end user, the current trace's `traceparent` and the cluster secret go
//! along.
//!
//! A failure is classed by whether the call may have run: a host that cannot be
//! connected to ran nothing (the caller may try another), while a failure after the
//! request was sent leaves the outcome unknown (the caller must not send it again).

use std::{collections::HashMap, sync::Mutex, time::Duration};

use modhost_plugin_api::ffi::FfiUser;
use tonic::transport::{Channel, Endpoint};

use crate::{isolation::convert::user_to_wire, services::CallFailure, wire::module_v1 as pb};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The largest request or answer carried (a module's response limit is 16 MiB).
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// What went wrong, for the caller's choice: try another host or not.
#[derive(Debug)]
pub enum PeerError {
    /// The host could not be reached: nothing ran, another provider may answer.
    Unreachable(String),
    /// The deadline passed.
    TimedOut,
    /// The host answered with the call's own failure.
    Call(CallFailure),
    /// The call failed after it was sent: it may have run.
    Unknown(String),
}

/// Channels to peers, by address.
pub struct PeerClients {
    channels: Mutex<HashMap<String, Channel>>,
    /// `authorization: Bearer …` on every call, when the cluster has a secret.
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

/// Whether a transport error happened while connecting (nothing was sent).
fn while_connecting(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                ConnectionRefused | HostUnreachable | NetworkUnreachable | AddrNotAvailable
            ) {
                return true;
            }
        }
        let text = e.to_string();
        if text.contains("tcp connect error") || text.contains("error trying to connect") {
            return true;
        }
        source = e.source();
    }
    false
}

impl PeerClients {
    pub fn new(secret: Option<String>) -> Self {
        Self {
            channels: Mutex::new(HashMap::new()),
            bearer: secret.and_then(|s| format!("Bearer {s}").parse().ok()),
        }
    }

    /// The channel to `address`, connected now if there is none yet.
    async fn channel(&self, address: &str) -> Result<Channel, PeerError> {
        let cached = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(address)
            .cloned();
        if let Some(c) = cached {
            return Ok(c);
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| PeerError::Unreachable(format!("bad peer address `{address}`: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| {
                PeerError::Unreachable(format!("host at {address}: cannot connect: {e}"))
            })?;
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    fn forget(&self, address: &str) {
        self.channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(address);
    }

    /// Calls `service` on the host at `address`.
    pub async fn call(
        &self,
        address: &str,
        caller: &str,
        service: &str,
        request: String,
        deadline: Duration,
        user: Option<&FfiUser>,
    ) -> Result<String, PeerError> {
        let channel = self.channel(address).await?;
        let mut client = pb::peer_client::PeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut call = tonic::Request::new(pb::PeerCall {
            service: service.to_string(),
            caller: caller.to_string(),
            user: user.map(user_to_wire),
            request,
            timeout_ms: u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX),
        });
        call.set_timeout(deadline);
        if let Some(tp) = crate::trace::outgoing_header() {
            if let Ok(value) = tp.parse() {
                call.metadata_mut().insert("traceparent", value);
            }
        }
        if let Some(bearer) = &self.bearer {
            call.metadata_mut().insert("authorization", bearer.clone());
        }
        match client.call_service(call).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                match reply.ok {
                    true => Ok(reply.json),
                    false => Err(PeerError::Call((
                        u8::try_from(reply.error_kind).unwrap_or(u8::MAX),
                        reply.error,
                    ))),
                }
            }
            Err(status) if status.code() == tonic::Code::DeadlineExceeded => {
                Err(PeerError::TimedOut)
            }
            Err(status) if while_connecting(&status) => {
                self.forget(address);
                Err(PeerError::Unreachable(format!(
                    "host at {address}: cannot connect: {}",
                    status.message()
                )))
            }
            Err(status) => {
                if status.code() == tonic::Code::Unavailable {
                    self.forget(address);
                }
                Err(PeerError::Unknown(format!(
                    "host at {address}: {} ({:?})",
                    status.message(),
                    status.code()
                )))
            }
        }
    }
}
