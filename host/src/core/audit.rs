//! Audit: the append-only log of who did what, and its queries.
//!
//! The table refuses UPDATE and DELETE (database triggers). A record that cannot be
//! written is logged at error level: the action it describes has already happened.
//! Field lengths and the rate of denied-request entries are bounded (`audit_limit.rs`).

use modhost_plugin_api::{ffi::FfiValue, AuditEntry};
use serde::Deserialize;

use super::{as_int, as_text, rows, text_param, CoreError, LocalCore};
use crate::data::db_handle::AreaDatabase;

/// One entry to record.
#[derive(Debug, Clone)]
pub struct Audit {
    pub actor: String,
    pub module: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: String,
    /// When it happened (RFC 3339); `None`: when it is written.
    pub time: Option<String>,
    /// Unique per record, for records that may be delivered twice (from module hosts).
    pub record_id: Option<String>,
}

impl Audit {
    /// A successful `action` on `target` by `actor`, from the core.
    pub fn new(actor: &str, action: &str, target: &str) -> Self {
        Self {
            actor: actor.to_string(),
            module: "core".into(),
            action: action.to_string(),
            target: target.to_string(),
            outcome: "success".into(),
            detail: String::new(),
            time: None,
            record_id: None,
        }
    }

    /// Sets the module the entry is about.
    pub fn module(mut self, module: &str) -> Self {
        self.module = module.to_string();
        self
    }

    /// Sets the outcome (`success`, `denied`, `failure`).
    pub fn outcome(mut self, outcome: &str) -> Self {
        self.outcome = outcome.to_string();
        self
    }

    /// Sets free-text detail.
    pub fn detail(mut self, detail: &str) -> Self {
        self.detail = detail.to_string();
        self
    }
}

/// Filters for [`Core::audit_query`]. All optional; results are newest first.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub module: Option<String>,
    pub action: Option<String>,
    pub outcome: Option<String>,
    /// RFC 3339 lower bound (inclusive) on time.
    pub since: Option<String>,
    /// RFC 3339 upper bound (exclusive) on time.
    pub until: Option<String>,
    /// Only entries with an id below this (paging: pass the last id you got).
    pub before: Option<i64>,
    /// 1..=1000, default 100.
    pub limit: Option<i64>,
}

/// Appends an entry, its fields cut to the length caps (`audit_limit.rs`); logs a
/// failure (the action it describes has already happened).
pub(super) async fn insert(db: &AreaDatabase, entry: Audit) {
    let (action, actor, target) = (
        entry.action.clone(),
        entry.actor.clone(),
        entry.target.clone(),
    );
    if let Err(e) = insert_all(db, vec![entry]).await {
        tracing::error!(%action, %actor, %target, error = %e.message, "cannot write the audit log");
    }
}

/// Appends entries in one transaction: all or none. A record whose `record_id` is
/// already stored is skipped (a retried delivery).
pub(super) async fn insert_all(
    db: &AreaDatabase,
    entries: Vec<Audit>,
) -> Result<(), modhost_plugin_api::ffi::FfiDbError> {
    let now = super::now_rfc3339();
    let statements = entries
        .into_iter()
        .map(|entry| {
            let a = entry.clipped();
            let time = a.time.clone().unwrap_or_else(|| now.clone());
            let id = match &a.record_id {
                Some(id) => text_param(id),
                None => FfiValue::Null,
            };
            (
                "INSERT INTO audit_log (time, actor, module, action, target, outcome, detail, record_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (record_id) DO NOTHING",
                vec![text_param(&time), text_param(&a.actor), text_param(&a.module), text_param(&a.action), text_param(&a.target), text_param(&a.outcome), text_param(&a.detail), id],
            )
        })
        .collect();
    db.exec_all(statements).await
}

impl LocalCore {
    /// Appends an entry.
    pub async fn record(&self, a: Audit) {
        insert(&self.db, a).await;
    }

    /// Appends entries from a module host, all or none; an error means none was stored
    /// (the host keeps them and retries).
    pub async fn record_all(&self, entries: Vec<Audit>) -> Result<(), CoreError> {
        insert_all(&self.db, entries).await.map_err(CoreError::from)
    }

    /// Entries matching `f`, newest first.
    pub async fn audit_query(&self, f: &AuditFilter) -> Result<Vec<AuditEntry>, CoreError> {
        let limit = f.limit.unwrap_or(100);
        if !(1..=1000).contains(&limit) {
            return Err(CoreError::Invalid("limit must be 1 to 1000".into()));
        }
        let mut sql = String::from("SELECT id, time, actor, module, action, target, outcome, detail FROM audit_log WHERE 1 = 1");
        let mut params = Vec::new();
        let mut push = |clause: &str, v: FfiValue, sql: &mut String| {
            params.push(v);
            sql.push_str(&format!(" AND {clause} ${}", params.len()));
        };
        for (column, value) in [
            ("actor =", &f.actor),
            ("module =", &f.module),
            ("action =", &f.action),
            ("outcome =", &f.outcome),
            ("time >=", &f.since),
            ("time <", &f.until),
        ] {
            if let Some(v) = value {
                push(column, text_param(v), &mut sql);
            }
        }
        if let Some(before) = f.before {
            push("id <", FfiValue::Int(before), &mut sql);
        }
        params.push(FfiValue::Int(limit));
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let found = rows(self.db.fetch(&sql, params).await?);
        found
            .iter()
            .map(|r| {
                Ok(AuditEntry {
                    id: as_int(&r[0])?,
                    time: as_text(&r[1])?,
                    actor: as_text(&r[2])?,
                    module: as_text(&r[3])?,
                    action: as_text(&r[4])?,
                    target: as_text(&r[5])?,
                    outcome: as_text(&r[6])?,
                    detail: as_text(&r[7])?,
                })
            })
            .collect()
    }
}
