//! The OpenAPI document at `/openapi.json` describes the server that serves it: every route
//! the router answers is documented (and nothing more), every error code is named, the
//! document is valid OpenAPI, and `/docs` and the document are readable without a key.

use std::collections::BTreeSet;
use std::process::Command;

use lookalike::error::ErrorCode;
use serde_json::Value;
use strum::IntoEnumIterator;

use super::support;

const ADMIN_KEY: &str = "openapi-test-admin-key";
const METHODS: [&str; 5] = ["get", "post", "put", "patch", "delete"];

/// A real server with an admin key set, and its document as it serves it.
async fn server_and_document() -> (lookalike::server::Server, support::Client, Value) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = support::settings(dir.path());
    settings.auth.admin_keys = ADMIN_KEY.to_owned();
    let (server, client) = support::start(settings).await;
    std::mem::forget(dir);
    // Open: a browser loads it without a bearer header.
    let (status, document) = client.get("/openapi.json").await;
    assert_eq!(status, 200, "{document}");
    (server, client, document)
}

/// Every operation of the document: (method, path template, operation).
fn operations(document: &Value) -> Vec<(String, String, Value)> {
    let paths = document["paths"].as_object().expect("paths");
    let mut found = Vec::new();
    for (path, item) in paths {
        for (method, operation) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                found.push((method.clone(), path.clone(), operation.clone()));
            }
        }
    }
    found
}

/// `path` with each `{param}` replaced by the parameter's example, or `x`.
fn concrete(path: &str, operation: &Value) -> String {
    let mut concrete = path.to_owned();
    for parameter in operation["parameters"].as_array().into_iter().flatten() {
        if parameter["in"] != "path" {
            continue;
        }
        let name = parameter["name"].as_str().expect("parameter name");
        let value = parameter["example"].as_str().unwrap_or("x");
        concrete = concrete.replace(&format!("{{{name}}}"), value);
    }
    assert!(!concrete.contains('{'), "{path}: a path parameter is not declared");
    concrete
}

/// The router serves exactly what the document lists: every documented operation reaches a
/// handler (it is not answered by the router's fallbacks, `not_found` for an unknown path or
/// `method_not_allowed` for an unknown method), and every other method on a documented path is
/// refused as unknown. `http::api` makes both from one list; this holds them to each other
/// through real requests.
#[tokio::test]
async fn every_route_is_documented_and_every_documented_route_is_served() {
    let (_server, client, document) = server_and_document().await;
    let operations = operations(&document);
    assert!(operations.len() >= 22, "{} operations", operations.len());
    let mut operation_ids = BTreeSet::new();
    for (method, path, operation) in &operations {
        let id = operation["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
        assert!(operation_ids.insert(id.to_owned()), "operationId {id} twice");
        assert!(operation["summary"].as_str().is_some_and(|s| !s.is_empty()), "{method} {path}: no summary");
        let responses = operation["responses"].as_object().expect("responses");
        assert!(responses.keys().any(|s| s.starts_with('2')), "{method} {path}: no success answer");
        assert!(responses.contains_key("500"), "{method} {path}: 500 is not listed");
        let url = client.url(&concrete(path, operation));
        let request = client.http.request(method.to_uppercase().parse().expect("method"), &url).bearer_auth(ADMIN_KEY);
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let (_, body) = support::status_json(response).await;
        let code = body["error"]["code"].as_str().unwrap_or("");
        let fallback = code == "method_not_allowed"
            || (code == "not_found"
                && body["error"]["message"].as_str().is_some_and(|m| m.contains("no such endpoint")));
        assert!(!fallback, "{method} {path}: documented but not routed: {status} {body}");
        assert!(
            responses.contains_key(&status.to_string()),
            "{method} {url}: answered {status}, which the document does not list: {body}"
        );
    }
    let documented: BTreeSet<(&str, &str)> = operations.iter().map(|(m, p, _)| (m.as_str(), p.as_str())).collect();
    for (_, path, operation) in &operations {
        for method in METHODS.into_iter().filter(|m| !documented.contains(&(m, path.as_str()))) {
            let url = client.url(&concrete(path, operation));
            let request =
                client.http.request(method.to_uppercase().parse().expect("method"), &url).bearer_auth(ADMIN_KEY);
            let (status, body) = support::status_json(request.send().await.expect("request")).await;
            assert_eq!(
                (status, body["error"]["code"].as_str()),
                (405, Some("method_not_allowed")),
                "{method} {path}: routed but not documented"
            );
        }
    }
}

/// The `ErrorCode` schema lists every code the server can answer or end a job with.
#[tokio::test]
async fn the_document_names_every_error_code() {
    let (_server, _client, document) = server_and_document().await;
    let schema = &document["components"]["schemas"]["ErrorCode"];
    let listed: BTreeSet<&str> =
        schema["enum"].as_array().expect("ErrorCode enum").iter().filter_map(Value::as_str).collect();
    let codes: BTreeSet<&str> = ErrorCode::iter().map(ErrorCode::as_str).collect();
    assert_eq!(listed, codes);
    let description = schema["description"].as_str().expect("ErrorCode description");
    for code in ErrorCode::iter() {
        let row = format!("| `{code}` | {} |", code.status().as_u16());
        assert!(description.contains(&row), "the table of codes lacks {row}");
    }
    let error = &document["components"]["schemas"]["ErrorDetail"];
    assert_eq!(error["properties"]["code"]["$ref"], "#/components/schemas/ErrorCode");
    let required: BTreeSet<&str> =
        error["required"].as_array().expect("required").iter().filter_map(Value::as_str).collect();
    assert_eq!(required, BTreeSet::from(["code", "message", "request_id"]));
}

/// The document's `FinetuneParams` names exactly the keys a finetune job's params have.
#[tokio::test]
async fn finetune_params_are_documented_key_for_key() {
    let (_server, _client, document) = server_and_document().await;
    let properties = document["components"]["schemas"]["FinetuneParams"]["properties"].as_object().expect("properties");
    let documented: BTreeSet<&String> = properties.keys().collect();
    let defaults = lookalike::config::Settings::load(None).expect("settings").finetune;
    let defaults = serde_json::to_value(defaults).expect("params are JSON");
    let real: BTreeSet<&String> = defaults.as_object().expect("an object").keys().collect();
    assert_eq!(documented, real);
}

/// `openapi-spec-validator` (Python; `pip install openapi-spec-validator`) accepts the document.
#[tokio::test]
async fn the_document_validates() {
    let (_server, _client, document) = server_and_document().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("openapi.json");
    std::fs::write(&path, document.to_string()).expect("write the document");
    let output = Command::new("python3")
        .args(["-m", "openapi_spec_validator"])
        .arg(&path)
        .output()
        .expect("run python3 (with openapi-spec-validator: pip install openapi-spec-validator)");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "openapi-spec-validator refused the document:\n{text}");
}

/// With keys configured, the pages and the document need none; the API does.
#[tokio::test]
async fn the_pages_and_the_document_are_open_the_api_is_not() {
    let (_server, client, _document) = server_and_document().await;
    for path in ["/", "/docs", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css", "/openapi.json", "/healthz"] {
        let response = client.http.get(client.url(path)).send().await.expect("GET");
        assert_eq!(response.status().as_u16(), 200, "{path}");
    }
    let (status, body) = client.get("/docs/missing.js").await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let page = client.http.get(client.url("/docs")).send().await.expect("GET /docs");
    let page = page.text().await.expect("page");
    assert!(page.contains("docs/swagger-ui-bundle.js") && page.contains("openapi.json"), "{page}");
    let (status, body) = client.get("/datasets").await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthorized")), "{body}");
}
