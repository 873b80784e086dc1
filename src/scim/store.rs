//! Where the provisioned directory lives: beside the limits in the state backend. Embedded: one JSON file,
//! `state.path/scim.json`, replaced atomically (written aside, synced, renamed). Redis: two keys the replicas
//! share, `tollgate:scim:version` (a counter) and `tollgate:scim:directory` (the JSON document), changed only
//! together by one script that first checks the version the change was made on, so two replicas writing at once
//! cannot lose a change: the later one reads again and retries.
//!
//! Each replica polls the version (one `GET`, every `POLL`) and reads the document only when it moved.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use redis::Script;

use super::resource::Directory;
use crate::limits::redis::key;
use crate::limits::{Backend, StateError};

/// The Redis keys (under `tollgate:`).
const VERSION_KEY: &str = "scim:version";
const DIRECTORY_KEY: &str = "scim:directory";

/// Stores a new document only when the version is still the one it was made from; answers the new version, or
/// -1 when another writer came first.
const COMMIT_LUA: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current ~= tonumber(ARGV[1]) then return -1 end
redis.call('SET', KEYS[2], ARGV[2])
return redis.call('INCR', KEYS[1])
";

static COMMIT: LazyLock<Script> = LazyLock::new(|| Script::new(COMMIT_LUA));

/// The provisioned directory's store.
#[derive(Debug)]
pub enum Store {
    /// A file under `state.path` (one process).
    File { path: PathBuf },
    /// The Redis server the limits are kept in (replicas share it).
    Redis(Arc<dyn Backend>),
}

/// A document and the version it was read at.
#[derive(Debug, Clone, Default)]
pub struct Versioned {
    pub version: u64,
    pub directory: Directory,
}

impl Store {
    /// The store beside `backend`: Redis when the backend shares a server, else `state_path/scim.json`.
    pub fn beside(backend: &Arc<dyn Backend>, state_path: &Path) -> Store {
        if backend.shared_server().is_some() {
            Store::Redis(backend.clone())
        } else {
            Store::File { path: state_path.join("scim.json") }
        }
    }

    /// Whether other processes may change the store (so it is polled).
    pub fn is_shared(&self) -> bool {
        matches!(self, Store::Redis(_))
    }

    /// The current version only (cheap: what the replicas poll). A file is changed by this process alone: its
    /// version is the one kept in memory, so this answers `None`.
    pub async fn version(&self) -> Result<Option<u64>, StateError> {
        match self {
            Store::File { .. } => Ok(None),
            Store::Redis(backend) => {
                let server = backend.shared_server().expect("Store::Redis is made for a shared server");
                let mut pipeline = redis::pipe();
                pipeline.cmd("GET").arg(key(VERSION_KEY));
                let (version,): (Option<u64>,) = decode(server.pipeline(&pipeline).await?)?;
                Ok(Some(version.unwrap_or(0)))
            }
        }
    }

    /// The document and its version.
    pub async fn read(&self) -> Result<Versioned, StateError> {
        match self {
            Store::File { path } => {
                let path = path.clone();
                tokio::task::spawn_blocking(move || read_file(&path))
                    .await
                    .map_err(|error| StateError(format!("reading the SCIM directory failed: {error}")))?
            }
            Store::Redis(backend) => {
                let server = backend.shared_server().expect("Store::Redis is made for a shared server");
                let mut pipeline = redis::pipe();
                pipeline.cmd("MGET").arg(key(VERSION_KEY)).arg(key(DIRECTORY_KEY));
                let ((version, text),): ((Option<u64>, Option<String>),) = decode(server.pipeline(&pipeline).await?)?;
                let directory = match text {
                    Some(text) => serde_json::from_str(&text)
                        .map_err(|error| StateError(format!("the SCIM directory in redis is not valid: {error}")))?,
                    None => Directory::default(),
                };
                Ok(Versioned { version: version.unwrap_or(0), directory })
            }
        }
    }

    /// Stores `directory` as the successor of `version`: its new version, or `None` when another writer changed the
    /// store since (read again and retry). The caller holds the process's write lock, so a file has one writer.
    pub async fn commit(&self, version: u64, directory: &Directory) -> Result<Option<u64>, StateError> {
        let text = serde_json::to_string(directory).expect("the directory serializes");
        match self {
            Store::File { path } => {
                let path = path.clone();
                let document = format!("{{\"version\":{},\"directory\":{text}}}", version + 1);
                tokio::task::spawn_blocking(move || write_file(&path, document.as_bytes()))
                    .await
                    .map_err(|error| StateError(format!("writing the SCIM directory failed: {error}")))??;
                Ok(Some(version + 1))
            }
            Store::Redis(backend) => {
                let server = backend.shared_server().expect("Store::Redis is made for a shared server");
                let keys = [key(VERSION_KEY), key(DIRECTORY_KEY)];
                let args = [version.to_string(), text];
                let answer: i64 = decode(server.eval(&COMMIT, &keys, &args).await?)?;
                Ok(u64::try_from(answer).ok())
            }
        }
    }
}

/// The file's document (`{"version": N, "directory": {…}}`); a missing file is the empty directory.
fn read_file(path: &Path) -> Result<Versioned, StateError> {
    #[derive(serde::Deserialize)]
    struct Document {
        version: u64,
        directory: Directory,
    }
    match std::fs::read(path) {
        Ok(bytes) => {
            let document: Document = serde_json::from_slice(&bytes)
                .map_err(|error| StateError(format!("{}: not a SCIM directory: {error}", path.display())))?;
            Ok(Versioned { version: document.version, directory: document.directory })
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Versioned::default()),
        Err(error) => Err(StateError(format!("{}: {error}", path.display()))),
    }
}

/// Replaces the file atomically: a crash leaves the old document or the new one, never half of one.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    use std::io::Write;
    let error = |error: std::io::Error| StateError(format!("{}: {error}", path.display()));
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    let temp = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temp).map_err(error)?;
    file.write_all(bytes).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&temp, path).map_err(error)
}

/// A Redis answer read as `T`.
fn decode<T: redis::FromRedisValue>(value: redis::Value) -> Result<T, StateError> {
    redis::from_redis_value(value).map_err(|error| StateError(format!("redis answered a SCIM read oddly: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_file_store_keeps_its_document_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::File { path: dir.path().join("state").join("scim.json") };
        assert_eq!(store.read().await.unwrap().version, 0);
        let mut directory = Directory::default();
        directory.deleted.insert("gone@corp".into(), 7);
        assert_eq!(store.commit(0, &directory).await.unwrap(), Some(1));
        let read = store.read().await.unwrap();
        assert_eq!((read.version, read.directory), (1, directory));
        std::fs::write(dir.path().join("state").join("scim.json"), b"{broken").unwrap();
        assert!(store.read().await.unwrap_err().0.contains("scim.json"));
    }
}
