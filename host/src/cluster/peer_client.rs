//! Calls to other hosts' providers (`modhost.module.v1.Peer`), one lazily connected
//! gRPC channel per host address. The caller's deadline is the gRPC deadline; the end
//! user and the current trace's `traceparent` go along.

use std::{collections::HashMap, sync::Mutex, time::Duration};

use modhost_plugin_api::ffi::FfiUser;
use tonic::transport::{Channel, Endpoint};

use crate::{isolation::convert::user_to_wire, services::CallFailure, wire::module_v1 as pb};

/// How long connecting to a peer may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// What went wrong, for the caller's choice: try another host or not.
#[derive(Debug)]
pub enum PeerError {
    /// The host could not be reached: another provider may answer.
    Unreachable(String),
    /// The deadline passed.
    TimedOut,
    /// The host answered with the call's own failure.
    Call(CallFailure),
}

/// Channels to peers, by address.
#[derive(Default)]
pub struct PeerClients {
    channels: Mutex<HashMap<String, Channel>>,
}

impl PeerClients {
    fn channel(&self, address: &str) -> Result<Channel, String> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = channels.get(address) {
            return Ok(c.clone());
        }
        let channel = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|e| format!("bad peer address `{address}`: {e}"))?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
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
        let channel = self.channel(address).map_err(PeerError::Unreachable)?;
        let mut client = pb::peer_client::PeerClient::new(channel);
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
            Err(status) if status.code() == tonic::Code::Cancelled => Err(PeerError::TimedOut),
            Err(status) => Err(PeerError::Unreachable(format!(
                "host at {address}: {}",
                status.message()
            ))),
        }
    }
}
