//! The FHIR routes' handlers: each one takes the request apart with the
//! extractors of `extract`, calls the interaction of the `fhirbox-rest` crate
//! and renders its reply through `response::render`. They need the REST
//! layer only (`State<Rest>`), never the whole application state.

use axum::extract::{Extension, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use fhirbox_auth::Identity;
use fhirbox_rest::Rest;
use fhirbox_store::HistoryScope;

use crate::error::ApiError;
use crate::extract::{
    if_match, if_none_exist, prefer, read_conditions, FhirBase, FhirJson, FhirPath, FhirQuery,
    OptionalFhirJson, PatchBody, SearchForm,
};
use crate::response::render;

type Answer = Result<Response, ApiError>;

pub async fn read(
    State(rest): State<Rest>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    FhirQuery(params): FhirQuery,
    headers: HeaderMap,
) -> Answer {
    let conditions = read_conditions(&headers);
    Ok(render(
        rest.read(&resource_type, &id, &conditions, &params).await?,
    ))
}

pub async fn vread(
    State(rest): State<Rest>,
    FhirPath((resource_type, id, version)): FhirPath<(String, String, String)>,
    FhirQuery(params): FhirQuery,
    headers: HeaderMap,
) -> Answer {
    let conditions = read_conditions(&headers);
    Ok(render(
        rest.vread(&resource_type, &id, &version, &conditions, &params)
            .await?,
    ))
}

pub async fn create(
    State(rest): State<Rest>,
    FhirPath(resource_type): FhirPath<String>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    FhirJson(body): FhirJson,
) -> Answer {
    let preference = prefer(&headers).return_;
    let if_none_exist = if_none_exist(&headers)?;
    Ok(render(
        rest.create(
            &base,
            &resource_type,
            body,
            preference,
            if_none_exist.as_deref(),
        )
        .await?,
    ))
}

pub async fn update(
    State(rest): State<Rest>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    FhirJson(body): FhirJson,
) -> Answer {
    let reply = rest
        .update(
            &base,
            &resource_type,
            &id,
            body,
            if_match(&headers)?,
            prefer(&headers).return_,
        )
        .await?;
    Ok(render(reply))
}

pub async fn patch(
    State(rest): State<Rest>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
    PatchBody(patch): PatchBody,
) -> Answer {
    let reply = rest
        .patch(
            &resource_type,
            &id,
            patch,
            if_match(&headers)?,
            prefer(&headers).return_,
        )
        .await?;
    Ok(render(reply))
}

pub async fn delete(
    State(rest): State<Rest>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    headers: HeaderMap,
) -> Answer {
    let reply = rest
        .delete(
            &resource_type,
            &id,
            if_match(&headers)?,
            prefer(&headers).return_,
        )
        .await?;
    Ok(render(reply))
}

/// The criteria of a conditional update, patch or delete: the query
/// string, which must be there (without it the request names no resource).
fn criteria(query: Option<String>, method: &str) -> Result<String, ApiError> {
    query.filter(|q| !q.is_empty()).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{method} on a resource type needs search criteria, e.g. ?identifier=system|value; to change one resource by id, send {method} to /fhir/{{type}}/{{id}}"
        ))
    })
}

/// `PUT /fhir/{type}?criteria`: conditional update.
pub async fn update_conditional(
    State(rest): State<Rest>,
    Extension(identity): Extension<Identity>,
    FhirPath(resource_type): FhirPath<String>,
    FhirBase(base): FhirBase,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    FhirJson(body): FhirJson,
) -> Answer {
    let criteria = criteria(query, "PUT")?;
    let reply = rest
        .conditional_update(
            &base,
            &resource_type,
            &criteria,
            body,
            if_match(&headers)?,
            prefer(&headers).return_,
            &identity,
        )
        .await?;
    Ok(render(reply))
}

/// `PATCH /fhir/{type}?criteria`: conditional patch.
pub async fn patch_conditional(
    State(rest): State<Rest>,
    Extension(identity): Extension<Identity>,
    FhirPath(resource_type): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    PatchBody(patch): PatchBody,
) -> Answer {
    let criteria = criteria(query, "PATCH")?;
    let reply = rest
        .conditional_patch(
            &resource_type,
            &criteria,
            patch,
            if_match(&headers)?,
            prefer(&headers).return_,
            &identity,
        )
        .await?;
    Ok(render(reply))
}

/// `DELETE /fhir/{type}?criteria`: conditional delete.
pub async fn delete_conditional(
    State(rest): State<Rest>,
    Extension(identity): Extension<Identity>,
    FhirPath(resource_type): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Answer {
    let criteria = criteria(query, "DELETE")?;
    let reply = rest
        .conditional_delete(
            &resource_type,
            &criteria,
            if_match(&headers)?,
            prefer(&headers).return_,
            &identity,
        )
        .await?;
    Ok(render(reply))
}

pub async fn search_type(
    State(rest): State<Rest>,
    Extension(identity): Extension<Identity>,
    FhirPath(resource_type): FhirPath<String>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    FhirQuery(params): FhirQuery,
) -> Answer {
    let strict = prefer(&headers).strict;
    Ok(render(
        rest.search(&base, Some(&resource_type), &params, strict, &identity)
            .await?,
    ))
}

pub async fn search_system(
    State(rest): State<Rest>,
    Extension(identity): Extension<Identity>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    FhirQuery(params): FhirQuery,
) -> Answer {
    let strict = prefer(&headers).strict;
    Ok(render(
        rest.search(&base, None, &params, strict, &identity).await?,
    ))
}

/// `POST /fhir/{type}/_search`: the parameters of the query string and of
/// the form body together, searched like the GET.
pub async fn search_type_post(
    rest: State<Rest>,
    identity: Extension<Identity>,
    resource_type: FhirPath<String>,
    base: FhirBase,
    headers: HeaderMap,
    FhirQuery(mut params): FhirQuery,
    SearchForm(form): SearchForm,
) -> Answer {
    params.extend(form);
    search_type(
        rest,
        identity,
        resource_type,
        base,
        headers,
        FhirQuery(params),
    )
    .await
}

/// `POST /fhir/_search`.
pub async fn search_system_post(
    rest: State<Rest>,
    identity: Extension<Identity>,
    base: FhirBase,
    headers: HeaderMap,
    FhirQuery(mut params): FhirQuery,
    SearchForm(form): SearchForm,
) -> Answer {
    params.extend(form);
    search_system(rest, identity, base, headers, FhirQuery(params)).await
}

pub async fn history_instance(
    State(rest): State<Rest>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    FhirQuery(params): FhirQuery,
) -> Answer {
    let scope = HistoryScope::Instance { resource_type, id };
    let strict = prefer(&headers).strict;
    Ok(render(rest.history(&base, scope, &params, strict).await?))
}

pub async fn history_type(
    State(rest): State<Rest>,
    FhirPath(resource_type): FhirPath<String>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    FhirQuery(params): FhirQuery,
) -> Answer {
    let scope = HistoryScope::Type { resource_type };
    let strict = prefer(&headers).strict;
    Ok(render(rest.history(&base, scope, &params, strict).await?))
}

pub async fn history_system(
    State(rest): State<Rest>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    FhirQuery(params): FhirQuery,
) -> Answer {
    let strict = prefer(&headers).strict;
    let reply = rest
        .history(&base, HistoryScope::System, &params, strict)
        .await?;
    Ok(render(reply))
}

/// `POST /fhir` with a batch or transaction Bundle.
pub async fn bundle(
    State(rest): State<Rest>,
    Extension(identity): Extension<Identity>,
    FhirBase(base): FhirBase,
    headers: HeaderMap,
    FhirJson(body): FhirJson,
) -> Answer {
    let preference = prefer(&headers).return_;
    Ok(render(
        rest.bundle(&base, &body, &identity, preference).await?,
    ))
}

/// The `mode` query parameter of `$validate`, if given.
fn mode(params: &[(String, String)]) -> Option<&str> {
    params
        .iter()
        .find(|(name, _)| name == "mode")
        .map(|(_, value)| value.as_str())
}

/// `POST /fhir/{type}/$validate`.
pub async fn validate(
    State(rest): State<Rest>,
    Extension(identity): Extension<Identity>,
    FhirPath(resource_type): FhirPath<String>,
    FhirQuery(params): FhirQuery,
    OptionalFhirJson(body): OptionalFhirJson,
) -> Answer {
    let root = matches!(identity, Identity::Root { .. });
    let reply = rest
        .validate(&resource_type, None, body.as_ref(), mode(&params), root)
        .await?;
    Ok(render(reply))
}

/// `POST /fhir/{type}/{id}/$validate`.
pub async fn validate_instance(
    State(rest): State<Rest>,
    Extension(identity): Extension<Identity>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
    FhirQuery(params): FhirQuery,
    OptionalFhirJson(body): OptionalFhirJson,
) -> Answer {
    let root = matches!(identity, Identity::Root { .. });
    let reply = rest
        .validate(
            &resource_type,
            Some(&id),
            body.as_ref(),
            mode(&params),
            root,
        )
        .await?;
    Ok(render(reply))
}

/// `GET /fhir/AidboxTopicDestination/{id}/$status`.
pub async fn destination_status(
    State(rest): State<Rest>,
    FhirPath((resource_type, id)): FhirPath<(String, String)>,
) -> Answer {
    Ok(render(rest.destination_status(&resource_type, &id).await?))
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
