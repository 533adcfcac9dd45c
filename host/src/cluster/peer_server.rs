//! The peer server: what this host answers to the other hosts of its cluster, on
//! `cluster_listen` (gRPC over TCP, `modhost.module.v1.Peer`). A call names the
//! service, the calling module, the end user and the caller's deadline; it runs as an
//! in-process call would, inside the caller's trace.
//!
//! The calling host has checked the call against the manifests. With a
//! `cluster_secret`, a call must present it (`authorization: Bearer …`, compared in
//! constant time); without one the server listens on loopback only (the host refuses
//! anything else at start). There is no TLS: keep the peer network private.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};
use tracing::Instrument as _;

use crate::{
    isolation::convert::{call_reply_error, user_from_wire},
    services::local::ServiceRegistry,
    trace::TraceContext,
    wire::module_v1 as pb,
};

/// The longest deadline a caller may ask for.
const MAX_TIMEOUT: Duration = Duration::from_secs(300);

/// Answers calls from other hosts with this host's providers.
pub struct PeerService {
    services: Arc<ServiceRegistry>,
    /// What a caller must present, when the cluster has a secret.
    bearer: Option<String>,
}

impl PeerService {
    pub fn new(services: Arc<ServiceRegistry>, secret: Option<String>) -> Self {
        Self {
            services,
            bearer: secret.map(|s| format!("Bearer {s}")),
        }
    }

    fn admitted(&self, metadata: &tonic::metadata::MetadataMap) -> bool {
        let Some(want) = &self.bearer else {
            return true;
        };
        let got = metadata
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        // Constant time in the content: every byte of the expected value is compared.
        let mut diff = u8::from(got.len() != want.len());
        for (i, b) in want.bytes().enumerate() {
            diff |= b ^ got.get(i).copied().unwrap_or(0);
        }
        diff == 0
    }
}

#[tonic::async_trait]
impl pb::peer_server::Peer for PeerService {
    async fn call_service(
        &self,
        request: Request<pb::PeerCall>,
    ) -> Result<Response<pb::CallReply>, Status> {
        if !self.admitted(request.metadata()) {
            tracing::warn!(target: "modhost::cluster", "refused a peer call without the cluster secret");
            return Err(Status::unauthenticated(
                "this host's peer calls need the cluster secret (cluster_secret)",
            ));
        }
        let trace = request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse)
            .unwrap_or_else(TraceContext::new_root);
        let call = request.into_inner();
        let deadline = Duration::from_millis(call.timeout_ms.max(1)).min(MAX_TIMEOUT);
        let user = call.user.map(|u| Arc::new(user_from_wire(u)));
        let span = tracing::info_span!("peer_call", trace_id = %trace.trace_id, service = %call.service, caller = %call.caller);
        let work = self
            .services
            .call(
                &call.caller,
                &call.service,
                call.request.into(),
                deadline,
                user,
            )
            .instrument(span.clone());
        let result = crate::trace::scope(trace, work).await;
        span.in_scope(|| match &result {
            Ok(_) => tracing::debug!(target: "modhost::cluster", "answered a call from another host"),
            Err((kind, why)) => tracing::info!(target: "modhost::cluster", kind, "a call from another host failed: {why}"),
        });
        Ok(Response::new(match result {
            Ok(json) => pb::CallReply {
                ok: true,
                json,
                error_kind: 0,
                error: String::new(),
            },
            Err((kind, message)) => call_reply_error(kind, message),
        }))
    }
}

/// Serves the peer protocol on `listener` until `stop` resolves.
pub async fn serve(
    services: Arc<ServiceRegistry>,
    listener: tokio::net::TcpListener,
    secret: Option<String>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let service = pb::peer_server::PeerServer::new(PeerService::new(services, secret))
        .max_decoding_message_size(super::peer_client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(super::peer_client::MAX_MESSAGE_BYTES);
    tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(incoming, stop)
        .await
}
