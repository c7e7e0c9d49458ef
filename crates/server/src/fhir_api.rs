//! Handlers of the FHIR REST interactions (R4 §3.1.0): read, vread, update,
//! patch, delete, create, search and history. Each one parses, hands a write
//! to the shared pipeline in `resource`, and renders through `response`.

use axum::extract::{FromRequestParts, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fhirbox_store::{
    HistoryPage, HistoryScope, ResourceHistory, ResourceRead, ResourceSearch, StoredResource,
};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::app::AppState;
use crate::bundle_out::BundleWriter;
use crate::error::ApiError;
use crate::extract::{FhirBase, FhirJson, JsonPatchBody};
use crate::resource::{self, check_id, check_type};
use crate::response::{etag, parse_if_match, resource_response, Prefer, ReturnPreference};
use crate::search::{self, Params};

/// Path parameters whose rejection is an OperationOutcome.
pub struct FhirPath<T>(pub T);

impl<T, S> FromRequestParts<S> for FhirPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| FhirPath(p.0))
            .map_err(|e| ApiError::bad_request(format!("the URL path is not valid: {e}")))
    }
}

/// Loads the current version or explains why there is none (404 / 410).
pub async fn read_current(
    app: &AppState,
    resource_type: &str,
    id: &str,
) -> Result<StoredResource, ApiError> {
    check_type(resource_type)?;
    check_id(id)?;
    match app.store.read(resource_type, id).await? {
        None => Err(ApiError::not_found(format!(
            "{resource_type}/{id} does not exist"
        ))),
        Some(r) if r.deleted => Err(fhirbox_store::StoreError::Gone {
            resource_type: resource_type.into(),
            id: id.into(),
            version_id: r.version_id,
        }
        .into()),
        Some(r) => Ok(r),
    }
}

pub async fn read(
    State(app): State<AppState>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
) -> Result<Response, ApiError> {
    let stored = read_current(&app, &resource_type, &id).await?;
    Ok(resource_response(
        StatusCode::OK,
        &stored,
        None,
        ReturnPreference::Representation,
        "",
    ))
}

/// Loads one version or explains why there is none.
pub async fn read_version(
    app: &AppState,
    resource_type: &str,
    id: &str,
    version: &str,
) -> Result<StoredResource, ApiError> {
    check_type(resource_type)?;
    check_id(id)?;
    let version_id = version
        .parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{version:?} is not a version id; versions are whole numbers from 1"
            ))
        })?;
    match app.store.vread(resource_type, id, version_id).await? {
        None => Err(ApiError::not_found(format!(
            "{resource_type}/{id} has no version {version_id}"
        ))),
        Some(r) if r.deleted => Err(ApiError::new(
            StatusCode::GONE,
            fhirbox_fhir::IssueType::Deleted,
            format!("version {version_id} of {resource_type}/{id} is a deletion"),
        )),
        Some(r) => Ok(r),
    }
}

pub async fn vread(
    State(app): State<AppState>,
    FhirPath((resource_type, id, version)): FhirPath<(String, String, String)>,
) -> Result<Response, ApiError> {
    let stored = read_version(&app, &resource_type, &id, &version).await?;
    Ok(resource_response(
        StatusCode::OK,
        &stored,
        None,
        ReturnPreference::Representation,
        "",
    ))
}

fn location(base: &str, stored: &StoredResource) -> String {
    format!(
        "{base}/{}/{}/_history/{}",
        stored.resource_type, stored.id, stored.version_id
    )
}

pub async fn create(
    State(app): State<AppState>,
    FhirPath(resource_type): FhirPath<String>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    FhirJson(body): FhirJson,
) -> Result<Response, ApiError> {
    let prehashed = crate::hooks::Prehashed::for_body(&resource_type, &body).await?;
    let op = resource::prepare_create(
        &resource_type,
        resource::new_id(),
        body,
        app.vault.as_ref(),
        prehashed,
    )?;
    let outcome = app.write(op).await?;
    let stored = &outcome.resource;
    Ok(resource_response(
        StatusCode::CREATED,
        stored,
        Some(location(&base, stored)),
        Prefer::from_headers(&headers).return_,
        &format!("created {}/{}", stored.resource_type, stored.id),
    ))
}

pub async fn update(
    State(app): State<AppState>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    FhirJson(body): FhirJson,
) -> Result<Response, ApiError> {
    let prehashed = crate::hooks::Prehashed::for_body(&resource_type, &body).await?;
    let op = resource::prepare_update(
        &resource_type,
        &id,
        body,
        parse_if_match(&headers)?,
        app.vault.as_ref(),
        prehashed,
    )?;
    let outcome = app.write(op).await?;
    let stored = &outcome.resource;
    let (status, loc) = if outcome.created {
        (StatusCode::CREATED, Some(location(&base, stored)))
    } else {
        (StatusCode::OK, None)
    };
    Ok(resource_response(
        status,
        stored,
        loc,
        Prefer::from_headers(&headers).return_,
        &format!(
            "stored {}/{} version {}",
            stored.resource_type, stored.id, stored.version_id
        ),
    ))
}

pub async fn patch(
    State(app): State<AppState>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
    JsonPatchBody(patch): JsonPatchBody,
) -> Result<Response, ApiError> {
    let prehashed = crate::hooks::Prehashed::for_patch(&resource_type, &patch).await?;
    let op = resource::prepare_patch(
        &resource_type,
        &id,
        patch,
        parse_if_match(&headers)?,
        app.vault.as_ref(),
        prehashed,
        app.settings.max_body_bytes,
    )?;
    let outcome = app.write(op).await?;
    let stored = &outcome.resource;
    Ok(resource_response(
        StatusCode::OK,
        stored,
        None,
        Prefer::from_headers(&headers).return_,
        &format!(
            "patched {}/{} to version {}",
            stored.resource_type, stored.id, stored.version_id
        ),
    ))
}

pub async fn delete(
    State(app): State<AppState>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let op = resource::prepare_delete(&resource_type, &id, parse_if_match(&headers)?)?;
    let outcome = app.write(op).await?;
    let message = if outcome.changed {
        format!("deleted {resource_type}/{id}")
    } else {
        format!("{resource_type}/{id} was already deleted")
    };
    let preference = match Prefer::from_headers(&headers).return_ {
        ReturnPreference::OperationOutcome => ReturnPreference::OperationOutcome,
        _ => ReturnPreference::Minimal,
    };
    let status = if preference == ReturnPreference::Minimal {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::OK
    };
    Ok(resource_response(
        status,
        &outcome.resource,
        None,
        preference,
        &message,
    ))
}

pub async fn search_type(
    State(app): State<AppState>,
    FhirPath(resource_type): FhirPath<String>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_type(&resource_type)?;
    let params = search::parse_query(raw.as_deref())?;
    let body = run_search(
        &app,
        &base,
        Some(&resource_type),
        &params,
        Prefer::from_headers(&headers).strict,
    )
    .await?;
    Ok(crate::response::fhir_json(StatusCode::OK, body))
}

pub async fn search_system(
    State(app): State<AppState>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let params = search::parse_query(raw.as_deref())?;
    let body = run_search(
        &app,
        &base,
        None,
        &params,
        Prefer::from_headers(&headers).strict,
    )
    .await?;
    Ok(crate::response::fhir_json(StatusCode::OK, body))
}

/// Runs a search and renders its searchset Bundle.
pub async fn run_search(
    app: &AppState,
    base: &str,
    resource_type: Option<&str>,
    params: &Params,
    strict: bool,
) -> Result<String, ApiError> {
    let request = search::parse_search(resource_type, params, strict)?;
    let path = match resource_type {
        Some(rt) => format!("{base}/{rt}"),
        None => base.to_owned(),
    };
    let self_cursor = request.query.cursor.clone();
    let page = app.store.search(request.query).await?;
    let mut links = vec![(
        "self",
        search::link(&path, &request.applied, self_cursor.as_ref()),
    )];
    if let Some(prev) = &page.previous {
        links.push((
            "previous",
            search::link(&path, &request.applied, Some(prev)),
        ));
    }
    if let Some(next) = &page.next {
        links.push(("next", search::link(&path, &request.applied, Some(next))));
    }
    let mut bundle = BundleWriter::new("searchset", page.total, &links);
    for r in &page.resources {
        bundle.entry(
            json!({"fullUrl": format!("{base}/{}/{}", r.resource_type, r.id), "search": {"mode": "match"}}),
            Some(&crate::hooks::public_body(r)),
        );
    }
    Ok(bundle.finish())
}

pub async fn history_instance(
    State(app): State<AppState>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_type(&resource_type)?;
    check_id(&id)?;
    if app.store.read(&resource_type, &id).await?.is_none() {
        return Err(ApiError::not_found(format!(
            "{resource_type}/{id} does not exist"
        )));
    }
    let path = format!("{base}/{resource_type}/{id}/_history");
    let scope = HistoryScope::Instance { resource_type, id };
    history(&app, &base, &path, scope, &headers, raw.as_deref()).await
}

pub async fn history_type(
    State(app): State<AppState>,
    FhirPath(resource_type): FhirPath<String>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    check_type(&resource_type)?;
    let path = format!("{base}/{resource_type}/_history");
    history(
        &app,
        &base,
        &path,
        HistoryScope::Type { resource_type },
        &headers,
        raw.as_deref(),
    )
    .await
}

pub async fn history_system(
    State(app): State<AppState>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let path = format!("{base}/_history");
    history(
        &app,
        &base,
        &path,
        HistoryScope::System,
        &headers,
        raw.as_deref(),
    )
    .await
}

async fn history(
    app: &AppState,
    base: &str,
    path: &str,
    scope: HistoryScope,
    headers: &HeaderMap,
    raw: Option<&str>,
) -> Result<Response, ApiError> {
    let params = search::parse_query(raw)?;
    let (query, applied) =
        search::parse_history(scope, &params, Prefer::from_headers(headers).strict)?;
    let self_cursor = query.cursor.clone();
    let page: HistoryPage = app.store.history(query).await?;
    let mut links = vec![("self", search::link(path, &applied, self_cursor.as_ref()))];
    if let Some(next) = &page.next {
        links.push(("next", search::link(path, &applied, Some(next))));
    }
    let mut bundle = BundleWriter::new("history", page.total, &links);
    for r in &page.entries {
        let (method, url, status) = if r.deleted {
            (
                "DELETE",
                format!("{}/{}", r.resource_type, r.id),
                "204 No Content",
            )
        } else if r.version_id == 1 {
            ("POST", r.resource_type.clone(), "201 Created")
        } else {
            ("PUT", format!("{}/{}", r.resource_type, r.id), "200 OK")
        };
        bundle.entry(
            json!({
                "fullUrl": format!("{base}/{}/{}", r.resource_type, r.id),
                "request": {"method": method, "url": url},
                "response": {"status": status, "etag": etag(r.version_id), "lastModified": r.last_updated_text()},
            }),
            Some(&crate::hooks::public_body(r)),
        );
    }
    Ok(crate::response::fhir_json(StatusCode::OK, bundle.finish()))
}

/// Answers an unknown path with a 404 OperationOutcome.
pub async fn unknown_route(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!(
        "there is no endpoint at {}; the FHIR API lives under /fhir",
        uri.path()
    ))
    .into_response()
}

/// Answers a known path with an unsupported method.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError::not_supported(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not supported on {}", uri.path()),
    )
    .into_response()
}
