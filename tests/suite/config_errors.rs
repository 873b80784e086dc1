//! Every fixture in `tests/configs/bad/` holds one mistake; `tollgate check` must refuse it with exit code 2 and
//! exactly the one-line message in the fixture's `.expected` file (`FILE:LINE:COL: key.path: what is wrong`).
//!
//! The binary runs from the repository root with relative paths, so the messages are stable.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BAD: &str = "tests/configs/bad";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tollgate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(args)
        .current_dir(root())
        .env_remove("TOLLGATE_CONFIG")
        .env_remove("TOLLGATE_TEST_SURELY_UNSET")
        .env("TOLLGATE_LOG", "warn")
        .output()
        .expect("run tollgate")
}

/// The fixtures, as paths relative to the repository root, sorted.
fn fixtures() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root().join(BAD))
        .expect("tests/configs/bad exists")
        .map(|entry| entry.expect("dir entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .map(|path| format!("{BAD}/{}", path.file_name().unwrap().to_string_lossy()))
        .collect();
    names.sort();
    names
}

fn expected(fixture: &str) -> Result<String, String> {
    let path: PathBuf = root().join(fixture).with_extension("expected");
    std::fs::read_to_string(&path)
        .map(|text| text.trim().to_owned())
        .map_err(|e| format!("{fixture}: no readable {} ({e})", path.display()))
}

#[test]
fn every_bad_fixture_is_refused_with_its_exact_message() {
    let fixtures = fixtures();
    assert!(fixtures.len() >= 12, "only {} fixtures in {BAD}", fixtures.len());
    let mut mismatches = Vec::new();
    for fixture in &fixtures {
        let want = match expected(fixture) {
            Ok(want) => want,
            Err(problem) => {
                mismatches.push(problem);
                continue;
            }
        };
        let output = tollgate(&["check", "-c", fixture]);
        let got = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        let code = output.status.code();
        if code != Some(2) || got != want {
            mismatches.push(format!(
                "{fixture}: exit {code:?} (want 2)\n    want: {want}\n    got:  {got}\n    stdout: {}",
                String::from_utf8_lossy(&output.stdout).trim()
            ));
        }
        if !output.stdout.is_empty() && code == Some(2) {
            mismatches.push(format!("{fixture}: printed on stdout: {}", String::from_utf8_lossy(&output.stdout)));
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} fixtures mismatch:\n{}",
        mismatches.len(),
        fixtures.len(),
        mismatches.join("\n")
    );
}

#[test]
fn every_expected_message_names_its_place() {
    for fixture in fixtures() {
        let want = expected(&fixture).unwrap_or_else(|problem| panic!("{problem}"));
        assert_eq!(want.lines().count(), 1, "{fixture}: the message is one line");
        // FILE:LINE:COL: — the file may be the fixture or a file it names (a users_file).
        let mut parts = want.splitn(4, ':');
        let (file, line, col) = (parts.next().unwrap(), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        assert!(file.starts_with(BAD) && file.ends_with(".yaml"), "{fixture}: {want}");
        assert!(line.parse::<usize>().is_ok_and(|n| n > 0), "{fixture}: no line in {want}");
        assert!(col.parse::<usize>().is_ok_and(|n| n > 0), "{fixture}: no column in {want}");
    }
}

#[test]
fn run_refuses_a_bad_config_with_the_same_message() {
    let fixture = format!("{BAD}/unknown-nested-key.yaml");
    let output = tollgate(&["run", "-c", &fixture]);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr).trim(), expected(&fixture).unwrap());
}

#[test]
fn the_config_path_may_come_from_the_environment() {
    let fixture = format!("{BAD}/default-maybe.yaml");
    let output = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check")
        .current_dir(root())
        .env("TOLLGATE_CONFIG", &fixture)
        .output()
        .expect("run tollgate");
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert_eq!(String::from_utf8_lossy(&output.stderr).trim(), expected(&fixture).unwrap());
}

/// Runs `openssl ARGS` in `dir`, which must succeed.
fn openssl(dir: &Path, args: &[&str]) {
    let output =
        Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (scripts/test installs it)");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// `openssl ca -gencrl` settings: `crlnumber` makes a version 2 CRL (with a CRL number), its absence a version 1 CRL.
fn openssl_ca_config(crl_number: bool) -> String {
    let number = if crl_number { "crlnumber = crlnumber\n" } else { "" };
    format!(
        "[ca]\ndefault_ca = crls\n[crls]\ndatabase = index.txt\n{number}default_md = sha256\ndefault_crl_days = 30\n"
    )
}

/// A TLS listener requiring client certificates from `client_ca`, revoked by `crl` (both relative to the config);
/// the `tls:` map is on line 4.
fn crl_config(client_ca: &str, crl: &str) -> String {
    format!(
        "listeners:\n  - name: proxy-tls\n    bind: 127.0.0.1:0\n    tls: {{cert: server.pem, key: server.key, \
         client_ca: {client_ca}, client_auth: required, crl: {crl}}}\npolicy:\n  default: deny\n"
    )
}

/// Every way a listener's `crl` can be unusable is refused by `tollgate check` under `listeners[0].tls.crl`, naming
/// the file and what is wrong with it: what rustls would refuse when it builds the verifier, and what it would only
/// find at a client's handshake (a CRL of another CA, or of a CA made anew). The CRLs come from `openssl ca -gencrl`.
#[test]
fn an_unusable_crl_is_refused_under_its_key_naming_the_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let tollgate_in = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(args).current_dir(d).output().expect("run");
        assert!(output.status.success(), "tollgate {args:?}: {}", String::from_utf8_lossy(&output.stderr));
    };
    tollgate_in(&["cert", "server", "--name", "proxy.test", "--dir", "."]);
    tollgate_in(&["cert", "client", "--user", "alice", "--dir", "."]);
    tollgate_in(&["ca", "init", "--client", "--dir", "other"]);
    std::fs::write(d.join("index.txt"), "").expect("write");
    std::fs::write(d.join("crlnumber"), "01\n").expect("write");
    std::fs::write(d.join("v2.cnf"), openssl_ca_config(true)).expect("write");
    std::fs::write(d.join("v1.cnf"), openssl_ca_config(false)).expect("write");
    let gencrl = |config: &str, ca: &str, out: &str| {
        let (cert, key) = (format!("{ca}.pem"), format!("{ca}.key"));
        openssl(d, &["ca", "-config", config, "-gencrl", "-cert", &cert, "-keyfile", &key, "-out", out]);
    };
    gencrl("v2.cnf", "clients-ca", "good.crl");
    gencrl("v1.cnf", "clients-ca", "v1.crl");
    gencrl("v2.cnf", "other/clients-ca", "remade.crl");
    openssl(d, &["crl", "-in", "good.crl", "-outform", "DER", "-out", "der.crl"]);
    // A CA of another name, one that may sign certificates but not CRLs.
    let subject_and_usage = [
        "-subj",
        "/CN=no CRLs",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ];
    let new_ca = ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30"];
    openssl(d, &[&new_ca[..], &["-keyout", "no-crls.key", "-out", "no-crls.pem"], &subject_and_usage[..]].concat());
    gencrl("v2.cnf", "no-crls", "no-crls.crl");
    let read = |name: &str| std::fs::read_to_string(d.join(name)).expect("read");
    std::fs::write(d.join("both-ca.pem"), read("clients-ca.pem") + &read("no-crls.pem")).expect("write");
    std::fs::write(d.join("good-then-v1.crl"), read("good.crl") + &read("v1.crl")).expect("write");
    std::fs::write(d.join("garbage.crl"), "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n").expect("write");

    std::fs::write(d.join("good.yaml"), crl_config("clients-ca.pem", "good.crl")).expect("write");
    let output =
        Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["check", "-c", "good.yaml"]).current_dir(d).output();
    let output = output.expect("run tollgate");
    assert_eq!(output.status.code(), Some(0), "a v2 CRL from openssl ca: {}", String::from_utf8_lossy(&output.stderr));

    let make_one = "make one with `openssl ca -gencrl` and a crlnumber file (docs/tls.md)";
    let cases = [
        ("clients-ca.pem", "missing.crl", "cannot read missing.crl: No such file or directory (os error 2)".to_owned()),
        (
            "clients-ca.pem",
            "der.crl",
            "der.crl: not PEM (DER?): write it as PEM with `openssl crl -inform DER -in der.crl -out CRL.pem`".into(),
        ),
        (
            "clients-ca.pem",
            "clients-ca.pem",
            "clients-ca.pem: holds no PEM CRL (-----BEGIN X509 CRL-----), only CERTIFICATE".into(),
        ),
        (
            "clients-ca.pem",
            "garbage.crl",
            "garbage.crl: not an X.509 CRL: Parsing Error: Der(UnexpectedTag { expected: Some(Tag(16)), actual: \
             Tag(0) })"
                .into(),
        ),
        (
            "clients-ca.pem",
            "v1.crl",
            format!("v1.crl: a version 1 CRL: rustls reads version 2 CRLs only, with a CRL number; {make_one}"),
        ),
        (
            "clients-ca.pem",
            "good-then-v1.crl",
            format!(
                "good-then-v1.crl: CRL 2 of 2: a version 1 CRL: rustls reads version 2 CRLs only, with a CRL number; \
                 {make_one}"
            ),
        ),
        (
            "clients-ca.pem",
            "no-crls.crl",
            "no-crls.crl: issued by \"CN=no CRLs\", which is not a certificate in client_ca clients-ca.pem: the CRL of \
             another CA"
                .into(),
        ),
        (
            "clients-ca.pem",
            "remade.crl",
            "remade.crl: its signature does not verify with the key of \"CN=tollgate clients CA, O=tollgate\" \
             (client_ca clients-ca.pem): another key signed it (a CA made anew under the same name?)"
                .into(),
        ),
        (
            "both-ca.pem",
            "no-crls.crl",
            "no-crls.crl: \"CN=no CRLs\" (client_ca both-ca.pem) may not sign CRLs: its keyUsage lacks cRLSign".into(),
        ),
    ];
    let mut mismatches = Vec::new();
    for (index, (client_ca, crl, what)) in cases.into_iter().enumerate() {
        let config = crl_config(client_ca, crl);
        // The error points at the value of `crl:`.
        let column = config.lines().nth(3).and_then(|line| line.find(&format!("crl: {crl}"))).expect("crl key") + 6;
        let name = format!("crl-{index}.yaml");
        std::fs::write(d.join(&name), &config).expect("write");
        let output = Command::new(env!("CARGO_BIN_EXE_tollgate")).args(["check", "-c", &name]).current_dir(d).output();
        let output = output.expect("run tollgate");
        let want = format!("{name}:4:{column}: listeners[0].tls.crl: {what}");
        let got = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        if output.status.code() != Some(2) || got != want {
            mismatches.push(format!("{crl}: exit {:?}\n    want: {want}\n    got:  {got}", output.status.code()));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}
