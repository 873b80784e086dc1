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
