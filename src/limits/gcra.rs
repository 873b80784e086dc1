//! GCRA (the generic cell rate algorithm): exact rate limiting with one number of state per key, the
//! theoretical arrival time (TAT). Pure arithmetic, shared by the in-memory backend and mirrored by the Redis
//! script, so both admit exactly the same requests.

/// A rate: `per_minute` requests a minute, of which up to `burst` may come at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    /// Microseconds between requests at the steady rate.
    pub fn interval_us(self) -> u64 {
        60_000_000 / u64::from(self.per_minute.max(1))
    }

    /// How far ahead of `now` the TAT may run: the burst, in whole intervals (the same rounding as the TAT's
    /// steps, so the boundary is exact to the microsecond).
    pub fn tolerance_us(self) -> u64 {
        self.interval_us() * u64::from(self.burst.max(1))
    }

    /// The fastest rate the microsecond clock can express (one request per microsecond); config refuses more,
    /// since a zero interval would admit nothing beyond the first request at each instant.
    pub const MAX_PER_MINUTE: u32 = 60_000_000;
}

/// The outcome of one GCRA step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Admitted; the key's TAT becomes this.
    Admit { tat_us: u64 },
    /// Refused; admitted again after this many microseconds.
    Limited { retry_after_us: u64 },
}

/// One request at `now_us` against a key whose TAT is `tat_us` (0 for a new key).
pub fn step(rate: Rate, tat_us: u64, now_us: u64) -> Step {
    let new_tat = tat_us.max(now_us) + rate.interval_us();
    let allowed_until = now_us + rate.tolerance_us();
    if new_tat <= allowed_until {
        Step::Admit { tat_us: new_tat }
    } else {
        Step::Limited { retry_after_us: new_tat - allowed_until }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate_exactly() {
        let rate = Rate { per_minute: 60, burst: 3 };
        let mut tat = 0;
        let now = 1_000_000_000;
        for _ in 0..3 {
            match step(rate, tat, now) {
                Step::Admit { tat_us } => tat = tat_us,
                other => panic!("burst should admit: {other:?}"),
            }
        }
        assert_eq!(step(rate, tat, now), Step::Limited { retry_after_us: 1_000_000 });
        assert_eq!(step(rate, tat, now + 999_999), Step::Limited { retry_after_us: 1 });
        assert!(matches!(step(rate, tat, now + 1_000_000), Step::Admit { .. }));
    }

    #[test]
    fn an_idle_key_refills_to_the_burst_only() {
        let rate = Rate { per_minute: 120, burst: 2 };
        let now = 5_000_000_000;
        let Step::Admit { tat_us } = step(rate, 0, now) else { panic!() };
        let later = now + 3_600_000_000;
        let Step::Admit { tat_us } = step(rate, tat_us, later) else { panic!() };
        let Step::Admit { tat_us } = step(rate, tat_us, later) else { panic!() };
        assert!(matches!(step(rate, tat_us, later), Step::Limited { retry_after_us: 500_000 }));
    }
}
