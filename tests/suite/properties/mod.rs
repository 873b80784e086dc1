//! Property tests of every parser and matcher tollgate runs on bytes from the network or from a policy file:
//! generated inputs checked against a naive reference or an invariant (never a panic, a round trip, the same
//! result however a stream is split). Each module also replays its seed corpus, `tests/corpus/<kind>/`, through
//! the same checks, so a hostile input found once stays tested.
//!
//! `cargo test` runs a few hundred cases per property; `PROPTEST_CASES=N` runs N (the long mode, see
//! docs/RELIABILITY.md, "Fuzzing"). A failure proptest shrinks is saved under `proptest-regressions/` and replayed
//! first.

mod bodies;
mod heads;
mod hosts;
mod json;
mod matcher;
mod paths;
mod sni;
mod streams;

use std::collections::VecDeque;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};

use proptest::test_runner::Config;
use tokio::io::{AsyncRead, ReadBuf};

/// The configuration of one property: `default_cases` unless `PROPTEST_CASES` says otherwise.
pub fn config(default_cases: u32) -> Config {
    let mut config = Config::default();
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = default_cases;
    }
    config
}

/// The seed inputs of `kind`: each file under `tests/corpus/<kind>/` is one input, but a `.lines` file holds one
/// input per line. Returned with a name for failure messages.
pub fn corpus(kind: &str) -> Vec<(String, Vec<u8>)> {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&directory)
        .unwrap_or_else(|e| panic!("{}: {e}", directory.display()))
        .map(|entry| entry.expect("a corpus entry").path())
        .collect();
    files.sort();
    let mut inputs = Vec::new();
    for file in files {
        let name = file.file_name().expect("a file name").to_string_lossy().into_owned();
        let bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if name.ends_with(".lines") {
            for (number, line) in bytes.split(|&b| b == b'\n').enumerate() {
                if !line.is_empty() && !line.starts_with(b"#") {
                    inputs.push((format!("{name}:{}", number + 1), line.to_vec()));
                }
            }
        } else {
            inputs.push((name, bytes));
        }
    }
    assert!(!inputs.is_empty(), "the corpus {kind} is empty");
    inputs
}

/// Cut points for `length` bytes from arbitrary numbers: sorted, deduplicated, inside `0..=length`.
pub fn cuts(length: usize, points: &[usize]) -> Vec<usize> {
    let mut cuts: Vec<usize> = points.iter().map(|point| point % (length + 1)).collect();
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}

/// `bytes` split at `cuts` (from `cuts()`), every piece kept, empty ones too.
pub fn split_at<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut pieces = Vec::with_capacity(cuts.len() + 1);
    let mut start = 0;
    for &cut in cuts {
        pieces.push(&bytes[start..cut]);
        start = cut;
    }
    pieces.push(&bytes[start..]);
    pieces
}

/// A reader that hands out its bytes in the given pieces, one per read, then end of file: how a peer's writes
/// arrive split by the network.
pub struct Pieces(VecDeque<Vec<u8>>);

impl Pieces {
    pub fn new(bytes: &[u8], cuts: &[usize]) -> Self {
        Self(split_at(bytes, cuts).into_iter().filter(|piece| !piece.is_empty()).map(<[u8]>::to_vec).collect())
    }
}

impl AsyncRead for Pieces {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if let Some(mut piece) = self.0.pop_front() {
            let take = piece.len().min(buf.remaining());
            buf.put_slice(&piece[..take]);
            if take < piece.len() {
                piece.drain(..take);
                self.0.push_front(piece);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that does no I/O but on in-memory readers and writers.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(future)
}
