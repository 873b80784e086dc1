//! The SCIM endpoints at `/scim/v2` on the admin listener, behind the bearer `admin.scim.token` (compared in
//! constant time): `Users` and `Groups` (POST, GET by id, GET a filtered page, PUT, PATCH, DELETE) and the discovery
//! endpoints `ServiceProviderConfig`, `ResourceTypes` and `Schemas`. Answers are `application/scim+json`; errors
//! are the RFC 7644 §3.12 error body. Bounded: bodies of `MAX_BODY` at most, pages of `MAX_PAGE` resources.
//!
//! Every change (and every refused token) is written to the audit log as a `kind: "scim"` record and counted in
//! `tollgate_scim_requests_total{resource,operation,result}`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

use super::resource::{self, new_id, parse_filter, Group, ScimError, User, LIST_SCHEMA};
use super::sync::cut_tunnels;
use crate::audit::{Record, Wait};
use crate::config::scim::Settings;
use crate::shared::Shared;

/// The largest request body read (a group replaced with thousands of members fits).
pub const MAX_BODY: usize = 1024 * 1024;
/// The most resources one list answer holds (`count` above it is lowered to it).
pub const MAX_PAGE: usize = 200;
/// How long a request body may take to arrive: a stalled client must not hold an admin connection.
const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

const CONTENT_TYPE: &str = "application/scim+json";

/// The resource a request is about: the `resource` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resource {
    Users,
    Groups,
    Discovery,
}

impl Resource {
    fn label(self) -> &'static str {
        match self {
            Resource::Users => "users",
            Resource::Groups => "groups",
            Resource::Discovery => "discovery",
        }
    }
}

/// What a request does: the `operation` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Operation {
    Create,
    Get,
    List,
    Replace,
    Patch,
    Delete,
    Discover,
}

impl Operation {
    fn label(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Get => "get",
            Operation::List => "list",
            Operation::Replace => "replace",
            Operation::Patch => "patch",
            Operation::Delete => "delete",
            Operation::Discover => "discover",
        }
    }

    /// Whether it changes the directory (and so is audited).
    fn changes(self) -> bool {
        matches!(self, Operation::Create | Operation::Replace | Operation::Patch | Operation::Delete)
    }
}

/// What one request came to, for the metric and the audit record.
struct Answer {
    status: u16,
    body: Option<Value>,
    location: Option<String>,
    /// The user name (or group display name) the request was about.
    subject: Option<String>,
    error: Option<String>,
}

impl Answer {
    fn ok(status: u16, body: Value) -> Answer {
        Answer { status, body: Some(body), location: None, subject: None, error: None }
    }

    fn error(error: ScimError) -> Answer {
        Answer {
            status: error.status,
            body: Some(error.body()),
            location: None,
            subject: None,
            error: Some(error.detail),
        }
    }
}

/// Serves one request under `/scim/`.
pub async fn respond(shared: &Shared, client: SocketAddr, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let config = shared.config.load_full();
    let settings = config.admin.as_ref().and_then(|admin| admin.scim.clone());
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or("").to_owned();
    let (resource, operation, id) = route(&method, &path);
    let Some(settings) = settings else {
        return reply(Answer::error(ScimError::not_found("admin.scim is not configured: SCIM provisioning is off")));
    };
    if !authorised(&settings, request.headers()) {
        let answer = Answer::error(ScimError {
            status: 401,
            scim_type: None,
            detail: "send Authorization: Bearer <admin.scim.token>".into(),
        });
        return finish(shared, client, &method, &path, resource, operation, answer).await;
    }
    let answer = match (resource, operation, id) {
        (Resource::Discovery, Operation::Discover, _) => discovery(&path),
        (_, Operation::Create | Operation::Replace | Operation::Patch, id) => {
            let declared = request.headers().get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
            let body = match declared.and_then(|length| length.parse::<u64>().ok()) {
                // Refused before a byte of it is read.
                Some(length) if length > MAX_BODY as u64 => Err(too_large()),
                _ => read_body(request.into_body()).await,
            };
            match body {
                Ok(body) => write(shared, resource, operation, id, Some(body)).await,
                Err(error) => Answer::error(error),
            }
        }
        (_, Operation::Delete, id) => write(shared, resource, operation, id, None).await,
        (_, Operation::Get, Some(id)) => {
            catch_up(shared).await;
            get(shared, resource, &id, &query)
        }
        (_, Operation::List, None) => {
            catch_up(shared).await;
            list(shared, resource, &query)
        }
        _ => Answer::error(ScimError {
            status: 404,
            scim_type: None,
            detail: format!("no SCIM endpoint {method} {path}"),
        }),
    };
    finish(shared, client, &method, &path, resource, operation, answer).await
}

/// Brings the replica up to the shared store before a read (one version check), so a change another replica took
/// a moment ago is seen: an identity provider behind a load balancer reads what it just wrote. A store that cannot
/// be reached leaves the replica as it is.
async fn catch_up(shared: &Shared) {
    if let Ok(lost) = shared.scim.sync().await {
        cut_tunnels(shared, &lost);
    }
}

/// The resource, operation and id of a method and path.
fn route(method: &Method, path: &str) -> (Resource, Operation, Option<String>) {
    let rest = path.strip_prefix("/scim/v2").unwrap_or("");
    let mut segments = rest.trim_matches('/').splitn(2, '/');
    let collection = segments.next().unwrap_or("");
    let id = segments.next().filter(|id| !id.is_empty() && !id.contains('/')).map(str::to_owned);
    let resource = match collection {
        "Users" => Resource::Users,
        "Groups" => Resource::Groups,
        _ => return (Resource::Discovery, Operation::Discover, None),
    };
    let operation = match (method, &id) {
        (&Method::POST, None) => Operation::Create,
        (&Method::GET, None) => Operation::List,
        (&Method::GET, Some(_)) => Operation::Get,
        (&Method::PUT, Some(_)) => Operation::Replace,
        (&Method::PATCH, Some(_)) => Operation::Patch,
        (&Method::DELETE, Some(_)) => Operation::Delete,
        _ => Operation::Discover,
    };
    (resource, operation, id)
}

/// Whether the request carries `Bearer <admin.scim.token>`, compared in constant time.
fn authorised(settings: &Settings, headers: &http::HeaderMap) -> bool {
    let presented = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    presented
        .is_some_and(|token| bool::from(subtle::ConstantTimeEq::ct_eq(token.as_bytes(), settings.token.as_bytes())))
}

/// The JSON body, at most `MAX_BODY` bytes, within `BODY_TIMEOUT`.
async fn read_body(body: Incoming) -> Result<Value, ScimError> {
    let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await;
    let Ok(read) = read else {
        return Err(ScimError::bad("invalidSyntax", format!("the body did not arrive within {BODY_TIMEOUT:?}")));
    };
    let bytes = match read {
        Ok(collected) => collected.to_bytes(),
        Err(error) if error.downcast_ref::<http_body_util::LengthLimitError>().is_some() => return Err(too_large()),
        Err(error) => return Err(ScimError::bad("invalidSyntax", format!("reading the body failed: {error}"))),
    };
    serde_json::from_slice(&bytes)
        .map_err(|error| ScimError::bad("invalidSyntax", format!("the body is not JSON: {error}")))
}

fn too_large() -> ScimError {
    ScimError { status: 413, scim_type: None, detail: format!("the body exceeds {MAX_BODY} bytes") }
}

/// GET one user or group.
fn get(shared: &Shared, resource: Resource, id: &str, query: &str) -> Answer {
    let replica = shared.scim.current();
    let directory = &replica.directory;
    let found = match resource {
        Resource::Users => directory.users.get(id).map(|user| user.to_json(directory)),
        _ => directory.groups.get(id).map(|group| group.to_json(directory, with_members(query))),
    };
    match found {
        Some(body) => Answer::ok(200, body),
        None => Answer::error(ScimError::not_found(format!("no {} {id}", resource.label()))),
    }
}

/// GET a page of users or groups, filtered.
fn list(shared: &Shared, resource: Resource, query: &str) -> Answer {
    let parameters = match Parameters::parse(query) {
        Ok(parameters) => parameters,
        Err(error) => return Answer::error(error),
    };
    let replica = shared.scim.current();
    let directory = &replica.directory;
    let matched: Result<Vec<Value>, ScimError> = match resource {
        Resource::Users => directory
            .users
            .values()
            .filter_map(|user| match &parameters.filter {
                Some(filter) => filter.matches_user(user).map(|m| m.then_some(user)).transpose(),
                None => Some(Ok(user)),
            })
            .map(|user| user.map(|user| user.to_json(directory)))
            .collect(),
        _ => directory
            .groups
            .values()
            .filter_map(|group| match &parameters.filter {
                Some(filter) => filter.matches_group(group).map(|m| m.then_some(group)).transpose(),
                None => Some(Ok(group)),
            })
            .map(|group| group.map(|group| group.to_json(directory, parameters.with_members)))
            .collect(),
    };
    let matched = match matched {
        Ok(matched) => matched,
        Err(error) => return Answer::error(error),
    };
    let total = matched.len();
    let page: Vec<Value> = matched.into_iter().skip(parameters.start_index - 1).take(parameters.count).collect();
    Answer::ok(
        200,
        json!({
            "schemas": [LIST_SCHEMA],
            "totalResults": total,
            "startIndex": parameters.start_index,
            "itemsPerPage": page.len(),
            "Resources": page,
        }),
    )
}

/// The query of a list request.
struct Parameters {
    filter: Option<resource::Filter>,
    start_index: usize,
    count: usize,
    with_members: bool,
}

impl Parameters {
    fn parse(query: &str) -> Result<Parameters, ScimError> {
        let mut parameters =
            Parameters { filter: None, start_index: 1, count: MAX_PAGE, with_members: with_members(query) };
        for (name, value) in form_pairs(query)? {
            match name.to_ascii_lowercase().as_str() {
                "filter" if !value.is_empty() => parameters.filter = Some(parse_filter(&value)?),
                // RFC 7644 §3.4.2.4: a startIndex below 1 is 1; a negative count is 0.
                "startindex" => {
                    parameters.start_index = value.parse::<i64>().map_err(|_| number("startIndex"))?.max(1) as usize
                }
                "count" => {
                    parameters.count =
                        (value.parse::<i64>().map_err(|_| number("count"))?.max(0) as usize).min(MAX_PAGE)
                }
                _ => {}
            }
        }
        Ok(parameters)
    }
}

fn number(name: &str) -> ScimError {
    ScimError::bad("invalidValue", format!("{name} must be an integer"))
}

/// Whether a group answer lists its members (not with `excludedAttributes=members`, as Azure AD asks).
fn with_members(query: &str) -> bool {
    !form_pairs(query).unwrap_or_default().iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("excludedAttributes")
            && value.split(',').any(|a| a.trim().eq_ignore_ascii_case("members"))
    })
}

/// The decoded pairs of a query string (`+` a space, `%XX` a byte).
fn form_pairs(query: &str) -> Result<Vec<(String, String)>, ScimError> {
    url::form_urlencoded::parse(query.as_bytes())
        .map(|(name, value)| Ok((name.into_owned(), value.into_owned())))
        .collect()
}

/// A change: create, replace, patch or delete, on the newest directory.
async fn write(
    shared: &Shared,
    resource: Resource,
    operation: Operation,
    id: Option<String>,
    body: Option<Value>,
) -> Answer {
    let now = SystemTime::now();
    let stamp = crate::audit::timestamp(now);
    let now_ms = crate::limits::millis(now);
    let body = body.unwrap_or(Value::Null);
    let new_id = new_id();
    let changed = shared
        .scim
        .change(|directory| -> Result<(Value, String), ScimError> {
            match (resource, operation, id.as_deref()) {
                (Resource::Users, Operation::Create, None) => {
                    let user = User::from_json(&body, new_id.clone(), stamp.clone(), stamp.clone())?;
                    directory.put_user(user.clone())?;
                    Ok((user.to_json(directory), user.user_name))
                }
                (Resource::Users, Operation::Replace, Some(id)) => {
                    let old = directory.users.get(id).ok_or_else(|| ScimError::not_found(format!("no user {id}")))?;
                    let user = User::from_json(&body, id.to_owned(), old.created.clone(), stamp.clone())?;
                    directory.put_user(user.clone())?;
                    Ok((user.to_json(directory), user.user_name))
                }
                (Resource::Users, Operation::Patch, Some(id)) => {
                    let user = directory.patch_user(id, &body, stamp.clone())?;
                    Ok((user.to_json(directory), user.user_name))
                }
                (Resource::Users, Operation::Delete, Some(id)) => {
                    let user = directory.delete_user(id, now_ms)?;
                    Ok((Value::Null, user.user_name))
                }
                (Resource::Groups, Operation::Create, None) => {
                    let group = Group::from_json(&body, directory, new_id.clone(), stamp.clone(), stamp.clone())?;
                    directory.put_group(group.clone())?;
                    Ok((group.to_json(directory, true), group.display_name))
                }
                (Resource::Groups, Operation::Replace, Some(id)) => {
                    let old = directory.groups.get(id).ok_or_else(|| ScimError::not_found(format!("no group {id}")))?;
                    let group = Group::from_json(&body, directory, id.to_owned(), old.created.clone(), stamp.clone())?;
                    directory.put_group(group.clone())?;
                    Ok((group.to_json(directory, true), group.display_name))
                }
                (Resource::Groups, Operation::Patch, Some(id)) => {
                    let group = directory.patch_group(id, &body, stamp.clone())?;
                    Ok((group.to_json(directory, true), group.display_name))
                }
                (Resource::Groups, Operation::Delete, Some(id)) => {
                    let group = directory.delete_group(id)?;
                    Ok((Value::Null, group.display_name))
                }
                _ => Err(ScimError { status: 405, scim_type: None, detail: "method not allowed here".into() }),
            }
        })
        .await;
    let ((body, subject), lost) = match changed {
        Ok(changed) => changed,
        Err(error) => return Answer::error(error),
    };
    cut_tunnels(shared, &lost);
    let (status, location) = match operation {
        Operation::Create => {
            (201, Some(format!("/scim/v2/{}/{new_id}", if resource == Resource::Users { "Users" } else { "Groups" })))
        }
        Operation::Delete => (204, None),
        _ => (200, None),
    };
    Answer { status, body: (!body.is_null()).then_some(body), location, subject: Some(subject), error: None }
}

/// The discovery endpoints (RFC 7644 §4).
fn discovery(path: &str) -> Answer {
    let rest = path.strip_prefix("/scim/v2").unwrap_or("").trim_matches('/');
    match rest {
        "ServiceProviderConfig" => Answer::ok(200, service_provider_config()),
        "ResourceTypes" => Answer::ok(200, list_of(vec![resource_type("User"), resource_type("Group")])),
        "ResourceTypes/User" => Answer::ok(200, resource_type("User")),
        "ResourceTypes/Group" => Answer::ok(200, resource_type("Group")),
        "Schemas" => Answer::ok(200, list_of(vec![user_schema(), group_schema()])),
        _ if rest == format!("Schemas/{}", resource::USER_SCHEMA) => Answer::ok(200, user_schema()),
        _ if rest == format!("Schemas/{}", resource::GROUP_SCHEMA) => Answer::ok(200, group_schema()),
        _ => Answer::error(ScimError::not_found(format!("no SCIM endpoint {path}"))),
    }
}

fn list_of(resources: Vec<Value>) -> Value {
    json!({"schemas": [LIST_SCHEMA], "totalResults": resources.len(), "startIndex": 1, "itemsPerPage": resources.len(), "Resources": resources})
}

fn service_provider_config() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://github.com/tollgate/tollgate/blob/main/docs/sso.md",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_PAGE},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": false},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "Bearer token",
            "description": "The secret of admin.scim.token, sent as Authorization: Bearer",
            "primary": true,
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": "/scim/v2/ServiceProviderConfig"},
    })
}

fn resource_type(name: &str) -> Value {
    let (endpoint, schema) = match name {
        "User" => ("/Users", resource::USER_SCHEMA),
        _ => ("/Groups", resource::GROUP_SCHEMA),
    };
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": name, "name": name, "endpoint": endpoint, "schema": schema,
        "meta": {"resourceType": "ResourceType", "location": format!("/scim/v2/ResourceTypes/{name}")},
    })
}

/// One attribute's schema.
fn attribute(name: &str, kind: &str, required: bool, case_exact: bool, uniqueness: &str) -> Value {
    json!({
        "name": name, "type": kind, "multiValued": false, "required": required, "caseExact": case_exact,
        "mutability": "readWrite", "returned": "default", "uniqueness": uniqueness,
    })
}

fn user_schema() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": resource::USER_SCHEMA, "name": "User", "description": "A provisioned user: a principal name",
        "attributes": [
            attribute("userName", "string", true, false, "server"),
            attribute("externalId", "string", false, true, "none"),
            attribute("displayName", "string", false, false, "none"),
            attribute("active", "boolean", false, false, "none"),
            {"name": "name", "type": "complex", "multiValued": false, "required": false, "mutability": "readWrite", "returned": "default"},
            {"name": "emails", "type": "complex", "multiValued": true, "required": false, "mutability": "readWrite", "returned": "default"},
            {"name": "groups", "type": "complex", "multiValued": true, "required": false, "mutability": "readOnly", "returned": "default"},
        ],
        "meta": {"resourceType": "Schema", "location": format!("/scim/v2/Schemas/{}", resource::USER_SCHEMA)},
    })
}

fn group_schema() -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": resource::GROUP_SCHEMA, "name": "Group", "description": "A provisioned group: joins a team",
        "attributes": [
            attribute("displayName", "string", true, false, "server"),
            attribute("externalId", "string", false, true, "none"),
            {"name": "members", "type": "complex", "multiValued": true, "required": false, "mutability": "readWrite", "returned": "default"},
        ],
        "meta": {"resourceType": "Schema", "location": format!("/scim/v2/Schemas/{}", resource::GROUP_SCHEMA)},
    })
}

/// Counts the request, audits a change or a refused token, and answers.
async fn finish(
    shared: &Shared,
    client: SocketAddr,
    method: &Method,
    path: &str,
    resource: Resource,
    operation: Operation,
    answer: Answer,
) -> Response<Full<Bytes>> {
    let result = match answer.status {
        200..=299 => "ok",
        400 => "bad_request",
        401 => "unauthorized",
        404 => "not_found",
        409 => "conflict",
        413 => "too_large",
        _ => "error",
    };
    shared.metrics.scim_request(resource.label(), operation.label(), result);
    if answer.status == 401 {
        // A wrong SCIM token is a failed sign-in like any other (`auth_failures` alerts).
        shared.alerts.auth_failure(client.ip(), shared.clock.now());
    }
    if operation.changes() || answer.status == 401 {
        let record = Record {
            ts: crate::audit::timestamp(SystemTime::now()),
            id: shared.next_request_id(),
            kind: "scim",
            listener: Arc::from("admin"),
            client: client.ip().to_string(),
            user: answer.subject.as_deref().filter(|_| resource == Resource::Users).map(Arc::from),
            team: answer.subject.as_deref().filter(|_| resource == Resource::Groups).map(Arc::from),
            method: method.to_string(),
            path: Some(path.to_owned()),
            decision: if answer.status < 300 { "allow" } else { "deny" },
            rule: Some(Arc::from(format!("scim:{}:{}", resource.label(), operation.label()))),
            status: answer.status,
            error: answer.error.clone(),
            ..Record::default()
        };
        let _ = shared.auditor.record(record, Wait::Never).await;
    }
    reply(answer)
}

fn reply(answer: Answer) -> Response<Full<Bytes>> {
    let mut response =
        Response::builder().status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    if let Some(location) = &answer.location {
        response = response.header("location", location);
    }
    let body = match &answer.body {
        Some(body) => {
            response = response.header("content-type", CONTENT_TYPE);
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    response.body(Full::new(body)).expect("static response parts are valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_to_resources_and_operations() {
        let route_of = |method: Method, path: &str| route(&method, path);
        assert_eq!(route_of(Method::POST, "/scim/v2/Users"), (Resource::Users, Operation::Create, None));
        assert_eq!(route_of(Method::GET, "/scim/v2/Users/"), (Resource::Users, Operation::List, None));
        assert_eq!(
            route_of(Method::PATCH, "/scim/v2/Groups/g1"),
            (Resource::Groups, Operation::Patch, Some("g1".into()))
        );
        assert_eq!(route_of(Method::GET, "/scim/v2/Schemas"), (Resource::Discovery, Operation::Discover, None));
        assert_eq!(route_of(Method::POST, "/scim/v2/Users/u1").1, Operation::Discover);
    }

    #[test]
    fn list_parameters_are_bounded() {
        let parsed = Parameters::parse("filter=userName+eq+%22a%40corp%22&startIndex=0&count=5000").unwrap();
        assert_eq!((parsed.start_index, parsed.count), (1, MAX_PAGE));
        assert_eq!(parsed.filter.unwrap().value, "a@corp");
        assert_eq!(Parameters::parse("count=-3").unwrap().count, 0);
        assert_eq!(Parameters::parse("count=x").err().unwrap().status, 400);
        assert!(!Parameters::parse("excludedAttributes=members").unwrap().with_members);
    }
}
