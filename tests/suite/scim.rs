//! SCIM provisioning (`admin.scim`): requests shaped as Azure AD and Okta send them create, find, change and remove
//! users and groups on the admin listener; the SCIM token guards it; a provisioned user works through the proxy with
//! a JWT, its groups add teams, and deprovisioning (deactivation, deletion, leaving a group) closes its open tunnels
//! and refuses its token at once, on two replicas sharing a real redis-server.
//!
//! Nothing sleeps: a closed tunnel is awaited on the socket, with a bound.

use crate::common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use common::intercept::{self, Parts, API_HOST};
use common::messages::MessagesStub;
use common::pki::{self, Pki};
use common::redis::RedisServer;
use common::tls;
use common::*;
use tollgate::app;
use tollgate::config::Config;

const TOKEN: &str = "scim-secret-token-of-at-least-32-characters";
const ISSUER: &str = "https://idp.test";
const SECRET: &str = "an-hs256-secret-of-at-least-32-bytes!";
/// How long a tunnel may take to close once its user is deprovisioned: the contract is one poll (250 ms) and a
/// round trip; the bound leaves room for a loaded test machine.
const CLOSED_WITHIN: Duration = Duration::from_secs(2);

const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

/// Starts a gateway from `yaml` (everything but `listeners`, `admin` and `audit`) with `admin.scim` (`scim` inside
/// its braces after the token, which comes from `${SCIM_TOKEN}`).
async fn start(yaml: &str, scim: &str) -> TestGateway {
    start_listening("listeners: [{name: proxy, bind: \"127.0.0.1:0\"}]\n", yaml, scim).await
}

/// `start` with other `listeners` (YAML); the first is the gateway's `proxy` address.
async fn start_listening(listeners: &str, yaml: &str, scim: &str) -> TestGateway {
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit.jsonl");
    let text = format!(
        "{listeners}admin: {{bind: \"127.0.0.1:0\", scim: {{token: \"${{SCIM_TOKEN}}\"{scim}}}}}\naudit: {{file: {{path: \"{}\"}}}}\n{yaml}",
        audit.display()
    );
    let env = |name: &str| (name == "SCIM_TOKEN").then(|| TOKEN.to_owned());
    let mut config = Config::from_text(&text, Path::new("scim.yaml"), &env).unwrap_or_else(|e| panic!("{e}"));
    isolate_state(&mut config, dir.path());
    let running = app::start(config).await.expect("gateway starts");
    let proxy = running.listeners[0].1;
    let admin = running.admin.expect("admin listener");
    TestGateway { running: Some(running), proxy, admin, dir }
}

/// One SCIM request with the right token.
async fn scim(gateway: &TestGateway, method: &str, path: &str, body: Option<&Value>) -> Response {
    scim_as(gateway.admin, method, path, body, Some(&format!("Bearer {TOKEN}"))).await
}

async fn scim_as(admin: SocketAddr, method: &str, path: &str, body: Option<&Value>, auth: Option<&str>) -> Response {
    let body = body.map(Value::to_string).unwrap_or_default();
    let auth = auth.map(|value| format!("Authorization: {value}\r\n")).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: tollgate-admin\r\n{auth}Content-Type: application/scim+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    exchange(admin, request.as_bytes()).await
}

fn assert_scim_error(response: &Response, status: u16, scim_type: Option<&str>) {
    assert_eq!(response.status, status, "{response:?}");
    let body = response.json();
    assert_eq!(body["schemas"], json!([ERROR_SCHEMA]), "{body}");
    assert_eq!(body["status"], status.to_string(), "{body}");
    assert_eq!(body["scimType"].as_str(), scim_type, "{body}");
}

fn scim_metric(resource: &str, operation: &str, result: &str) -> String {
    format!("tollgate_scim_requests_total{{operation=\"{operation}\",resource=\"{resource}\",result=\"{result}\"}}")
}

/// A user as Azure AD creates it (its default attribute mappings, the enterprise extension included).
fn azure_user(user_name: &str, object_id: &str) -> Value {
    json!({
        "schemas": [USER_SCHEMA, "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"],
        "externalId": object_id,
        "userName": user_name,
        "active": true,
        "displayName": "Alice Example",
        "emails": [{"primary": true, "type": "work", "value": user_name}],
        "meta": {"resourceType": "User"},
        "name": {"formatted": "Alice Example", "familyName": "Example", "givenName": "Alice"},
        "title": "Engineer",
        "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": {"department": "R&D"},
        "roles": [],
    })
}

/// A user as Okta creates it (Okta sends a password even to an app that has none).
fn okta_user(user_name: &str) -> Value {
    json!({
        "schemas": [USER_SCHEMA],
        "userName": user_name,
        "name": {"givenName": "Bob", "familyName": "Builder"},
        "emails": [{"primary": true, "value": user_name, "type": "work"}],
        "displayName": "Bob Builder",
        "locale": "en-US",
        "externalId": "00u1abcd",
        "groups": [],
        "password": "1mz050nq",
        "active": true,
    })
}

fn encoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Azure AD's provisioning cycle: look up, create (a second create of the same name is a 409), create a group and
/// add the member by PATCH, leave out members when listing groups, remove the member, deactivate with
/// `"Replace"`/`"False"`, delete; each change audited and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_ad_provisions_users_and_groups() {
    let gateway = start(LOOPBACK_POLICY, "").await;
    let filter = format!("/scim/v2/Users?filter={}", encoded("userName eq \"alice@corp.example\""));
    let found = scim(&gateway, "GET", &filter, None).await;
    assert_eq!(found.status, 200, "{found:?}");
    assert_eq!(found.header("content-type").as_deref(), Some("application/scim+json"));
    assert_eq!((found.json()["totalResults"].as_u64(), found.json()["Resources"].clone()), (Some(0), json!([])));

    let created = scim(&gateway, "POST", "/scim/v2/Users", Some(&azure_user("alice@corp.example", "aad-1"))).await;
    assert_eq!(created.status, 201, "{created:?}");
    let alice = created.json();
    let id = alice["id"].as_str().expect("an id").to_owned();
    assert_eq!(created.header("location"), Some(format!("/scim/v2/Users/{id}")));
    assert_eq!((alice["userName"].as_str(), alice["active"].as_bool()), (Some("alice@corp.example"), Some(true)));
    assert_eq!((alice["externalId"].as_str(), alice["name"]["givenName"].as_str()), (Some("aad-1"), Some("Alice")));
    assert_eq!(alice["meta"]["resourceType"], "User");
    let again = scim(&gateway, "POST", "/scim/v2/Users", Some(&azure_user("ALICE@corp.example", "aad-2"))).await;
    assert_scim_error(&again, 409, Some("uniqueness"));

    let found = scim(&gateway, "GET", &filter, None).await.json();
    assert_eq!((found["totalResults"].as_u64(), found["Resources"][0]["id"].as_str()), (Some(1), Some(id.as_str())));
    let by_external = format!("/scim/v2/Users?filter={}", encoded("externalId eq \"aad-1\""));
    assert_eq!(scim(&gateway, "GET", &by_external, None).await.json()["totalResults"], 1);

    let group =
        json!({"schemas": [GROUP_SCHEMA], "externalId": "aad-g1", "displayName": "Engineering-EU", "members": []});
    let created = scim(&gateway, "POST", "/scim/v2/Groups", Some(&group)).await;
    assert_eq!(created.status, 201, "{created:?}");
    let group_id = created.json()["id"].as_str().expect("an id").to_owned();
    let add =
        json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Add", "path": "members", "value": [{"value": id}]}]});
    let patched = scim(&gateway, "PATCH", &format!("/scim/v2/Groups/{group_id}"), Some(&add)).await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(patched.json()["members"][0]["value"], id.as_str());
    let user = scim(&gateway, "GET", &format!("/scim/v2/Users/{id}"), None).await.json();
    assert_eq!(user["groups"][0]["display"], "Engineering-EU");
    let listed =
        format!("/scim/v2/Groups?excludedAttributes=members&filter={}", encoded("displayName eq \"Engineering-EU\""));
    let listed = scim(&gateway, "GET", &listed, None).await.json();
    assert_eq!(listed["totalResults"], 1);
    assert!(listed["Resources"][0].get("members").is_none(), "{listed}");
    let remove = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Remove", "path": "members", "value": [{"value": id}]}]});
    let patched = scim(&gateway, "PATCH", &format!("/scim/v2/Groups/{group_id}"), Some(&remove)).await;
    assert_eq!(patched.json()["members"], json!([]), "{patched:?}");

    let deactivate =
        json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
    let patched = scim(&gateway, "PATCH", &format!("/scim/v2/Users/{id}"), Some(&deactivate)).await;
    assert_eq!((patched.status, patched.json()["active"].as_bool()), (200, Some(false)), "{patched:?}");
    let deleted = scim(&gateway, "DELETE", &format!("/scim/v2/Users/{id}"), None).await;
    assert_eq!((deleted.status, deleted.body.as_str()), (204, ""));
    assert_scim_error(&scim(&gateway, "GET", &format!("/scim/v2/Users/{id}"), None).await, 404, None);
    assert_scim_error(&scim(&gateway, "DELETE", &format!("/scim/v2/Users/{id}"), None).await, 404, None);

    assert_eq!(gateway.metric(&scim_metric("users", "create", "ok")).await, 1.0);
    assert_eq!(gateway.metric(&scim_metric("users", "create", "conflict")).await, 1.0);
    assert_eq!(gateway.metric(&scim_metric("groups", "patch", "ok")).await, 2.0);
    assert_eq!(gateway.metric(&scim_metric("users", "list", "ok")).await, 3.0);
    let audit = gateway.audit().await;
    let changes: Vec<(&str, &str, u64)> = audit
        .iter()
        .filter(|record| record["kind"] == "scim")
        .map(|r| (r["method"].as_str().unwrap(), r["user"].as_str().unwrap_or("-"), r["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        changes,
        [
            ("POST", "alice@corp.example", 201),
            ("POST", "-", 409),
            ("POST", "-", 201),
            ("PATCH", "-", 200),
            ("PATCH", "-", 200),
            ("PATCH", "alice@corp.example", 200),
            ("DELETE", "alice@corp.example", 204),
            ("DELETE", "-", 404),
        ],
        "one record per change, reads are not audited"
    );
    let group_record = audit.iter().find(|r| r["kind"] == "scim" && r["path"] == "/scim/v2/Groups").unwrap();
    assert_eq!(group_record["team"], "Engineering-EU");
    assert!(!audit.iter().any(|r| r.to_string().contains(TOKEN)), "the token is never written");
}

/// Okta's cycle: look up with paging parameters, create (with the password Okta sends, not kept), replace with
/// PUT, deactivate with a value object, group push with members, membership by `members[value eq "…"]`, rename by
/// a replace without a path, delete; and paging through a larger list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_provisions_users_and_groups() {
    let gateway = start(LOOPBACK_POLICY, "").await;
    let lookup =
        format!("/scim/v2/Users?filter={}&startIndex=1&count=100", encoded("userName eq \"bob@corp.example\""));
    assert_eq!(scim(&gateway, "GET", &lookup, None).await.json()["totalResults"], 0);
    let created = scim(&gateway, "POST", "/scim/v2/Users", Some(&okta_user("bob@corp.example"))).await;
    assert_eq!(created.status, 201, "{created:?}");
    let bob = created.json();
    let id = bob["id"].as_str().unwrap().to_owned();
    assert!(bob.get("password").is_none(), "a password is never kept nor returned: {bob}");

    let mut replaced = okta_user("bob@corp.example");
    replaced["displayName"] = json!("Robert Builder");
    replaced["id"] = json!(id);
    let put = scim(&gateway, "PUT", &format!("/scim/v2/Users/{id}"), Some(&replaced)).await;
    assert_eq!((put.status, put.json()["displayName"].as_str()), (200, Some("Robert Builder")), "{put:?}");
    assert_eq!(put.json()["meta"]["created"], bob["meta"]["created"]);

    let deactivate = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"active": false}}]});
    let patched = scim(&gateway, "PATCH", &format!("/scim/v2/Users/{id}"), Some(&deactivate)).await;
    assert_eq!(patched.json()["active"], false, "{patched:?}");
    let reactivate = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"active": true}}]});
    assert_eq!(
        scim(&gateway, "PATCH", &format!("/scim/v2/Users/{id}"), Some(&reactivate)).await.json()["active"],
        true
    );

    let group = json!({"schemas": [GROUP_SCHEMA], "displayName": "platform", "members": [{"value": id, "display": "bob@corp.example"}]});
    let created = scim(&gateway, "POST", "/scim/v2/Groups", Some(&group)).await;
    assert_eq!(created.status, 201, "{created:?}");
    let group_id = created.json()["id"].as_str().unwrap().to_owned();
    assert_eq!(created.json()["members"][0]["value"], id.as_str());
    let clash = scim(&gateway, "POST", "/scim/v2/Groups", Some(&group)).await;
    assert_scim_error(&clash, 409, Some("uniqueness"));
    let remove = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "remove", "path": format!("members[value eq \"{id}\"]")}]});
    let patched = scim(&gateway, "PATCH", &format!("/scim/v2/Groups/{group_id}"), Some(&remove)).await;
    assert_eq!(patched.json()["members"], json!([]), "{patched:?}");
    let add = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "add", "path": "members", "value": [{"value": id, "display": "bob@corp.example"}]}]});
    let patched = scim(&gateway, "PATCH", &format!("/scim/v2/Groups/{group_id}"), Some(&add)).await;
    assert_eq!(patched.json()["members"][0]["value"], id.as_str());
    let rename = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"id": group_id, "displayName": "platform-eu"}}]});
    let patched = scim(&gateway, "PATCH", &format!("/scim/v2/Groups/{group_id}"), Some(&rename)).await;
    assert_eq!(patched.json()["displayName"], "platform-eu", "{patched:?}");
    let by_name = format!("/scim/v2/Groups?filter={}", encoded("displayName eq \"PLATFORM-EU\""));
    assert_eq!(scim(&gateway, "GET", &by_name, None).await.json()["totalResults"], 1);
    assert_eq!(scim(&gateway, "DELETE", &format!("/scim/v2/Groups/{group_id}"), None).await.status, 204);
    assert_scim_error(&scim(&gateway, "GET", &format!("/scim/v2/Groups/{group_id}"), None).await, 404, None);

    for n in 0..4 {
        let created =
            scim(&gateway, "POST", "/scim/v2/Users", Some(&okta_user(&format!("user{n}@corp.example")))).await;
        assert_eq!(created.status, 201);
    }
    let first = scim(&gateway, "GET", "/scim/v2/Users?startIndex=1&count=2", None).await.json();
    let rest = scim(&gateway, "GET", "/scim/v2/Users?startIndex=3&count=2", None).await.json();
    let last = scim(&gateway, "GET", "/scim/v2/Users?startIndex=5&count=2", None).await.json();
    assert_eq!((first["totalResults"].as_u64(), first["itemsPerPage"].as_u64()), (Some(5), Some(2)));
    assert_eq!((rest["startIndex"].as_u64(), rest["itemsPerPage"].as_u64()), (Some(3), Some(2)));
    assert_eq!(last["itemsPerPage"], 1);
    let mut seen: Vec<String> = [&first, &rest, &last]
        .iter()
        .flat_map(|page| {
            page["Resources"].as_array().unwrap().iter().map(|u| u["userName"].as_str().unwrap().to_owned())
        })
        .collect();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), 5, "the pages hold every user once: {seen:?}");
}

/// The SCIM token guards every SCIM endpoint: none, a wrong one, another scheme or the admin token are 401s in the
/// SCIM error shape, counted and audited; discovery works with it; a bad filter, a body that is not JSON and one
/// past the cap are 400, 400 and 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scim_token_guards_the_endpoints_and_bad_requests_get_scim_errors() {
    let gateway = start(LOOPBACK_POLICY, "").await;
    let user = okta_user("eve@corp.example");
    for auth in [None, Some("Bearer wrong-token"), Some(&*format!("Basic {TOKEN}")), Some("Bearer ")] {
        let refused = scim_as(gateway.admin, "POST", "/scim/v2/Users", Some(&user), auth).await;
        assert_scim_error(&refused, 401, None);
    }
    let refused = scim_as(gateway.admin, "GET", "/scim/v2/ServiceProviderConfig", None, None).await;
    assert_scim_error(&refused, 401, None);
    assert_eq!(scim(&gateway, "GET", "/scim/v2/Users", None).await.json()["totalResults"], 0, "nothing was created");
    assert_eq!(gateway.metric(&scim_metric("users", "create", "unauthorized")).await, 4.0);
    let audit = gateway.audit().await;
    assert_eq!(audit.iter().filter(|r| r["kind"] == "scim" && r["status"] == 401).count(), 5);

    let config = scim(&gateway, "GET", "/scim/v2/ServiceProviderConfig", None).await.json();
    assert_eq!(
        (config["patch"]["supported"].as_bool(), config["filter"]["supported"].as_bool()),
        (Some(true), Some(true))
    );
    assert_eq!(config["authenticationSchemes"][0]["type"], "oauthbearertoken");
    let types = scim(&gateway, "GET", "/scim/v2/ResourceTypes", None).await.json();
    let endpoints: Vec<&str> =
        types["Resources"].as_array().unwrap().iter().map(|t| t["endpoint"].as_str().unwrap()).collect();
    assert_eq!(endpoints, ["/Users", "/Groups"]);
    let schemas = scim(&gateway, "GET", "/scim/v2/Schemas", None).await.json();
    assert_eq!(schemas["Resources"][0]["id"], USER_SCHEMA);
    let one = scim(&gateway, "GET", &format!("/scim/v2/Schemas/{GROUP_SCHEMA}"), None).await.json();
    assert_eq!(one["name"], "Group");

    let bad_filter = format!("/scim/v2/Users?filter={}", encoded("userName sw \"a\""));
    assert_scim_error(&scim(&gateway, "GET", &bad_filter, None).await, 400, Some("invalidFilter"));
    let not_json = format!(
        "POST /scim/v2/Users HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 4\r\nConnection: close\r\n\r\n{{nop"
    );
    assert_scim_error(&exchange(gateway.admin, not_json.as_bytes()).await, 400, Some("invalidSyntax"));
    let no_name = json!({"schemas": [USER_SCHEMA], "active": true});
    assert_scim_error(&scim(&gateway, "POST", "/scim/v2/Users", Some(&no_name)).await, 400, Some("invalidValue"));
    // Refused from its Content-Length, before the body is sent.
    let huge = format!(
        "POST /scim/v2/Users HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        2 * 1024 * 1024
    );
    assert_scim_error(&exchange(gateway.admin, huge.as_bytes()).await, 413, None);
    assert_eq!(gateway.metric(&scim_metric("users", "create", "too_large")).await, 1.0);
    let no_member = json!({"schemas": [GROUP_SCHEMA], "displayName": "g", "members": [{"value": "no-such-user"}]});
    assert_scim_error(&scim(&gateway, "POST", "/scim/v2/Groups", Some(&no_member)).await, 400, Some("invalidValue"));
}

/// A JWT for `user` signed with the test secret, valid for ten minutes.
fn token(user: &str) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let claims = json!({"iss": ISSUER, "aud": "tollgate", "exp": now + 600, "iat": now, "email": user});
    encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("sign")
}

fn bearer(user: &str) -> String {
    format!("Bearer {}", token(user))
}

const JWT_AUTH: &str = "auth:\n  anonymous: deny\n  jwt: {issuer: \"https://idp.test\", audience: tollgate, hs256_secret: \"an-hs256-secret-of-at-least-32-bytes!\", user_claim: email}";

/// `CONNECT target` as `user`: the status, and the open stream when it is 200.
async fn tunnel(proxy: SocketAddr, target: SocketAddr, user: &str) -> (u16, TcpStream) {
    let authorization = format!("Proxy-Authorization: {}", bearer(user));
    let request = connect_request(&target.to_string(), &[&authorization]);
    let (stream, response) = exchange_keep(proxy, request.as_bytes()).await;
    (response.status, stream)
}

/// Waits, at most `CLOSED_WITHIN`, for the peer to close `stream` (EOF or reset); true when it did.
async fn closes<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut sink = Vec::new();
    tokio::time::timeout(CLOSED_WITHIN, stream.read_to_end(&mut sink)).await.is_ok()
}

async fn create_user(gateway: &TestGateway, user_name: &str) -> String {
    let created = scim(gateway, "POST", "/scim/v2/Users", Some(&azure_user(user_name, user_name))).await;
    assert_eq!(created.status, 201, "{created:?}");
    created.json()["id"].as_str().unwrap().to_owned()
}

/// Create → use → deactivate on two replicas sharing a real redis-server: the user, provisioned through replica A,
/// opens a plain tunnel on each replica and an intercepted keep-alive connection on B; deactivated (Azure AD's
/// PATCH) through A, all three close, and a new CONNECT is refused on both, though the token has not expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_closes_tunnels_and_keep_alive_connections_on_every_replica() {
    let redis = RedisServer::start().await;
    let stub = MessagesStub::start().await;
    let origin = Origin::start().await;
    let ca_dir = tempfile::tempdir().unwrap();
    let state = format!("state: {{backend: redis, redis_url: \"{}\", on_error: deny}}\n", redis.url());
    let parts = Parts {
        auth: JWT_AUTH,
        allow: &["127.0.0.1"],
        allow_private: &["127.0.0.0/8"],
        extra: &state,
        ..Parts::default()
    };
    let yaml = intercept::config(&stub, ca_dir.path(), &parts);
    let first = start(&yaml, "").await;
    let second = start(&yaml, "").await;
    let user = "alice@corp.example";
    let id = create_user(&first, user).await;
    let read = scim(&second, "GET", &format!("/scim/v2/Users/{id}"), None).await;
    assert_eq!(read.status, 200, "the other replica reads what the first took a moment ago: {read:?}");

    let (status, mut on_first) = tunnel(first.proxy, origin.address, user).await;
    assert_eq!(status, 200);
    let (status, mut on_second) = tunnel(second.proxy, origin.address, user).await;
    assert_eq!(status, 200);
    let raw = intercept::connect(second.proxy, API_HOST, Some(&bearer(user))).await;
    let config = intercept::trusting(&ca_dir.path().join("ca.pem"), &[b"http/1.1"]);
    let mut keep_alive = intercept::handshake(raw, API_HOST, config).await.expect("TLS inside the tunnel");
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let mut buf = Vec::new();
    let served = intercept::send(&mut keep_alive, &intercept::messages_post(body, &[]), &mut buf).await;
    assert_eq!(served.status, 200, "{served:?}");

    // A plain forward request, its user named only by the Proxy-Authorization header, on a kept-alive connection
    // left idle.
    let origin_address = origin.address;
    let get = format!(
        "GET http://{origin_address}/ HTTP/1.1\r\nHost: {origin_address}\r\nProxy-Authorization: {}\r\n\r\n",
        bearer(user)
    );
    let (mut idle_forward, answered) = exchange_keep(second.proxy, get.as_bytes()).await;
    assert_eq!(answered.status, 200, "{answered:?}");

    let deactivate =
        json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
    assert_eq!(scim(&first, "PATCH", &format!("/scim/v2/Users/{id}"), Some(&deactivate)).await.status, 200);
    assert!(closes(&mut idle_forward).await, "the idle keep-alive connection its header identified closes");
    assert!(closes(&mut on_first).await, "the tunnel on the replica that took the change closes");
    assert!(closes(&mut on_second).await, "the tunnel on the other replica closes");
    assert!(closes(&mut keep_alive).await, "the keep-alive connection inside the intercepted tunnel closes");

    for gateway in [&first, &second] {
        let (status, _) = tunnel(gateway.proxy, origin.address, user).await;
        assert_eq!(status, 407, "a new CONNECT with the unexpired token is refused");
    }
    let records = second.audit().await;
    let cut = records.iter().find(|r| r["kind"] == "connect" && r["user"] == user && r["decision"] == "deny");
    assert!(cut.is_some_and(|r| r["error"].as_str().is_some()), "the cut tunnel's record says why: {records:#?}");
    assert_eq!(first.metric("tollgate_auth_failures_total{method=\"deprovisioned\"}").await, 1.0);
}

/// A deleted user is refused on the other replica too, and, with `require_provisioned`, a valid token of a user
/// never provisioned is refused while a provisioned one passes; a group joins its mapped team (reaching what the
/// team may), and leaving the group closes the tunnel the team allowed. The embedded store keeps it all across a
/// restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_add_teams_and_only_provisioned_users_pass_when_required() {
    let origin = Origin::start().await;
    let state_dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "{JWT_AUTH}\nteams:\n  eu-devs: {{allow: [\"127.0.0.1\"]}}\npolicy:\n  default: deny\n  allow_private: [\"127.0.0.0/8\"]\nstate: {{path: \"{}\"}}\n",
        state_dir.path().display()
    );
    let scim_settings = ", require_provisioned: true, groups: {\"Engineering-EU\": eu-devs}";
    let mut gateway = start(&yaml, scim_settings).await;
    let (status, _) = tunnel(gateway.proxy, origin.address, "carol@corp.example").await;
    assert_eq!(status, 407, "a token of a user never provisioned is refused");
    let id = create_user(&gateway, "carol@corp.example").await;
    let (status, _) = tunnel(gateway.proxy, origin.address, "carol@corp.example").await;
    assert_eq!(status, 403, "provisioned, but in no team that may reach the origin");

    let group = json!({"schemas": [GROUP_SCHEMA], "displayName": "Engineering-EU", "members": [{"value": id}]});
    let created = scim(&gateway, "POST", "/scim/v2/Groups", Some(&group)).await;
    let group_id = created.json()["id"].as_str().unwrap().to_owned();
    let (status, mut open) = tunnel(gateway.proxy, origin.address, "carol@corp.example").await;
    assert_eq!(status, 200, "the group joins team eu-devs");
    let remove = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "remove", "path": format!("members[value eq \"{id}\"]")}]});
    assert_eq!(scim(&gateway, "PATCH", &format!("/scim/v2/Groups/{group_id}"), Some(&remove)).await.status, 200);
    assert!(closes(&mut open).await, "leaving the group closes the tunnel its team allowed");
    let (status, _) = tunnel(gateway.proxy, origin.address, "carol@corp.example").await;
    assert_eq!(status, 403);

    let add =
        json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]});
    assert_eq!(scim(&gateway, "PATCH", &format!("/scim/v2/Groups/{group_id}"), Some(&add)).await.status, 200);
    gateway.shutdown().await;
    let mut gateway = start(&yaml, scim_settings).await;
    let (status, mut open) = tunnel(gateway.proxy, origin.address, "carol@corp.example").await;
    assert_eq!(status, 200, "the provisioned user and group survive a restart");
    assert_eq!(scim(&gateway, "DELETE", &format!("/scim/v2/Users/{id}"), None).await.status, 204);
    assert!(closes(&mut open).await, "deleting the user closes its tunnel");
    let (status, _) = tunnel(gateway.proxy, origin.address, "carol@corp.example").await;
    assert_eq!(status, 407);
    gateway.shutdown().await;
}

/// A client certificate names a provisioned user: its keep-alive connections through the TLS proxy listener and
/// the TLS gateway listener work until Okta deactivates the user, then close; a new connection with the same
/// unexpired certificate is refused. Before provisioning, with `require_provisioned`, the certificate was refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deprovisioned_users_certificate_connection_closes_and_is_refused() {
    let pki = Pki::new();
    let origin = Origin::start().await;
    let stub = MessagesStub::start().await;
    let tls = format!(
        "tls: {{cert: \"{}\", key: \"{}\", client_ca: \"{}\", client_auth: required}}",
        pki.server.pem.display(),
        pki.server.key.display(),
        pki.ca.pem.display()
    );
    let listeners = format!(
        "listeners:\n  - {{name: proxy-tls, bind: \"127.0.0.1:0\", {tls}}}\n  - {{name: gateway, bind: \"127.0.0.1:0\", mode: gateway, {tls}}}\n"
    );
    let yaml = format!(
        "auth: {{anonymous: deny, mtls: {{identity: san_email}}}}\n{LOOPBACK_POLICY}upstreams:\n  stub: {{url: \"{}\"}}\nrouting:\n  - {{when: {{listener: gateway}}, to: stub}}\n",
        stub.url()
    );
    let gateway = start_listening(&listeners, &yaml, ", require_provisioned: true").await;
    let client = pki.client_config(Some(&pki.client_email));
    let url = format!("http://{}/kept", origin.address);
    let request = format!("GET {url} HTTP/1.1\r\nHost: {}\r\n\r\n", origin.address);

    let mut refused = tls::connect(gateway.proxy, "localhost", client.clone()).await.expect("TLS handshake");
    let mut buf = Vec::new();
    let answer = intercept::send(&mut refused, request.as_bytes(), &mut buf).await;
    assert_eq!(answer.status, 407, "not provisioned: {answer:?}");

    let id = create_user(&gateway, pki::EMAIL).await;
    let mut kept = tls::connect(gateway.proxy, "localhost", client.clone()).await.expect("TLS handshake");
    let mut buf = Vec::new();
    let answer = intercept::send(&mut kept, request.as_bytes(), &mut buf).await;
    assert_eq!(answer.status, 200, "provisioned: {answer:?}");
    let gateway_address = gateway.listener("gateway");
    let mut kept_on_gateway = tls::connect(gateway_address, "localhost", client.clone()).await.expect("TLS handshake");
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let call = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: tollgate.test\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut buf = Vec::new();
    let answer = intercept::send(&mut kept_on_gateway, call.as_bytes(), &mut buf).await;
    assert_eq!(answer.status, 200, "provisioned, on the gateway listener: {answer:?}");
    let deactivate = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"active": false}}]});
    assert_eq!(scim(&gateway, "PATCH", &format!("/scim/v2/Users/{id}"), Some(&deactivate)).await.status, 200);
    assert!(closes(&mut kept).await, "the idle keep-alive connection closes");
    assert!(closes(&mut kept_on_gateway).await, "the idle keep-alive connection on the gateway listener closes");

    let mut again = tls::connect(gateway.proxy, "localhost", client).await.expect("TLS handshake");
    let mut buf = Vec::new();
    let answer = intercept::send(&mut again, request.as_bytes(), &mut buf).await;
    assert_eq!(answer.status, 407, "deprovisioned: {answer:?}");
    assert_eq!(gateway.metric("tollgate_auth_failures_total{method=\"deprovisioned\"}").await, 2.0);
}

/// A gateway-listener connection whose user only its `Authorization: Bearer` header names (no certificate), kept
/// alive and idle, closes when that user is deactivated; a new request with the unexpired token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_identified_gateway_connection_closes_on_deactivation() {
    let stub = MessagesStub::start().await;
    let listeners = "listeners:\n  - {name: gateway, bind: \"127.0.0.1:0\", mode: gateway}\n";
    let yaml = format!(
        "{JWT_AUTH}\n{LOOPBACK_POLICY}upstreams:\n  stub: {{url: \"{}\"}}\nrouting:\n  - {{when: {{listener: gateway}}, to: stub}}\n",
        stub.url()
    );
    let gateway = start_listening(listeners, &yaml, "").await;
    let user = "carol@corp.example";
    let id = create_user(&gateway, user).await;
    let body = r#"{"model":"claude-sonnet-4-5","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#;
    let call = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: tollgate.test\r\nAuthorization: {}\r\nanthropic-version: 2023-06-01\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        bearer(user),
        body.len()
    );
    let (mut kept, answer) = exchange_keep(gateway.proxy, call.as_bytes()).await;
    assert_eq!(answer.status, 200, "provisioned: {answer:?}");

    let deactivate = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"active": false}}]});
    assert_eq!(scim(&gateway, "PATCH", &format!("/scim/v2/Users/{id}"), Some(&deactivate)).await.status, 200);
    assert!(closes(&mut kept).await, "the idle keep-alive connection its bearer token identified closes");
    let (_, again) = exchange_keep(gateway.proxy, call.as_bytes()).await;
    assert_eq!(again.status, 401, "deprovisioned: {again:?}");
}
