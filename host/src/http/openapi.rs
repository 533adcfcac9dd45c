//! The OpenAPI 3.1 document served at `/openapi.json`: the core API from its endpoint
//! table (with the schemas of what each operation accepts), every route the running
//! modules registered (with what they described of it, plugin-api 1.2), and the payloads
//! of the events they publish (`x-events`).

use serde_json::{json, Map, Value};

use crate::core::api::{Access, ENDPOINTS, PATH_PARAMS};
use crate::routes::table::RouteTable;

/// A JSON Schema written as JSON text in a table; a broken one is a bug caught by tests.
fn schema(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| {
        tracing::error!(schema = text, error = %e, "a built-in schema is not JSON");
        json!({})
    })
}

/// The path's parameters, each with its schema from `known` (by name) or a string.
fn path_params(path: &str, known: &dyn Fn(&str) -> Option<Value>) -> Vec<Value> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let schema = known(name).unwrap_or_else(|| json!({ "type": "string" }));
            json!({ "name": name, "in": "path", "required": true, "schema": schema })
        })
        .collect()
}

fn query_param(name: &str, schema: Value, required: bool) -> Value {
    json!({ "name": name, "in": "query", "required": required, "schema": schema })
}

fn json_body(schema: Value, required: bool) -> Value {
    json!({ "required": required, "content": { "application/json": { "schema": schema } } })
}

fn error_response(description: &str) -> Value {
    json!({ "description": description, "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } })
}

fn operation(
    summary: &str,
    public: bool,
    permission: Option<&str>,
    params: Vec<Value>,
    body: Option<Value>,
    tag: &str,
) -> Value {
    let mut responses = Map::new();
    responses.insert(
        "200".into(),
        json!({ "description": "Success", "content": { "application/json": { "schema": {} } } }),
    );
    responses.insert(
        "201".into(),
        json!({ "description": "Created", "content": { "application/json": { "schema": {} } } }),
    );
    responses.insert("204".into(), json!({ "description": "No content" }));
    responses.insert("400".into(), error_response("Invalid request"));
    responses.insert("404".into(), error_response("Not found"));
    responses.insert("409".into(), error_response("Conflict"));
    responses.insert("413".into(), error_response("Body too large"));
    responses.insert("503".into(), error_response("A dependency is unavailable"));
    responses.insert("504".into(), error_response("The handler timed out"));
    // Modules answer with statuses of their own (402, 422, ...): all carry a JSON error.
    responses.insert("default".into(), error_response("Another error"));
    if !public {
        responses.insert("401".into(), error_response("No valid token"));
        responses.insert(
            "403".into(),
            error_response("The token lacks the permission"),
        );
    }
    let mut op = json!({
        "summary": summary,
        "tags": [tag],
        "parameters": params,
        "responses": responses,
    });
    if let Some(p) = permission {
        op["x-permission"] = json!(p);
        op["description"] = json!(format!("Requires permission `{p}`."));
    }
    op["security"] = if public {
        json!([])
    } else {
        json!([{ "bearer": [] }])
    };
    if let Some(body) = body {
        op["requestBody"] = body;
    }
    op
}

/// An event payload a module described.
pub struct EventDoc {
    pub module: String,
    pub topic: String,
    pub schema: Value,
}

/// The document for the core API plus `routes`, the events the modules described, and
/// the `Grant` schema (`declared` permissions and the patterns).
pub fn document(routes: &RouteTable, events: &[EventDoc], declared: &[String]) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let core_param = |name: &str| {
        PATH_PARAMS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| schema(s))
    };
    for ep in ENDPOINTS {
        let (public, permission) = match ep.access {
            Access::Public => (true, None),
            Access::Authenticated => (false, None),
            Access::Permission(p) => (false, Some(p)),
        };
        let mut params = path_params(ep.path, &core_param);
        params.extend(
            ep.query
                .iter()
                .map(|(name, s, required)| query_param(name, schema(s), *required)),
        );
        let body = (!ep.body.is_empty()).then(|| {
            let props: Map<String, Value> = ep
                .body
                .iter()
                .map(|(name, s, _)| (name.to_string(), schema(s)))
                .collect();
            let required: Vec<&str> = ep.body.iter().filter(|(_, _, r)| *r).map(|(n, _, _)| *n).collect();
            json_body(
                json!({ "type": "object", "properties": props, "required": required, "additionalProperties": false }),
                !required.is_empty(),
            )
        });
        let tag = ep.path.split('/').nth(3).unwrap_or("core");
        let entry = paths
            .entry(ep.path.to_string())
            .or_insert_with(|| json!({}));
        entry[ep.method.to_lowercase()] =
            operation(ep.summary, public, permission, params, body, tag);
    }
    for route in routes.routes() {
        let doc = route.doc();
        let described = |key: &str, name: &str| doc.and_then(|d| d[key].get(name)).cloned();
        let mut params = path_params(&route.info.path, &|name| described("params", name));
        if let Some(query) = doc.and_then(|d| d["query"].as_object()) {
            let required = |name: &str| {
                doc.and_then(|d| d["required_query"].as_array())
                    .is_some_and(|r| r.iter().any(|n| n == name))
            };
            params.extend(
                query
                    .iter()
                    .map(|(name, s)| query_param(name, s.clone(), required(name))),
            );
        }
        let body = match doc.map(|d| &d["body"]) {
            Some(schema) if !schema.is_null() => Some(json_body(schema.clone(), true)),
            _ => matches!(route.info.method.as_str(), "POST" | "PUT" | "PATCH")
                .then(|| json_body(json!({}), false)),
        };
        let summary = doc
            .and_then(|d| d["summary"].as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .unwrap_or_else(|| {
                format!(
                    "{} {} (module {})",
                    route.info.method, route.info.path, route.module
                )
            });
        let mut op = operation(
            &summary,
            route.public,
            Some(&route.info.permission),
            params,
            body,
            &route.module,
        );
        if let Some(responses) = doc
            .and_then(|d| d["responses"].as_object())
            .filter(|r| !r.is_empty())
        {
            // The described successes replace the generic ones.
            for generic in ["200", "201", "204"] {
                if let Some(all) = op["responses"].as_object_mut() {
                    all.remove(generic);
                }
            }
            for (status, schema) in responses {
                op["responses"][status] = json!({ "description": "Success", "content": { "application/json": { "schema": schema } } });
            }
        }
        let entry = paths
            .entry(route.info.path.clone())
            .or_insert_with(|| json!({}));
        entry[route.info.method.to_lowercase()] = op;
    }
    let events: Map<String, Value> = events
        .iter()
        .map(|e| {
            (
                e.topic.clone(),
                json!({ "publisher": e.module, "payload": e.schema }),
            )
        })
        .collect();
    let mut grants: Vec<&str> = declared.iter().map(String::as_str).collect();
    grants.push("*");
    json!({
        "openapi": "3.1.0",
        "info": { "title": "modhost", "version": env!("CARGO_PKG_VERSION"), "description": "Core services and the routes of the running modules. `x-events` lists the events the modules publish, with their payloads." },
        "paths": paths,
        "x-events": events,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "schemas": {
                "Error": { "type": "object", "properties": { "error": { "type": "string" }, "error_id": { "type": "string" } }, "required": ["error"] },
                "Grant": { "description": "A declared permission, `*`, or a pattern `module.*` / `module.resource.*`", "anyOf": [
                    { "enum": grants },
                    { "type": "string", "pattern": "^[a-z][a-z0-9_]*(\\.[a-z][a-z0-9_]*)?\\.\\*$" }
                ] }
            }
        }
    })
}
