//! Team working hours: a daily window in a named time zone, optionally on some weekdays only.

use std::time::SystemTime;

use chrono::{DateTime, Datelike, Timelike, Utc};
use chrono_tz::Tz;

use crate::config::file;

/// A compiled `teams.*.hours`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hours {
    from_minute: u16,
    to_minute: u16,
    tz: Tz,
    /// Bit 0 = Monday … bit 6 = Sunday.
    days: u8,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Hours {
    /// Compiles the window; errors name the key (`from`, `to`, `tz`, `days`).
    pub fn compile(hours: &file::Hours) -> Result<Self, (&'static str, String)> {
        let from_minute = parse_clock(&hours.from).map_err(|m| ("from", m))?;
        let to_minute = parse_clock(&hours.to).map_err(|m| ("to", m))?;
        if from_minute == to_minute {
            return Err(("to", "an empty window: from and to are equal".to_owned()));
        }
        let tz: Tz = hours
            .tz
            .parse()
            .map_err(|_| ("tz", format!("unknown time zone {:?}: use an IANA name like Europe/Berlin", hours.tz)))?;
        let days = match &hours.days {
            None => 0x7f,
            Some(days) => {
                let mut mask = 0u8;
                for day in days {
                    let index = DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(day)).ok_or_else(|| {
                        ("days", format!("unknown day {day:?}: use mon, tue, wed, thu, fri, sat, sun"))
                    })?;
                    mask |= 1 << index;
                }
                mask
            }
        };
        Ok(Self { from_minute, to_minute, tz, days })
    }

    /// Whether `now` falls inside the window (a window past midnight belongs to the day it starts).
    pub fn contains(&self, now: SystemTime) -> bool {
        let local = DateTime::<Utc>::from(now).with_timezone(&self.tz);
        let minute = (local.hour() * 60 + local.minute()) as u16;
        let weekday = local.weekday().num_days_from_monday();
        if self.from_minute < self.to_minute {
            self.on(weekday) && (self.from_minute..self.to_minute).contains(&minute)
        } else if minute >= self.from_minute {
            self.on(weekday)
        } else {
            minute < self.to_minute && self.on((weekday + 6) % 7)
        }
    }

    fn on(&self, weekday: u32) -> bool {
        self.days & (1 << weekday) != 0
    }

    /// `07:00-22:00 Europe/Berlin`, for `tollgate explain`.
    pub fn describe(&self) -> String {
        let clock = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        let days = if self.days == 0x7f {
            String::new()
        } else {
            let names: Vec<&str> = (0..7).filter(|d| self.on(*d)).map(|d| DAY_NAMES[d as usize]).collect();
            format!(" on {}", names.join(","))
        };
        format!("{}-{} {}{days}", clock(self.from_minute), clock(self.to_minute), self.tz.name())
    }
}

fn parse_clock(text: &str) -> Result<u16, String> {
    let invalid = || format!("invalid time {text:?}: write HH:MM (24-hour)");
    let (hours, minutes) = text.split_once(':').ok_or_else(invalid)?;
    if hours.len() != 2 || minutes.len() != 2 {
        return Err(invalid());
    }
    let hours: u16 = hours.parse().map_err(|_| invalid())?;
    let minutes: u16 = minutes.parse().map_err(|_| invalid())?;
    if hours > 23 || minutes > 59 {
        return Err(invalid());
    }
    Ok(hours * 60 + minutes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hours(from: &str, to: &str, tz: &str, days: Option<&[&str]>) -> Hours {
        Hours::compile(&file::Hours {
            from: from.into(),
            to: to.into(),
            tz: tz.into(),
            days: days.map(|d| d.iter().map(|s| s.to_string()).collect()),
        })
        .unwrap()
    }

    fn at(rfc3339: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().into()
    }

    #[test]
    fn windows_follow_the_time_zone() {
        let berlin = hours("07:00", "22:00", "Europe/Berlin", None);
        // 05:59 UTC in winter is 06:59 in Berlin; 06:00 UTC is 07:00.
        assert!(!berlin.contains(at("2026-12-01T05:59:00Z")));
        assert!(berlin.contains(at("2026-12-01T06:00:00Z")));
        assert!(berlin.contains(at("2026-12-01T20:59:00Z")));
        assert!(!berlin.contains(at("2026-12-01T21:00:00Z")));
        // Summer time: 07:00 Berlin is 05:00 UTC.
        assert!(berlin.contains(at("2026-07-01T05:00:00Z")));
    }

    #[test]
    fn overnight_windows_and_weekdays() {
        let night = hours("22:00", "06:00", "UTC", Some(&["fri"]));
        assert!(night.contains(at("2026-11-27T23:00:00Z"))); // Friday night
        assert!(night.contains(at("2026-11-28T05:59:00Z"))); // early Saturday, Friday's window
        assert!(!night.contains(at("2026-11-28T23:00:00Z"))); // Saturday night
        assert_eq!(night.describe(), "22:00-06:00 UTC on fri");
    }

    #[test]
    fn bad_windows_are_refused() {
        let bad = |from: &str, to: &str, tz: &str| {
            Hours::compile(&file::Hours { from: from.into(), to: to.into(), tz: tz.into(), days: None }).unwrap_err().0
        };
        assert_eq!(bad("7:00", "22:00", "UTC"), "from");
        assert_eq!(bad("07:00", "24:00", "UTC"), "to");
        assert_eq!(bad("07:00", "22:00", "Mars/Olympus"), "tz");
        assert_eq!(bad("07:00", "07:00", "UTC"), "to");
    }
}
