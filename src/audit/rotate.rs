//! Rotated audit files: their names, the series they form, their compression and their retention.
//!
//! The active file is `audit.file.path` (`audit.jsonl`). Rotation renames it to
//! `audit-000042-20261205T101500Z.jsonl` (the file's serial number, then the UTC time it was closed) and opens a
//! new active file; a helper thread then compresses the renamed file to `….jsonl.gz` (written as `….jsonl.gz.tmp`,
//! synced, renamed, and only then the plain file removed), so a crash at any point leaves either the plain file or
//! a complete `.gz`, never only a partial one. On start, plain rotated files left behind are compressed again.
//! The serial orders the series; the active file is the one after the highest.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use prometheus::IntCounter;

/// The suffix of a compressed rotated file.
const GZ: &str = ".gz";
/// The suffix of a compression in progress.
const PARTIAL: &str = ".gz.tmp";

/// The name parts of an audit file: `audit.jsonl` is stem `audit`, extension `.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Naming {
    dir: PathBuf,
    stem: String,
    extension: String,
}

/// One file of the series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesFile {
    pub path: PathBuf,
    /// `None` for the active file.
    pub serial: Option<u64>,
    /// When it was rotated (from its name); `None` for the active file.
    pub rotated_at: Option<SystemTime>,
    pub compressed: bool,
}

impl Naming {
    /// The naming of rotated files next to the active file at `path`.
    pub fn new(path: &Path) -> Self {
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
        let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let (stem, extension) = match name.rfind('.') {
            Some(at) if at > 0 => (name[..at].to_owned(), name[at..].to_owned()),
            _ => (name, String::new()),
        };
        Self { dir, stem, extension }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The active file's name.
    pub fn active(&self) -> PathBuf {
        self.dir.join(format!("{}{}", self.stem, self.extension))
    }

    /// `STEM-SERIAL-TIME.EXT`: the plain name of the file rotated with `serial` at `at`.
    pub fn rotated(&self, serial: u64, at: SystemTime) -> PathBuf {
        self.dir.join(format!("{}-{serial:06}-{}{}", self.stem, compact_time(at), self.extension))
    }

    /// The checkpoint sidecar: `STEM.checkpoints.jsonl`.
    pub fn checkpoints(&self) -> PathBuf {
        self.dir.join(format!("{}.checkpoints.jsonl", self.stem))
    }

    /// The serial, time and compression of a rotated file's name; `None` for any other name.
    pub fn parse(&self, name: &str) -> Option<(u64, SystemTime, bool)> {
        let rest = name.strip_prefix(&self.stem)?.strip_prefix('-')?;
        let (rest, compressed) = match rest.strip_suffix(GZ) {
            Some(rest) => (rest, true),
            None => (rest, false),
        };
        let rest = rest.strip_suffix(&self.extension)?;
        let (serial, time) = rest.split_once('-')?;
        if serial.len() < 6 || !serial.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((serial.parse().ok()?, parse_compact_time(time)?, compressed))
    }

    /// The series in the directory: rotated files by serial (a serial found both plain and compressed is listed
    /// once, compressed when the `.gz` is complete), then the active file when it exists.
    pub fn series(&self) -> std::io::Result<Vec<SeriesFile>> {
        let mut files: Vec<SeriesFile> = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some((serial, at, compressed)) = self.parse(name) {
                files.push(SeriesFile { path: entry.path(), serial: Some(serial), rotated_at: Some(at), compressed });
            }
        }
        // A compressed copy is complete (it is renamed into place only once written); its plain original is then
        // a leftover about to be removed.
        files.sort_by_key(|file| (file.serial, !file.compressed));
        files.dedup_by_key(|file| file.serial);
        let active = self.active();
        if active.exists() {
            files.push(SeriesFile { path: active, serial: None, rotated_at: None, compressed: false });
        }
        Ok(files)
    }

    /// The highest serial of a rotated file (0 when none).
    pub fn last_serial(&self) -> std::io::Result<u64> {
        Ok(self.series()?.iter().filter_map(|file| file.serial).max().unwrap_or(0))
    }
}

/// The naming and serial of a rotated file's path (`DIR/STEM-SERIAL-TIME.EXT[.gz]`), whatever its stem.
fn rotated_naming(path: &Path) -> Option<(Naming, u64)> {
    let name = path.file_name()?.to_str()?;
    if name.ends_with(PARTIAL) {
        return None;
    }
    let plain = name.strip_suffix(GZ).unwrap_or(name);
    let (left, right) = plain.rsplit_once('-')?;
    let (stem, _) = left.rsplit_once('-')?;
    let extension = right.get(16..)?;
    if !(extension.is_empty() || extension.starts_with('.')) {
        return None;
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_owned();
    let naming = Naming { dir, stem: stem.to_owned(), extension: extension.to_owned() };
    let (serial, _, _) = naming.parse(name)?;
    Some((naming, serial))
}

/// The series named by `paths`, each in order: a directory holds every series in it (each active `*.jsonl` file
/// with its rotated files, and rotated files whose active file is gone); files are grouped by their series, rotated
/// ones by serial and the active one last. A file that is neither rotated nor the active file of a rotated file
/// given with it is a series of its own.
pub fn series_of(paths: &[PathBuf]) -> std::io::Result<Vec<Vec<SeriesFile>>> {
    let mut all: Vec<Vec<SeriesFile>> = Vec::new();
    let mut loose: Vec<(Naming, SeriesFile)> = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut namings: Vec<Naming> = Vec::new();
            for entry in std::fs::read_dir(path)? {
                let entry_path = entry?.path();
                let name = entry_path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                if name.ends_with(PARTIAL) {
                    // A compression cut short: its plain original is still there.
                    continue;
                }
                let naming = match rotated_naming(&entry_path) {
                    Some((naming, _)) => naming,
                    None if name.ends_with(".jsonl") && !name.ends_with(".checkpoints.jsonl") => {
                        Naming::new(&entry_path)
                    }
                    None => continue,
                };
                if !namings.contains(&naming) {
                    namings.push(naming);
                }
            }
            namings.sort_by_key(Naming::active);
            for naming in namings {
                all.push(naming.series()?);
            }
            continue;
        }
        let (naming, file) = match rotated_naming(path) {
            Some((naming, serial)) => {
                let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
                let (_, at, compressed) = naming.parse(&name).expect("parsed above");
                (naming, SeriesFile { path: path.clone(), serial: Some(serial), rotated_at: Some(at), compressed })
            }
            None => (
                Naming::new(path),
                SeriesFile { path: path.clone(), serial: None, rotated_at: None, compressed: false },
            ),
        };
        loose.push((naming, file));
    }
    // Given files: grouped by series; an active file joins the rotated files of its own series.
    let mut groups: Vec<(Naming, Vec<SeriesFile>)> = Vec::new();
    for (naming, file) in loose {
        let rotated_in_group = |group: &Vec<SeriesFile>| group.iter().any(|f| f.serial.is_some());
        match groups.iter_mut().find(|(n, group)| *n == naming && (file.serial.is_some() || rotated_in_group(group))) {
            Some((_, group)) => group.push(file),
            None => groups.push((naming, vec![file])),
        }
    }
    for (_, mut group) in groups {
        group.sort_by_key(|file| (file.serial.is_none(), file.serial));
        all.push(group);
    }
    Ok(all)
}

/// The name of the active file of the series `path` belongs to: `audit.jsonl` for `audit-000042-….jsonl.gz` and
/// for `audit.jsonl` itself.
pub fn active_name(path: &Path) -> String {
    match rotated_naming(path) {
        Some((naming, _)) => format!("{}{}", naming.stem, naming.extension),
        None => path.file_name().unwrap_or_default().to_string_lossy().into_owned(),
    }
}

/// The serial of a rotated file's path; `None` for any other file.
pub fn rotated_serial(path: &Path) -> Option<u64> {
    rotated_naming(path).map(|(_, serial)| serial)
}

/// `20261205T101500Z`.
fn compact_time(at: SystemTime) -> String {
    let rfc3339 = humantime::format_rfc3339_seconds(at).to_string();
    rfc3339.replace(['-', ':'], "")
}

fn parse_compact_time(text: &str) -> Option<SystemTime> {
    let bytes = text.as_bytes();
    if bytes.len() != 16 || bytes[8] != b'T' || bytes[15] != b'Z' {
        return None;
    }
    let rfc3339 = format!(
        "{}-{}-{}T{}:{}:{}Z",
        &text[0..4],
        &text[4..6],
        &text[6..8],
        &text[9..11],
        &text[11..13],
        &text[13..15]
    );
    humantime::parse_rfc3339(&rfc3339).ok()
}

/// The UTC day (days since 1970-01-01) of `at`.
pub fn utc_day(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs() / 86_400
}

/// The first instant of the UTC day after `at`.
pub fn next_midnight(at: SystemTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs((utc_day(at) + 1) * 86_400)
}

/// Opens a file of the series for reading, decompressing a `.gz`.
pub fn open_series_file(path: &Path) -> std::io::Result<Box<dyn BufRead + Send>> {
    let file = File::open(path)?;
    if path.to_string_lossy().ends_with(GZ) {
        let decoder = flate2::read::MultiGzDecoder::new(BufReader::with_capacity(256 * 1024, file));
        Ok(Box::new(BufReader::with_capacity(256 * 1024, decoder)))
    } else {
        Ok(Box::new(BufReader::with_capacity(256 * 1024, file)))
    }
}

/// Compresses `plain` to `plain.gz`: written to `plain.gz.tmp`, synced, renamed, the directory synced, then `plain`
/// removed. Returns the compressed file's path.
pub fn compress(plain: &Path) -> std::io::Result<PathBuf> {
    let name = plain.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let partial = plain.with_file_name(format!("{name}{PARTIAL}"));
    let done = plain.with_file_name(format!("{name}{GZ}"));
    let modified = std::fs::metadata(plain)?.modified().ok();
    {
        let mut source = File::open(plain)?;
        let target = File::create(&partial)?;
        let mut encoder =
            flate2::write::GzEncoder::new(std::io::BufWriter::new(target), flate2::Compression::default());
        std::io::copy(&mut source, &mut encoder)?;
        let target = encoder.finish()?.into_inner().map_err(std::io::IntoInnerError::into_error)?;
        if let Some(modified) = modified {
            target.set_modified(modified)?;
        }
        target.sync_all()?;
    }
    std::fs::rename(&partial, &done)?;
    sync_dir(plain.parent().unwrap_or(Path::new(".")))?;
    std::fs::remove_file(plain)?;
    Ok(done)
}

/// Syncs a directory, so that a rename or a new file in it survives a crash.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    File::open(dir)?.sync_all()
}

/// What the helper thread is told to do.
pub(super) enum Job {
    /// Compress this rotated file, then apply retention.
    Compress(PathBuf),
}

/// The helper thread: compresses rotated files off the writer thread, and deletes those past retention.
pub(super) struct Compressor {
    naming: Naming,
    retention: Option<Duration>,
    deleted: IntCounter,
    now: fn() -> SystemTime,
}

impl Compressor {
    pub(super) fn new(naming: Naming, retention: Option<Duration>, deleted: IntCounter) -> Self {
        Self { naming, retention, deleted, now: SystemTime::now }
    }

    /// Starts the thread; it first finishes what a crash interrupted (partial `.gz.tmp` files are removed and their
    /// plain originals compressed again) and applies retention, then serves jobs until the sender is dropped.
    pub(super) fn start(self) -> std::io::Result<mpsc::Sender<Job>> {
        let (sender, jobs) = mpsc::channel();
        std::thread::Builder::new().name("tollgate-audit-compress".to_owned()).spawn(move || {
            self.recover();
            self.apply_retention();
            for job in jobs {
                match job {
                    Job::Compress(path) => {
                        self.compress_logged(&path);
                        self.apply_retention();
                    }
                }
            }
        })?;
        Ok(sender)
    }

    /// Removes partial compressions and compresses every plain rotated file (or removes it when its `.gz` is
    /// complete: the crash came between the rename and the removal).
    pub(super) fn recover(&self) {
        let entries = match std::fs::read_dir(self.naming.dir()) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::error!(%error, dir = %self.naming.dir().display(), "cannot list the audit directory");
                return;
            }
        };
        let mut plain = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(original) = name.strip_suffix(PARTIAL) {
                if self.naming.parse(original).is_some_and(|(_, _, compressed)| !compressed) {
                    if let Err(error) = std::fs::remove_file(entry.path()) {
                        tracing::error!(%error, file = %entry.path().display(), "cannot remove a partial compression");
                    }
                }
            } else if self.naming.parse(&name).is_some_and(|(_, _, compressed)| !compressed) {
                plain.push(entry.path());
            }
        }
        plain.sort();
        for path in plain {
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            let done = path.with_file_name(format!("{name}{GZ}"));
            if done.exists() {
                match std::fs::remove_file(&path) {
                    Ok(()) => tracing::info!(file = %path.display(), "removed a rotated audit file already compressed"),
                    Err(error) => {
                        tracing::error!(%error, file = %path.display(), "cannot remove a compressed original")
                    }
                }
            } else {
                self.compress_logged(&path);
            }
        }
    }

    fn compress_logged(&self, path: &Path) {
        match compress(path) {
            Ok(done) => tracing::info!(file = %done.display(), "rotated audit file compressed"),
            Err(error) => tracing::error!(
                %error,
                file = %path.display(),
                "cannot compress a rotated audit file: it stays uncompressed and is tried again at the next start"
            ),
        }
    }

    /// Deletes the rotated files rotated longer ago than the retention, except the newest (which holds the
    /// chain's link into the active file and the last serial); never the active file.
    pub(super) fn apply_retention(&self) {
        let Some(retention) = self.retention else { return };
        let series = match self.naming.series() {
            Ok(series) => series,
            Err(error) => {
                tracing::error!(%error, dir = %self.naming.dir().display(), "cannot list the audit directory");
                return;
            }
        };
        let newest = series.iter().filter_map(|file| file.serial).max();
        let Some(cutoff) = (self.now)().checked_sub(retention) else { return };
        for file in &series {
            let (Some(serial), Some(at)) = (file.serial, file.rotated_at) else { continue };
            if Some(serial) == newest || at >= cutoff {
                continue;
            }
            match std::fs::remove_file(&file.path) {
                Ok(()) => {
                    self.deleted.inc();
                    tracing::info!(
                        file = %file.path.display(),
                        rotated_at = %humantime::format_rfc3339_seconds(at),
                        retention = %humantime::format_duration(retention),
                        "deleted a rotated audit file past audit.file.retention"
                    );
                }
                Err(error) => tracing::error!(%error, file = %file.path.display(), "cannot delete an old audit file"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> SystemTime {
        humantime::parse_rfc3339(text).unwrap()
    }

    #[test]
    fn rotated_names_carry_the_serial_and_time_and_parse_back() {
        let naming = Naming::new(Path::new("var/audit/audit.jsonl"));
        let path = naming.rotated(42, at("2026-12-05T10:15:00Z"));
        assert_eq!(path, Path::new("var/audit/audit-000042-20261205T101500Z.jsonl"));
        let name = path.file_name().unwrap().to_str().unwrap();
        assert_eq!(naming.parse(name), Some((42, at("2026-12-05T10:15:00Z"), false)));
        assert_eq!(naming.parse(&format!("{name}.gz")), Some((42, at("2026-12-05T10:15:00Z"), true)));
        for other in ["audit.jsonl", "audit.jsonl.torn", "audit.checkpoints.jsonl", "audit-42-x.jsonl", "other.jsonl"] {
            assert_eq!(naming.parse(other), None, "{other}");
        }
        assert_eq!(naming.parse(&format!("{name}.gz.tmp")), None);
        let bare = Naming::new(Path::new("audit"));
        assert_eq!(bare.active(), Path::new("./audit"));
        assert_eq!(bare.rotated(1, at("2026-01-01T00:00:00Z")), Path::new("./audit-000001-20260101T000000Z"));
    }

    #[test]
    fn the_day_boundary_is_utc_midnight() {
        assert_eq!(utc_day(at("2026-12-05T23:59:59Z")) + 1, utc_day(at("2026-12-06T00:00:00Z")));
        assert_eq!(next_midnight(at("2026-12-05T10:15:00Z")), at("2026-12-06T00:00:00Z"));
        assert_eq!(next_midnight(at("2026-12-05T00:00:00Z")), at("2026-12-06T00:00:00Z"));
    }

    #[test]
    fn an_interrupted_compression_is_finished_and_nothing_is_lost() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("audit.jsonl"));
        // Serial 1: the crash came mid-compression (a partial .gz.tmp next to the plain file).
        let one = naming.rotated(1, at("2026-12-01T00:00:00Z"));
        std::fs::write(&one, "{\"id\":\"a\"}\n").unwrap();
        std::fs::write(one.with_file_name(format!("{}.gz.tmp", one.file_name().unwrap().to_str().unwrap())), b"\x1f")
            .unwrap();
        // Serial 2: the crash came after the rename of the .gz, before the removal of the plain file.
        let two = naming.rotated(2, at("2026-12-02T00:00:00Z"));
        std::fs::write(&two, "{\"id\":\"b\"}\n").unwrap();
        compress(&two).unwrap();
        std::fs::write(&two, "{\"id\":\"b\"}\n").unwrap();
        std::fs::write(naming.active(), "{\"id\":\"c\"}\n").unwrap();

        let compressor = Compressor::new(naming.clone(), None, IntCounter::new("deleted", "deleted").unwrap());
        compressor.recover();
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(
            names,
            ["audit-000001-20261201T000000Z.jsonl.gz", "audit-000002-20261202T000000Z.jsonl.gz", "audit.jsonl"]
        );
        let series = naming.series().unwrap();
        let mut text = String::new();
        for file in &series {
            std::io::Read::read_to_string(&mut open_series_file(&file.path).unwrap(), &mut text).unwrap();
        }
        assert_eq!(text, "{\"id\":\"a\"}\n{\"id\":\"b\"}\n{\"id\":\"c\"}\n");
        assert_eq!(series.iter().map(|f| f.serial).collect::<Vec<_>>(), [Some(1), Some(2), None]);

        // A directory with a compression cut short holds one series: the partial file is not a file of it.
        std::fs::write(dir.path().join("audit-000003-20261203T000000Z.jsonl"), "{\"id\":\"d\"}\n").unwrap();
        std::fs::write(dir.path().join("audit-000003-20261203T000000Z.jsonl.gz.tmp"), b"\x1f").unwrap();
        let all = series_of(&[dir.path().to_owned()]).unwrap();
        assert_eq!(all.len(), 1, "{all:?}");
        assert_eq!(all[0].iter().map(|f| f.serial).collect::<Vec<_>>(), [Some(1), Some(2), Some(3), None]);
    }

    #[test]
    fn retention_deletes_old_rotated_files_but_never_the_newest_or_the_active_one() {
        let dir = tempfile::tempdir().unwrap();
        let naming = Naming::new(&dir.path().join("audit.jsonl"));
        for (serial, time) in [(1, "2026-01-01T00:00:00Z"), (2, "2026-06-01T00:00:00Z"), (3, "2026-11-01T00:00:00Z")] {
            std::fs::write(naming.rotated(serial, at(time)), "{}\n").unwrap();
            compress(&naming.rotated(serial, at(time))).unwrap();
        }
        std::fs::write(naming.active(), "{}\n").unwrap();
        let deleted = IntCounter::new("deleted", "deleted").unwrap();
        let mut compressor = Compressor::new(naming.clone(), Some(Duration::from_secs(90 * 86_400)), deleted.clone());
        compressor.now = || humantime::parse_rfc3339("2026-12-05T00:00:00Z").unwrap();
        compressor.apply_retention();
        assert_eq!(deleted.get(), 2, "serials 1 and 2 are past 90 days; 3 is the newest");
        let series = naming.series().unwrap();
        assert_eq!(series.iter().map(|f| f.serial).collect::<Vec<_>>(), [Some(3), None]);

        // Far in the future: the newest rotated file and the active file still stay.
        compressor.now = || humantime::parse_rfc3339("2036-12-05T00:00:00Z").unwrap();
        compressor.apply_retention();
        assert_eq!(deleted.get(), 2);
        assert!(naming.active().exists());
    }
}
