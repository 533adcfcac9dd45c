//! `compat`: a module built against plugin-api **1.0** (the frozen copy beside it), run
//! unchanged by every later 1.x host. It uses every part of the 1.0 API, so that the
//! host's compatibility test can exercise each one:
//!
//! - routes and the request object (method, path, query, parameters, headers, body, user);
//! - its database: migrations, a transaction, queries, a constraint error;
//! - events: publishes `compat.note.created`, subscribes to `billing.subscription.created`;
//! - services: calls `billing.subscription.get`, provides `compat.note.get`;
//! - its cache;
//! - state hand-off on hot reload (the count of notes created).
//!
//! Do not change this file when plugin-api gains a minor: it stands for a binary a vendor
//! shipped against 1.0.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use modhost_plugin_api::{prelude::*, PLUGIN_API_VERSION};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Default)]
pub struct Compat {
    /// Notes created by this instance and the ones before it (handed over on reload).
    created: Arc<AtomicU64>,
}

#[derive(Deserialize)]
struct NewNote {
    text: String,
}

#[derive(Serialize, Deserialize)]
struct Note {
    id: i64,
    text: String,
}

#[derive(Deserialize)]
struct NoteQuery {
    id: i64,
}

async fn create_note(
    db: Database,
    events: Events,
    cache: Cache,
    created: Arc<AtomicU64>,
    req: Request,
) -> std::result::Result<Response, Response> {
    let new: NewNote = req.json()?;
    let tx = db.begin().await?;
    // A duplicate text violates the UNIQUE constraint: `?` answers 409 with an error id.
    tx.execute(
        "INSERT INTO notes (text) VALUES ($1)",
        params![new.text.as_str()],
    )
    .await?;
    let note: Note = tx
        .query(
            "SELECT id, text FROM notes WHERE text = $1",
            params![new.text.as_str()],
        )
        .await?
        .iter()
        .next()
        .ok_or_else(|| Response::error(500, "the inserted note is missing"))?
        .deserialize()?;
    tx.commit().await?;
    let event_id = events.publish("compat.note.created", &note).await?;
    cache
        .set(
            "last",
            note.text.clone().into_bytes(),
            Some(Duration::from_secs(60)),
        )
        .await?;
    created.fetch_add(1, Ordering::SeqCst);
    Ok(Response::json(
        201,
        &json!({ "id": note.id, "text": note.text, "event_id": event_id }),
    ))
}

async fn get_note(db: Database, id: i64) -> std::result::Result<Option<Note>, DbError> {
    db.query_opt_as("SELECT id, text FROM notes WHERE id = $1", params![id])
        .await
}

impl Module for Compat {
    async fn init(&self, ctx: &mut InitContext) -> Result<()> {
        let (db, events, cache, created) = (
            ctx.database(),
            ctx.events(),
            ctx.cache(),
            self.created.clone(),
        );
        ctx.route(
            Method::Post,
            "/api/v1/compat/notes",
            "compat.note.write",
            move |req| {
                create_note(
                    db.clone(),
                    events.clone(),
                    cache.clone(),
                    created.clone(),
                    req,
                )
            },
        )?;

        let db = ctx.database();
        ctx.route(
            Method::Get,
            "/api/v1/compat/notes/{id}",
            "compat.note.read",
            move |req| {
                let db = db.clone();
                async move {
                    let id: i64 = req
                        .param("id")
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| Response::error(400, "id must be an integer"))?;
                    match get_note(db, id).await? {
                        Some(note) => Ok::<_, Response>(Response::json(200, &note)),
                        None => Err(Response::error(404, format!("no note {id}"))),
                    }
                }
            },
        )?;

        let cache = ctx.cache();
        ctx.route(
            Method::Get,
            "/api/v1/compat/cache/last",
            "compat.note.read",
            move |_req| {
                let cache = cache.clone();
                async move {
                    match cache.get("last").await? {
                        Some(bytes) => Ok::<_, CallError>(Response::json(
                            200,
                            &json!({ "last": String::from_utf8_lossy(&bytes) }),
                        )),
                        None => Ok(Response::error(404, "nothing cached")),
                    }
                }
            },
        )?;

        let services = ctx.services();
        ctx.route(
            Method::Get,
            "/api/v1/compat/billing/{user}",
            "compat.note.read",
            move |req| {
                let services = services.clone();
                async move {
                    let user = req.param("user").unwrap_or("").to_string();
                    let sub: serde_json::Value = services
                        .call(
                            "billing.subscription.get",
                            &json!({ "user_id": user }),
                            Duration::from_secs(5),
                        )
                        .await?;
                    Ok::<_, CallError>(Response::json(200, &sub))
                }
            },
        )?;

        let db = ctx.database();
        ctx.route(
            Method::Get,
            "/api/v1/compat/seen",
            "compat.note.read",
            move |_req| {
                let db = db.clone();
                async move {
                    let rows = db
                        .query(
                            "SELECT event_id, topic, source FROM seen ORDER BY event_id",
                            &[],
                        )
                        .await?;
                    let list: Vec<_> = rows.iter().map(|r| r.to_json()).collect();
                    Ok::<_, DbError>(Response::json(200, &list))
                }
            },
        )?;

        let created = self.created.clone();
        ctx.route(
            Method::Post,
            "/api/v1/compat/request/{name}",
            "compat.note.read",
            move |req| {
                let created = created.load(Ordering::SeqCst);
                async move {
                    Response::json(
                        200,
                        &json!({
                            "plugin_api": PLUGIN_API_VERSION,
                            "method": req.method(),
                            "path": req.path(),
                            "query": req.query(),
                            "name": req.param("name"),
                            "flag": req.query_param("flag"),
                            "header": req.header("x-compat"),
                            "body": String::from_utf8_lossy(req.body()),
                            "user": req.user().map(|u| u.id.clone()),
                            "created": created,
                        }),
                    )
                }
            },
        )?;

        let db = ctx.database();
        ctx.subscribe("billing.subscription.created", move |event: Event| {
            let db = db.clone();
            async move {
                db.execute(
                    "INSERT INTO seen (event_id, topic, source) VALUES ($1, $2, $3) ON CONFLICT (event_id) DO NOTHING",
                    params![event.id.as_str(), event.topic.as_str(), event.source.as_str()],
                )
                .await?;
                Ok(())
            }
        })?;

        let db = ctx.database();
        ctx.provide("compat.note.get", move |caller: Caller, q: NoteQuery| {
            let db = db.clone();
            async move {
                tracing::info!(caller = %caller.module, id = q.id, "note asked for");
                match get_note(db, q.id).await {
                    Ok(Some(note)) => Ok(json!({ "note": note, "caller": caller.module })),
                    Ok(None) => Err(CallError::not_found(format!("no note {}", q.id))),
                    Err(e) => Err(CallError::failed(e.to_string())),
                }
            }
        })?;
        tracing::info!(plugin_api = PLUGIN_API_VERSION, "compat module ready");
        Ok(())
    }

    async fn export_state(&self) -> Result<Option<Vec<u8>>> {
        Ok(Some(
            self.created.load(Ordering::SeqCst).to_le_bytes().to_vec(),
        ))
    }

    async fn import_state(&self, state: Vec<u8>) -> Result<()> {
        let bytes: [u8; 8] = state
            .try_into()
            .map_err(|_| Error::new("state must be 8 bytes"))?;
        self.created
            .store(u64::from_le_bytes(bytes), Ordering::SeqCst);
        Ok(())
    }
}

modhost_plugin_api::export_module!(Compat);
