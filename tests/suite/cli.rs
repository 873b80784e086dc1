//! The `tollgate` command as a user runs it: `check`, `passwd`, `audit verify` and `run` with SIGTERM, through
//! the real binary from the repository root.

use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use argon2::{Argon2, PasswordHash, PasswordVerifier};

use common::*;

/// How long any single step may take before the test gives up (a bound, never a synchronisation).
const PATIENCE: Duration = Duration::from_secs(30);

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tollgate() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    command.current_dir(root()).env_remove("TOLLGATE_CONFIG").env_remove("TOLLGATE_LOG");
    command
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn with_stdin(mut command: Command, input: &[u8]) -> Output {
    let mut child = command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(input).expect("write stdin");
    child.wait_with_output().expect("wait")
}

// ---- check -------------------------------------------------------------------------------------------------

#[test]
fn check_accepts_the_default_config() {
    let output = tollgate().args(["check", "-c", "config/tollgate.yaml"]).output().expect("run");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = text(&output.stdout);
    assert!(stdout.starts_with("config/tollgate.yaml: ok\n"), "{stdout}");
    assert!(output.stderr.is_empty(), "{}", text(&output.stderr));

    // With no -c, the default path is the same file.
    let output = tollgate().arg("check").output().expect("run");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(text(&output.stdout).starts_with("config/tollgate.yaml: ok\n"), "{output:?}");
}

/// `tollgate check | head`: a reader that has gone is not the command's failure. The pipe is closed before the
/// check prints, so every line meets a closed pipe; the check still ends with its own status, without a panic.
#[test]
fn a_port_taken_stops_the_start_with_one_line_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = taken.local_addr().expect("its address");
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("tollgate.yaml");
    let yaml = format!(
        "listeners: [{{name: proxy, bind: \"{address}\"}}]\nauth: {{anonymous: dev}}\npolicy: {{default: deny}}\n\
         state: {{path: \"{}\"}}\n",
        dir.path().join("state").display()
    );
    std::fs::write(&config, yaml).expect("write the config");
    let output = tollgate().args(["run", "-c"]).arg(&config).output().expect("runs");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = text(&output.stderr);
    let said = format!("tollgate: cannot bind listener proxy on {address}: ");
    assert!(stderr.starts_with(&said), "{stderr}");
    assert_eq!(stderr.matches("Address already in use").count(), 1, "said once: {stderr}");
}

#[test]
fn check_into_a_closed_pipe_exits_with_its_status_and_no_panic() {
    let mut child = tollgate()
        .args(["check", "-c", "config/tollgate.yaml"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("wait");
    assert_eq!(output.status.code(), Some(0), "{}", text(&output.stderr));
    assert!(!text(&output.stderr).contains("panicked"), "{}", text(&output.stderr));
}

/// The example configs, as paths relative to the repository root, sorted.
fn examples() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join("config/examples"))
        .expect("config/examples exists")
        .map(|entry| entry.expect("dir entry").file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "users.yaml")
        .map(|name| format!("config/examples/{name}"))
        .collect();
    names.sort();
    names
}

#[test]
fn check_accepts_every_example() {
    let examples = examples();
    for wanted in ["team-office.yaml", "k8s-sidecar.yaml", "locked-down.yaml", "intercept.yaml", "gateway.yaml"] {
        assert!(examples.iter().any(|e| e.ends_with(wanted)), "config/examples/{wanted} is missing: {examples:?}");
    }
    let mut failures = Vec::new();
    for example in &examples {
        // k8s-sidecar.yaml names the workload from the environment, as a pod would.
        // gateway.yaml takes the upstream's key from the environment.
        let output = tollgate()
            .args(["check", "-c", example])
            .env("TOLLGATE_WORKLOAD", "billing-worker")
            .env("ANTHROPIC_API_KEY", "sk-ant-example")
            .output()
            .expect("run");
        if output.status.code() != Some(0) || !text(&output.stdout).starts_with(&format!("{example}: ok\n")) {
            failures.push(format!("{example}: {:?}\n{}{}", output.status, text(&output.stdout), text(&output.stderr)));
        }
    }
    assert!(failures.is_empty(), "examples that do not check:\n{}", failures.join("\n"));
}

#[test]
fn the_sidecar_example_needs_its_workload_name() {
    let output = tollgate()
        .args(["check", "-c", "config/examples/k8s-sidecar.yaml"])
        .env_remove("TOLLGATE_WORKLOAD")
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("config/examples/k8s-sidecar.yaml:"), "{stderr}");
    assert!(
        stderr.trim_end().ends_with("auth.anonymous: environment variable TOLLGATE_WORKLOAD is not set"),
        "{stderr}"
    );
}

#[test]
fn the_example_users_have_the_documented_passwords() {
    use tollgate::config::{file, yaml};
    let path = root().join("config/examples/users.yaml");
    let source = std::fs::read_to_string(&path).expect("read users.yaml");
    let users: Vec<file::User> =
        yaml::deserialize(&yaml::parse(&source).expect("users.yaml is YAML"), &|_| None).expect("users.yaml shape");
    assert_eq!(users.len(), 2);
    for user in &users {
        let password = format!("{}-example-password", user.name);
        let documented = source.lines().any(|l| l.split_whitespace().eq(["#", user.name.as_str(), password.as_str()]));
        assert!(documented, "{}'s password is documented in the header", user.name);
        let hash = PasswordHash::new(&user.password_hash).expect("PHC string");
        assert_eq!(hash.algorithm.as_str(), "argon2id");
        assert!(Argon2::default().verify_password(password.as_bytes(), &hash).is_ok(), "{}'s hash", user.name);
    }
}

// ---- passwd ------------------------------------------------------------------------------------------------

#[test]
fn passwd_prints_an_argon2id_hash_of_stdin() {
    let output = with_stdin(
        {
            let mut command = tollgate();
            command.arg("passwd");
            command
        },
        b"s3cret",
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stdout = text(&output.stdout);
    let line = stdout.trim_end();
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout:?}");
    assert!(line.starts_with("$argon2id$"), "{line}");
    let hash = PasswordHash::new(line).expect("a PHC string");
    assert!(Argon2::default().verify_password(b"s3cret", &hash).is_ok(), "the hash verifies the password");
    assert!(Argon2::default().verify_password(b"s3cret\n", &hash).is_err());
    assert!(Argon2::default().verify_password(b"other", &hash).is_err());

    // A trailing newline (`echo s3cret |`) is not part of the password.
    let output = with_stdin(
        {
            let mut command = tollgate();
            command.arg("passwd");
            command
        },
        b"s3cret\n",
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let hash = text(&output.stdout);
    let hash = PasswordHash::new(hash.trim_end()).expect("a PHC string");
    assert!(Argon2::default().verify_password(b"s3cret", &hash).is_ok());
}

#[test]
fn passwd_refuses_an_empty_password() {
    for input in [&b""[..], b"\n"] {
        let mut command = tollgate();
        command.arg("passwd");
        let output = with_stdin(command, input);
        assert_ne!(output.status.code(), Some(0), "{input:?}: {output:?}");
        assert!(output.stdout.is_empty(), "no hash printed: {}", text(&output.stdout));
        let stderr = text(&output.stderr);
        assert!(stderr.contains("empty password"), "{input:?}: {stderr}");
    }
}

// ---- audit verify ------------------------------------------------------------------------------------------

/// An audit file written by the real gateway: an allowed request, a denied CONNECT and an allowed tunnel.
async fn gateway_audit_file() -> (tempfile::TempDir, std::path::PathBuf) {
    let origin = Origin::start().await;
    let echo = Echo::start().await;
    let mut gateway = TestGateway::start(&format!("auth: {{anonymous: dev}}\n{LOOPBACK_POLICY}")).await;

    let request = format!("GET {} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", origin.url("/audited"));
    assert_eq!(exchange(gateway.proxy, request.as_bytes()).await.status, 200);
    // 127.0.0.2 is private and not allowed by LOOPBACK_POLICY: denied without any lookup.
    let denied = exchange(gateway.proxy, b"CONNECT 127.0.0.2:9 HTTP/1.1\r\nHost: 127.0.0.2:9\r\n\r\n").await;
    assert_eq!(denied.status, 403, "{denied:?}");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tunnel = tokio::net::TcpStream::connect(gateway.proxy).await.expect("connect");
        let connect = format!("CONNECT {0} HTTP/1.1\r\nHost: {0}\r\n\r\n", echo.address);
        tunnel.write_all(connect.as_bytes()).await.expect("write");
        assert_eq!(read_response(&mut tunnel).await.status, 200);
        tunnel.write_all(b"ping").await.expect("write");
        let mut pong = [0u8; 4];
        tunnel.read_exact(&mut pong).await.expect("echo");
        assert_eq!(&pong, b"ping");
    }
    gateway.shutdown().await;

    let dir = tempfile::tempdir().expect("temp dir");
    let copy = dir.path().join("audit.jsonl");
    std::fs::copy(gateway.audit_path(), &copy).expect("copy the audit file");
    (dir, copy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_accepts_the_gateways_chain_and_names_an_edited_line() {
    let (dir, path) = gateway_audit_file().await;
    let original = std::fs::read_to_string(&path).expect("read audit");
    assert_eq!(original.lines().count(), 3, "{original}");

    let output = tollgate().args(["audit", "verify"]).arg(&path).output().expect("run");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(text(&output.stdout).trim(), format!("{}: ok, 3 records", path.display()));

    // Edit the second record's timestamp in a copy: verify names line 2.
    let mut lines: Vec<String> = original.lines().map(str::to_owned).collect();
    let edited_line = lines[1].replacen("\"ts\":\"2", "\"ts\":\"1", 1);
    assert_ne!(edited_line, lines[1], "the record has a ts: {}", lines[1]);
    lines[1] = edited_line;
    let edited = dir.path().join("edited.jsonl");
    std::fs::write(&edited, lines.join("\n") + "\n").expect("write edited copy");
    let output = tollgate().args(["audit", "verify"]).arg(&path).arg(&edited).output().expect("run");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = text(&output.stdout);
    assert!(stdout.contains(&format!("{}: ok, 3 records", path.display())), "{stdout}");
    assert!(stdout.contains(&format!("{}: broken at line 2:", edited.display())), "{stdout}");

    // Removing a record breaks the chain at the record after it.
    let removed = dir.path().join("removed.jsonl");
    let kept: Vec<&str> = original.lines().enumerate().filter(|(i, _)| *i != 1).map(|(_, l)| l).collect();
    std::fs::write(&removed, kept.join("\n") + "\n").expect("write removed copy");
    let output = tollgate().args(["audit", "verify"]).arg(&removed).output().expect("run");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(text(&output.stdout).contains("broken at line 2:"), "{output:?}");
}

#[test]
fn audit_verify_fails_on_a_missing_file() {
    let output = tollgate().args(["audit", "verify", "tests/configs/no-such-audit.jsonl"]).output().expect("run");
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(text(&output.stderr).contains("tests/configs/no-such-audit.jsonl"), "{output:?}");
}

// ---- run and SIGTERM ---------------------------------------------------------------------------------------

/// A blocking echo server on 127.0.0.1:0 (one thread per connection).
fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind echo");
    let address = listener.local_addr().expect("echo address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = stream.read(&mut buf) {
                    if stream.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    address
}

/// Waits for the next JSON log line whose message satisfies `wanted`; panics with every line seen when the
/// process ends or `PATIENCE` passes first.
fn wait_for_log(
    lines: &mpsc::Receiver<String>,
    seen: &mut Vec<String>,
    wanted: impl Fn(&str) -> bool,
) -> serde_json::Value {
    loop {
        match lines.recv_timeout(PATIENCE) {
            Ok(line) => {
                seen.push(line.clone());
                if let Ok(value) = serde_json::from_str::<serde_json::Value>(&line) {
                    if value["message"].as_str().is_some_and(&wanted) {
                        return value;
                    }
                }
            }
            Err(error) => panic!("no such log line ({error}); stderr so far:\n{}", seen.join("\n")),
        }
    }
}

#[test]
fn run_serves_and_on_sigterm_cuts_open_tunnels_and_exits_0() {
    let echo = echo_server();
    let dir = tempfile::tempdir().expect("temp dir");
    let audit = dir.path().join("audit.jsonl");
    let config = dir.path().join("tollgate.yaml");
    std::fs::write(
        &config,
        format!(
            "listeners: [{{name: proxy, bind: \"127.0.0.1:0\"}}]\n\
             auth: {{anonymous: cli-test}}\n\
             policy:\n  default: deny\n  allow: [\"127.0.0.1\"]\n  allow_private: [\"127.0.0.0/8\"]\n\
             audit: {{file: {{path: \"{}\"}}}}\n\
             server: {{shutdown_grace: 200ms}}\n\
             state: {{path: \"{}\"}}\n",
            audit.display(),
            dir.path().join("state").display()
        ),
    )
    .expect("write config");

    let mut child = tollgate()
        .args(["--log-format", "json", "run", "-c"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tollgate run");
    let pid = child.id().to_string();
    let (sender, lines) = mpsc::channel();
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            if sender.send(line).is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();

    let listening = wait_for_log(&lines, &mut seen, |m| m == "listening");
    assert_eq!(listening["listener"], "proxy", "{listening}");
    let proxy: SocketAddr = listening["address"].as_str().expect("address").parse().expect("an IP:PORT");
    assert_eq!(proxy.ip().to_string(), "127.0.0.1");
    assert_ne!(proxy.port(), 0, "the bound port is logged, not 0");

    // One tunnel through the proxy to the echo server, proven open by a round trip.
    let mut tunnel = TcpStream::connect(proxy).expect("connect to the proxy");
    tunnel.set_read_timeout(Some(PATIENCE)).expect("read timeout");
    write!(tunnel, "CONNECT {echo} HTTP/1.1\r\nHost: {echo}\r\n\r\n").expect("write CONNECT");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tunnel.read(&mut byte).expect("read the CONNECT response"), 1, "closed: {}", text(&head));
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", text(&head));
    tunnel.write_all(b"hello through the tunnel").expect("write");
    let mut back = [0u8; 24];
    tunnel.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"hello through the tunnel");

    let kill = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(kill.success(), "kill -TERM {pid}");

    // The tunnel outlives the 200ms grace period, so it is cut: the client sees the close.
    let mut rest = Vec::new();
    match tunnel.read_to_end(&mut rest) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => {}
        Err(error) => panic!("the cut tunnel should close within {PATIENCE:?}: {error}"),
    }

    let (done, exited) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    let status = exited.recv_timeout(PATIENCE).expect("tollgate exits after SIGTERM").expect("wait");
    let stopped = wait_for_log(&lines, &mut seen, |m| m.starts_with("stopped"));
    reader.join().expect("stderr reader");
    seen.extend(lines.try_iter());
    assert_eq!(status.code(), Some(0), "exit status {status:?}; stderr:\n{}", seen.join("\n"));
    assert_eq!(stopped["tunnels_cut"], 1, "{stopped}");
    assert_eq!(stopped["message"], "stopped (1 tunnels cut after the grace period)", "{stopped}");

    // The cut tunnel was audited before exit, and the chain holds.
    let output = tollgate().args(["audit", "verify"]).arg(&audit).output().expect("run");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let records = std::fs::read_to_string(&audit).expect("read audit");
    let record: serde_json::Value = serde_json::from_str(records.lines().last().expect("a record")).expect("JSON");
    assert_eq!(record["kind"], "connect", "{record}");
    assert_eq!(record["user"], "cli-test", "{record}");
    assert_eq!(record["port"], echo.port(), "{record}");
}
