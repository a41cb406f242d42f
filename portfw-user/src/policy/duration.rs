//! Durations as policies write them: a positive whole number and a unit, `90s`, `5m`, `6h`, `1d`.
//!
//! Whole seconds are the finest grain on purpose: every duration a policy sets is a timeout or
//! a window that the kernel checks against `bpf_ktime_get_ns`, where sub-second values would
//! only invite mistakes (`5ms` for `5m`). The upper bound keeps every duration, in
//! nanoseconds, well inside a `u64`.

use std::time::Duration;

use thiserror::Error;

/// The longest duration a policy may write.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * DAY);

const MINUTE: u64 = 60;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// Units, largest first, with their length in seconds.
const UNITS: [(&str, u64); 4] = [("d", DAY), ("h", HOUR), ("m", MINUTE), ("s", 1)];

/// What the messages show as a well-formed duration.
const EXPECTED: &str = "a whole number and a unit: `s`, `m`, `h` or `d`, as in `90s`, `5m`, `6h`";

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DurationError {
    #[error("empty duration; expected {EXPECTED}")]
    Empty,
    #[error("duration `{0}` has no unit; write `{0}s` for seconds, or use `m`, `h` or `d`")]
    MissingUnit(String),
    #[error("unknown unit `{unit}` in duration `{text}`; expected `s`, `m`, `h` or `d`{hint}")]
    UnknownUnit {
        text: String,
        unit: String,
        hint: String,
    },
    #[error("duration `{text}` is not a whole number of its unit; {hint}")]
    Fraction { text: String, hint: String },
    #[error("duration `{0}` combines units; write it in one unit, as in `90m` for `1h30m`")]
    Compound(String),
    #[error("duration `{0}` must be written without a sign")]
    Signed(String),
    #[error("duration `{0}` must be longer than zero")]
    Zero(String),
    #[error("duration `{0}` is too long; at most 365d")]
    TooLong(String),
    #[error("cannot read duration `{0}`; expected {EXPECTED}")]
    Malformed(String),
}

/// Parses a duration as written in a policy (the text of a YAML scalar).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    if text.starts_with(['+', '-']) {
        return Err(DurationError::Signed(text.to_owned()));
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, rest) = text.split_at(split);
    if number.is_empty() {
        return Err(DurationError::Malformed(text.to_owned()));
    }
    if rest.is_empty() {
        return Err(DurationError::MissingUnit(text.to_owned()));
    }
    if let Some(after) = rest.strip_prefix('.')
        && after.starts_with(|c: char| c.is_ascii_digit())
    {
        return Err(DurationError::Fraction {
            text: text.to_owned(),
            hint: fraction_hint(number, after),
        });
    }
    let split = rest
        .find(|c: char| !c.is_alphabetic())
        .unwrap_or(rest.len());
    let (unit, tail) = rest.split_at(split);
    if unit.is_empty() {
        return Err(DurationError::Malformed(text.to_owned()));
    }
    let known = UNITS.iter().find(|(name, _)| *name == unit);
    if !tail.is_empty() {
        let compound = known.is_some() && tail.starts_with(|c: char| c.is_ascii_digit());
        return Err(if compound {
            DurationError::Compound(text.to_owned())
        } else {
            DurationError::Malformed(text.to_owned())
        });
    }
    let Some(&(_, seconds)) = known else {
        return Err(DurationError::UnknownUnit {
            text: text.to_owned(),
            unit: unit.to_owned(),
            hint: unit_hint(number, unit),
        });
    };
    // Digits that overflow a u64 are certainly too long.
    let count: u64 = number
        .parse()
        .map_err(|_| DurationError::TooLong(text.to_owned()))?;
    if count == 0 {
        return Err(DurationError::Zero(text.to_owned()));
    }
    let duration = count
        .checked_mul(seconds)
        .map(Duration::from_secs)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(|| DurationError::TooLong(text.to_owned()))?;
    Ok(duration)
}

/// How to write `WHOLE.FRACTION UNIT` in whole units: "write `90s`" for `1.5m` when a smaller
/// unit holds it exactly, otherwise a general hint.
fn fraction_hint(whole: &str, after: &str) -> String {
    let general = "use a smaller unit, as in `90s` for `1.5m`".to_owned();
    let digits_end = after
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(after.len());
    let (fraction, unit) = after.split_at(digits_end);
    let Some(&(_, length)) = UNITS.iter().find(|(name, _)| *name == unit) else {
        return general;
    };
    // whole.fraction × length seconds, exactly: (whole × 10^n + fraction) × length / 10^n.
    let exact = u32::try_from(fraction.len())
        .ok()
        .and_then(|n| 10u64.checked_pow(n))
        .and_then(|scale| {
            let whole: u64 = whole.parse().ok()?;
            let fraction: u64 = fraction.parse().ok()?;
            let scaled = whole.checked_mul(scale)?.checked_add(fraction)?;
            let total = scaled.checked_mul(length)?;
            Some((total.is_multiple_of(scale), total / scale))
        });
    match exact {
        Some((true, 0)) => "it must be longer than zero".to_owned(),
        Some((true, secs)) if secs <= MAX_DURATION.as_secs() => {
            format!("write `{}`", format_duration(Duration::from_secs(secs)))
        }
        Some((false, _)) if length == 1 => "the smallest unit is the second, `s`".to_owned(),
        _ => general,
    }
}

/// "; ..." pointing a near miss at the unit meant, else nothing.
fn unit_hint(number: &str, unit: &str) -> String {
    let lower = unit.to_lowercase();
    let meant = match lower.as_str() {
        "s" | "m" | "h" | "d" if lower != unit => {
            return format!("; units are lowercase: `{number}{lower}`");
        }
        "sec" | "secs" | "second" | "seconds" => "s",
        "min" | "mins" | "minute" | "minutes" => "m",
        "hr" | "hrs" | "hour" | "hours" => "h",
        "day" | "days" => "d",
        "ms" | "us" | "µs" | "ns" => return "; the smallest unit is the second, `s`".to_owned(),
        "w" | "wk" | "week" | "weeks" => return "; write weeks in days, as in `7d`".to_owned(),
        "y" | "yr" | "year" | "years" => return "; write a year as `365d`".to_owned(),
        _ => return String::new(),
    };
    format!("; write `{number}{meant}`")
}

/// A rate as policies write it: `N/s`, `N/m`, `N/h`, `N/d` or `N/<duration>` (`5/10s`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    /// How many in each `per`; at least 1.
    pub count: u32,
    pub per: Duration,
}

/// The fastest rate a policy may write: one per microsecond. Faster would leave the kernel's
/// buckets a zero interval, which means no limit at all.
pub const MAX_RATE_PER_SEC: u64 = 1_000_000;

impl Rate {
    /// Nanoseconds between two at this rate: `per / count`.
    pub fn interval_ns(&self) -> u64 {
        let per = u64::try_from(self.per.as_nanos()).unwrap_or(u64::MAX);
        per / u64::from(self.count.max(1))
    }

    /// How far a GCRA bucket may run ahead: `(count - 1) * interval`, so that `count` may
    /// arrive at once.
    pub fn tolerance_ns(&self) -> u64 {
        u64::from(self.count.saturating_sub(1)).saturating_mul(self.interval_ns())
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let per = format_duration(self.per);
        // `5/1s` reads better as `5/s`.
        let per = per
            .strip_prefix('1')
            .filter(|u| u.len() == 1)
            .unwrap_or(&per);
        write!(f, "{}/{per}", self.count)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum RateError {
    #[error(
        "cannot read rate `{0}`; expected COUNT/PERIOD, as in `100/s`, `6/30s`, `10/m` or `50/h`"
    )]
    Malformed(String),
    #[error("the count of rate `{0}` must be a whole number from 1 to 4294967295")]
    Count(String),
    #[error("in rate `{text}`: {source}")]
    Period {
        text: String,
        #[source]
        source: DurationError,
    },
    #[error("rate `{0}` is faster than {MAX_RATE_PER_SEC} per second, the most supported")]
    TooFast(String),
}

/// Parses a rate (the text of a YAML scalar): a count, `/`, then a unit alone (`s`, `m`,
/// `h`, `d`: one of it) or a duration.
pub fn parse_rate(text: &str) -> Result<Rate, RateError> {
    let Some((count, per)) = text.split_once('/') else {
        return Err(RateError::Malformed(text.to_owned()));
    };
    if count.is_empty() || per.is_empty() {
        return Err(RateError::Malformed(text.to_owned()));
    }
    if !count.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RateError::Count(text.to_owned()));
    }
    let count = count
        .parse::<u32>()
        .ok()
        .filter(|&c| c > 0)
        .ok_or_else(|| RateError::Count(text.to_owned()))?;
    let unit_alone = UNITS.iter().any(|(name, _)| *name == per);
    let per = if unit_alone {
        parse_duration(&format!("1{per}"))
    } else {
        parse_duration(per)
    }
    .map_err(|source| RateError::Period {
        text: text.to_owned(),
        source,
    })?;
    let rate = Rate { count, per };
    if u128::from(count) * 1_000_000_000 > u128::from(MAX_RATE_PER_SEC) * per.as_nanos() {
        return Err(RateError::TooFast(text.to_owned()));
    }
    Ok(rate)
}

/// `duration` in the largest unit that holds it exactly, as a policy would write it: `6h`,
/// `10s`, `90m`, `1d`. Sub-second parts, which policies cannot write, are dropped.
pub fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match UNITS
        .iter()
        .find(|&&(_, length)| secs != 0 && secs.is_multiple_of(length))
    {
        Some(&(name, length)) => format!("{}{name}", secs / length),
        None => "0s".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Result<Duration, DurationError> {
        Ok(Duration::from_secs(s))
    }

    fn message(text: &str) -> String {
        match parse_duration(text) {
            Ok(d) => panic!("`{text}` parsed as {d:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_unit() {
        assert_eq!(parse_duration("90s"), secs(90));
        assert_eq!(parse_duration("5m"), secs(300));
        assert_eq!(parse_duration("6h"), secs(6 * 3600));
        assert_eq!(parse_duration("1d"), secs(86_400));
        assert_eq!(parse_duration("1s"), secs(1));
        assert_eq!(parse_duration("007m"), secs(420));
        assert_eq!(parse_duration("365d"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("31536000s"), Ok(MAX_DURATION));
    }

    #[test]
    fn zero_and_signs() {
        assert_eq!(message("0s"), "duration `0s` must be longer than zero");
        assert_eq!(message("000h"), "duration `000h` must be longer than zero");
        assert_eq!(
            message("-5s"),
            "duration `-5s` must be written without a sign"
        );
        assert_eq!(
            message("+5s"),
            "duration `+5s` must be written without a sign"
        );
    }

    #[test]
    fn missing_and_unknown_units() {
        assert_eq!(
            message("60"),
            "duration `60` has no unit; write `60s` for seconds, or use `m`, `h` or `d`"
        );
        assert_eq!(
            message("5x"),
            "unknown unit `x` in duration `5x`; expected `s`, `m`, `h` or `d`"
        );
        assert_eq!(
            message("5S"),
            "unknown unit `S` in duration `5S`; expected `s`, `m`, `h` or `d`; units are \
             lowercase: `5s`"
        );
        assert_eq!(
            message("10min"),
            "unknown unit `min` in duration `10min`; expected `s`, `m`, `h` or `d`; write `10m`"
        );
        assert!(message("2hours").ends_with("; write `2h`"));
        assert!(message("3days").ends_with("; write `3d`"));
        assert!(message("30sec").ends_with("; write `30s`"));
        assert!(message("500ms").ends_with("; the smallest unit is the second, `s`"));
        assert!(message("2w").ends_with("; write weeks in days, as in `7d`"));
        assert!(message("1y").ends_with("; write a year as `365d`"));
    }

    #[test]
    fn fractions_compounds_and_garbage() {
        assert_eq!(
            message("1.5m"),
            "duration `1.5m` is not a whole number of its unit; write `90s`"
        );
        assert!(message("0.5d").ends_with("; write `12h`"));
        assert!(message("2.50h").ends_with("; write `150m`"));
        assert!(message("0.25m").ends_with("; write `15s`"));
        assert!(message("0.1m").ends_with("; write `6s`"));
        assert!(message("1.5s").ends_with("; the smallest unit is the second, `s`"));
        assert!(message("0.0s").ends_with("; it must be longer than zero"));
        let general = "; use a smaller unit, as in `90s` for `1.5m`";
        // Too long in any unit, not a unit, no unit, sub-second in minutes, too many digits.
        for text in [
            "365.5d",
            "1.5x",
            "1.5",
            "0.001m",
            "1.99999999999999999999999h",
        ] {
            assert!(
                message(text).ends_with(general),
                "{text}: {}",
                message(text)
            );
        }
        assert!(matches!(
            parse_duration("0.5"),
            Err(DurationError::Fraction { .. })
        ));
        assert_eq!(
            message("1h30m"),
            "duration `1h30m` combines units; write it in one unit, as in `90m` for `1h30m`"
        );
        for garbage in ["s", "h5", ".5s", "5 s", "5s ", "5s!", "5.s", "five", "1e3s"] {
            assert_eq!(
                parse_duration(garbage),
                Err(DurationError::Malformed(garbage.to_owned())),
                "{garbage}"
            );
        }
        assert_eq!(
            message("abc"),
            "cannot read duration `abc`; expected a whole number and a unit: `s`, `m`, `h` or \
             `d`, as in `90s`, `5m`, `6h`"
        );
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
    }

    #[test]
    fn too_long_and_overflow() {
        assert_eq!(message("366d"), "duration `366d` is too long; at most 365d");
        assert_eq!(
            parse_duration("31536001s"),
            Err(DurationError::TooLong("31536001s".to_owned()))
        );
        // Overflows the multiplication, then the u64 itself.
        assert!(matches!(
            parse_duration("18446744073709551615d"),
            Err(DurationError::TooLong(_))
        ));
        assert!(matches!(
            parse_duration("99999999999999999999999s"),
            Err(DurationError::TooLong(_))
        ));
        // The longest duration fits u64 nanoseconds with room to spare.
        assert!(u64::try_from(MAX_DURATION.as_nanos()).is_ok());
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        let format = |s| format_duration(Duration::from_secs(s));
        assert_eq!(format(6 * 3600), "6h");
        assert_eq!(format(10), "10s");
        assert_eq!(format(60), "1m");
        assert_eq!(format(90), "90s");
        assert_eq!(format(5400), "90m");
        assert_eq!(format(86_400), "1d");
        assert_eq!(format(0), "0s");
        for text in ["90s", "5m", "6h", "1d", "365d", "59s", "61m"] {
            let parsed = parse_duration(text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(format_duration(parsed), text);
        }
    }

    #[test]
    fn rates() {
        let rate = |t: &str| parse_rate(t).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(
            rate("5/10s"),
            Rate {
                count: 5,
                per: Duration::from_secs(10)
            }
        );
        assert_eq!(rate("100/s").per, Duration::from_secs(1));
        assert_eq!(rate("10/m").per, Duration::from_secs(60));
        assert_eq!(rate("50/h").per, Duration::from_secs(3600));
        assert_eq!(rate("3/d").per, Duration::from_secs(86_400));
        assert_eq!(rate("6/30s").to_string(), "6/30s");
        assert_eq!(rate("100/s").to_string(), "100/s");
        assert_eq!(rate("100/1s").to_string(), "100/s");
        assert_eq!(rate("5/10s").interval_ns(), 2_000_000_000);
        assert_eq!(rate("5/10s").tolerance_ns(), 8_000_000_000);
        assert_eq!(rate("1/m").tolerance_ns(), 0);
        assert_eq!(rate("1000000/s").interval_ns(), 1_000);
        let message = |t: &str| {
            parse_rate(t)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(message("5").starts_with("cannot read rate `5`"));
        assert!(message("/s").starts_with("cannot read rate"));
        assert!(message("0/s").starts_with("the count of rate `0/s`"));
        assert!(message("-1/s").starts_with("the count of rate"));
        assert!(message("x/s").starts_with("the count of rate"));
        assert_eq!(
            message("5/10x"),
            "in rate `5/10x`: unknown unit `x` in duration `10x`; expected `s`, `m`, `h` or `d`"
        );
        assert!(message("5/0s").ends_with("must be longer than zero"));
        assert!(message("2000000/s").contains("faster than 1000000 per second"));
    }
}
