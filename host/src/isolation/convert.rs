//! Conversions between plugin-api's FFI types and the module protocol's wire types, both
//! ways, so that a value crosses the process boundary unchanged.

use abi_stable::std_types::{RResult, RString, RVec, Tuple2};
use modhost_plugin_api::ffi::{
    call_error, FfiCallError, FfiEvent, FfiResponse, FfiUnitResult, FfiUser,
};

use crate::data::database::AreaAccess;
use crate::wire::module_v1 as pb;

pub fn user_to_wire(user: &FfiUser) -> pb::User {
    pb::User {
        id: user.id.to_string(),
        email: user.email.to_string(),
        permissions: user.permissions.iter().map(|p| p.to_string()).collect(),
    }
}

pub fn user_from_wire(user: pb::User) -> FfiUser {
    FfiUser {
        id: user.id.into(),
        email: user.email.into(),
        permissions: user.permissions.into_iter().map(RString::from).collect(),
    }
}

pub fn event_to_wire(e: &FfiEvent) -> pb::Event {
    pb::Event {
        id: e.id.to_string(),
        occurred_at_ms: e.occurred_at_ms,
        topic: e.topic.to_string(),
        source: e.source.to_string(),
        payload: e.payload.to_string(),
        attempt: e.attempt,
    }
}

pub fn event_from_wire(e: pb::Event) -> FfiEvent {
    FfiEvent {
        id: e.id.into(),
        occurred_at_ms: e.occurred_at_ms,
        topic: e.topic.into(),
        source: e.source.into(),
        payload: e.payload.into(),
        attempt: e.attempt,
    }
}

pub fn outcome(result: FfiUnitResult) -> pb::Outcome {
    match result {
        RResult::ROk(()) => pb::Outcome {
            ok: true,
            error: String::new(),
        },
        RResult::RErr(e) => pb::Outcome {
            ok: false,
            error: e.into_string(),
        },
    }
}

pub fn outcome_error(error: impl Into<String>) -> pb::Outcome {
    pb::Outcome {
        ok: false,
        error: error.into(),
    }
}

pub fn from_outcome(outcome: pb::Outcome) -> FfiUnitResult {
    match outcome.ok {
        true => RResult::ROk(()),
        false => RResult::RErr(outcome.error.into()),
    }
}

pub fn call_reply(result: RResult<RString, FfiCallError>) -> pb::CallReply {
    match result {
        RResult::ROk(json) => pb::CallReply {
            ok: true,
            json: json.into_string(),
            ..Default::default()
        },
        RResult::RErr(e) => call_reply_error(e.kind, e.message.into_string()),
    }
}

pub fn call_reply_error(kind: u8, message: String) -> pb::CallReply {
    pb::CallReply {
        ok: false,
        json: String::new(),
        error_kind: kind.into(),
        error: message,
    }
}

pub fn from_call_reply(reply: pb::CallReply) -> RResult<RString, FfiCallError> {
    match reply.ok {
        true => RResult::ROk(reply.json.into()),
        false => RResult::RErr(FfiCallError {
            kind: u8::try_from(reply.error_kind).unwrap_or(call_error::FAILED),
            message: reply.error.into(),
        }),
    }
}

/// An error of kind `unavailable`: the other process cannot be reached.
pub fn unavailable(message: impl Into<String>) -> FfiCallError {
    FfiCallError {
        kind: call_error::UNAVAILABLE,
        message: message.into().into(),
    }
}

pub fn response_to_wire(r: FfiResponse) -> pb::RouteResponse {
    pb::RouteResponse {
        status: r.status.into(),
        headers: r
            .headers
            .into_iter()
            .map(|Tuple2(name, value)| pb::Pair {
                name: name.into_string(),
                value: value.into_string().into_bytes(),
            })
            .collect(),
        body: r.body.into_vec(),
    }
}

pub fn response_from_wire(r: pb::RouteResponse) -> FfiResponse {
    FfiResponse {
        status: u16::try_from(r.status).unwrap_or(500),
        headers: r
            .headers
            .into_iter()
            .map(|p| {
                Tuple2(
                    p.name.into(),
                    String::from_utf8_lossy(&p.value).into_owned().into(),
                )
            })
            .collect(),
        body: RVec::from(r.body),
    }
}

pub fn access_to_wire(access: &AreaAccess) -> pb::DatabaseAccess {
    let engine = match access {
        AreaAccess::Sqlite {
            path,
            max_connections,
        } => pb::database_access::Engine::Sqlite(pb::SqliteAccess {
            path: path.display().to_string(),
            max_connections: *max_connections,
        }),
        AreaAccess::Postgres {
            host,
            port,
            socket,
            database,
            username,
            password,
            schema,
            max_connections,
        } => pb::database_access::Engine::Postgres(pb::PostgresAccess {
            host: host.clone(),
            port: (*port).into(),
            socket: socket
                .as_ref()
                .map(|s| s.display().to_string())
                .unwrap_or_default(),
            database: database.clone(),
            username: username.clone(),
            password: password.clone(),
            schema: schema.clone(),
            max_connections: *max_connections,
        }),
    };
    pb::DatabaseAccess {
        engine: Some(engine),
    }
}

pub fn access_from_wire(access: pb::DatabaseAccess) -> Option<AreaAccess> {
    Some(match access.engine? {
        pb::database_access::Engine::Sqlite(s) => AreaAccess::Sqlite {
            path: s.path.into(),
            max_connections: s.max_connections.max(1),
        },
        pb::database_access::Engine::Postgres(p) => AreaAccess::Postgres {
            host: p.host,
            port: u16::try_from(p.port).ok()?,
            socket: Some(p.socket).filter(|s| !s.is_empty()).map(Into::into),
            database: p.database,
            username: p.username,
            password: p.password,
            schema: p.schema,
            max_connections: p.max_connections.max(1),
        },
    })
}
