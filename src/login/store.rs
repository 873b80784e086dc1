//! The developer's side of single sign-on, on disk: the user config directory (`$XDG_CONFIG_HOME/tollgate/`, else
//! `~/.config/tollgate/`, mode 0700) with `config.yaml` (settings the developer writes), `credentials.json` (what
//! `tollgate login` stored: the refresh token and the last access token, mode 0600) and the enrolled `cert.pem` and
//! `key.pem` (0600). Files are written whole to a temporary file and renamed, so a reader never sees half of one.

use std::fs::{DirBuilder, OpenOptions, Permissions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::error::LoginError;
use crate::config::yaml;

/// Mode of the config directory.
const DIRECTORY_MODE: u32 = 0o700;
/// Mode of every file written in it.
const FILE_MODE: u32 = 0o600;

/// The user config directory.
#[derive(Debug, Clone)]
pub struct ConfigDirectory {
    path: PathBuf,
}

/// `config.yaml`: defaults for `tollgate login`, written by the developer (or an installer).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSettings {
    /// The identity provider's issuer URL.
    pub issuer: Option<String>,
    /// The public client ID to sign in with.
    pub client_id: Option<String>,
    /// The scopes to ask for (default `openid profile email offline_access`).
    pub scope: Option<String>,
    /// CA certificate files to trust besides the system roots (the IdP's and the proxy's).
    #[serde(default)]
    pub ca: Vec<String>,
    /// The TLS proxy listener that enrolls certificates (`https://tollgate.corp:3129`).
    pub proxy: Option<String>,
}

/// `credentials.json`: what a sign-in stored, and where to refresh it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credentials {
    pub issuer: String,
    pub client_id: String,
    pub token_endpoint: String,
    pub scope: String,
    /// CA files the HTTP client trusts besides the system roots.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// The enrolling proxy, once `login --cert` used one.
    #[serde(default)]
    pub proxy: Option<String>,
    /// `None` when the IdP issued none (then `tollgate token` needs a new sign-in once the access token expires).
    pub refresh_token: Option<String>,
    pub access_token: String,
    /// When the access token expires, in seconds since 1970.
    pub expires_at: u64,
    /// Its lifetime when it was issued, in seconds (the refresh margin is half of it, at most 5 minutes).
    pub lifetime: u64,
}

impl Credentials {
    /// Seconds until the access token expires (0 when it has).
    pub fn remaining(&self, now: SystemTime) -> u64 {
        self.expires_at.saturating_sub(seconds(now))
    }
}

/// Seconds since 1970.
pub fn seconds(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl ConfigDirectory {
    /// `$XDG_CONFIG_HOME/tollgate` (an absolute path), else `$HOME/.config/tollgate`.
    pub fn locate() -> Result<ConfigDirectory, LoginError> {
        let base = match std::env::var_os("XDG_CONFIG_HOME").map(PathBuf::from).filter(|p| p.is_absolute()) {
            Some(base) => base,
            None => {
                let home = std::env::var_os("HOME").filter(|home| !home.is_empty()).ok_or_else(|| {
                    LoginError::Usage("neither XDG_CONFIG_HOME nor HOME is set: no place for the credentials".into())
                })?;
                PathBuf::from(home).join(".config")
            }
        };
        Ok(ConfigDirectory { path: base.join("tollgate") })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `credentials.json`.
    pub fn credentials_path(&self) -> PathBuf {
        self.path.join("credentials.json")
    }

    /// `cert.pem` and `key.pem`.
    pub fn certificate_paths(&self) -> (PathBuf, PathBuf) {
        (self.path.join("cert.pem"), self.path.join("key.pem"))
    }

    /// `config.yaml`, or the defaults when there is none.
    pub fn settings(&self) -> Result<UserSettings, LoginError> {
        let path = self.path.join("config.yaml");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(UserSettings::default()),
            Err(error) => return Err(LoginError::Usage(format!("{}: {error}", path.display()))),
        };
        let located = |error: yaml::Error| {
            LoginError::Usage(format!("{}:{}:{}: {}", path.display(), error.mark.line, error.mark.col, error.message))
        };
        let root = yaml::parse(&text).map_err(located)?;
        yaml::deserialize(&root, &|name| std::env::var(name).ok()).map_err(located)
    }

    /// The stored credentials; `None` before the first sign-in.
    pub fn credentials(&self) -> Result<Option<Credentials>, LoginError> {
        let path = self.credentials_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|error| LoginError::LoginNeeded(format!("{} is unreadable ({error})", path.display()))),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(LoginError::Usage(format!("{}: {error}", path.display()))),
        }
    }

    /// Stores `credentials` (0600).
    pub fn save(&self, credentials: &Credentials) -> Result<(), LoginError> {
        let json = serde_json::to_vec_pretty(credentials).map_err(|e| LoginError::Usage(e.to_string()))?;
        self.write(&self.credentials_path(), &json)
    }

    /// Writes `contents` to `path` in the directory (created 0700 when missing, tightened to 0700 when looser):
    /// a temporary file made 0600, then renamed over `path`.
    pub fn write(&self, path: &Path, contents: &[u8]) -> Result<(), LoginError> {
        let failed = |path: &Path, error: std::io::Error| LoginError::Usage(format!("{}: {error}", path.display()));
        DirBuilder::new().recursive(true).mode(DIRECTORY_MODE).create(&self.path).map_err(|e| failed(&self.path, e))?;
        let mode = std::fs::metadata(&self.path).map_err(|e| failed(&self.path, e))?.permissions().mode();
        if mode & 0o077 != 0 {
            std::fs::set_permissions(&self.path, Permissions::from_mode(DIRECTORY_MODE))
                .map_err(|e| failed(&self.path, e))?;
        }
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
        let temporary = self.path.join(format!(".{name}.{}.tmp", std::process::id()));
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(FILE_MODE)
            .open(&temporary)
            .and_then(|mut file| {
                // A file left by an earlier crash keeps its mode: set it again.
                file.set_permissions(Permissions::from_mode(FILE_MODE))?;
                file.write_all(contents)?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(error) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(failed(path, error));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_private_and_a_loose_directory_is_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let store = ConfigDirectory { path: dir.path().join("tollgate") };
        std::fs::create_dir(store.path()).unwrap();
        std::fs::set_permissions(store.path(), Permissions::from_mode(0o755)).unwrap();
        store.write(&store.credentials_path(), b"{}").unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.path()), 0o700);
        assert_eq!(mode(&store.credentials_path()), 0o600);
        assert_eq!(std::fs::read(store.credentials_path()).unwrap(), b"{}");
        assert_eq!(std::fs::read_dir(store.path()).unwrap().count(), 1, "no temporary file is left");
    }
}
