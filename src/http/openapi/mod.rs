//! The OpenAPI document served at `GET /openapi.json`, made from the code.
//!
//! Each handler carries its operation (`#[utoipa::path]`: parameters, body, every answer and the
//! key it needs) and the types it reads and writes derive `ToSchema`. `http::api` registers each
//! route together with its operation, so a route cannot be served undocumented. [`ApiDoc`] holds
//! what no route says: the title and introduction, the tags, the bearer keys and the doc-only
//! shapes of [`schemas`]. [`document`] merges both once and adds the rules every operation shares
//! (see [`finish`]). Built once, on first use; read-only afterwards.

pub mod schemas;

use std::sync::LazyLock;

use serde_json::{Value, json};
use strum::{EnumMessage, IntoEnumIterator};
use utoipa::OpenApi;

use super::error::ErrorCode;

/// The introduction at the top of the document (and of `/docs`).
const DESCRIPTION: &str = "Visual-similarity search over image catalogues.

Every error is a 4xx/5xx with the body `{\"error\": {\"code\", \"message\", \"request_id\"}}` (schema \
`ErrorBody`); `code` is one of `ErrorCode`, whose description lists every code with its status. \
`request_id` is also the response's `x-request-id` header and names the server's log lines of the \
request. Any route may answer `500 internal` (a server fault, logged). Unknown paths answer \
`404 not_found`, a known path with another method `405 method_not_allowed`.

Dataset names are 1 to 64 characters of `[A-Za-z0-9_-]`. Item ids are 1 to 256 printable \
characters, no leading `/`, no `..` segment; in a path an item id is percent-encoded as one segment \
(`sneaker/0042` is `sneaker%2F0042`).

Authentication: when API keys are configured (`LOOKALIKE__AUTH__ADMIN_KEYS`, \
`LOOKALIKE__AUTH__READ_KEYS`), every request but `/`, `/docs`, `/docs/*`, `/openapi.json`, \
`/healthz`, `/readyz` and `/metrics` carries `Authorization: Bearer <key>`. A `read` key may make \
GET/HEAD requests and `POST /search`; an `admin` key may do everything. Missing or unknown key: \
`401 unauthorized`; a read key on another route: `403 forbidden`. With no keys configured the \
server runs open. On `/docs`, *Authorize* takes a key for the requests *Try it out* sends.";

/// What the document says beyond its operations.
#[derive(OpenApi)]
#[openapi(
    info(title = "lookalike", version = "1.0.0", description = DESCRIPTION),
    tags(
        (name = "datasets", description = "Catalogues: upload an archive, list, show, delete."),
        (name = "items", description = "One image of a catalogue at a time."),
        (name = "search", description = "Nearest items to an image, or to a stored item."),
        (name = "jobs", description = "Ingest, finetune and reindex jobs: queued, run one at a time, persisted."),
        (name = "models", description = "A dataset's model generations, and which one serves it."),
        (name = "operations", description = "Health, readiness, metrics, this document and the pages."),
    ),
    components(schemas(
        ErrorCode,
        schemas::FinetuneParams,
        schemas::ReindexParams,
        schemas::IngestResult,
        schemas::FinetuneResult,
        schemas::ReindexResult,
    )),
)]
pub struct ApiDoc;

/// Name of the bearer-key security scheme operations refer to, with the role they need
/// (`read` or `admin`) as its scope.
pub const BEARER: &str = "bearerAuth";

/// The document, as JSON text.
pub fn document() -> &'static str {
    static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
        let routes = super::api(axum::extract::DefaultBodyLimit::disable());
        let mut document = serde_json::to_value(routes.into_openapi()).expect("the OpenAPI document is JSON");
        finish(&mut document);
        document.to_string()
    });
    &DOCUMENT
}

/// The rules every operation shares, written once here instead of on each handler: an
/// operation that needs a key may answer 401 (and 403 when it needs an admin key), one with a
/// path parameter 400 `invalid_path` (unless it documents its own 400), every one 500; the error codes are listed with their statuses; a job's `result` is one of
/// the result shapes.
fn finish(document: &mut Value) {
    let error = json!({"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}});
    let shared = [
        (
            "Unauthorized",
            "API keys are configured and the request carries no known `Authorization: Bearer` key. Codes: `unauthorized`.",
        ),
        ("Forbidden", "A read key was used on a route that needs an admin key. Codes: `forbidden`."),
        ("Internal", "A server fault; the detail is in the server log. Codes: `internal`."),
        ("InvalidPath", "A path segment is not valid (e.g. not UTF-8 once percent-decoded). Codes: `invalid_path`."),
    ];
    let components = &mut document["components"];
    for (name, description) in shared {
        components["responses"][name] = json!({"description": description, "content": error});
    }
    components["securitySchemes"][BEARER] = json!({
        "type": "http",
        "scheme": "bearer",
        "description": "An API key. Roles: `read` (GET/HEAD and POST /search) and `admin` (everything). \
            Not needed when no keys are configured.",
    });
    components["schemas"]["ErrorCode"]["description"] = error_code_table().into();
    components["schemas"]["Job"]["properties"]["result"] = json!({
        "description": "`null` until the job succeeds; then `IngestResult`, `FinetuneResult` or `ReindexResult` by kind.",
        "anyOf": [
            {"$ref": "#/components/schemas/IngestResult"},
            {"$ref": "#/components/schemas/FinetuneResult"},
            {"$ref": "#/components/schemas/ReindexResult"},
            {"type": "null"},
        ],
    });
    let Some(paths) = document["paths"].as_object_mut() else { return };
    for operation in paths.values_mut().filter_map(Value::as_object_mut).flat_map(|item| item.values_mut()) {
        let roles: Vec<String> = operation["security"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|requirement| requirement[BEARER].as_array())
            .flatten()
            .filter_map(|role| role.as_str().map(str::to_owned))
            .collect();
        let has_path_parameter =
            operation["parameters"].as_array().is_some_and(|parameters| parameters.iter().any(|p| p["in"] == "path"));
        let responses = &mut operation["responses"];
        let mut add = |status: &str, name: &str| {
            if responses.get(status).is_none() {
                responses[status] = json!({"$ref": format!("#/components/responses/{name}")});
            }
        };
        if !roles.is_empty() {
            add("401", "Unauthorized");
        }
        if roles.iter().any(|role| role == "admin") {
            add("403", "Forbidden");
        }
        if has_path_parameter {
            add("400", "InvalidPath");
        }
        add("500", "Internal");
    }
}

/// Every error code with the status it is answered with and what it means.
fn error_code_table() -> String {
    let mut table = String::from(
        "A stable, machine-readable name for what went wrong. An HTTP error's `error.code` and a \
         failed job's `error.code` are one of these.\n\n| code | status | meaning |\n|---|---|---|\n",
    );
    for code in ErrorCode::iter() {
        let meaning = code.get_documentation().unwrap_or("").replace('|', "\\|");
        table.push_str(&format!("| `{code}` | {} | {meaning} |\n", code.status().as_u16()));
    }
    table
}
