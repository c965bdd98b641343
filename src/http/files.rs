//! `/v1/files`: upload (multipart, streamed to disk), list, retrieve, content, delete. The
//! storage is `crate::files`; this module only speaks HTTP. Off (404) without `--data-dir`.
//! Every file belongs to the key that uploaded it: another key's file is not found.

use crate::error::GatewayError;
use crate::files::{no_such_file, Files, UPLOAD_PURPOSES};
use crate::state::AppState;
use crate::store::{self, FileRow, Order};
use crate::tenant::Caller;
use axum::body::Body;
use axum::extract::multipart::{Field, MultipartError};
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

/// Most files one listing returns (OpenAI's bound).
const MAX_LIST: usize = 10_000;
/// `expires_after[seconds]` bounds (OpenAI's: an hour to 30 days).
const MIN_EXPIRY_SECS: i64 = 3600;
const MAX_EXPIRY_SECS: i64 = 30 * 86_400;
/// Longest text field of the upload form (`purpose`, `expires_after[…]`).
const MAX_FIELD_BYTES: usize = 1024;

/// The files service, or a 404 saying how to turn it on.
pub fn service(state: &AppState) -> Result<&Files, GatewayError> {
    state.batches.as_ref().map(|b| &b.files).ok_or_else(off)
}

pub fn off() -> GatewayError {
    GatewayError::NotFound {
        message: "the files and batch APIs are off: start the gateway with --data-dir".into(),
        param: None,
    }
}

/// The File object.
pub fn object(f: &FileRow) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": f.created_at,
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "expires_at": f.expires_at,
        "status_details": null,
    })
}

fn multipart_error(e: MultipartError) -> GatewayError {
    if super::deadline::is_timeout(&e) {
        super::extract::body_timeout()
    } else if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        GatewayError::too_large(
            "the upload exceeds the gateway's max_file_bytes",
            Some("file".into()),
        )
    } else {
        GatewayError::invalid(
            format!("cannot read the upload: {}", e.body_text()),
            Some("file".into()),
        )
    }
}

async fn text(field: Field<'_>, name: &str) -> Result<String, GatewayError> {
    let bytes = field.bytes().await.map_err(multipart_error)?;
    if bytes.len() > MAX_FIELD_BYTES {
        return Err(GatewayError::invalid(
            format!("`{name}` is longer than {MAX_FIELD_BYTES} bytes"),
            Some(name.to_string()),
        ));
    }
    String::from_utf8(bytes.to_vec())
        .map_err(|_| GatewayError::invalid(format!("`{name}` is not UTF-8"), Some(name.into())))
}

/// `POST /v1/files`.
pub async fn upload(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Response {
    match upload_inner(&state, &caller, multipart).await {
        Ok(row) => Json(object(&row)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn upload_inner(
    state: &AppState,
    caller: &Caller,
    multipart: Result<Multipart, axum::extract::multipart::MultipartRejection>,
) -> Result<FileRow, GatewayError> {
    let files = service(state)?;
    let mut form = multipart.map_err(|e| {
        GatewayError::invalid(
            format!("the upload must be multipart/form-data: {}", e.body_text()),
            None,
        )
    })?;
    let mut purpose: Option<String> = None;
    let mut anchor: Option<String> = None;
    let mut seconds: Option<String> = None;
    let mut upload: Option<(crate::files::Upload, String)> = None;
    let result = async {
        while let Some(mut field) = form.next_field().await.map_err(multipart_error)? {
            match field.name().unwrap_or("") {
                "file" => {
                    if upload.is_some() {
                        return Err(GatewayError::invalid(
                            "only one file per upload",
                            Some("file".into()),
                        ));
                    }
                    let filename = field.file_name().unwrap_or("upload").to_string();
                    let mut up = files.begin_upload().await?;
                    let written = async {
                        while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                            files.write(&mut up, &chunk).await?;
                        }
                        Ok::<(), GatewayError>(())
                    }
                    .await;
                    if let Err(e) = written {
                        files.abandon(up).await;
                        return Err(e);
                    }
                    upload = Some((up, filename));
                }
                "purpose" => purpose = Some(text(field, "purpose").await?),
                "expires_after[anchor]" => {
                    anchor = Some(text(field, "expires_after[anchor]").await?)
                }
                "expires_after[seconds]" => {
                    seconds = Some(text(field, "expires_after[seconds]").await?)
                }
                // Fields the gateway does not know are read and ignored, as OpenAI does.
                _ => while field.chunk().await.map_err(multipart_error)?.is_some() {},
            }
        }
        Ok(())
    }
    .await;
    let checked = result.and_then(|()| {
        check_form(
            purpose,
            anchor,
            seconds,
            upload.as_ref().map(|u| u.1.as_str()),
        )
    });
    match (checked, upload) {
        (Ok((purpose, expires_at)), Some((up, filename))) => {
            let row = files
                .finish_upload(up, filename, purpose, expires_at, caller.owner())
                .await?;
            tracing::info!(file = %row.id, bytes = row.bytes, purpose = %row.purpose, "file stored");
            Ok(row)
        }
        (Ok(_), None) => Err(GatewayError::missing("file")),
        (Err(e), up) => {
            if let Some((up, _)) = up {
                files.abandon(up).await;
            }
            Err(e)
        }
    }
}

/// The purpose and expiry of an upload, checked.
fn check_form(
    purpose: Option<String>,
    anchor: Option<String>,
    seconds: Option<String>,
    filename: Option<&str>,
) -> Result<(String, Option<i64>), GatewayError> {
    let Some(filename) = filename else {
        return Err(GatewayError::missing("file"));
    };
    let purpose = purpose.ok_or_else(|| GatewayError::missing("purpose"))?;
    if !UPLOAD_PURPOSES.contains(&purpose.as_str()) {
        return Err(GatewayError::invalid(
            format!(
                "purpose `{purpose}` is not supported here; one of {}",
                UPLOAD_PURPOSES.join(", ")
            ),
            Some("purpose".into()),
        ));
    }
    if purpose == "batch" && !filename.ends_with(".jsonl") {
        return Err(GatewayError::invalid(
            format!("a batch input file must be a .jsonl file, not `{filename}`"),
            Some("file".into()),
        ));
    }
    let expires_at = match (anchor.as_deref(), seconds) {
        (None, None) => None,
        (Some("created_at"), Some(s)) => {
            let secs: i64 = s.trim().parse().map_err(|_| {
                GatewayError::invalid(
                    "expires_after[seconds] must be an integer",
                    Some("expires_after[seconds]".into()),
                )
            })?;
            if !(MIN_EXPIRY_SECS..=MAX_EXPIRY_SECS).contains(&secs) {
                return Err(GatewayError::invalid(
                    format!(
                        "expires_after[seconds] must be between {MIN_EXPIRY_SECS} and \
                         {MAX_EXPIRY_SECS}"
                    ),
                    Some("expires_after[seconds]".into()),
                ));
            }
            Some(store::now() + secs)
        }
        (Some("created_at"), None) => return Err(GatewayError::missing("expires_after[seconds]")),
        (Some(other), _) => {
            return Err(GatewayError::invalid(
                format!("expires_after[anchor] must be `created_at`, not `{other}`"),
                Some("expires_after[anchor]".into()),
            ))
        }
        (None, Some(_)) => return Err(GatewayError::missing("expires_after[anchor]")),
    };
    Ok((purpose, expires_at))
}

#[derive(Debug, Deserialize)]
pub struct ListParams {
    after: Option<String>,
    limit: Option<String>,
    order: Option<String>,
    purpose: Option<String>,
}

/// `GET /v1/files`.
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        let files = service(&state)?;
        let Query(p) = params.map_err(|e| GatewayError::invalid(e.body_text(), None))?;
        let limit = parse_limit(p.limit.as_deref(), MAX_LIST, MAX_LIST)?;
        let order = match p.order.as_deref() {
            None | Some("desc") => Order::Desc,
            Some("asc") => Order::Asc,
            Some(other) => {
                return Err(GatewayError::invalid(
                    format!("order must be asc or desc, not `{other}`"),
                    Some("order".into()),
                ))
            }
        };
        let owner = caller.owner().to_string();
        let rows = files
            .store
            .run(move |s| {
                s.list_files(
                    &owner,
                    p.purpose.as_deref(),
                    p.after.as_deref(),
                    limit + 1,
                    order,
                )
            })
            .await
            .map_err(crate::files::internal)?;
        let has_more = rows.len() > limit;
        let data: Vec<Value> = rows.iter().take(limit).map(object).collect();
        Ok(crate::batch::list_envelope(data, has_more))
    }
    .await;
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `limit` as a number in 1..=max, `default` when absent.
pub fn parse_limit(raw: Option<&str>, default: usize, max: usize) -> Result<usize, GatewayError> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(GatewayError::invalid(
                format!("limit must be an integer from 1 to {max}"),
                Some("limit".into()),
            )),
        },
    }
}

/// `GET /v1/files/{id}`.
pub async fn retrieve(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = async { service(&state)?.get(&id, caller.owner()).await }.await;
    match result {
        Ok(row) => Json(object(&row)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v1/files/{id}/content`: the exact bytes, streamed from disk.
pub async fn content(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = async {
        let files = service(&state)?;
        let row = files.get(&id, caller.owner()).await?;
        let file = tokio::fs::File::open(files.path(&row.id))
            .await
            .map_err(|_| no_such_file(&id))?;
        Ok::<_, GatewayError>((row, file))
    }
    .await;
    match result {
        Ok((row, file)) => {
            let body =
                Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 64 << 10));
            let mut resp = Response::new(body);
            let headers = resp.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(row.bytes));
            resp
        }
        Err(e) => e.into_response(),
    }
}

/// `DELETE /v1/files/{id}`.
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let result = async { service(&state)?.delete(&id, Some(caller.owner())).await }.await;
    match result {
        Ok(()) => Json(json!({"id": id, "object": "file", "deleted": true})).into_response(),
        Err(e) => e.into_response(),
    }
}
