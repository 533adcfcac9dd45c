//! The OpenAPI 3 document served at `/openapi.json`: the core API from its endpoint
//! table, and every route the running modules registered.

use serde_json::{json, Map, Value};

use crate::core::api::{Access, ENDPOINTS};
use crate::routes::table::RouteTable;

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
        .collect()
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

/// The document for the core API plus `routes`.
pub fn document(routes: &RouteTable) -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for ep in ENDPOINTS {
        let (public, permission) = match ep.access {
            Access::Public => (true, None),
            Access::Authenticated => (false, None),
            Access::Permission(p) => (false, Some(p)),
        };
        let mut params = path_params(ep.path);
        params.extend(ep.query.iter().map(|(name, ty)| json!({ "name": name, "in": "query", "required": false, "schema": { "type": ty } })));
        let body = (!ep.body.is_empty()).then(|| {
            let props: Map<String, Value> = ep
                .body
                .iter()
                .map(|(name, ty, _)| {
                    let schema = if *ty == "array" { json!({ "type": "array", "items": { "type": "string" } }) } else { json!({ "type": ty }) };
                    (name.to_string(), schema)
                })
                .collect();
            let required: Vec<&str> = ep.body.iter().filter(|(_, _, r)| *r).map(|(n, _, _)| *n).collect();
            json!({ "required": !required.is_empty(), "content": { "application/json": { "schema": {
                "type": "object", "properties": props, "required": required, "additionalProperties": false
            } } } })
        });
        let tag = ep.path.split('/').nth(3).unwrap_or("core");
        let entry = paths
            .entry(ep.path.to_string())
            .or_insert_with(|| json!({}));
        entry[ep.method.to_lowercase()] =
            operation(ep.summary, public, permission, params, body, tag);
    }
    for route in routes.routes() {
        let body = matches!(route.info.method.as_str(), "POST" | "PUT" | "PATCH").then(
            || json!({ "required": false, "content": { "application/json": { "schema": {} } } }),
        );
        let summary = format!(
            "{} {} (module {})",
            route.info.method, route.info.path, route.module
        );
        let op = operation(
            &summary,
            route.public,
            Some(&route.info.permission),
            path_params(&route.info.path),
            body,
            &route.module,
        );
        let entry = paths
            .entry(route.info.path.clone())
            .or_insert_with(|| json!({}));
        entry[route.info.method.to_lowercase()] = op;
    }
    json!({
        "openapi": "3.0.3",
        "info": { "title": "modhost", "version": env!("CARGO_PKG_VERSION"), "description": "Core services and the routes of the running modules." },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" } },
            "schemas": { "Error": { "type": "object", "properties": { "error": { "type": "string" } }, "required": ["error"] } }
        }
    })
}
