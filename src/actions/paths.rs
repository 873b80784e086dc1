//! File paths as `file:*` rules see them: a tool's path is normalised lexically (no file system is read) before
//! any pattern is matched, and the normalised path is what a record shows.
//!
//! The gateway does not know the client's operating system or working directory, so a path may have two readings
//! and no anchor: rules deny when any reading is denied and allow only when every reading is allowed.

use std::fmt;

/// A tool's path, normalised for matching.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NormalPath {
    /// `//` collapsed, `.` and `..` resolved: `/tmp/../etc//passwd` is `/etc/passwd`. Windows paths (`C:\…`,
    /// `\\server\share\…`) are written with `/` and an upper-case drive letter.
    pub path: String,
    /// The Windows reading of a path that is not itself a Windows path, when it differs from `path`: `\` is a
    /// separator there, and trailing dots and spaces and `:stream` suffixes on names are ignored
    /// (`/etc/passwd.` and `/etc/passwd::$DATA` name `/etc/passwd` on Windows).
    pub windows: Option<String>,
    pub anchor: Anchor,
}

/// Where a path starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Anchor {
    /// At a root: `/…`, `C:\…`, `\\server\share\…`.
    Absolute,
    /// At a directory the gateway does not know (the client's working directory, `~`), and below it.
    Relative,
    /// Above its unknown start (`../x`, `~/../../etc`): it can name any file, so it matches every `file:*` deny and
    /// alert rule and no allow rule.
    Escapes,
}

/// Normalises `input` lexically. Symbolic links are not followed (the gateway sees no file system).
pub fn normalise_path(input: &str) -> NormalPath {
    if is_windows_path(input) {
        let (path, anchor) = read(input, Style::Windows);
        return NormalPath { path, windows: None, anchor };
    }
    let (path, posix_anchor) = read(input, Style::Posix);
    if !windows_reading_may_differ(input) {
        return NormalPath { path, windows: None, anchor: posix_anchor };
    }
    let (windows, windows_anchor) = read(input, Style::Windows);
    let anchor = posix_anchor.max(windows_anchor);
    let windows = (windows != path).then_some(windows);
    NormalPath { path, windows, anchor }
}

impl NormalPath {
    /// The readings of the path: `path`, then the Windows one when it differs.
    pub fn readings(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.path.as_str()).chain(self.windows.as_deref())
    }
}

impl fmt::Display for NormalPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.path)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `/` separates; every other character belongs to a name.
    Posix,
    /// `/` and `\` separate; trailing dots and spaces and a `:stream` suffix are not part of a name.
    Windows,
}

/// `C:\…`, `C:/…` or `\\server\…`: a path only a Windows client writes.
fn is_windows_path(input: &str) -> bool {
    let bytes = input.as_bytes();
    let drive =
        bytes.len() >= 3 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' && matches!(bytes[2], b'\\' | b'/');
    drive || input.starts_with("\\\\")
}

/// Only a backslash, a colon, or a name ending in a dot or a space can make the Windows reading differ.
fn windows_reading_may_differ(input: &str) -> bool {
    input.contains(['\\', ':'])
        || input.split('/').any(|name| name.ends_with(['.', ' ']) && name != "." && name != "..")
}

/// One reading of `input`: the normalised path and its anchor.
fn read(input: &str, style: Style) -> (String, Anchor) {
    let separators: &[char] = match style {
        Style::Posix => &['/'],
        Style::Windows => &['/', '\\'],
    };
    let bytes = input.as_bytes();
    // The part `..` cannot remove, and what follows it.
    let (root, rest, mut anchor) = if style == Style::Windows && is_windows_path(input) {
        if bytes[1] == b':' {
            (format!("{}:/", char::from(bytes[0].to_ascii_uppercase())), &input[3..], Anchor::Absolute)
        } else {
            ("//".to_owned(), &input[2..], Anchor::Absolute)
        }
    } else if input.starts_with(separators) {
        ("/".to_owned(), &input[1..], Anchor::Absolute)
    } else if input.starts_with('~') {
        // `~` or `~user`: a home directory the gateway does not know.
        let end = input.find(separators).unwrap_or(input.len());
        (format!("{}/", &input[..end]), &input[end..], Anchor::Relative)
    } else {
        (String::new(), input, Anchor::Relative)
    };
    let mut names: Vec<&str> = Vec::new();
    for name in rest.split(separators) {
        let name = match style {
            Style::Posix => name,
            Style::Windows => windows_name(name),
        };
        match name {
            "" | "." => {}
            ".." => {
                if names.pop().is_none() && anchor == Anchor::Relative {
                    anchor = Anchor::Escapes;
                }
            }
            name => names.push(name),
        }
    }
    let mut path = root;
    path.push_str(&names.join("/"));
    if path.len() > 1 && path.ends_with('/') && !path.ends_with(":/") && path != "//" {
        path.pop();
    }
    if path.is_empty() {
        path.push('.');
    }
    (path, anchor)
}

/// A name as Windows reads it: without a `:stream` suffix and without trailing dots and spaces (`..` stays).
fn windows_name(name: &str) -> &str {
    let name = name.split(':').next().unwrap_or(name);
    if name == "." || name == ".." {
        return name;
    }
    name.trim_end_matches(['.', ' '])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(input: &str) -> (String, Option<String>, Anchor) {
        let normal = normalise_path(input);
        (normal.path, normal.windows, normal.anchor)
    }

    fn plain(text: &str, anchor: Anchor) -> (String, Option<String>, Anchor) {
        (text.to_owned(), None, anchor)
    }

    fn two(posix: &str, windows: &str, anchor: Anchor) -> (String, Option<String>, Anchor) {
        (posix.to_owned(), Some(windows.to_owned()), anchor)
    }

    #[test]
    fn separators_dots_and_parents_are_resolved() {
        use Anchor::*;
        assert_eq!(path("/etc/passwd"), plain("/etc/passwd", Absolute));
        assert_eq!(path("/etc//passwd"), plain("/etc/passwd", Absolute));
        assert_eq!(path("/etc/./passwd"), plain("/etc/passwd", Absolute));
        assert_eq!(path("/tmp/../etc/passwd"), plain("/etc/passwd", Absolute));
        assert_eq!(path("/../../etc/passwd"), plain("/etc/passwd", Absolute));
        assert_eq!(path("//etc/passwd/"), plain("/etc/passwd", Absolute));
        assert_eq!(path("/"), plain("/", Absolute));
        assert_eq!(path("/a/b/.."), plain("/a", Absolute));
    }

    #[test]
    fn windows_readings_drop_trailing_dots_spaces_and_streams() {
        use Anchor::*;
        assert_eq!(path("/etc/passwd."), two("/etc/passwd.", "/etc/passwd", Absolute));
        assert_eq!(path("/etc/passwd "), two("/etc/passwd ", "/etc/passwd", Absolute));
        assert_eq!(path("/etc/passwd. . "), two("/etc/passwd. . ", "/etc/passwd", Absolute));
        assert_eq!(path("/r/.env::$DATA"), two("/r/.env::$DATA", "/r/.env", Absolute));
        assert_eq!(
            path("/repos/x\\..\\..\\etc\\passwd"),
            two("/repos/x\\..\\..\\etc\\passwd", "/etc/passwd", Absolute)
        );
        // A name that only Windows empties is dropped there.
        assert_eq!(path("/a/.../b"), two("/a/.../b", "/a/b", Absolute));
        assert_eq!(path("/a/b.c/d"), plain("/a/b.c/d", Absolute));
    }

    #[test]
    fn windows_paths_have_one_reading() {
        use Anchor::*;
        assert_eq!(path("C:\\Users\\x\\secrets\\a.txt"), plain("C:/Users/x/secrets/a.txt", Absolute));
        assert_eq!(path("c:/Users/x/../y/.env."), plain("C:/Users/y/.env", Absolute));
        assert_eq!(path("C:\\..\\..\\Windows"), plain("C:/Windows", Absolute));
        assert_eq!(path("\\\\server\\share\\a\\..\\b"), plain("//server/share/b", Absolute));
    }

    #[test]
    fn relative_paths_cannot_be_anchored_and_escapes_are_flagged() {
        use Anchor::*;
        assert_eq!(path("src/main.rs"), plain("src/main.rs", Relative));
        assert_eq!(path("./src/../secrets/a"), plain("secrets/a", Relative));
        assert_eq!(path("."), plain(".", Relative));
        assert_eq!(path(""), plain(".", Relative));
        assert_eq!(path("../etc/passwd").2, Escapes);
        assert_eq!(path("a/../../etc/passwd").2, Escapes);
        assert_eq!(path("~/.ssh/id_rsa"), plain("~/.ssh/id_rsa", Relative));
        assert_eq!(path("~root/.ssh/../x"), plain("~root/x", Relative));
        assert_eq!(path("~/../../etc/passwd").2, Escapes);
        // Escaping only in the Windows reading is escaping.
        assert_eq!(path("a\\..\\..\\etc").2, Escapes);
    }
}
