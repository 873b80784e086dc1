//! Agent actions: what a coding assistant does (read or write a file, run a command, call a tool), read from the
//! `tool_use` blocks of model responses and the `tool_result` blocks of the next request. `tools` maps a tool call
//! to an `Action`; `rules` decides an action against the `actions` policy (no I/O), reading paths with `paths` and
//! commands with `shell`; `stream` reads and holds the blocks of a response as it passes; `history` reads a
//! request's replayed calls and their results.

pub mod history;
pub mod paths;
pub mod rules;
pub mod shell;
pub mod stream;
pub mod tools;
