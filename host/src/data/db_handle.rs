//! The host side of [`FfiDatabase`] and [`FfiTransaction`]: running a module's SQL on its
//! own area, binding parameters, reading rows and classifying errors.
//!
//! The futures returned here are polled from plugin code but run host code on the host's
//! runtime, which is what lets a plugin use the database without linking a driver.
//!
//! Every error handed to a module carries an error id, and is logged here with that id,
//! the module and the database's own text: the SDK answers clients with the id only.

use std::sync::Arc;

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RBox, RResult, RString, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
use modhost_plugin_api::ffi::{
    db_error, FfiDatabase, FfiDatabaseBox, FfiDatabase_TO, FfiDbError, FfiDbResult, FfiRows,
    FfiTransaction, FfiTransactionBox, FfiTransaction_TO, FfiValue,
};
use sqlx::{
    postgres::{PgArguments, PgRow},
    query::Query,
    sqlite::{SqliteArguments, SqliteRow},
    Column, Postgres, Row, Sqlite, TypeInfo, ValueRef,
};
use tokio::sync::Mutex;

use crate::data::database::AreaPool;

/// A handle on one database area: a module's, or the host's `core` area.
#[derive(Clone)]
pub struct AreaDatabase {
    /// The module (or `core`) whose area this is: named in error logs.
    area: Arc<str>,
    pool: AreaPool,
}

impl AreaDatabase {
    pub fn new(area: &str, pool: AreaPool) -> Self {
        Self {
            area: area.into(),
            pool,
        }
    }

    /// Runs a statement; returns the number of rows affected.
    pub async fn exec(&self, sql: &str, params: Vec<FfiValue>) -> Result<u64, FfiDbError> {
        let (sql, params) = (RString::from(sql), RVec::from(params));
        match &self.pool {
            AreaPool::Sqlite(p) => bind_sqlite(sql, params)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
            AreaPool::Postgres(p) => bind_pg(sql, params)
                .execute(p)
                .await
                .map(|r| r.rows_affected()),
        }
        .map_err(classify)
    }

    /// Runs a query; returns its rows.
    pub async fn fetch(&self, sql: &str, params: Vec<FfiValue>) -> Result<FfiRows, FfiDbError> {
        let (sql, params) = (RString::from(sql), RVec::from(params));
        match &self.pool {
            AreaPool::Sqlite(p) => bind_sqlite(sql, params)
                .fetch_all(p)
                .await
                .map_err(classify)
                .and_then(sqlite_rows),
            AreaPool::Postgres(p) => bind_pg(sql, params)
                .fetch_all(p)
                .await
                .map_err(classify)
                .and_then(pg_rows),
        }
    }

    /// Runs `statements` in one transaction: every one of them, or none.
    pub async fn exec_all(&self, statements: Vec<(&str, Vec<FfiValue>)>) -> Result<(), FfiDbError> {
        macro_rules! in_transaction {
            ($pool:expr, $bind:ident) => {{
                let mut tx = $pool.begin().await.map_err(classify)?;
                for (sql, params) in statements {
                    $bind(RString::from(sql), RVec::from(params))
                        .execute(&mut *tx)
                        .await
                        .map_err(classify)?;
                }
                tx.commit().await.map_err(classify)
            }};
        }
        match &self.pool {
            AreaPool::Sqlite(p) => in_transaction!(p, bind_sqlite),
            AreaPool::Postgres(p) => in_transaction!(p, bind_pg),
        }
    }

    /// The FFI object handed to the module.
    pub fn to_ffi(&self) -> FfiDatabaseBox {
        FfiDatabase_TO::from_ptr(RArc::new(self.clone()), TD_Opaque)
    }
}

fn fail(kind: u8, message: impl Into<String>) -> FfiDbError {
    FfiDbError {
        kind,
        message: RString::from(message.into()),
        error_id: RString::from(crate::random::random_hex(8)),
    }
}

/// Hands a result to the module; an error is logged first, under its id.
fn to_ffi<T>(area: &str, r: Result<T, FfiDbError>) -> FfiDbResult<T> {
    match r {
        Ok(v) => RResult::ROk(v),
        Err(e) => {
            tracing::warn!(
                module = area,
                error_id = %e.error_id,
                kind = e.kind,
                detail = %e.message,
                "database error"
            );
            RResult::RErr(e)
        }
    }
}

/// Classifies an sqlx error for the module.
fn classify(e: sqlx::Error) -> FfiDbError {
    let kind = match &e {
        sqlx::Error::Database(db) => {
            use sqlx::error::ErrorKind;
            match db.kind() {
                ErrorKind::UniqueViolation
                | ErrorKind::ForeignKeyViolation
                | ErrorKind::NotNullViolation
                | ErrorKind::CheckViolation => db_error::CONSTRAINT,
                _ if db.code().as_deref() == Some("42501") => db_error::DENIED,
                _ if db.message().contains("too many attached databases") => db_error::DENIED,
                _ if db.code().is_some_and(|c| {
                    c.starts_with("08") || c.starts_with("28") || c.starts_with("57P")
                }) =>
                {
                    db_error::UNAVAILABLE
                }
                _ => db_error::QUERY,
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => db_error::UNAVAILABLE,
        _ => db_error::QUERY,
    };
    let message = match &e {
        sqlx::Error::Database(db) if db.message().contains("too many attached databases") => {
            "ATTACH is not allowed: a module can only use its own database".to_string()
        }
        _ => e.to_string(),
    };
    fail(kind, message)
}

/// Defines a function binding a module's statement and values for one backend.
///
/// Module SQL is dynamic by design: the module writes statements with `$n` parameters,
/// and every value is bound, never spliced in.
macro_rules! binder {
    ($name:ident, $db:ty, $args:ty) => {
        fn $name(sql: RString, params: RVec<FfiValue>) -> Query<'static, $db, $args> {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.into_string()));
            for p in params {
                q = match p {
                    FfiValue::Null => q.bind(None::<String>),
                    FfiValue::Bool(b) => q.bind(b),
                    FfiValue::Int(i) => q.bind(i),
                    FfiValue::Float(f) => q.bind(f),
                    FfiValue::Text(s) => q.bind(s.into_string()),
                    FfiValue::Bytes(b) => q.bind(b.into_vec()),
                };
            }
            q
        }
    };
}

binder!(bind_sqlite, Sqlite, SqliteArguments);
binder!(bind_pg, Postgres, PgArguments);

fn columns<R: Row>(rows: &[R]) -> RVec<RString> {
    rows.first()
        .map(|r| {
            r.columns()
                .iter()
                .map(|c| RString::from(c.name()))
                .collect()
        })
        .unwrap_or_default()
}

fn sqlite_rows(rows: Vec<SqliteRow>) -> Result<FfiRows, FfiDbError> {
    let mut out = RVec::with_capacity(rows.len());
    for row in &rows {
        let mut values = RVec::with_capacity(row.len());
        for i in 0..row.len() {
            let raw = row.try_get_raw(i).map_err(classify)?;
            if raw.is_null() {
                values.push(FfiValue::Null);
                continue;
            }
            let ty = raw.type_info().name().to_string();
            let v = match ty.as_str() {
                "INTEGER" | "INT" | "BIGINT" | "INT8" => {
                    FfiValue::Int(row.try_get_unchecked::<i64, _>(i).map_err(classify)?)
                }
                "REAL" | "FLOAT" | "DOUBLE" => {
                    FfiValue::Float(row.try_get_unchecked::<f64, _>(i).map_err(classify)?)
                }
                "BOOLEAN" => FfiValue::Bool(row.try_get_unchecked::<bool, _>(i).map_err(classify)?),
                "BLOB" => FfiValue::Bytes(
                    row.try_get_unchecked::<Vec<u8>, _>(i)
                        .map_err(classify)?
                        .into(),
                ),
                _ => FfiValue::Text(
                    row.try_get_unchecked::<String, _>(i)
                        .map_err(classify)?
                        .into(),
                ),
            };
            values.push(v);
        }
        out.push(values);
    }
    Ok(FfiRows {
        columns: columns(&rows),
        rows: out,
    })
}

fn pg_rows(rows: Vec<PgRow>) -> Result<FfiRows, FfiDbError> {
    let mut out = RVec::with_capacity(rows.len());
    for row in &rows {
        let mut values = RVec::with_capacity(row.len());
        for (i, col) in row.columns().iter().enumerate() {
            let raw = row.try_get_raw(i).map_err(classify)?;
            if raw.is_null() {
                values.push(FfiValue::Null);
                continue;
            }
            let ty = col.type_info().name();
            let v = match ty {
                "INT2" => FfiValue::Int(row.try_get::<i16, _>(i).map_err(classify)?.into()),
                "INT4" => FfiValue::Int(row.try_get::<i32, _>(i).map_err(classify)?.into()),
                "INT8" => FfiValue::Int(row.try_get::<i64, _>(i).map_err(classify)?),
                "FLOAT4" => FfiValue::Float(row.try_get::<f32, _>(i).map_err(classify)?.into()),
                "FLOAT8" => FfiValue::Float(row.try_get::<f64, _>(i).map_err(classify)?),
                "BOOL" => FfiValue::Bool(row.try_get::<bool, _>(i).map_err(classify)?),
                "BYTEA" => FfiValue::Bytes(row.try_get::<Vec<u8>, _>(i).map_err(classify)?.into()),
                "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" | "CHAR" | "CITEXT" => {
                    FfiValue::Text(row.try_get::<String, _>(i).map_err(classify)?.into())
                }
                other => {
                    return Err(fail(
                        db_error::QUERY,
                        format!(
                            "column `{}` has PostgreSQL type {other}, which the plugin API does not carry; cast it in SQL, e.g. `{}::text` or `{}::float8`",
                            col.name(),
                            col.name(),
                            col.name()
                        ),
                    ))
                }
            };
            values.push(v);
        }
        out.push(values);
    }
    Ok(FfiRows {
        columns: columns(&rows),
        rows: out,
    })
}

impl FfiDatabase for AreaDatabase {
    fn execute(&self, sql: RString, params: RVec<FfiValue>) -> FfiFuture<FfiDbResult<u64>> {
        let db = self.clone();
        async move { to_ffi(&db.area, db.exec(sql.as_str(), params.into_vec()).await) }.into_ffi()
    }

    fn query(&self, sql: RString, params: RVec<FfiValue>) -> FfiFuture<FfiDbResult<FfiRows>> {
        let db = self.clone();
        async move { to_ffi(&db.area, db.fetch(sql.as_str(), params.into_vec()).await) }.into_ffi()
    }

    fn begin(&self) -> FfiFuture<FfiDbResult<FfiTransactionBox>> {
        let (pool, area) = (self.pool.clone(), self.area.clone());
        async move {
            let tx = match &pool {
                AreaPool::Sqlite(p) => p.begin().await.map(OpenTx::Sqlite),
                AreaPool::Postgres(p) => p.begin().await.map(OpenTx::Postgres),
            };
            to_ffi(
                &area.clone(),
                tx.map_err(classify).map(|tx| {
                    FfiTransaction_TO::from_ptr(
                        RBox::new(HostTransaction {
                            area,
                            tx: Arc::new(Mutex::new(Some(tx))),
                        }),
                        TD_Opaque,
                    )
                }),
            )
        }
        .into_ffi()
    }
}

enum OpenTx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

/// A transaction held by a module. Dropped without commit: sqlx rolls it back.
struct HostTransaction {
    area: Arc<str>,
    tx: Arc<Mutex<Option<OpenTx>>>,
}

fn closed() -> FfiDbError {
    fail(
        db_error::CLOSED,
        "the transaction was already committed or rolled back",
    )
}

impl FfiTransaction for HostTransaction {
    fn execute(&self, sql: RString, params: RVec<FfiValue>) -> FfiFuture<FfiDbResult<u64>> {
        let (tx, area) = (self.tx.clone(), self.area.clone());
        async move {
            let mut guard = tx.lock().await;
            to_ffi(
                &area,
                match guard.as_mut() {
                    None => Err(closed()),
                    Some(OpenTx::Sqlite(t)) => bind_sqlite(sql, params)
                        .execute(&mut **t)
                        .await
                        .map(|r| r.rows_affected())
                        .map_err(classify),
                    Some(OpenTx::Postgres(t)) => bind_pg(sql, params)
                        .execute(&mut **t)
                        .await
                        .map(|r| r.rows_affected())
                        .map_err(classify),
                },
            )
        }
        .into_ffi()
    }

    fn query(&self, sql: RString, params: RVec<FfiValue>) -> FfiFuture<FfiDbResult<FfiRows>> {
        let (tx, area) = (self.tx.clone(), self.area.clone());
        async move {
            let mut guard = tx.lock().await;
            to_ffi(
                &area,
                match guard.as_mut() {
                    None => Err(closed()),
                    Some(OpenTx::Sqlite(t)) => bind_sqlite(sql, params)
                        .fetch_all(&mut **t)
                        .await
                        .map_err(classify)
                        .and_then(sqlite_rows),
                    Some(OpenTx::Postgres(t)) => bind_pg(sql, params)
                        .fetch_all(&mut **t)
                        .await
                        .map_err(classify)
                        .and_then(pg_rows),
                },
            )
        }
        .into_ffi()
    }

    fn commit(&self) -> FfiFuture<FfiDbResult<()>> {
        self.end(true)
    }

    fn rollback(&self) -> FfiFuture<FfiDbResult<()>> {
        self.end(false)
    }
}

impl HostTransaction {
    /// Commits or rolls back, once; later calls get `Closed`.
    fn end(&self, commit: bool) -> FfiFuture<FfiDbResult<()>> {
        let (tx, area) = (self.tx.clone(), self.area.clone());
        async move {
            to_ffi(
                &area,
                match tx.lock().await.take() {
                    None => Err(closed()),
                    Some(OpenTx::Sqlite(t)) if commit => t.commit().await.map_err(classify),
                    Some(OpenTx::Sqlite(t)) => t.rollback().await.map_err(classify),
                    Some(OpenTx::Postgres(t)) if commit => t.commit().await.map_err(classify),
                    Some(OpenTx::Postgres(t)) => t.rollback().await.map_err(classify),
                },
            )
        }
        .into_ffi()
    }
}
