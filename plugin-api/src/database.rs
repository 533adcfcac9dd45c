//! The module's database, in plain Rust: [`Database`], [`Transaction`], [`Value`],
//! [`Rows`] and [`DbError`].
//!
//! Every call goes through the host, which owns the connection pool; a module links no
//! database driver. Write placeholders as `$1`, `$2`, ... : both SQLite and PostgreSQL
//! accept them.

use std::fmt;

use abi_stable::std_types::{RResult, RVec};
use serde::de::DeserializeOwned;

use crate::{
    error::PublicError,
    ffi::{
        db_error, FfiDatabaseBox, FfiDbError, FfiDbResult, FfiRows, FfiTransactionBox, FfiValue,
    },
    Error, Response,
};

/// A value bound to a statement or read from a row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
}

macro_rules! value_from {
    ($($t:ty => $variant:ident as $conv:ty),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(v: $t) -> Self {
                Value::$variant(<$conv>::from(v))
            }
        })*
    };
}

value_from! {
    bool => Bool as bool,
    i64 => Int as i64,
    i32 => Int as i64,
    u32 => Int as i64,
    i16 => Int as i64,
    f64 => Float as f64,
    f32 => Float as f64,
    String => Text as String,
    &str => Text as String,
    &String => Text as String,
    Vec<u8> => Bytes as Vec<u8>,
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

impl Value {
    fn to_ffi(&self) -> FfiValue {
        match self {
            Value::Null => FfiValue::Null,
            Value::Bool(b) => FfiValue::Bool(*b),
            Value::Int(i) => FfiValue::Int(*i),
            Value::Float(f) => FfiValue::Float(*f),
            Value::Text(s) => FfiValue::Text(s.as_str().into()),
            Value::Bytes(b) => FfiValue::Bytes(b.as_slice().into()),
        }
    }

    fn from_ffi(v: FfiValue) -> Self {
        match v {
            FfiValue::Null => Value::Null,
            FfiValue::Bool(b) => Value::Bool(b),
            FfiValue::Int(i) => Value::Int(i),
            FfiValue::Float(f) => Value::Float(f),
            FfiValue::Text(s) => Value::Text(s.into_string()),
            FfiValue::Bytes(b) => Value::Bytes(b.into_vec()),
        }
    }

    /// The value as JSON (bytes become an array of numbers).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => {
                serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into)
            }
            Value::Text(s) => s.clone().into(),
            Value::Bytes(b) => b.clone().into(),
        }
    }
}

/// Builds a `&[Value]` parameter list: `params![title, body, 3]`.
#[macro_export]
macro_rules! params {
    ($($v:expr),* $(,)?) => {
        &[$($crate::Value::from($v)),*][..]
    };
}

/// What went wrong with a database call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbErrorKind {
    /// The database cannot be reached right now (try again later).
    Unavailable,
    /// A unique, foreign key, not-null or check constraint was violated.
    Constraint,
    /// The database refused access, e.g. to another module's data.
    Denied,
    /// The transaction was already committed or rolled back.
    Closed,
    /// Anything else: a syntax error, a wrong parameter, a missing column.
    Query,
}

/// A database error. `message` is the database's own text, for the module's log and
/// logic; it is never shown to clients (the host logged it under `error_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DbError {
    pub kind: DbErrorKind,
    pub message: String,
    /// The id the host logged this error under; responses carry it instead of the text.
    pub error_id: String,
}

impl DbError {
    fn new(kind: DbErrorKind, message: impl Into<String>, error_id: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            error_id: error_id.into(),
        }
    }

    fn from_ffi(e: FfiDbError) -> Self {
        let kind = match e.kind {
            db_error::UNAVAILABLE => DbErrorKind::Unavailable,
            db_error::CONSTRAINT => DbErrorKind::Constraint,
            db_error::DENIED => DbErrorKind::Denied,
            db_error::CLOSED => DbErrorKind::Closed,
            _ => DbErrorKind::Query,
        };
        Self::new(kind, e.message.into_string(), e.error_id.into_string())
    }

    /// An error found in the module (decoding a row), not by the host: logged here,
    /// through the host's log, under a fresh id.
    fn local(kind: DbErrorKind, message: String) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let id = format!("m{nanos:08x}{:04x}", NEXT.fetch_add(1, Ordering::Relaxed));
        tracing::warn!(error_id = %id, detail = %message, "database result error");
        Self::new(kind, message, id)
    }

    /// What a client is told: a status and a generic message, with the error id.
    fn public(&self) -> PublicError {
        let (status, message) = match self.kind {
            DbErrorKind::Unavailable => (503, "the database is unavailable; try again later"),
            DbErrorKind::Constraint => (409, "the request conflicts with existing data"),
            _ => (500, "internal database error"),
        };
        PublicError {
            status,
            message: message.to_string(),
            error_id: Some(self.error_id.clone()),
        }
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "database error ({:?}, error id {}): {}",
            self.kind, self.error_id, self.message
        )
    }
}

impl std::error::Error for DbError {}

/// Keeps the response the database error gives, so `?` in a handler returning
/// [`crate::Result`] answers 409/503/500 with the error id, not the database's text.
impl From<DbError> for Error {
    fn from(e: DbError) -> Self {
        Error::with_public(e.to_string(), e.public())
    }
}

/// 503 when the database is unavailable, 409 on a constraint violation, else 500; the
/// body is `{"error": <generic message>, "error_id": <id>}`. The database's own text is
/// in the host's log under that id.
impl From<DbError> for Response {
    fn from(e: DbError) -> Self {
        Response::public_error(&e.public())
    }
}

fn ffi_params(params: &[Value]) -> RVec<FfiValue> {
    params.iter().map(Value::to_ffi).collect()
}

fn done<T, U>(r: FfiDbResult<T>, f: impl FnOnce(T) -> U) -> Result<U, DbError> {
    match r {
        RResult::ROk(v) => Ok(f(v)),
        RResult::RErr(e) => Err(DbError::from_ffi(e)),
    }
}

/// The rows of a query result.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
}

impl Rows {
    fn from_ffi(r: FfiRows) -> Self {
        Self {
            columns: r.columns.into_iter().map(|c| c.into_string()).collect(),
            rows: r
                .rows
                .into_iter()
                .map(|row| row.into_iter().map(Value::from_ffi).collect())
                .collect(),
        }
    }

    /// The column names.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The rows.
    pub fn iter(&self) -> impl Iterator<Item = Row<'_>> {
        self.rows.iter().map(|values| Row {
            columns: &self.columns,
            values,
        })
    }

    /// Every row deserialised into `T` by column name.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<Vec<T>, DbError> {
        self.iter().map(|r| r.deserialize()).collect()
    }
}

/// One row.
#[derive(Debug, Clone, Copy)]
pub struct Row<'a> {
    columns: &'a [String],
    values: &'a [Value],
}

impl Row<'_> {
    /// The value of column `name`.
    pub fn value(&self, name: &str) -> Result<&Value, DbError> {
        self.columns
            .iter()
            .position(|c| c == name)
            .map(|i| &self.values[i])
            .ok_or_else(|| {
                DbError::local(
                    DbErrorKind::Query,
                    format!("no column `{name}` in the result"),
                )
            })
    }

    /// Column `name` converted to `T` (`i64`, `String`, `Option<String>`, ...).
    pub fn get<T: DeserializeOwned>(&self, name: &str) -> Result<T, DbError> {
        serde_json::from_value(self.value(name)?.to_json())
            .map_err(|e| DbError::local(DbErrorKind::Query, format!("column `{name}`: {e}")))
    }

    /// The row as a JSON object, column name to value.
    pub fn to_json(&self) -> serde_json::Map<String, serde_json::Value> {
        self.columns
            .iter()
            .zip(self.values)
            .map(|(c, v)| (c.clone(), v.to_json()))
            .collect()
    }

    /// The row deserialised into `T` by column name.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, DbError> {
        serde_json::from_value(serde_json::Value::Object(self.to_json())).map_err(|e| {
            DbError::local(
                DbErrorKind::Query,
                format!("row does not fit the target type: {e}"),
            )
        })
    }
}

/// The module's own database. Cheap to clone; capture clones in your handlers.
#[derive(Clone)]
pub struct Database {
    inner: FfiDatabaseBox,
}

impl Database {
    pub(crate) fn new(inner: FfiDatabaseBox) -> Self {
        Self { inner }
    }

    /// Runs a statement; returns the number of rows affected.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        done(
            self.inner.execute(sql.into(), ffi_params(params)).await,
            |n| n,
        )
    }

    /// Runs a query and returns its rows.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        done(
            self.inner.query(sql.into(), ffi_params(params)).await,
            Rows::from_ffi,
        )
    }

    /// Runs a query and deserialises every row into `T` by column name.
    pub async fn query_as<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<T>, DbError> {
        self.query(sql, params).await?.deserialize()
    }

    /// Runs a query and deserialises its first row, if any.
    pub async fn query_opt_as<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<Option<T>, DbError> {
        let rows = self.query(sql, params).await?;
        let first = rows.iter().next().map(|r| r.deserialize()).transpose();
        first
    }

    /// Starts a transaction. Commit it with [`Transaction::commit`]; dropping it rolls
    /// it back.
    pub async fn begin(&self) -> Result<Transaction, DbError> {
        done(self.inner.begin().await, |inner| Transaction { inner })
    }
}

/// An open transaction.
pub struct Transaction {
    inner: FfiTransactionBox,
}

impl Transaction {
    /// Runs a statement in the transaction.
    pub async fn execute(&self, sql: &str, params: &[Value]) -> Result<u64, DbError> {
        done(
            self.inner.execute(sql.into(), ffi_params(params)).await,
            |n| n,
        )
    }

    /// Runs a query in the transaction.
    pub async fn query(&self, sql: &str, params: &[Value]) -> Result<Rows, DbError> {
        done(
            self.inner.query(sql.into(), ffi_params(params)).await,
            Rows::from_ffi,
        )
    }

    /// Runs a query in the transaction and deserialises every row into `T`.
    pub async fn query_as<T: DeserializeOwned>(
        &self,
        sql: &str,
        params: &[Value],
    ) -> Result<Vec<T>, DbError> {
        self.query(sql, params).await?.deserialize()
    }

    /// Commits.
    pub async fn commit(self) -> Result<(), DbError> {
        done(self.inner.commit().await, |()| ())
    }

    /// Rolls back.
    pub async fn rollback(self) -> Result<(), DbError> {
        done(self.inner.rollback().await, |()| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallError, CallErrorKind};

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    /// `?` on a database error in a handler returning the SDK's `Result` answers what
    /// the database error answers: a generic message with the id, never the database's
    /// text.
    #[test]
    fn a_database_error_through_error_keeps_its_response_and_hides_its_text() {
        let db = DbError::new(
            DbErrorKind::Constraint,
            "UNIQUE constraint failed: notes.text",
            "abc123",
        );
        for response in [Response::from(db.clone()), Response::from(Error::from(db))] {
            assert_eq!(response.status, 409);
            let json = body(&response);
            assert_eq!(json["error_id"], "abc123");
            assert!(!json.to_string().contains("UNIQUE"), "{json}");
        }
        let down = DbError::new(DbErrorKind::Unavailable, "connection refused", "x");
        assert_eq!(Response::from(Error::from(down)).status, 503);
        let query = DbError::new(DbErrorKind::Query, "syntax error at SELEC", "y");
        let response = Response::from(Error::from(query));
        assert_eq!(response.status, 500);
        assert!(!body(&response).to_string().contains("SELEC"));
    }

    #[test]
    fn a_call_error_through_error_keeps_its_status_and_shortcuts_set_the_kind() {
        let e = CallError::not_found("no such note");
        assert_eq!(e.kind, CallErrorKind::NotFound);
        assert_eq!(Response::from(Error::from(e)).status, 404);
        assert_eq!(CallError::bad_request("x").kind, CallErrorKind::BadRequest);
        assert_eq!(CallError::unavailable("x").status(), 503);
        assert_eq!(CallError::failed("x").status(), 500);
        assert_eq!(CallError::not_allowed("x").kind, CallErrorKind::NotAllowed);
        // A database error in a service handler: the caller gets the generic text and
        // the id, never the database's text.
        let db = DbError::new(
            DbErrorKind::Constraint,
            "UNIQUE constraint failed: x",
            "id7",
        );
        for call in [
            CallError::from(db.clone()),
            CallError::from(Error::from(db)),
        ] {
            assert!(!call.message.contains("UNIQUE"), "{call:?}");
            assert!(call.message.contains("id7"), "{call:?}");
        }
        // An error of the module's own still answers 500 with its message.
        assert_eq!(
            body(&Response::from(Error::new("bad config")))["error"],
            "bad config"
        );
    }
}
