//! Describing a module's routes and events for `/openapi.json` (since plugin-api 1.2).
//!
//! A route described with a [`RouteDoc`] shows its parameters, its request body and its
//! responses in the host's OpenAPI document, so clients (and API testers) know what it
//! accepts. Schemas are JSON Schema values: write them with `serde_json::json!`, or,
//! with this crate's `schema` feature, derive them from your types with
//! [`schema_of`] (`#[derive(schemars::JsonSchema)]`).
//!
//! ```
//! use modhost_plugin_api::RouteDoc;
//! use serde_json::json;
//!
//! let doc = RouteDoc::new("Read a note")
//!     .param("id", json!({ "type": "integer", "minimum": 1 }))
//!     .response(200, json!({ "type": "object", "required": ["id", "text"] }));
//! assert_eq!(doc.to_json()["params"]["id"]["minimum"], 1);
//! ```

use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

/// What `/openapi.json` says about one route.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteDoc {
    summary: String,
    params: Map<String, Value>,
    query: Map<String, Value>,
    required_query: Vec<String>,
    body: Option<Value>,
    responses: BTreeMap<u16, Value>,
}

impl RouteDoc {
    /// A description with a one-line summary.
    pub fn new(summary: impl Into<String>) -> Self {
        Self {
            summary: summary.into(),
            ..Self::default()
        }
    }

    /// The schema of the path parameter `name` (`{name}` in the route's path).
    pub fn param(mut self, name: &str, schema: Value) -> Self {
        self.params.insert(name.to_string(), schema);
        self
    }

    /// The schema of the query parameter `name`; `required` if the route refuses a
    /// request without it.
    pub fn query(mut self, name: &str, schema: Value, required: bool) -> Self {
        self.query.insert(name.to_string(), schema);
        if required {
            self.required_query.push(name.to_string());
        }
        self
    }

    /// The schema of the JSON request body.
    pub fn body(mut self, schema: Value) -> Self {
        self.body = Some(schema);
        self
    }

    /// The schema of the JSON body answered with `status`.
    pub fn response(mut self, status: u16, schema: Value) -> Self {
        self.responses.insert(status, schema);
        self
    }

    /// The description as the host receives it.
    pub fn to_json(&self) -> Value {
        let responses: Map<String, Value> = self
            .responses
            .iter()
            .map(|(status, schema)| (status.to_string(), schema.clone()))
            .collect();
        json!({
            "summary": self.summary,
            "params": self.params,
            "query": self.query,
            "required_query": self.required_query,
            "body": self.body,
            "responses": responses,
        })
    }
}

/// The JSON Schema of `T`, self-contained (no references), for [`RouteDoc`] and
/// [`crate::InitContext::describe_event`]. Needs this crate's `schema` feature and
/// `#[derive(schemars::JsonSchema)]` on `T`.
#[cfg(feature = "schema")]
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    let generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
        object.remove("title");
    }
    schema
}
