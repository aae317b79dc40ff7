//! `GET /docs`: the API page, Swagger UI over `/openapi.json`, served from files vendored in
//! `src/http/docs/` (no CDN: the page works on a machine without internet). Where they come
//! from and how to update them: `src/http/docs/VENDORED.md`.

use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use super::error::{AppError, AppResult, ErrorBody, ErrorCode};
use super::extract::AppPath;

const PAGE: &str = include_str!("docs/index.html");

/// The files `/docs/{file}` serves, with their content types.
const ASSETS: [(&str, &str, &[u8]); 5] = [
    ("swagger-ui-bundle.js", "text/javascript; charset=utf-8", include_bytes!("docs/swagger-ui-bundle.js")),
    ("swagger-ui.css", "text/css; charset=utf-8", include_bytes!("docs/swagger-ui.css")),
    ("LICENSE", "text/plain; charset=utf-8", include_bytes!("docs/LICENSE")),
    ("NOTICE", "text/plain; charset=utf-8", include_bytes!("docs/NOTICE")),
    (
        "swagger-ui-bundle.js.LICENSE.txt",
        "text/plain; charset=utf-8",
        include_bytes!("docs/swagger-ui-bundle.js.LICENSE.txt"),
    ),
];

/// The API page
///
/// Browsable documentation of this API (Swagger UI), with *Try it out* on every operation.
#[utoipa::path(
    get, path = "/docs", tag = "operations", operation_id = "docs",
    security(()),
    responses((status = 200, description = "The page; it loads `/openapi.json`.", body = String, content_type = "text/html")),
)]
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// A file of the API page
#[utoipa::path(
    get, path = "/docs/{file}", tag = "operations", operation_id = "docsAsset",
    params(("file" = String, Path, description = "`swagger-ui-bundle.js`, `swagger-ui.css`, or Swagger UI's `LICENSE`, `NOTICE` and `swagger-ui-bundle.js.LICENSE.txt`.", example = "swagger-ui.css")),
    security(()),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/javascript"),
            (String = "text/css"),
            (String = "text/plain"),
        )),
        (status = 404, description = "No such file. Codes: `not_found`.", body = ErrorBody),
    ),
)]
pub async fn asset(AppPath(file): AppPath<String>) -> AppResult<Response> {
    let Some((_, content_type, bytes)) = ASSETS.iter().find(|(name, _, _)| *name == file) else {
        return Err(AppError::new(ErrorCode::NotFound, format!("the API page has no file {file:?}")));
    };
    Ok(([(header::CONTENT_TYPE, *content_type)], *bytes).into_response())
}
