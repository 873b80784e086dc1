//! placeholder
use std::time::Duration;
use crate::proxies::Harness;
use crate::verdict::Verdict;
pub async fn run(_harness: &mut Harness, _length: Duration) -> Result<Verdict, String> { Err("not yet".into()) }
