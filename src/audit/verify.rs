//! `tollgate audit verify`: reads an audit file line by line and checks its hash chain.
//!
//! An edited, removed or reordered record breaks the chain, and the first break is named. A line that is not a
//! complete record (not a JSON object: a torn write, in a file copied before tollgate repaired it, or joined from
//! pieces) is reported by number and skipped: the record after it must chain to the record before it, so skipping
//! a torn line can never hide an edit or a removal.

use std::io::BufRead;

use sha2::{Digest, Sha256};

/// The `prev` of the first record.
pub(super) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

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
}

/// Verifies every record read from `reader` (one file, from its start).
pub fn verify(mut reader: impl BufRead) -> Result<Verified, VerifyError> {
    let mut prev = GENESIS.to_owned();
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
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        match check(&line, &prev) {
            Ok(hash) => {
                prev = hash;
                verified.records += 1;
                after_torn = false;
            }
            Err(Problem::Torn) => {
                verified.torn_lines += 1;
                if verified.first_torn.len() < LISTED {
                    verified.first_torn.push(number);
                }
                after_torn = true;
            }
            Err(Problem::Broken(problem)) => {
                let problem = if after_torn {
                    format!("{problem}; the line before is torn: it may have been this record's predecessor")
                } else {
                    problem.to_owned()
                };
                return Err(VerifyError::Broken(ChainError { line: number, problem }));
            }
        }
    }
}

/// Verifies every record of `text` (one file's contents); returns the number of records. Torn lines are skipped.
pub fn verify_chain(text: &str) -> Result<usize, ChainError> {
    match verify(text.as_bytes()) {
        Ok(verified) => Ok(verified.records as usize),
        Err(VerifyError::Broken(error)) => Err(error),
        Err(VerifyError::Read(error)) => unreachable!("reading from memory cannot fail: {error}"),
    }
}

enum Problem {
    Torn,
    Broken(&'static str),
}

/// The line's hash when it is a record chained to `prev`.
fn check(line: &[u8], prev: &str) -> Result<String, Problem> {
    let text = std::str::from_utf8(line).map_err(|_| Problem::Torn)?;
    let Some((hashed, hash)) = split_hash(text) else {
        return match serde_json::from_str::<serde_json::Value>(text) {
            Ok(serde_json::Value::Object(_)) => {
                Err(Problem::Broken("no hash (was the file written with chain: true?)"))
            }
            _ => Err(Problem::Torn),
        };
    };
    if !hashed.ends_with(&format!(",\"prev\":\"{prev}\"}}")) {
        return Err(Problem::Broken(
            "prev does not match the previous record's hash (a record was removed or reordered)",
        ));
    }
    if hex::encode(Sha256::digest(hashed.as_bytes())) != hash {
        return Err(Problem::Broken("hash does not match the record (the record was edited)"));
    }
    Ok(hash.to_owned())
}

/// Splits a chained line into the hashed part (with its closing brace restored) and the hash.
pub(super) fn split_hash(line: &str) -> Option<(String, &str)> {
    let start = line.rfind(",\"hash\":\"")?;
    let hash = line[start + 9..].strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..start]), hash))
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
        assert_eq!(verified, Verified { records: 4, torn_lines: 1, first_torn: vec![3] });

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
        assert_eq!(verify(&bytes[..]).unwrap(), Verified { records: 2, torn_lines: 1, first_torn: vec![2] });
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
