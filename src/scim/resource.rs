//! SCIM resources as tollgate keeps them (RFC 7643): the users and groups of one provisioned directory, read from
//! and written as SCIM JSON, changed by PATCH operations (RFC 7644 §3.5.2) in the dialects Azure AD and Okta send,
//! and found by the `eq` filters identity providers use. No I/O: `store` keeps the `Directory`, `http` serves it.
//!
//! Attribute names are matched case-insensitively, as RFC 7643 §2.1 asks; attributes tollgate does not keep
//! (titles, addresses, the enterprise extension) are accepted and ignored, so a provider's full mapping works.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The core schema URNs.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";

/// Deleted user names remembered (so their tokens and certificates stay refused) before the oldest are forgotten.
pub const MAX_TOMBSTONES: usize = 100_000;

/// Every provisioned user and group: the document the state backend stores.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Directory {
    /// Users by id.
    pub users: BTreeMap<String, User>,
    /// Groups by id.
    pub groups: BTreeMap<String, Group>,
    /// Lower-cased user names of deleted users, with when (ms since the epoch): still refused.
    #[serde(default)]
    pub deleted: BTreeMap<String, u64>,
}

/// A provisioned user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: String,
    pub user_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    pub active: bool,
    /// The `name` complex attribute, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<Value>,
    /// The `emails` attribute, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emails: Option<Value>,
    pub created: String,
    pub modified: String,
}

/// A provisioned group: its members are user ids.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: String,
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_id: Option<String>,
    pub members: Vec<String>,
    pub created: String,
    pub modified: String,
}

/// Why a SCIM request cannot be done: the HTTP status, the RFC 7644 §3.12 `scimType` (if any) and a detail.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct ScimError {
    pub status: u16,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimError {
    pub fn bad(scim_type: &'static str, detail: impl Into<String>) -> Self {
        Self { status: 400, scim_type: Some(scim_type), detail: detail.into() }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self { status: 404, scim_type: None, detail: detail.into() }
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self { status: 409, scim_type: Some("uniqueness"), detail: detail.into() }
    }

    /// The error body (`urn:ietf:params:scim:api:messages:2.0:Error`).
    pub fn body(&self) -> Value {
        let mut body = json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status": self.status.to_string(),
            "detail": self.detail,
        });
        if let Some(scim_type) = self.scim_type {
            body["scimType"] = json!(scim_type);
        }
        body
    }
}

/// A fresh resource id (random, 128 bits, UUID-shaped).
pub fn new_id() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex = hex::encode(bytes);
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The value of attribute `name` in `object`, matched case-insensitively.
fn attribute<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    object.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value)
}

/// A JSON object, or a 400 naming what was expected.
fn object<'a>(value: &'a Value, what: &str) -> Result<&'a Map<String, Value>, ScimError> {
    value.as_object().ok_or_else(|| ScimError::bad("invalidSyntax", format!("{what} must be a JSON object")))
}

/// A string attribute (absent or null is `None`).
fn text(value: Option<&Value>, name: &str) -> Result<Option<String>, ScimError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(ScimError::bad("invalidValue", format!("{name} must be a string"))),
    }
}

/// A boolean attribute: JSON `true`/`false`, or the strings `"True"`/`"False"` Azure AD sends (any case).
fn boolean(value: &Value, name: &str) -> Result<bool, ScimError> {
    match value {
        Value::Bool(flag) => Ok(*flag),
        Value::String(text) if text.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(text) if text.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(ScimError::bad("invalidValue", format!("{name} must be true or false"))),
    }
}

impl User {
    /// A user from a POST or PUT body; `id` and the times are the caller's.
    pub fn from_json(body: &Value, id: String, created: String, now: String) -> Result<User, ScimError> {
        let body = object(body, "a user")?;
        let user_name = text(attribute(body, "userName"), "userName")?
            .filter(|name| !name.trim().is_empty())
            .ok_or_else(|| ScimError::bad("invalidValue", "userName is required"))?;
        check_user_name(&user_name)?;
        let active = match attribute(body, "active") {
            None | Some(Value::Null) => true,
            Some(value) => boolean(value, "active")?,
        };
        Ok(User {
            id,
            user_name,
            external_id: text(attribute(body, "externalId"), "externalId")?,
            display_name: text(attribute(body, "displayName"), "displayName")?,
            active,
            name: attribute(body, "name").filter(|v| v.is_object()).cloned(),
            emails: attribute(body, "emails").filter(|v| v.is_array()).cloned(),
            created,
            modified: now,
        })
    }

    /// The SCIM representation, with the groups the user is in.
    pub fn to_json(&self, directory: &Directory) -> Value {
        let groups: Vec<Value> = directory
            .groups
            .values()
            .filter(|group| group.members.contains(&self.id))
            .map(|group| json!({"value": group.id, "display": group.display_name, "$ref": format!("/scim/v2/Groups/{}", group.id)}))
            .collect();
        let mut body = json!({
            "schemas": [USER_SCHEMA],
            "id": self.id,
            "userName": self.user_name,
            "active": self.active,
            "groups": groups,
            "meta": meta("User", &self.id, &self.created, &self.modified),
        });
        for (key, value) in [
            ("externalId", self.external_id.clone().map(Value::String)),
            ("displayName", self.display_name.clone().map(Value::String)),
            ("name", self.name.clone()),
            ("emails", self.emails.clone()),
        ] {
            if let Some(value) = value {
                body[key] = value;
            }
        }
        body
    }

    /// Applies one PATCH operation (`op` already lower-cased): a path names the attribute; without one, the value is
    /// an object of attributes (Okta's `{"op":"replace","value":{"active":false}}`).
    fn patch(&mut self, op: &str, path: Option<&str>, value: Option<&Value>) -> Result<(), ScimError> {
        let Some(path) = path else {
            if op == "remove" {
                return Err(ScimError::bad("noTarget", "a remove operation needs a path"));
            }
            let value = value.ok_or_else(|| ScimError::bad("invalidValue", "the operation has no value"))?;
            for (name, value) in object(value, "a value without a path")? {
                self.set(name, Some(value))?;
            }
            return Ok(());
        };
        match op {
            "remove" => self.set(path, None),
            _ => {
                self.set(path, Some(value.ok_or_else(|| ScimError::bad("invalidValue", "the operation has no value"))?))
            }
        }
    }

    /// Sets (or with `None`, removes) the attribute at `path`.
    fn set(&mut self, path: &str, value: Option<&Value>) -> Result<(), ScimError> {
        let path = path.strip_prefix(USER_SCHEMA).map(|rest| rest.trim_start_matches(':')).unwrap_or(path);
        let lower = path.to_ascii_lowercase();
        match (lower.as_str(), value) {
            ("active", Some(value)) => self.active = boolean(value, "active")?,
            ("active", None) => self.active = false,
            ("username", Some(value)) => {
                let name = text(Some(value), "userName")?.unwrap_or_default();
                if name.trim().is_empty() {
                    return Err(ScimError::bad("invalidValue", "userName cannot be empty"));
                }
                check_user_name(&name)?;
                self.user_name = name;
            }
            ("username", None) => return Err(ScimError::bad("mutability", "userName is required")),
            ("externalid", value) => self.external_id = text(value, "externalId")?,
            ("displayname", value) => self.display_name = text(value, "displayName")?,
            ("name", value) => self.name = value.filter(|v| v.is_object()).cloned(),
            ("emails", value) => self.emails = value.filter(|v| v.is_array()).cloned(),
            (sub, value) if sub.starts_with("name.") => {
                let field = &path["name.".len()..];
                let mut name = self.name.take().and_then(|n| n.as_object().cloned()).unwrap_or_default();
                name.retain(|key, _| !key.eq_ignore_ascii_case(field));
                if let Some(value) = value {
                    name.insert(field.to_owned(), value.clone());
                }
                self.name = (!name.is_empty()).then_some(Value::Object(name));
            }
            ("id" | "meta", _) => return Err(ScimError::bad("mutability", format!("{path} cannot be changed"))),
            // Attributes tollgate does not keep (emails[type eq "work"].value, title, the enterprise extension…).
            _ => {}
        }
        Ok(())
    }
}

/// A user name must be usable as a principal name: no control characters, no ':' (Basic credentials).
fn check_user_name(name: &str) -> Result<(), ScimError> {
    if name.len() > 256 || name.chars().any(|c| c.is_control() || c == ':') {
        return Err(ScimError::bad(
            "invalidValue",
            "userName must be at most 256 characters, without ':' or control characters",
        ));
    }
    Ok(())
}

impl Group {
    /// A group from a POST or PUT body; members must name provisioned users.
    pub fn from_json(
        body: &Value,
        directory: &Directory,
        id: String,
        created: String,
        now: String,
    ) -> Result<Group, ScimError> {
        let body = object(body, "a group")?;
        let display_name = text(attribute(body, "displayName"), "displayName")?
            .filter(|name| !name.trim().is_empty())
            .ok_or_else(|| ScimError::bad("invalidValue", "displayName is required"))?;
        let mut group = Group {
            id,
            display_name,
            external_id: text(attribute(body, "externalId"), "externalId")?,
            members: Vec::new(),
            created,
            modified: now,
        };
        if let Some(members) = attribute(body, "members").filter(|m| !m.is_null()) {
            group.add_members(members, directory)?;
        }
        Ok(group)
    }

    /// The SCIM representation; without `members` when asked to leave them out (`excludedAttributes=members`).
    pub fn to_json(&self, directory: &Directory, with_members: bool) -> Value {
        let mut body = json!({
            "schemas": [GROUP_SCHEMA],
            "id": self.id,
            "displayName": self.display_name,
            "meta": meta("Group", &self.id, &self.created, &self.modified),
        });
        if let Some(external_id) = &self.external_id {
            body["externalId"] = json!(external_id);
        }
        if with_members {
            let members: Vec<Value> = self
                .members
                .iter()
                .map(|id| {
                    let display = directory.users.get(id).map(|user| user.user_name.as_str()).unwrap_or_default();
                    json!({"value": id, "display": display, "$ref": format!("/scim/v2/Users/{id}")})
                })
                .collect();
            body["members"] = Value::Array(members);
        }
        body
    }

    /// Adds the members of a `[{"value": ID}, …]` array (ids already in are kept once).
    fn add_members(&mut self, members: &Value, directory: &Directory) -> Result<(), ScimError> {
        for id in member_ids(members)? {
            if !directory.users.contains_key(&id) {
                return Err(ScimError::bad("invalidValue", format!("member {id:?} is not a provisioned user")));
            }
            if !self.members.contains(&id) {
                self.members.push(id);
            }
        }
        Ok(())
    }

    /// Applies one PATCH operation (`op` lower-cased) in the shapes Azure AD and Okta send: `add`/`replace` of
    /// `members` with a value array, `remove` of `members[value eq "ID"]` or of `members` with a value array (Azure
    /// AD) or without (all), `replace` of `displayName`, and a value object without a path.
    fn patch(
        &mut self,
        op: &str,
        path: Option<&str>,
        value: Option<&Value>,
        directory: &Directory,
    ) -> Result<(), ScimError> {
        let Some(path) = path else {
            if op == "remove" {
                return Err(ScimError::bad("noTarget", "a remove operation needs a path"));
            }
            let value = value.ok_or_else(|| ScimError::bad("invalidValue", "the operation has no value"))?;
            for (name, value) in object(value, "a value without a path")? {
                self.patch(op, Some(name), Some(value), directory)?;
            }
            return Ok(());
        };
        let path = path.strip_prefix(GROUP_SCHEMA).map(|rest| rest.trim_start_matches(':')).unwrap_or(path);
        if let Some(id) = member_filter(path)? {
            return match op {
                "remove" => {
                    self.members.retain(|member| *member != id);
                    Ok(())
                }
                _ => Err(ScimError::bad("invalidPath", "only remove takes a members[value eq …] path")),
            };
        }
        let needs_value = || value.ok_or_else(|| ScimError::bad("invalidValue", "the operation has no value"));
        match (path.to_ascii_lowercase().as_str(), op) {
            ("members", "add") => self.add_members(needs_value()?, directory),
            ("members", "replace") => {
                self.members.clear();
                self.add_members(needs_value()?, directory)
            }
            ("members", "remove") => {
                match value.filter(|v| !v.is_null()) {
                    Some(members) => {
                        let gone = member_ids(members)?;
                        self.members.retain(|member| !gone.contains(member));
                    }
                    None => self.members.clear(),
                }
                Ok(())
            }
            ("displayname", "remove") => Err(ScimError::bad("mutability", "displayName is required")),
            ("displayname", _) => {
                let name = text(Some(needs_value()?), "displayName")?.unwrap_or_default();
                if name.trim().is_empty() {
                    return Err(ScimError::bad("invalidValue", "displayName cannot be empty"));
                }
                self.display_name = name;
                Ok(())
            }
            ("externalid", "remove") => {
                self.external_id = None;
                Ok(())
            }
            ("externalid", _) => {
                self.external_id = text(Some(needs_value()?), "externalId")?;
                Ok(())
            }
            // Okta repeats the id in a replace without a path: it cannot change, so an equal one is fine.
            ("id", _) if value.and_then(Value::as_str) == Some(self.id.as_str()) => Ok(()),
            ("id" | "meta", _) => Err(ScimError::bad("mutability", format!("{path} cannot be changed"))),
            _ => Err(ScimError::bad(
                "invalidPath",
                format!("groups keep displayName, externalId and members, not {path}"),
            )),
        }
    }
}

/// The ids of a `[{"value": ID}, …]` members array (one object alone is taken as a one-element array).
fn member_ids(members: &Value) -> Result<Vec<String>, ScimError> {
    let list = match members {
        Value::Array(list) => list.as_slice(),
        single @ Value::Object(_) => std::slice::from_ref(single),
        _ => return Err(ScimError::bad("invalidValue", "members must be an array of {\"value\": ID}")),
    };
    list.iter()
        .map(|member| {
            member
                .as_object()
                .and_then(|m| attribute(m, "value"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ScimError::bad("invalidValue", "each member needs a \"value\" naming a user id"))
        })
        .collect()
}

/// The id of a `members[value eq "ID"]` path; `None` for other paths.
fn member_filter(path: &str) -> Result<Option<String>, ScimError> {
    let Some(open) = path.find('[') else { return Ok(None) };
    if !path[..open].eq_ignore_ascii_case("members") {
        return Ok(None);
    }
    let inner = path[open + 1..]
        .strip_suffix(']')
        .ok_or_else(|| ScimError::bad("invalidPath", format!("unclosed filter in {path:?}")))?;
    match parse_filter(inner)? {
        Filter { attribute, value } if attribute.eq_ignore_ascii_case("value") => Ok(Some(value)),
        _ => Err(ScimError::bad("invalidFilter", format!("members are removed by value eq \"ID\", not {inner:?}"))),
    }
}

/// One `ATTRIBUTE eq "VALUE"` filter (RFC 7644 §3.4.2.2), the form identity providers send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub attribute: String,
    pub value: String,
}

/// Parses `ATTRIBUTE eq "VALUE"` (the operator in any case; the value a JSON string).
pub fn parse_filter(text: &str) -> Result<Filter, ScimError> {
    let unsupported =
        || ScimError::bad("invalidFilter", format!("only ATTRIBUTE eq \"VALUE\" filters are supported, not {text:?}"));
    let text = text.trim();
    let (attribute, rest) = text.split_once(char::is_whitespace).ok_or_else(unsupported)?;
    let (operator, value) = rest.trim_start().split_once(char::is_whitespace).ok_or_else(unsupported)?;
    if !operator.eq_ignore_ascii_case("eq") {
        return Err(unsupported());
    }
    let value: String = serde_json::from_str(value.trim()).map_err(|_| unsupported())?;
    Ok(Filter { attribute: attribute.to_owned(), value })
}

impl Filter {
    /// Whether `user` matches: `userName` and `displayName` compare case-insensitively (RFC 7643 caseExact false),
    /// `externalId` and `id` exactly.
    pub fn matches_user(&self, user: &User) -> Result<bool, ScimError> {
        let attribute =
            self.attribute.strip_prefix(USER_SCHEMA).map(|a| a.trim_start_matches(':')).unwrap_or(&self.attribute);
        Ok(match attribute.to_ascii_lowercase().as_str() {
            "username" => user.user_name.eq_ignore_ascii_case(&self.value),
            "displayname" => user.display_name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(&self.value)),
            "externalid" => user.external_id.as_deref() == Some(self.value.as_str()),
            "id" => user.id == self.value,
            _ => {
                return Err(ScimError::bad(
                    "invalidFilter",
                    format!("users are filtered by userName, displayName, externalId or id, not {}", self.attribute),
                ))
            }
        })
    }

    /// Whether `group` matches: `displayName` case-insensitively, `externalId` and `id` exactly.
    pub fn matches_group(&self, group: &Group) -> Result<bool, ScimError> {
        let attribute =
            self.attribute.strip_prefix(GROUP_SCHEMA).map(|a| a.trim_start_matches(':')).unwrap_or(&self.attribute);
        Ok(match attribute.to_ascii_lowercase().as_str() {
            "displayname" => group.display_name.eq_ignore_ascii_case(&self.value),
            "externalid" => group.external_id.as_deref() == Some(self.value.as_str()),
            "id" => group.id == self.value,
            _ => {
                return Err(ScimError::bad(
                    "invalidFilter",
                    format!("groups are filtered by displayName, externalId or id, not {}", self.attribute),
                ))
            }
        })
    }
}

/// One PATCH operation: `op` lower-cased (Azure AD sends `Replace`), its path and value.
pub type Operation = (String, Option<String>, Option<Value>);

/// The `Operations` of a PatchOp body.
pub fn patch_operations(body: &Value) -> Result<Vec<Operation>, ScimError> {
    let body = object(body, "a PATCH body")?;
    let operations = attribute(body, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::bad("invalidSyntax", "a PATCH body needs an Operations array"))?;
    operations
        .iter()
        .map(|operation| {
            let operation = object(operation, "an operation")?;
            let op = text(attribute(operation, "op"), "op")?.unwrap_or_default().to_ascii_lowercase();
            if !matches!(op.as_str(), "add" | "replace" | "remove") {
                return Err(ScimError::bad("invalidSyntax", format!("op must be add, replace or remove, not {op:?}")));
            }
            let path = text(attribute(operation, "path"), "path")?.filter(|p| !p.is_empty());
            Ok((op, path, attribute(operation, "value").cloned()))
        })
        .collect()
}

impl Directory {
    /// Applies PATCH operations to user `id`; all or none.
    pub fn patch_user(&mut self, id: &str, body: &Value, now: String) -> Result<User, ScimError> {
        let operations = patch_operations(body)?;
        let mut user = self.users.get(id).cloned().ok_or_else(|| ScimError::not_found(format!("no user {id}")))?;
        for (op, path, value) in &operations {
            user.patch(op, path.as_deref(), value.as_ref())?;
        }
        user.modified = now;
        self.put_user(user.clone())?;
        Ok(user)
    }

    /// Applies PATCH operations to group `id`; all or none.
    pub fn patch_group(&mut self, id: &str, body: &Value, now: String) -> Result<Group, ScimError> {
        let operations = patch_operations(body)?;
        let mut group = self.groups.get(id).cloned().ok_or_else(|| ScimError::not_found(format!("no group {id}")))?;
        for (op, path, value) in &operations {
            group.patch(op, path.as_deref(), value.as_ref(), self)?;
        }
        group.modified = now;
        self.put_group(group.clone())?;
        Ok(group)
    }

    /// Stores `user` (new or replacing its id), refusing a user name another user has (409 uniqueness). A user
    /// name given again is no longer a deleted one.
    pub fn put_user(&mut self, user: User) -> Result<(), ScimError> {
        // Lower-cased as the identity checks look names up, so two users never share one standing.
        let name = user.user_name.to_lowercase();
        if self.users.values().any(|other| other.id != user.id && other.user_name.to_lowercase() == name) {
            return Err(ScimError::conflict(format!("userName {:?} is already provisioned", user.user_name)));
        }
        self.deleted.remove(&name);
        if let Some(old) = self.users.get(&user.id).filter(|old| old.user_name.to_lowercase() != name) {
            // A renamed user: what the old name holds (tokens, certificates) is refused from now on.
            let old_name = old.user_name.to_lowercase();
            self.tombstone(old_name, 0);
        }
        self.users.insert(user.id.clone(), user);
        Ok(())
    }

    /// Stores `group`, refusing a display name another group has (409 uniqueness).
    pub fn put_group(&mut self, group: Group) -> Result<(), ScimError> {
        if self
            .groups
            .values()
            .any(|other| other.id != group.id && other.display_name.eq_ignore_ascii_case(&group.display_name))
        {
            return Err(ScimError::conflict(format!("displayName {:?} is already provisioned", group.display_name)));
        }
        self.groups.insert(group.id.clone(), group);
        Ok(())
    }

    /// Deletes user `id`: out of every group, and its name remembered as deleted at `now_ms`.
    pub fn delete_user(&mut self, id: &str, now_ms: u64) -> Result<User, ScimError> {
        let user = self.users.remove(id).ok_or_else(|| ScimError::not_found(format!("no user {id}")))?;
        for group in self.groups.values_mut() {
            group.members.retain(|member| member != id);
        }
        self.tombstone(user.user_name.to_lowercase(), now_ms);
        Ok(user)
    }

    /// Deletes group `id`.
    pub fn delete_group(&mut self, id: &str) -> Result<Group, ScimError> {
        self.groups.remove(id).ok_or_else(|| ScimError::not_found(format!("no group {id}")))
    }

    /// Remembers a deleted user name, forgetting the oldest past `MAX_TOMBSTONES`.
    fn tombstone(&mut self, name: String, now_ms: u64) {
        self.deleted.insert(name, now_ms);
        while self.deleted.len() > MAX_TOMBSTONES {
            let Some(oldest) = self.deleted.iter().min_by_key(|(_, at)| **at).map(|(name, _)| name.clone()) else {
                break;
            };
            self.deleted.remove(&oldest);
        }
    }

    /// Each user's standing, by lower-cased user name: active or not, and the display names of its groups.
    pub fn standings(&self) -> HashMap<String, (bool, Vec<String>)> {
        let mut groups_of: HashMap<&str, Vec<String>> = HashMap::new();
        for group in self.groups.values() {
            for member in &group.members {
                groups_of.entry(member.as_str()).or_default().push(group.display_name.clone());
            }
        }
        let mut standings: HashMap<String, (bool, Vec<String>)> =
            self.deleted.keys().map(|name| (name.clone(), (false, Vec::new()))).collect();
        for user in self.users.values() {
            let groups = groups_of.remove(user.id.as_str()).unwrap_or_default();
            standings.insert(user.user_name.to_lowercase(), (user.active, groups));
        }
        standings
    }
}

/// The `meta` attribute of a resource.
fn meta(resource_type: &str, id: &str, created: &str, modified: &str) -> Value {
    let location = match resource_type {
        "User" => format!("/scim/v2/Users/{id}"),
        _ => format!("/scim/v2/Groups/{id}"),
    };
    json!({"resourceType": resource_type, "created": created, "lastModified": modified, "location": location})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(directory: &mut Directory, name: &str) -> String {
        let id = new_id();
        let body = json!({"schemas": [USER_SCHEMA], "userName": name, "active": true});
        directory.put_user(User::from_json(&body, id.clone(), "t".into(), "t".into()).unwrap()).unwrap();
        id
    }

    #[test]
    fn azure_and_okta_deactivations_both_apply() {
        let mut directory = Directory::default();
        let id = user(&mut directory, "alice@corp.example");
        let azure =
            json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]});
        assert!(!directory.patch_user(&id, &azure, "t".into()).unwrap().active);
        let okta = json!({"schemas": [PATCH_SCHEMA], "Operations": [{"op": "replace", "value": {"active": true}}]});
        assert!(directory.patch_user(&id, &okta, "t".into()).unwrap().active);
        let bad = json!({"Operations": [{"op": "replace", "path": "active", "value": "maybe"}]});
        assert_eq!(directory.patch_user(&id, &bad, "t".into()).unwrap_err().scim_type, Some("invalidValue"));
        assert!(directory.users[&id].active, "a failed PATCH changes nothing");
    }

    #[test]
    fn group_membership_is_added_and_removed_as_providers_send_it() {
        let mut directory = Directory::default();
        let (alice, bob) = (user(&mut directory, "alice"), user(&mut directory, "bob"));
        let body = json!({"schemas": [GROUP_SCHEMA], "displayName": "Engineering", "members": [{"value": alice}]});
        let group = Group::from_json(&body, &directory, new_id(), "t".into(), "t".into()).unwrap();
        let gid = group.id.clone();
        directory.put_group(group).unwrap();
        let add = json!({"Operations": [{"op": "Add", "path": "members", "value": [{"value": bob}]}]});
        assert_eq!(directory.patch_group(&gid, &add, "t".into()).unwrap().members, [alice.clone(), bob.clone()]);
        let okta_remove = json!({"Operations": [{"op": "remove", "path": format!("members[value eq \"{alice}\"]")}]});
        assert_eq!(directory.patch_group(&gid, &okta_remove, "t".into()).unwrap().members, std::slice::from_ref(&bob));
        let azure_remove = json!({"Operations": [{"op": "Remove", "path": "members", "value": [{"value": bob}]}]});
        assert!(directory.patch_group(&gid, &azure_remove, "t".into()).unwrap().members.is_empty());
        let unknown = json!({"Operations": [{"op": "add", "path": "members", "value": [{"value": "nobody"}]}]});
        assert_eq!(directory.patch_group(&gid, &unknown, "t".into()).unwrap_err().status, 400);
        let rename = json!({"Operations": [{"op": "replace", "value": {"id": gid, "displayName": "Eng-EU"}}]});
        assert_eq!(directory.patch_group(&gid, &rename, "t".into()).unwrap().display_name, "Eng-EU");
    }

    #[test]
    fn user_names_are_unique_and_deleted_names_stay_refused() {
        let mut directory = Directory::default();
        let id = user(&mut directory, "Alice@corp.example");
        let again = json!({"userName": "alice@CORP.example"});
        let clash = User::from_json(&again, new_id(), "t".into(), "t".into()).unwrap();
        assert_eq!(directory.put_user(clash).unwrap_err().status, 409);
        directory.delete_user(&id, 5).unwrap();
        assert_eq!(directory.standings()["alice@corp.example"], (false, vec![]));
        user(&mut directory, "alice@corp.example");
        assert_eq!(directory.standings()["alice@corp.example"], (true, vec![]));
    }

    #[test]
    fn filters_read_the_eq_form_only() {
        assert_eq!(
            parse_filter("userName eq \"a\\\"b@corp\"").unwrap(),
            Filter { attribute: "userName".into(), value: "a\"b@corp".into() }
        );
        assert_eq!(parse_filter("displayName EQ \"Eng\"").unwrap().value, "Eng");
        for bad in ["userName sw \"a\"", "userName eq a", "", "userName", "userName eq \"a\" and x eq \"b\""] {
            assert_eq!(parse_filter(bad).unwrap_err().scim_type, Some("invalidFilter"), "{bad}");
        }
        assert_eq!(member_filter("members[value eq \"42\"]").unwrap(), Some("42".to_owned()));
        assert_eq!(member_filter("members").unwrap(), None);
    }
}
