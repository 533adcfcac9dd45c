//! Core errors and gRPC statuses, both ways: the server (`grpc_server.rs`) answers a
//! core error as a status; the client (`remote.rs`, `replica.rs`) reads a status back as
//! the same core error, or as "unreachable".

use tonic::{Code, Status};

use super::CoreError;

/// A core error as a gRPC status. The messages are the core's own, which never carry
/// database text (that is logged under an error id).
pub fn to_status(e: CoreError) -> Status {
    let message = e.to_string();
    match e {
        CoreError::Invalid(_) => Status::invalid_argument(message),
        CoreError::NotFound(_) => Status::not_found(message),
        CoreError::Conflict(_) => Status::already_exists(message),
        CoreError::Unauthorized(_) => Status::unauthenticated(message),
        CoreError::Forbidden(_) => Status::permission_denied(message),
        CoreError::Database(_) | CoreError::Unavailable(_) => Status::unavailable(message),
    }
}

/// A status from the core as a core error; anything but a refusal means the core
/// could not be reached.
pub fn from_status(s: Status) -> CoreError {
    let message = s.message().to_string();
    match s.code() {
        Code::InvalidArgument => CoreError::Invalid(message),
        Code::NotFound => CoreError::NotFound(message),
        Code::AlreadyExists => CoreError::Conflict(message),
        Code::Unauthenticated => CoreError::Unauthorized(message),
        Code::PermissionDenied => CoreError::Forbidden(message),
        _ => CoreError::Unavailable(format!("the core services are unreachable ({message})")),
    }
}

/// Whether a status means the core could not be reached (rather than a refusal).
pub fn unreachable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}
