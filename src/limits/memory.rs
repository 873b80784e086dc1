//! The embedded backend: limit state in this process's memory, behind one short lock per operation.

use std::collections::HashMap;
use std::sync::Mutex;

use super::gcra::{self, Step};
use super::{Admission, Backend, BoxFuture, Bucket, Slot, StateError};

/// Counters for one process.
#[derive(Debug, Default)]
pub struct Memory {
    tats: Mutex<HashMap<String, u64>>,
    slots: Mutex<HashMap<String, u32>>,
}

impl Memory {
    fn acquire_now(&self, buckets: &[Bucket], now_us: u64) -> Admission {
        let mut tats = self.tats.lock().unwrap_or_else(|p| p.into_inner());
        let mut admitted = Vec::with_capacity(buckets.len());
        for (index, bucket) in buckets.iter().enumerate() {
            let tat = tats.get(&bucket.key).copied().unwrap_or(0);
            match gcra::step(bucket.rate, tat, now_us) {
                Step::Admit { tat_us } => admitted.push(tat_us),
                Step::Limited { retry_after_us } => return Admission::Limited { bucket: index, retry_after_us },
            }
        }
        // All or nothing: only when every bucket admits is a request taken from each.
        for (bucket, tat) in buckets.iter().zip(admitted) {
            tats.insert(bucket.key.clone(), tat);
        }
        if tats.len() > 1_000_000 {
            tats.retain(|_, tat| *tat > now_us);
        }
        Admission::Admit
    }

    fn enter_now(&self, slots: &[Slot]) -> Option<usize> {
        let mut counts = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(full) = slots.iter().position(|slot| counts.get(&slot.key).copied().unwrap_or(0) >= slot.max) {
            return Some(full);
        }
        for slot in slots {
            *counts.entry(slot.key.clone()).or_insert(0) += 1;
        }
        None
    }

    fn leave_now(&self, slots: &[Slot]) {
        let mut counts = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots {
            if let Some(count) = counts.get_mut(&slot.key) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&slot.key);
                }
            }
        }
    }
}

impl Backend for Memory {
    fn acquire<'a>(&'a self, buckets: &'a [Bucket], now_us: u64) -> BoxFuture<'a, Result<Admission, StateError>> {
        let admission = self.acquire_now(buckets, now_us);
        Box::pin(std::future::ready(Ok(admission)))
    }

    fn enter<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, Result<Option<usize>, StateError>> {
        let full = self.enter_now(slots);
        Box::pin(std::future::ready(Ok(full)))
    }

    fn leave<'a>(&'a self, slots: &'a [Slot]) -> BoxFuture<'a, Result<(), StateError>> {
        self.leave_now(slots);
        Box::pin(std::future::ready(Ok(())))
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}
