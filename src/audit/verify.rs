//! `tollgate audit verify`: reads audit files line by line and checks their hash chain, within each file and
//! across the files of a rotated series.
//!
//! An edited, removed or reordered record breaks the chain, and the first break is named. A line that is not a
//! complete record (not a JSON object: a torn write, in a file copied before tollgate repaired it, or joined from
//! pieces) is reported by number and skipped: the record after it must chain to the record before it, so skipping
//! a torn line can never hide an edit or a removal. Across files, each file's first record must continue the
//! previous file's last one, and the serials in the rotated names must follow each other: a missing file, or
//! files out of order, are named. With the chain key, keyed records are checked with HMAC-SHA256 (nobody without
//! the key can recompute them); with signed checkpoints, a tail cut from a file is found.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::record::CheckpointRecord;
use super::rotate::{self, SeriesFile};

/// The `prev` of the first record.
pub(super) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `"chain":"hmac-sha256"`, before `prev` in a keyed record.
pub(super) const KEYED_MARK: &[u8] = b",\"chain\":\"hmac-sha256\"";

/// Torn lines listed by number; more are only counted.
const LISTED: usize = 20;

/// A break in the chain: the 1-based line number and what is wrong.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct ChainError {
    pub line: u64,
    pub problem: String,
}

/// Why a file does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("broken at {0}")]
    Broken(ChainError),
    /// The records are keyed (`"chain":"hmac-sha256"`) and no key was given.
    #[error(
        "line {0}: the records are chained with HMAC-SHA256 (audit.file.key): they can only be verified with the \
         key, --key FILE"
    )]
    NeedsKey(u64),
    #[error("{0}")]
    Read(#[from] std::io::Error),
}

/// What a file that verifies holds.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Verified {
    pub records: u64,
    /// Lines that are not a complete record, skipped.
    pub torn_lines: u64,
    /// The numbers of the first of them.
    pub first_torn: Vec<u64>,
    /// Lines read, torn ones included.
    pub lines: u64,
    /// The first record's `prev`, and its line.
    pub first_prev: Option<(u64, String)>,
    /// The last record's hash.
    pub last_hash: Option<String>,
    /// The hash of each line asked for in `Check::lines_wanted` (`None`: the line is torn).
    pub hashes_at: Vec<(u64, Option<String>)>,
}

/// How to check a file.
#[derive(Default)]
pub struct Check<'a> {
    /// The chain key: every record must be keyed, and is checked with it.
    pub key: Option<&'a ring::hmac::Key>,
    /// The first record must start a chain (`prev` of 64 zeros); otherwise it may continue an earlier file.
    pub from_genesis: bool,
    /// Lines whose hashes to keep (sorted), to compare with checkpoints.
    pub lines_wanted: &'a [u64],
}

/// Verifies every record read from `reader` (one file, from its start; its first record starts the chain).
pub fn verify(reader: impl BufRead) -> Result<Verified, VerifyError> {
    verify_with(reader, &Check { from_genesis: true, ..Check::default() })
}

/// Verifies every record read from `reader` as `check` says.
pub fn verify_with(mut reader: impl BufRead, check: &Check<'_>) -> Result<Verified, VerifyError> {
    let mut prev: Option<String> = check.from_genesis.then(|| GENESIS.to_owned());
    let mut verified = Verified::default();
    let mut line = Vec::new();
    let mut number = 0;
    let mut after_torn = false;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(verified);
        }
        number += 1;
        verified.lines = number;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let wanted = check.lines_wanted.binary_search(&number).is_ok();
        match check_line(&line, prev.as_deref(), check.key) {
            Ok((hash, line_prev)) => {
                if verified.first_prev.is_none() {
                    verified.first_prev = Some((number, line_prev));
                }
                if wanted {
                    verified.hashes_at.push((number, Some(hash.clone())));
                }
                prev = Some(hash);
                verified.records += 1;
                after_torn = false;
            }
            Err(Problem::Torn) => {
                if wanted {
                    verified.hashes_at.push((number, None));
                }
                verified.torn_lines += 1;
                if verified.first_torn.len() < LISTED {
                    verified.first_torn.push(number);
                }
                after_torn = true;
            }
            Err(Problem::NeedsKey) => return Err(VerifyError::NeedsKey(number)),
            Err(Problem::Broken(problem)) => {
                let problem = if verified.records == 0 && check.from_genesis && problem == PREV_MISMATCH {
                    "its prev is not the start of a chain (64 zeros): records were removed from the start, or the \
                     file continues a rotated one (verify the whole directory or series)"
                        .to_owned()
                } else if after_torn {
                    format!("{problem}; the line before is torn: it may have been this record's predecessor")
                } else {
                    problem.to_owned()
                };
                return Err(VerifyError::Broken(ChainError { line: number, problem }));
            }
        }
        verified.last_hash.clone_from(&prev);
    }
}

/// Verifies every record of `text` (one file's contents); returns the number of records. Torn lines are skipped.
pub fn verify_chain(text: &str) -> Result<usize, ChainError> {
    match verify(text.as_bytes()) {
        Ok(verified) => Ok(verified.records as usize),
        Err(VerifyError::Broken(error)) => Err(error),
        Err(error) => Err(ChainError { line: 0, problem: error.to_string() }),
    }
}

enum Problem {
    Torn,
    NeedsKey,
    Broken(&'static str),
}

const PREV_MISMATCH: &str = "prev does not match the previous record's hash (a record was removed or reordered)";

/// The line's hash and its `prev` when it is a record chained to `prev` (any `prev` when `None`).
fn check_line(line: &[u8], prev: Option<&str>, key: Option<&ring::hmac::Key>) -> Result<(String, String), Problem> {
    let text = std::str::from_utf8(line).map_err(|_| Problem::Torn)?;
    let Some((hashed, hash)) = split_hash(text) else {
        return match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(_)) => {
                Err(Problem::Broken("no hash (was the file written with chain: true?)"))
            }
            _ => Err(Problem::Torn),
        };
    };
    let Some(at) = hashed.rfind(",\"prev\":\"") else {
        return Err(Problem::Broken("no prev before the hash (the record was edited)"));
    };
    let line_prev = hashed[at + 9..].strip_suffix("\"}").unwrap_or_default();
    let keyed = hashed.as_bytes()[..at].ends_with(KEYED_MARK);
    if prev.is_some_and(|prev| prev != line_prev) {
        return Err(Problem::Broken(PREV_MISMATCH));
    }
    let computed =
        match (keyed, key) {
            (true, None) => return Err(Problem::NeedsKey),
            (false, Some(_)) => return Err(Problem::Broken(
                "the record is not keyed (no \"chain\":\"hmac-sha256\"): it was written without audit.file.key, or \
                 rewritten by someone without the key",
            )),
            (true, Some(key)) => hex::encode(ring::hmac::sign(key, hashed.as_bytes()).as_ref()),
            (false, None) => hex::encode(Sha256::digest(hashed.as_bytes())),
        };
    if computed != hash {
        return Err(Problem::Broken(if keyed {
            "the keyed hash does not match the record (the record was edited, or the key is not the one it was \
             written with)"
        } else {
            "hash does not match the record (the record was edited)"
        }));
    }
    Ok((hash.to_owned(), line_prev.to_owned()))
}

/// Splits a chained line into the hashed part (with its closing brace restored) and the hash.
pub(super) fn split_hash(line: &str) -> Option<(String, &str)> {
    let start = line.rfind(",\"hash\":\"")?;
    let hash = line[start + 9..].strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..start]), hash))
}

/// What `verify_series` found: lines to print, and whether anything is broken.
#[derive(Debug, Default)]
pub struct SeriesReport {
    pub lines: Vec<String>,
    pub broken: bool,
    /// Keyed records were found and no key was given.
    pub needs_key: bool,
    /// Files that could not be read (for stderr).
    pub errors: Vec<String>,
}

impl SeriesReport {
    fn ok(&mut self, line: String) {
        self.lines.push(line);
    }

    fn broken(&mut self, line: String) {
        self.lines.push(line);
        self.broken = true;
    }
}

/// Checkpoints to compare the files with, and the public key of their signatures.
pub struct CheckpointCheck<'a> {
    /// Where they were read from, for the report.
    pub source: &'a Path,
    /// Each with its line number in `source`.
    pub checkpoints: &'a [(u64, CheckpointRecord)],
    pub public_key: &'a [u8],
}

/// Verifies a series of files in order: each file's chain, each file's first record against the previous file's
/// last, the serials of rotated names, and (with `checkpoints`) that each file still holds what this series'
/// checkpoints (those naming its active file) say; their signatures are `verify_signatures`'. `files` is in series order (rotated files by serial, then the active file).
pub fn verify_series(
    files: &[SeriesFile],
    key: Option<&ring::hmac::Key>,
    checkpoints: Option<&CheckpointCheck<'_>>,
) -> SeriesReport {
    let mut report = SeriesReport::default();
    // The serial of each file: from its name, or one after the last rotated file's for the active file.
    let mut serials = Vec::with_capacity(files.len());
    let mut last_serial = None;
    for file in files {
        let serial = file.serial.or_else(|| last_serial.map(|s: u64| s + 1)).or(Some(1).filter(|_| files.len() == 1));
        last_serial = serial.or(last_serial);
        serials.push(serial);
    }
    let active_given = files.last().is_some_and(|file| file.serial.is_none());
    let given_serials: Vec<u64> = serials.iter().flatten().copied().collect();
    // Only this series' checkpoints: they name its active file.
    let series_name = files.first().map(|file| rotate::active_name(&file.path)).unwrap_or_default();
    let ours: Vec<(u64, CheckpointRecord)> = checkpoints
        .map(|check| check.checkpoints.iter().filter(|(_, c)| c.file == series_name).cloned().collect())
        .unwrap_or_default();
    if let Some(check) = checkpoints {
        let (low, high) = (given_serials.first().copied(), given_serials.last().copied());
        let mut skipped = 0;
        for (line, checkpoint) in &ours {
            if given_serials.contains(&checkpoint.serial) {
                continue;
            }
            let after_all = high.is_none_or(|high| checkpoint.serial > high);
            if after_all && active_given {
                report.broken(format!(
                    "{}: line {line}: the checkpoint of {} says file {} (serial {}) held {} lines; no such file is \
                     given after the active one (files were removed, or the active file was replaced)",
                    check.source.display(),
                    checkpoint.ts,
                    checkpoint.file,
                    checkpoint.serial,
                    checkpoint.records
                ));
            } else if low.is_some_and(|low| checkpoint.serial < low) || after_all {
                skipped += 1;
            } else {
                report.broken(format!(
                    "{}: line {line}: the checkpoint of {} names serial {}, which is missing from the series",
                    check.source.display(),
                    checkpoint.ts,
                    checkpoint.serial
                ));
            }
        }
        if skipped > 0 {
            report.ok(format!(
                "{}: {skipped} checkpoints of files not given skipped (before or after the series)",
                check.source.display()
            ));
        }
    }

    let mut previous: Option<(PathBuf, Option<String>)> = None;
    let mut ends: Vec<(PathBuf, Option<String>)> = Vec::new();
    for (index, file) in files.iter().enumerate() {
        let serial = serials[index];
        let wanted: Vec<&(u64, CheckpointRecord)> = ours.iter().filter(|(_, c)| Some(c.serial) == serial).collect();
        let mut lines_wanted: Vec<u64> = wanted.iter().map(|(_, c)| c.records).filter(|&r| r > 0).collect();
        lines_wanted.sort_unstable();
        lines_wanted.dedup();
        // The first file starts the chain unless it is a rotated file after the first (earlier ones may be
        // deleted by retention).
        let from_genesis = index == 0 && file.serial.is_none_or(|serial| serial == 1);
        let check = Check { key, from_genesis, lines_wanted: &lines_wanted };
        let name = file.path.display();
        if let (Some(before), Some(serial)) = (index.checked_sub(1).and_then(|i| files[i].serial), file.serial) {
            if serial != before + 1 {
                let missing = if serial == before + 2 {
                    format!("serial {} is missing", before + 1)
                } else if serial > before {
                    format!("serials {} to {} are missing", before + 1, serial - 1)
                } else {
                    "the serials go backwards".to_owned()
                };
                report.broken(format!(
                    "{name}: a file is missing before it: {missing} (the series goes from {before} to {serial})"
                ));
            }
        }
        let verified = match rotate::open_series_file(&file.path)
            .map_err(VerifyError::Read)
            .and_then(|r| verify_with(r, &check))
        {
            Ok(verified) => verified,
            Err(VerifyError::Broken(error)) => {
                report.broken(format!("{name}: broken at {error}"));
                previous = Some((file.path.clone(), None));
                continue;
            }
            Err(VerifyError::Read(error)) => {
                report.errors.push(format!("{name}: {error}"));
                report.broken = true;
                previous = Some((file.path.clone(), None));
                continue;
            }
            Err(error) => {
                report.needs_key |= matches!(error, VerifyError::NeedsKey(_));
                report.broken(format!("{name}: {error}"));
                previous = Some((file.path.clone(), None));
                continue;
            }
        };
        report.ok(format!("{name}: ok, {} records", verified.records));
        if verified.torn_lines > 0 {
            let numbers: Vec<String> = verified.first_torn.iter().map(u64::to_string).collect();
            let more = if verified.torn_lines > verified.first_torn.len() as u64 { ", …" } else { "" };
            report.ok(format!(
                "{name}: {} torn {} skipped (not a complete record: a write cut short): line {}{more}; the records \
                 around {} chain",
                verified.torn_lines,
                if verified.torn_lines == 1 { "line" } else { "lines" },
                numbers.join(", "),
                if verified.torn_lines == 1 { "it" } else { "them" },
            ));
        }
        // The link from the previous file.
        if let Some((line, first_prev)) = &verified.first_prev {
            match &previous {
                Some((before, Some(last))) if last != first_prev => {
                    let continues = ends.iter().find(|(_, end)| end.as_deref() == Some(first_prev.as_str()));
                    let why = match continues {
                        Some((other, _)) => format!("the files are out of order: it continues {}", other.display()),
                        None if first_prev == GENESIS => "it starts a new chain (prev of 64 zeros)".to_owned(),
                        None => "a file between them is missing, or records were cut from the end of the one \
                                 before"
                            .to_owned(),
                    };
                    report.broken(format!(
                        "{name}: broken at line {line}: its first record does not continue {} (its prev is not that \
                         file's last hash): {why}",
                        before.display()
                    ));
                }
                None if !from_genesis && first_prev != GENESIS => report.ok(format!(
                    "{name}: its first record continues an earlier file, not given (deleted by retention?)"
                )),
                _ => {}
            }
        }
        // What the checkpoints say of this file.
        for (line, checkpoint) in &wanted {
            let source = checkpoints.map(|c| c.source.display().to_string()).unwrap_or_default();
            if checkpoint.records > verified.lines {
                report.broken(format!(
                    "{name}: truncated: the checkpoint of {} ({source} line {line}) says it held {} lines, the last \
                     with hash {}; it has {}",
                    checkpoint.ts, checkpoint.records, checkpoint.last_hash, verified.lines
                ));
            } else if checkpoint.records > 0 {
                let found = verified.hashes_at.iter().find(|(at, _)| *at == checkpoint.records);
                if found.and_then(|(_, hash)| hash.as_deref()) != Some(checkpoint.last_hash.as_str()) {
                    report.broken(format!(
                        "{name}: line {}: its hash is not the one the checkpoint of {} ({source} line {line}) signed: \
                         the file was rewritten",
                        checkpoint.records, checkpoint.ts
                    ));
                }
            }
        }
        ends.push((file.path.clone(), verified.last_hash.clone()));
        previous = Some((file.path.clone(), verified.last_hash));
    }
    report
}

/// Checks the signature of every checkpoint (once, whatever series they name): a checkpoint whose fields were
/// changed, or that was made without the signing key, is named.
pub fn verify_signatures(check: &CheckpointCheck<'_>) -> SeriesReport {
    let mut report = SeriesReport::default();
    for (line, checkpoint) in check.checkpoints {
        if !super::checkpoint::signature_holds(checkpoint, check.public_key) {
            report.broken(format!(
                "{}: line {line}: the checkpoint's signature does not hold (a forged or altered checkpoint, or \
                 another public key)",
                check.source.display()
            ));
        }
    }
    report
}

/// Reads a checkpoint file (the sidecar): each line a `kind: "checkpoint"` record, with its line number.
pub fn read_checkpoints(path: &Path) -> Result<Vec<(u64, CheckpointRecord)>, String> {
    let reader = rotate::open_series_file(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mut checkpoints = Vec::new();
    for (index, line) in reader.lines().enumerate() {
        let line = line.map_err(|error| format!("{}: {error}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<CheckpointRecord>(&line) {
            Ok(checkpoint) if checkpoint.kind == "checkpoint" => checkpoints.push((index as u64 + 1, checkpoint)),
            // A line cut short by a crash, as in the audit file: it never held a whole checkpoint.
            _ if !matches!(serde_json::from_str(&line), Ok(serde_json::Value::Object(_))) => {}
            _ => return Err(format!("{}: line {}: not a checkpoint record", path.display(), index + 1)),
        }
    }
    Ok(checkpoints)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chained records, as the writer makes them.
    fn chained(ids: &[&str]) -> Vec<String> {
        let mut prev = GENESIS.to_owned();
        ids.iter()
            .map(|id| {
                let hashed = format!("{{\"id\":\"{id}\",\"prev\":\"{prev}\"}}");
                let hash = hex::encode(Sha256::digest(hashed.as_bytes()));
                prev = hash.clone();
                format!("{},\"hash\":\"{hash}\"}}", &hashed[..hashed.len() - 1])
            })
            .collect()
    }

    #[test]
    fn a_torn_line_is_named_and_the_records_after_it_still_checked() {
        let lines = chained(&["a", "b", "c", "d"]);
        let text = format!("{}\n{}\n{{\"ts\":\"2026-\n{}\n{}", lines[0], lines[1], lines[2], lines[3]);
        let verified = verify(text.as_bytes()).unwrap();
        assert_eq!((verified.records, verified.torn_lines, verified.first_torn), (4, 1, vec![3]));

        // The records after the torn line are checked: an edit there is found.
        let edited = text.replacen("\"id\":\"d\"", "\"id\":\"x\"", 1);
        match verify(edited.as_bytes()) {
            Err(VerifyError::Broken(error)) => assert_eq!(error.line, 5),
            other => panic!("{other:?}"),
        }
        // A record replaced by garbage is not a torn line that can be skipped: its successor does not chain.
        let replaced = format!("{}\n\0\0\0\n{}\n", lines[0], lines[2]);
        match verify(replaced.as_bytes()) {
            Err(VerifyError::Broken(error)) => {
                assert_eq!(error.line, 3);
                assert!(error.problem.contains("the line before is torn"), "{}", error.problem);
            }
            other => panic!("{other:?}"),
        }
        // Bytes that are not UTF-8 are a torn line too.
        let mut bytes = format!("{}\n", lines[0]).into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        bytes.extend_from_slice(lines[1].as_bytes());
        let verified = verify(&bytes[..]).unwrap();
        assert_eq!((verified.records, verified.torn_lines, verified.first_torn), (2, 1, vec![2]));
    }

    #[test]
    fn a_record_without_a_hash_breaks_the_chain() {
        let lines = chained(&["a"]);
        let text = format!("{}\n{{\"id\":\"b\"}}\n", lines[0]);
        match verify(text.as_bytes()) {
            Err(VerifyError::Broken(error)) => assert!(error.problem.starts_with("no hash"), "{error}"),
            other => panic!("{other:?}"),
        }
    }
}
