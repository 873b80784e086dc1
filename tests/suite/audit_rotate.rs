//! Rotated, keyed and checkpointed audit files, as an operator meets them: the real `tollgate` binary as a child
//! process under load with `audit.file.rotate`, `audit.file.key` and `audit.checkpoints` (keys from `tollgate audit
//! keygen`), a SIGKILL in the middle, retention at start; and `tollgate audit verify` / `tollgate usage` on the
//! directory afterwards, also after files and records were removed, reordered, edited or cut.

use crate::audit_sink::{kill_under_load, read_kept_alive, request, shaped_origin, Gateway, PATIENCE};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The config of a child gateway whose audit file `DIR/audit/audit.jsonl` rotates at `size`, keyed and
/// checkpointed with the keys in `DIR/keys`; `extra` goes under `audit.file`.
fn config(dir: &Path, size: &str, extra: &str) -> String {
    format!(
        "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\n\
         admin: {{bind: \"127.0.0.1:0\"}}\n\
         auth: {{anonymous: tester}}\n\
         policy: {{default: deny, allow: [\"127.0.0.1\"], allow_private: [\"127.0.0.0/8\"]}}\n\
         audit:\n  \
           file: {{path: \"{audit}\", key: \"{keys}/audit.key\", rotate: {{size: {size}}}{extra}}}\n  \
           checkpoints: {{every: 1m, signing_key: \"{keys}/audit-sign.key\"}}\n  \
           on_failure: block\n\
         server: {{shutdown_grace: 1s}}\n\
         state: {{path: \"{state}\"}}\n",
        audit = dir.join("audit/audit.jsonl").display(),
        keys = dir.join("keys").display(),
        state = dir.join("state").display(),
    )
}

/// Runs `tollgate ARGS…`.
fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .env_remove("TOLLGATE_CONFIG")
        .output()
        .expect("run tollgate")
}

fn keygen(dir: &Path) {
    let output = tollgate(&["audit", "keygen", "--dir", &dir.join("keys").display().to_string()]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
}

/// `tollgate audit verify PATHS… ARGS…`: exit code and stdout.
fn verify(paths: &[&Path], args: &[&str]) -> (Option<i32>, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.args(["audit", "verify"]).args(paths).args(args);
    let output = command.output().expect("run tollgate audit verify");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.code(), text)
}

/// The key and checkpoint arguments of `verify` for the keys in `dir/keys` and the sidecar in `audit`.
fn key_args(dir: &Path, audit: &Path) -> Vec<String> {
    vec![
        "--key".into(),
        dir.join("keys/audit.key").display().to_string(),
        "--checkpoints".into(),
        audit.join("audit.checkpoints.jsonl").display().to_string(),
        "--public-key".into(),
        dir.join("keys/audit-sign.pub").display().to_string(),
    ]
}

/// The text of a file of the series, decompressed.
fn read_any(path: &Path) -> String {
    let bytes = std::fs::read(path).expect("read");
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&bytes[..]).read_to_string(&mut text).expect("gunzip");
        text
    } else {
        String::from_utf8(bytes).expect("UTF-8")
    }
}

/// The rotated files of `audit` (`audit-SERIAL-….jsonl[.gz]`), by serial; a file found both plain and compressed
/// (shutdown came between the compressed copy's rename and the plain file's removal) is listed once, plain.
fn rotated(audit: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(audit)
        .expect("list")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with("audit-") && (name.ends_with(".jsonl") || name.ends_with(".jsonl.gz"))
        })
        .collect();
    files.sort();
    files.dedup_by(|later, earlier| later.to_string_lossy() == format!("{}.gz", earlier.to_string_lossy()));
    files
}

/// How often each request path appears in the records of every file of the series.
fn paths_recorded(audit: &Path) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for file in rotated(audit).into_iter().chain([audit.join("audit.jsonl")]) {
        for line in read_any(&file).lines() {
            let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else { continue };
            if let Some(path) = record["path"].as_str() {
                *counts.entry(path.to_owned()).or_insert(0) += 1;
            }
        }
    }
    counts
}

/// `clients` kept-alive clients sending `each` requests one after another; the paths that came back whole.
async fn load(proxy: SocketAddr, origin: SocketAddr, clients: usize, each: usize) -> Vec<String> {
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(proxy).await.expect("connect");
                let mut buf = Vec::new();
                let mut completed = Vec::new();
                for number in 0..each {
                    let path = format!("/short/{client}/{number}");
                    let head = format!("GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\n\r\n");
                    stream.write_all(head.as_bytes()).await.expect("write");
                    let answer = read_kept_alive(&mut stream, &mut buf).await;
                    assert_eq!((answer.status, answer.complete), (200, true), "{path}: {answer:?}");
                    completed.push(path);
                }
                completed
            })
        })
        .collect();
    let mut completed = Vec::new();
    for task in tasks {
        completed.extend(tokio::time::timeout(PATIENCE, task).await.expect("the load ends").expect("client task"));
    }
    completed
}

/// Under load, a keyed and checkpointed audit file that rotates every 16 KiB loses nothing: every request's record
/// is in exactly one file, the rotated files are compressed, and `audit verify DIR --key --checkpoints` passes
/// across the files; the metrics count the rotations and checkpoints. Without the key, verify refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_size_under_load_loses_nothing_and_the_chain_verifies_across_files() {
    let origin = shaped_origin().await;
    let dir = tempfile::tempdir().expect("temp dir");
    keygen(dir.path());
    let mut gateway = Gateway::start(dir.path(), &config(dir.path(), "16KiB", ""));
    let metrics =
        crate::common::exchange(gateway.admin, b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await;
    for name in
        ["tollgate_audit_rotations_total", "tollgate_audit_files_deleted_total", "tollgate_audit_checkpoints_total"]
    {
        assert!(metrics.body.lines().any(|line| line == format!("{name} 0")), "{name} at 0 from the start");
    }

    let completed = load(gateway.proxy, origin, 4, 150).await;
    // The rotations are done by the time the last record is written; the compressions follow.
    gateway.wait_for_log(|message| message == "rotated audit file compressed");
    let rotations = gateway.metric("tollgate_audit_rotations_total").await;
    assert!(rotations >= 5.0, "{rotations} rotations of 600 records at 16 KiB");
    assert!(gateway.metric("tollgate_audit_checkpoints_total").await >= rotations, "a checkpoint at each rotation");
    gateway.signal("-TERM");
    let (status, logs) = gateway.wait();
    assert_eq!(status.code(), Some(0), "{}", logs.join("\n"));

    let audit = dir.path().join("audit");
    let recorded = paths_recorded(&audit);
    for path in &completed {
        assert_eq!(recorded.get(path), Some(&1), "{path}: one record across the files");
    }
    assert!(rotated(&audit).len() as f64 >= rotations, "{:?}", rotated(&audit));
    assert!(rotated(&audit).iter().any(|p| p.extension().is_some_and(|e| e == "gz")), "{:?}", rotated(&audit));
    let args = key_args(dir.path(), &audit);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, text) = verify(&[&audit], &args);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(text.lines().filter(|line| line.contains(": ok, ")).count(), rotated(&audit).len() + 1, "{text}");

    // Without the key the records cannot be checked, and verify says so.
    let (code, text) = verify(&[&audit], &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("chained with HMAC-SHA256 (audit.file.key)") && text.contains("--key FILE"), "{text}");
}

/// Copies the series of `audit` to a new directory as plain files (for editing), returns it and its files in order.
fn plain_copy(audit: &Path, into: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(into).expect("mkdir");
    let mut files = Vec::new();
    for file in rotated(audit).into_iter().chain([audit.join("audit.jsonl")]) {
        let name = file.file_name().unwrap().to_string_lossy().trim_end_matches(".gz").to_owned();
        std::fs::write(into.join(&name), read_any(&file)).expect("write copy");
        files.push(into.join(name));
    }
    files
}

fn lines_of(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).expect("read").lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.iter().map(|line| format!("{line}\n")).collect::<String>()).expect("write");
}

/// `audit verify` over a rotated series names what was done to it: a missing file, two files swapped, and an
/// edited, deleted, reordered or torn record; a tail cut from the last file is found by the checkpoints only,
/// and a forged checkpoint by its signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_a_missing_or_misplaced_file_and_an_edited_deleted_reordered_torn_or_cut_record() {
    let origin = shaped_origin().await;
    let dir = tempfile::tempdir().expect("temp dir");
    keygen(dir.path());
    let gateway = Gateway::start(dir.path(), &config(dir.path(), "8KiB", ""));
    load(gateway.proxy, origin, 2, 60).await;
    gateway.signal("-TERM");
    let (status, logs) = gateway.wait();
    assert_eq!(status.code(), Some(0), "{}", logs.join("\n"));
    let audit = dir.path().join("audit");
    let args = key_args(dir.path(), &audit);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let key_only = &args[..2];

    // Each case on a fresh plain copy of the series.
    let case = |name: &str| plain_copy(&audit, &dir.path().join(name));
    let files = case("intact");
    assert!(files.len() >= 4, "{files:?}");
    let (code, text) = verify(&[&dir.path().join("intact")], &args);
    assert_eq!(code, Some(0), "{text}");

    // A missing file: the serial gap is named.
    let files = case("missing");
    std::fs::remove_file(&files[1]).expect("remove");
    let (code, text) = verify(&[&dir.path().join("missing")], key_only);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("{}: a file is missing before it: serial 2 is missing", files[2].display())),
        "{text}"
    );

    // Two files swapped (renamed into each other's place): out of order.
    let files = case("swapped");
    let (one, two) = (std::fs::read(&files[1]).unwrap(), std::fs::read(&files[2]).unwrap());
    std::fs::write(&files[1], two).unwrap();
    std::fs::write(&files[2], one).unwrap();
    let (code, text) = verify(&[&dir.path().join("swapped")], key_only);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("the files are out of order: it continues"), "{text}");

    // Files given in the wrong order on the command line are put in series order.
    let files = case("given");
    let reversed: Vec<&Path> = files.iter().rev().map(PathBuf::as_path).collect();
    let (code, text) = verify(&reversed, key_only);
    assert_eq!(code, Some(0), "{text}");

    // An edited record, a deleted one, two reordered, in the middle of the second file.
    for (name, change) in [("edited", 0), ("deleted", 1), ("reordered", 2)] {
        let files = case(name);
        let mut lines = lines_of(&files[1]);
        match change {
            0 => lines[3] = lines[3].replacen("\"decision\":\"allow\"", "\"decision\":\"deny\"", 1),
            1 => drop(lines.remove(3)),
            _ => lines.swap(3, 4),
        }
        write_lines(&files[1], &lines);
        let (code, text) = verify(&[&dir.path().join(name)], key_only);
        assert_eq!(code, Some(1), "{name}: {text}");
        let expected = match change {
            0 => format!("{}: broken at line 4: the keyed hash does not match the record", files[1].display()),
            _ => format!("{}: broken at line 4: prev does not match the previous record's hash", files[1].display()),
        };
        assert!(text.contains(&expected), "{name}: {text}");
    }

    // A torn line (a copy made before a repair) is named and skipped; the chain around it holds.
    let files = case("torn");
    let mut lines = lines_of(&files[1]);
    let fragment = lines[2][..lines[2].len() / 2].to_owned();
    lines.insert(2, fragment);
    write_lines(&files[1], &lines);
    let (code, text) = verify(&[&dir.path().join("torn")], key_only);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains(&format!("{}: 1 torn line skipped", files[1].display())), "{text}");

    // A tail cut from the active file: the chain cannot tell, the checkpoints can.
    let files = case("cut");
    let active = files.last().unwrap();
    let mut lines = lines_of(active);
    assert!(lines.len() >= 2, "records and the shutdown checkpoint in the active file");
    lines.truncate(lines.len() - 2);
    write_lines(active, &lines);
    let (code, text) = verify(&[&dir.path().join("cut")], key_only);
    assert_eq!(code, Some(0), "the chain alone cannot see a cut tail: {text}");
    let (code, text) = verify(&[&dir.path().join("cut")], &args);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains(&format!("{}: truncated: the checkpoint of", active.display())), "{text}");

    // A forged checkpoint (its count lowered to cover the cut) fails its signature.
    let sidecar = audit.join("audit.checkpoints.jsonl");
    let mut checkpoints = lines_of(&sidecar);
    let last = checkpoints.last_mut().unwrap();
    let mut record: serde_json::Value = serde_json::from_str(last).unwrap();
    record["records"] = serde_json::json!(record["records"].as_u64().unwrap() - 2);
    *last = record.to_string();
    let forged = dir.path().join("forged.checkpoints.jsonl");
    write_lines(&forged, &checkpoints);
    let forged_args: Vec<String> =
        args.iter().map(|a| a.replace(&*sidecar.to_string_lossy(), &forged.to_string_lossy())).collect();
    let forged_args: Vec<&str> = forged_args.iter().map(String::as_str).collect();
    let (code, text) = verify(&[&dir.path().join("cut")], &forged_args);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("the checkpoint's signature does not hold"), "{text}");
}

/// SIGKILL in the middle of a load on a rotating file: after a restart (the torn end set aside, any
/// interrupted compression finished) every response that came back whole has exactly one record across the
/// files, and `audit verify DIR` passes with the key and the checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_under_load_with_rotation_nothing_is_lost_or_doubled_and_the_series_verifies() {
    const KILL_AFTER: usize = 400;
    let origin = shaped_origin().await;
    let dir = tempfile::tempdir().expect("temp dir");
    keygen(dir.path());
    let gateway = Gateway::start(dir.path(), &config(dir.path(), "8KiB", ""));
    let completed = kill_under_load(gateway, origin, KILL_AFTER).await;
    let audit = dir.path().join("audit");
    // A torn end, in case the kill tore none.
    std::fs::OpenOptions::new()
        .append(true)
        .open(audit.join("audit.jsonl"))
        .unwrap()
        .write_all(b"{\"ts\":\"2026-12-01T12:00:00.000Z\",\"id\":\"torn")
        .unwrap();

    let mut gateway = Gateway::start(dir.path(), &config(dir.path(), "8KiB", ""));
    assert_eq!(gateway.metric("tollgate_audit_torn_lines_total{sink=\"file\"}").await, 1.0);
    let after = request(gateway.proxy, &format!("http://{origin}"), "/short/after-the-restart").await;
    assert_eq!((after.status, after.complete), (200, true), "{after:?}");
    gateway.signal("-TERM");
    let (status, logs) = gateway.wait();
    assert_eq!(status.code(), Some(0), "{}", logs.join("\n"));
    gateway = Gateway::start(dir.path(), &config(dir.path(), "8KiB", ""));
    gateway.signal("-TERM");
    gateway.wait();

    let recorded = paths_recorded(&audit);
    for path in completed.iter().chain([&"/short/after-the-restart".to_owned()]) {
        assert_eq!(recorded.get(path), Some(&1), "{path}: one record across the files");
    }
    assert!(recorded.values().all(|&count| count == 1), "no record twice");
    assert!(rotated(&audit).len() >= 3, "{:?}", rotated(&audit));
    let leftovers: Vec<PathBuf> = std::fs::read_dir(&audit)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".gz.tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let args = key_args(dir.path(), &audit);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, text) = verify(&[&audit], &args);
    assert_eq!(code, Some(0), "{text}");
}

/// Retention deletes the rotated files older than `audit.file.retention` at start (counted and logged), but never
/// the active file, nor the newest rotated file that the active file continues.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_old_rotated_files_and_never_the_active_one() {
    let dir = tempfile::tempdir().expect("temp dir");
    keygen(dir.path());
    let audit = dir.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let old = [
        "audit-000001-20200101T000000Z.jsonl.gz",
        "audit-000002-20200201T000000Z.jsonl",
        "audit-000003-20200301T000000Z.jsonl.gz",
    ];
    for name in old {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(b"{}\n").unwrap();
        let bytes = if name.ends_with(".gz") { encoder.finish().unwrap() } else { b"{}\n".to_vec() };
        std::fs::write(audit.join(name), bytes).unwrap();
    }
    std::fs::write(audit.join("audit.jsonl"), "").unwrap();
    let gateway = Gateway::start(dir.path(), &config(dir.path(), "1MiB", ", retention: 30d"));
    // The deletions run on the compressor thread at start: watched through the metric, within PATIENCE.
    let deadline = std::time::Instant::now() + PATIENCE;
    while gateway.metric("tollgate_audit_files_deleted_total").await < 2.0 {
        assert!(std::time::Instant::now() < deadline, "two files deleted within {PATIENCE:?}");
    }
    gateway.signal("-TERM");
    let (_, logs) = gateway.wait();
    let deleted: Vec<&String> =
        logs.iter().filter(|line| line.contains("deleted a rotated audit file past audit.file.retention")).collect();
    assert_eq!(deleted.len(), 2, "{logs:?}");
    assert!(deleted[0].contains("audit-000001-20200101T000000Z.jsonl.gz"), "{deleted:?}");
    let mut left: Vec<String> =
        std::fs::read_dir(&audit).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    // The lock file stays (removing it at exit would race a tollgate opening it); retention never counts it.
    let kept = ["audit-000003-20200301T000000Z.jsonl.gz", "audit.checkpoints.jsonl", "audit.jsonl", "audit.jsonl.lock"];
    assert_eq!(left, kept);
}

/// `tollgate usage` and `tollgate sessions` read the rotated files, compressed or not, with the active one: from
/// the config's `audit.file.path`, or from a directory given with `--audit`.
#[test]
fn usage_and_sessions_read_rotated_and_compressed_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit");
    std::fs::create_dir_all(&audit).unwrap();
    let now = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    let record = |user: &str, input: u64| {
        format!(
            "{{\"ts\":\"{now}\",\"id\":\"{user}{input}\",\"kind\":\"gateway\",\"user\":\"{user}\",\"team\":\"t\",\
             \"session\":\"s-{user}\",\"decision\":\"allow\",\"model\":\"m\",\"usage\":{{\"input_tokens\":{input},\"output_tokens\":1}},\"cost_usd\":0.5}}\n"
        )
    };
    let rotated_at =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string().replace(['-', ':'], "");
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(record("ann", 100).as_bytes()).unwrap();
    std::fs::write(audit.join(format!("audit-000001-{rotated_at}.jsonl.gz")), encoder.finish().unwrap()).unwrap();
    std::fs::write(audit.join(format!("audit-000002-{rotated_at}.jsonl")), record("ann", 20)).unwrap();
    std::fs::write(audit.join("audit.jsonl"), record("bob", 3)).unwrap();
    let config = dir.path().join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\npolicy: {{default: deny}}\n\
             audit: {{file: {{path: \"{}\", rotate: {{daily: true}}}}}}\n",
            audit.join("audit.jsonl").display()
        ),
    )
    .unwrap();
    for args in [
        vec!["usage", "-c", &*config.to_string_lossy(), "--format", "csv"]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
        vec![
            "usage".to_owned(),
            "--audit".to_owned(),
            audit.display().to_string(),
            "--format".to_owned(),
            "csv".to_owned(),
        ],
    ] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = tollgate(&args);
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
        let ann = stdout.lines().find(|line| line.starts_with("t,ann,m,")).unwrap_or_else(|| panic!("{stdout}"));
        assert!(ann.starts_with("t,ann,m,2,120,2,"), "both rotated files, the compressed one too: {stdout}");
        assert!(stdout.lines().any(|line| line.starts_with("t,bob,m,1,3,1,")), "the active file: {stdout}");

        // The same files through sessions: the listing (its CSV columns: session, user, team, client, first, last,
        // requests, …) and a session's timeline.
        let audit_arg = &args[1..3];
        let listing = tollgate(&[&["sessions"], audit_arg, &["--format", "csv"]].concat());
        let stdout = String::from_utf8_lossy(&listing.stdout);
        assert_eq!(listing.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&listing.stderr));
        let requests = |session: &str| {
            let line = stdout
                .lines()
                .find(|line| line.starts_with(&format!("{session},")))
                .unwrap_or_else(|| panic!("{stdout}"));
            line.split(',').nth(6).unwrap().to_owned()
        };
        assert_eq!(requests("s-ann"), "2", "both rotated files, the compressed one too: {stdout}");
        assert_eq!(requests("s-bob"), "1", "the active file: {stdout}");
        let timeline = tollgate(&[&["sessions"], audit_arg, &["s-ann", "--format", "csv"]].concat());
        let stdout = String::from_utf8_lossy(&timeline.stdout);
        assert_eq!(timeline.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&timeline.stderr));
        assert_eq!(stdout.lines().filter(|line| line.contains(",request,ann")).count(), 2, "{stdout}");
    }
}

/// `tollgate check` says how the audit file is kept, and refuses a key file that is missing or not a key.
#[test]
fn check_describes_rotation_keys_and_checkpoints_and_refuses_a_bad_key() {
    let dir = tempfile::tempdir().expect("temp dir");
    keygen(dir.path());
    let path = dir.path().join("tollgate.yaml");
    std::fs::write(&path, config(dir.path(), "100MiB", ", retention: 7y")).unwrap();
    let output = tollgate(&["check", "-c", &path.display().to_string()]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        stdout.contains(
            "    chain keyed (HMAC-SHA256), rotated at 104857600 bytes, rotated files kept 2555 days, signed checkpoints \
             every 1m\n"
        ),
        "{stdout}"
    );

    std::fs::write(dir.path().join("keys/audit.key"), "abcd\n").unwrap();
    let output = tollgate(&["check", "-c", &path.display().to_string()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("audit.file.key: ") && stderr.contains("a chain key needs at least 32 bytes; it has 2"),
        "{stderr}"
    );
}
