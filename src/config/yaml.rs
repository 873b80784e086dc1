//! YAML → a tree of nodes that remember where they stood in the file, and a serde deserializer over that tree.
//!
//! Every error that comes out of here carries the key path (`teams.backend.allow[2]`) and the line and column of
//! the offending node, so `tollgate check` can print `FILE:LINE:COL: key.path: what is wrong`. `${NAME}` in a
//! scalar is replaced from the environment here, where the location of a missing variable is still known.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// A position in the config file (both 1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Mark {
    pub line: usize,
    pub col: usize,
}

/// One YAML node and where it started.
#[derive(Debug, Clone)]
pub struct Node {
    pub value: Value,
    pub mark: Mark,
}

/// The shapes a YAML node can take once anchors are resolved.
#[derive(Debug, Clone)]
pub enum Value {
    Null,
    /// `plain` is false for quoted and block scalars: those are always strings.
    Scalar {
        text: String,
        plain: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

/// A config error with its place: the key path and the position of the node it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub path: String,
    pub mark: Mark,
    pub message: String,
    located: bool,
}

impl Error {
    pub fn new(path: impl Into<String>, mark: Mark, message: impl Into<String>) -> Self {
        Self { path: path.into(), mark, message: message.into(), located: true }
    }

    fn locate(mut self, path: &str, mark: Mark) -> Self {
        if !self.located {
            self.path = path.to_owned();
            self.mark = mark;
            self.located = true;
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self { path: String::new(), mark: Mark::default(), message: msg.to_string(), located: false }
    }
}

/// Parses one YAML document. An empty document is an empty map.
pub fn parse(text: &str) -> Result<Node, Error> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| {
        let mark = Mark { line: e.marker().line(), col: e.marker().col() + 1 };
        match builder.innermost_flow(text) {
            // The end of the file inside `[...]` or `{...}`: the bracket was never closed, so point at it.
            Some((open_mark, open)) if text.chars().skip(e.marker().index()).all(char::is_whitespace) => {
                Error::new("", open_mark, format!("invalid YAML: this \"{open}\" is never closed"))
            }
            // Elsewhere inside one: name the bracket too, it is often the one left open.
            Some((open_mark, open)) => Error::new(
                "",
                mark,
                format!("invalid YAML: {} (inside the \"{open}\" at {}:{})", e.info(), open_mark.line, open_mark.col),
            ),
            None => Error::new("", mark, format!("invalid YAML: {}", e.info())),
        }
    })?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    Ok(builder.root.unwrap_or(Node { value: Value::Map(Vec::new()), mark: Mark { line: 1, col: 1 } }))
}

/// Every key path in the tree and where it stands, for errors found after deserialization.
pub fn locations(root: &Node) -> HashMap<String, Mark> {
    fn walk(node: &Node, path: &str, out: &mut HashMap<String, Mark>) {
        out.insert(path.to_owned(), node.mark);
        match &node.value {
            Value::Seq(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), out);
                }
            }
            Value::Map(entries) => {
                for (key, value) in entries {
                    if let Value::Scalar { text, .. } = &key.value {
                        walk(value, &join(path, text), out);
                    }
                }
            }
            Value::Null | Value::Scalar { .. } => {}
        }
    }
    let mut out = HashMap::new();
    walk(root, "", &mut out);
    out
}

/// Deserializes `T` from the tree, expanding `${NAME}` from `env`.
pub fn deserialize<'de, T: de::Deserialize<'de>>(
    root: &Node,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<T, Error> {
    T::deserialize(NodeDeserializer { node: root, path: String::new(), env })
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<(Node, Option<usize>)>,
    pending_keys: Vec<Option<Node>>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<Error>,
}

impl TreeBuilder {
    /// The innermost open collection, when it is a flow one (`[` or `{` at its mark).
    fn innermost_flow(&self, text: &str) -> Option<(Mark, char)> {
        let (node, _) = self.stack.last()?;
        let line = text.lines().nth(node.mark.line.checked_sub(1)?)?;
        let open = line.chars().nth(node.mark.col.checked_sub(1)?)?;
        matches!(open, '[' | '{').then_some((node.mark, open))
    }

    fn push_complete(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        let Some((parent, _)) = self.stack.last_mut() else {
            if self.root.is_none() {
                self.root = Some(node);
            }
            return;
        };
        match &mut parent.value {
            Value::Seq(items) => items.push(node),
            Value::Map(entries) => {
                let slot = self.pending_keys.last_mut().expect("a map on the stack has a key slot");
                match slot.take() {
                    None => {
                        // yaml-rust2 marks a block mapping at its first `:`; the map starts at its first key.
                        if entries.is_empty() && (node.mark.line, node.mark.col) < (parent.mark.line, parent.mark.col) {
                            parent.mark = node.mark;
                        }
                        *slot = Some(node)
                    }
                    Some(key) => entries.push((key, node)),
                }
            }
            Value::Null | Value::Scalar { .. } => unreachable!("only collections are pushed on the stack"),
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        let mark = Mark { line: marker.line(), col: marker.col() + 1 };
        match event {
            Event::Scalar(text, style, anchor, _tag) => {
                let plain = style == TScalarStyle::Plain;
                let value = if plain && matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar { text, plain }
                };
                self.push_complete(Node { value, mark }, anchor);
            }
            Event::SequenceStart(anchor, _) => {
                self.stack.push((Node { value: Value::Seq(Vec::new()), mark }, Some(anchor)));
            }
            Event::MappingStart(anchor, _) => {
                self.stack.push((Node { value: Value::Map(Vec::new()), mark }, Some(anchor)));
                self.pending_keys.push(None);
            }
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some((node, anchor)) = self.stack.pop() {
                    if matches!(node.value, Value::Map(_)) {
                        self.pending_keys.pop();
                    }
                    self.push_complete(node, anchor.unwrap_or(0));
                }
            }
            Event::Alias(id) => match self.anchors.get(&id).cloned() {
                Some(mut node) => {
                    node.mark = mark;
                    self.push_complete(node, 0);
                }
                None => {
                    self.error.get_or_insert(Error::new("", mark, "alias to an unknown anchor"));
                }
            },
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentStart | Event::DocumentEnd => {}
        }
    }
}

struct NodeDeserializer<'a> {
    node: &'a Node,
    path: String,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> NodeDeserializer<'a> {
    fn error(&self, message: impl Into<String>) -> Error {
        Error::new(self.path.clone(), self.node.mark, message)
    }

    /// The scalar's text with `${NAME}` expanded, or an error naming what was found instead.
    fn scalar(&self, expected: &str) -> Result<(String, bool), Error> {
        match &self.node.value {
            Value::Scalar { text, plain } => Ok((expand_env(text, self.env).map_err(|m| self.error(m))?, *plain)),
            other => Err(self.error(format!("expected {expected}, found {}", describe(other)))),
        }
    }

    fn number<T: std::str::FromStr>(&self, kind: &str) -> Result<T, Error> {
        let (text, _) = self.scalar(kind)?;
        text.trim().parse().map_err(|_| self.error(format!("expected {kind}, found \"{text}\"")))
    }

    fn locate<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|e| e.locate(&self.path, self.node.mark))
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Scalar { .. } => "a scalar",
        Value::Seq(_) => "a list",
        Value::Map(_) => "a map",
    }
}

/// Replaces `${NAME}` with the environment variable NAME; a missing variable is an error.
fn expand_env(text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    if !text.contains("${") {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated \"${{\" in \"{text}\""))?;
        let name = &after[..end];
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("invalid environment variable name \"{name}\""));
        }
        let value = env(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Turns serde's "unknown field `alow`, expected one of `default`, `allow`…" into "unknown key `alow` (did you
/// mean `allow`?)", or names the keys when none is close.
fn rephrase_unknown_key(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else { return message.to_owned() };
    let Some((unknown, expected)) = rest.split_once('`') else { return message.to_owned() };
    let known: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    let closest =
        known.iter().map(|k| (edit_distance(unknown, k), *k)).min().filter(|(d, k)| *d <= k.len().max(3) / 3 + 1);
    match closest {
        Some((_, key)) => format!("unknown key `{unknown}` (did you mean `{key}`?)"),
        None if known.is_empty() => format!("unknown key `{unknown}`: no keys are allowed here"),
        None => format!("unknown key `{unknown}`: allowed keys are {}", known.join(", ")),
    }
}

/// Levenshtein distance, for key suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

macro_rules! deserialize_number {
    ($($method:ident => $visit:ident : $ty:ty, $kind:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            let value: $ty = self.number($kind)?;
            self.locate(visitor.$visit(value))
        }
    )*};
}

impl<'de> de::Deserializer<'de> for NodeDeserializer<'_> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let result = match &self.node.value {
            Value::Null => visitor.visit_unit(),
            Value::Scalar { .. } => {
                let (text, plain) = self.scalar("a scalar")?;
                if !plain {
                    visitor.visit_string(text)
                } else if let Ok(b) = text.parse::<bool>() {
                    visitor.visit_bool(b)
                } else if let Ok(n) = text.parse::<u64>() {
                    visitor.visit_u64(n)
                } else if let Ok(n) = text.parse::<i64>() {
                    visitor.visit_i64(n)
                } else if let Ok(n) = text.parse::<f64>() {
                    visitor.visit_f64(n)
                } else {
                    visitor.visit_string(text)
                }
            }
            Value::Seq(items) => {
                visitor.visit_seq(Seq { items: items.iter().enumerate(), path: &self.path, env: self.env })
            }
            Value::Map(entries) => {
                visitor.visit_map(Map { entries: entries.iter(), value: None, path: &self.path, env: self.env })
            }
        };
        self.locate(result)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (text, _) = self.scalar("true or false")?;
        let value =
            text.parse::<bool>().map_err(|_| self.error(format!("expected true or false, found \"{text}\"")))?;
        self.locate(visitor.visit_bool(value))
    }

    deserialize_number! {
        deserialize_u8 => visit_u8: u8, "an integer from 0 to 255";
        deserialize_u16 => visit_u16: u16, "an integer from 0 to 65535";
        deserialize_u32 => visit_u32: u32, "a non-negative integer";
        deserialize_u64 => visit_u64: u64, "a non-negative integer";
        deserialize_i8 => visit_i8: i8, "an integer";
        deserialize_i16 => visit_i16: i16, "an integer";
        deserialize_i32 => visit_i32: i32, "an integer";
        deserialize_i64 => visit_i64: i64, "an integer";
        deserialize_f32 => visit_f32: f32, "a number";
        deserialize_f64 => visit_f64: f64, "a number";
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        let (text, _) = self.scalar("a string")?;
        self.locate(visitor.visit_string(text))
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        if matches!(self.node.value, Value::Null) {
            return self.locate(visitor.visit_none());
        }
        let path = self.path.clone();
        let mark = self.node.mark;
        visitor.visit_some(self).map_err(|e| e.locate(&path, mark))
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Seq(_) => self.deserialize_any(visitor),
            other => Err(self.error(format!("expected a list, found {}", describe(other)))),
        }
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match &self.node.value {
            Value::Map(_) => self.deserialize_any(visitor),
            other => Err(self.error(format!("expected a map, found {}", describe(other)))),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_map(visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        let expected = variants.join(" | ");
        let (text, _) = self.scalar(&expected)?;
        if !variants.contains(&text.as_str()) {
            return Err(self.error(format!("expected one of {expected}, found \"{text}\"")));
        }
        self.locate(visitor.visit_enum(text.as_str().into_deserializer()))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, Error> {
        let path = self.path.clone();
        let mark = self.node.mark;
        visitor.visit_newtype_struct(self).map_err(|e| e.locate(&path, mark))
    }

    serde::forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct tuple tuple_struct identifier ignored_any i128 u128
    }
}

struct Seq<'a, I> {
    items: I,
    path: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'de, 'a, I: Iterator<Item = (usize, &'a Node)>> SeqAccess<'de> for Seq<'a, I> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, Error> {
        let Some((index, node)) = self.items.next() else { return Ok(None) };
        let path = format!("{}[{index}]", self.path);
        let deserializer = NodeDeserializer { node, path: path.clone(), env: self.env };
        seed.deserialize(deserializer).map(Some).map_err(|e| e.locate(&path, node.mark))
    }
}

struct Map<'a, I> {
    entries: I,
    value: Option<(&'a Node, String)>,
    path: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
}

impl<'de, 'a, I: Iterator<Item = &'a (Node, Node)>> MapAccess<'de> for Map<'a, I> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        let name = match &key.value {
            Value::Scalar { text, .. } => text.clone(),
            other => {
                return Err(Error::new(
                    self.path,
                    key.mark,
                    format!("a key must be a scalar, found {}", describe(other)),
                ))
            }
        };
        let path = join(self.path, &name);
        self.value = Some((value, path.clone()));
        seed.deserialize(name.as_str().into_deserializer()).map(Some).map_err(|mut e: Error| {
            e.message = rephrase_unknown_key(&e.message);
            e.locate(&path, key.mark)
        })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        let (node, path) = self.value.take().expect("serde asks for a value only after its key");
        let deserializer = NodeDeserializer { node, path: path.clone(), env: self.env };
        seed.deserialize(deserializer).map_err(|e| e.locate(&path, node.mark))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Outer {
        name: String,
        port: u16,
        #[serde(default)]
        items: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        host: String,
    }

    fn load(text: &str) -> Result<Outer, Error> {
        let env = |name: &str| (name == "HOST").then(|| "example.com".to_owned());
        deserialize(&parse(text)?, &env)
    }

    #[test]
    fn unknown_key_is_located_at_the_key() {
        let error = load("name: a\nport: 1\nitems:\n  - host: x\n    hots: y\n").unwrap_err();
        assert_eq!((error.path.as_str(), error.mark.line, error.mark.col), ("items[0].hots", 5, 5));
        assert_eq!(error.message, "unknown key `hots` (did you mean `host`?)");
    }

    #[test]
    fn bad_number_and_missing_env_are_located() {
        let error = load("name: a\nport: 70000\n").unwrap_err();
        assert_eq!((error.path.as_str(), error.mark.line), ("port", 2));
        let error = load("name: ${NOPE}\nport: 1\n").unwrap_err();
        assert_eq!(error.message, "environment variable NOPE is not set");
        let ok = load("name: \"${HOST}:443\"\nport: 1\nitems: [{host: a}]\n").unwrap();
        assert_eq!((ok.name.as_str(), ok.port, ok.items[0].host.as_str()), ("example.com:443", 1, "a"));
    }

    #[test]
    fn a_block_map_starts_at_its_first_key() {
        let root = parse("outer:\n  inner:\n    port: 1\n").unwrap();
        let marks = locations(&root);
        assert_eq!((marks["outer"].line, marks["outer"].col), (2, 3));
        assert_eq!((marks["outer.inner"].line, marks["outer.inner"].col), (3, 5));
        let root = parse("outer: {a: 1}\n").unwrap();
        assert_eq!(locations(&root)["outer"].col, 8);
    }

    #[test]
    fn an_unclosed_bracket_is_located_at_the_bracket() {
        let error = parse("name: a\nitems: [x, y\n# the end\n").unwrap_err();
        assert_eq!(
            (error.mark.line, error.mark.col, error.message.as_str()),
            (2, 8, "invalid YAML: this \"[\" is never closed")
        );
        let error = parse("items: [x, y\nport: 1\n").unwrap_err();
        assert_eq!(error.mark.line, 2);
        assert!(error.message.ends_with("(inside the \"[\" at 1:8)"), "{}", error.message);
    }

    #[test]
    fn missing_field_names_the_map() {
        let error = load("name: a\n").unwrap_err();
        assert_eq!((error.path.as_str(), error.message.as_str()), ("", "missing field `port`"));
    }
}
