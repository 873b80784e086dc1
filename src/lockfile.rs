//! One writer per file that must have one: the audit file, each SIEM spool, the embedded state's spend ledger. A
//! lock file held while its writer lives, so that a second tollgate pointed at the same path (a copied config, two
//! replicas on one shared volume) refuses to start instead of interleaving two hash chains, delivering one spool
//! twice or keeping two spend totals for one budget.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Takes the exclusive lock on `path` (created when missing) and writes this process's id into it; the lock holds
/// while the returned file is open. `what` names the guarded file or directory in the error when another process
/// holds the lock.
pub fn hold(path: &Path, what: &str) -> std::io::Result<File> {
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            // A process id, a few digits: more is not ours and not read.
            let mut holder = String::new();
            let _ = (&mut file).take(32).read_to_string(&mut holder);
            let holder = match holder.trim() {
                pid if !pid.is_empty() && pid.bytes().all(|byte| byte.is_ascii_digit()) => format!("process {pid}"),
                _ => "another process".to_owned(),
            };
            return Err(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("{what} is in use by {holder} (it holds {}): one tollgate writes it at a time", path.display()),
            ));
        }
        Err(TryLockError::Error(error)) => return Err(error),
    }
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl.lock");
        let first = hold(&path, "audit.file x").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("{}\n", std::process::id()));
        let error = hold(&path, "audit.file x").unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::WouldBlock);
        let message = error.to_string();
        assert!(message.starts_with(&format!("audit.file x is in use by process {}", std::process::id())), "{message}");
        drop(first);
        hold(&path, "audit.file x").expect("taken once the first is closed");
    }
}
