//! Period arithmetic in the site's IANA time zone (stored in UTC,
//! reported per site in its zone): `[from, to)` split into `1h`, `1d`, `1mo`
//! or `1y` steps, half-open, returned as UTC millisecond bounds.
//!
//! Days, months and years are calendar units of the site's zone, so a day is
//! 23 h or 25 h on DST changes and a year starts at local midnight on 1 January.
//! Hours are 3600 s of physical time from the local hour boundary at or before
//! `from` (so the repeated hour of an autumn change is two periods).
//! Boundaries start at the calendar boundary at or before `from`, and the first
//! and last periods are clipped to `[from, to)`.
//!
//! A period is `interim` unless it is one complete calendar year of the site's
//! zone that has ended (`to ≤ now`): the EED's annual figure.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use serde::{Serialize, Serializer};

/// The most periods one split may return.
pub const MAX_PERIODS: usize = 100_000;

const HOUR_MS: i64 = 3_600_000;

/// A step of the indicators endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    Hour,
    Day,
    Month,
    Year,
}

impl Step {
    pub fn parse(s: &str) -> Result<Step, PeriodError> {
        match s {
            "1h" => Ok(Step::Hour),
            "1d" => Ok(Step::Day),
            "1mo" => Ok(Step::Month),
            "1y" => Ok(Step::Year),
            _ => Err(PeriodError::Step(s.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Step::Hour => "1h",
            Step::Day => "1d",
            Step::Month => "1mo",
            Step::Year => "1y",
        }
    }
}

impl Serialize for Step {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One period, UTC milliseconds, half-open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub from_ms: i64,
    pub to_ms: i64,
    pub interim: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PeriodError {
    #[error("step {0:?} is not one of 1h, 1d, 1mo, 1y")]
    Step(String),
    #[error("from ({from_ms}) must be before to ({to_ms})")]
    Empty { from_ms: i64, to_ms: i64 },
    #[error("[from, to) in steps of {step} gives more than {max} periods; use a larger step")]
    TooMany { step: &'static str, max: usize },
    #[error("time out of range: {0}")]
    Range(String),
}

fn ts(ms: i64) -> Result<Timestamp, PeriodError> {
    Timestamp::from_millisecond(ms).map_err(|e| PeriodError::Range(e.to_string()))
}

fn range<E: std::fmt::Display>(e: E) -> PeriodError {
    PeriodError::Range(e.to_string())
}

/// Local midnight starting `date` in `tz`, as UTC ms (the first instant of the
/// day when midnight falls in a DST gap).
fn start_of(date: Date, tz: &TimeZone) -> Result<i64, PeriodError> {
    let z = date.to_zoned_datetime(tz.clone()).map_err(range)?.start_of_day().map_err(range)?;
    Ok(z.timestamp().as_millisecond())
}

/// `[start, end)` of calendar year `year` in `tz`, UTC ms.
pub fn calendar_year(year: i16, tz: &TimeZone) -> Result<(i64, i64), PeriodError> {
    let d = Date::new(year, 1, 1).map_err(range)?;
    let next = d.checked_add(1.year()).map_err(range)?;
    Ok((start_of(d, tz)?, start_of(next, tz)?))
}

/// The calendar boundary at or before `ms`, and the `k`-th boundary after it.
struct Grid {
    step: Step,
    tz: TimeZone,
    origin_ms: i64,
    origin_date: Date,
}

impl Grid {
    fn new(step: Step, tz: &TimeZone, ms: i64) -> Result<Grid, PeriodError> {
        let z = ts(ms)?.to_zoned_datetime(tz.clone());
        let date = match step {
            Step::Hour | Step::Day => z.date(),
            Step::Month => z.date().first_of_month(),
            Step::Year => z.date().first_of_year(),
        };
        let origin_ms = match step {
            Step::Hour => {
                let off = i64::from(tz.to_offset(z.timestamp()).seconds()) * 1000;
                ms - (ms + off).rem_euclid(HOUR_MS)
            }
            _ => start_of(date, tz)?,
        };
        Ok(Grid { step, tz: tz.clone(), origin_ms, origin_date: date })
    }

    fn boundary(&self, k: i64) -> Result<i64, PeriodError> {
        let d = |span: jiff::Span| self.origin_date.checked_add(span).map_err(range);
        match self.step {
            Step::Hour => Ok(self.origin_ms + k * HOUR_MS),
            Step::Day => start_of(d(k.days())?, &self.tz),
            Step::Month => start_of(d(k.months())?, &self.tz),
            Step::Year => start_of(d(k.years())?, &self.tz),
        }
    }
}

/// Whether `[from_ms, to_ms)` is one complete, ended calendar year in `tz`.
pub fn is_complete_year(from_ms: i64, to_ms: i64, tz: &TimeZone, now_ms: i64) -> bool {
    let Ok(t) = ts(from_ms) else { return false };
    let year = t.to_zoned_datetime(tz.clone()).year();
    matches!(calendar_year(year, tz), Ok((a, b)) if a == from_ms && b == to_ms && to_ms <= now_ms)
}

/// Splits `[from_ms, to_ms)` into `step`s of the site's zone.
pub fn split(from_ms: i64, to_ms: i64, step: Step, tz: &TimeZone, now_ms: i64) -> Result<Vec<Period>, PeriodError> {
    if from_ms >= to_ms {
        return Err(PeriodError::Empty { from_ms, to_ms });
    }
    let grid = Grid::new(step, tz, from_ms)?;
    let mut out = Vec::new();
    let mut k = 0i64;
    let mut start = grid.origin_ms;
    while start < to_ms {
        let end = grid.boundary(k + 1)?;
        if end <= start {
            return Err(PeriodError::Range(format!("calendar boundary {end} does not follow {start}")));
        }
        if end > from_ms {
            if out.len() == MAX_PERIODS {
                return Err(PeriodError::TooMany { step: step.as_str(), max: MAX_PERIODS });
            }
            let (a, b) = (start.max(from_ms), end.min(to_ms));
            let interim = !(step == Step::Year && a == start && b == end && b <= now_ms);
            out.push(Period { from_ms: a, to_ms: b, interim });
        }
        start = end;
        k += 1;
    }
    Ok(out)
}

/// A `window` label of the collector's indicator metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    Hour,
    Day,
    Days30,
    Days365,
    /// From 1 January of the current year in the site's zone.
    YearToDate,
    /// The last complete calendar year in the site's zone.
    Year,
}

impl Window {
    pub const ALL: [Window; 6] =
        [Window::Hour, Window::Day, Window::Days30, Window::Days365, Window::YearToDate, Window::Year];

    pub fn parse(s: &str) -> Option<Window> {
        Window::ALL.into_iter().find(|w| w.as_str() == s)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Window::Hour => "1h",
            Window::Day => "24h",
            Window::Days30 => "30d",
            Window::Days365 => "365d",
            Window::YearToDate => "ytd",
            Window::Year => "year",
        }
    }

    /// `[from, to)` of the window at `now_ms`, on whole minutes (the ledger's
    /// resolution): rolling windows end at the current minute; `year` is the
    /// last complete calendar year of `tz`.
    pub fn bounds(self, now_ms: i64, tz: &TimeZone) -> Result<(i64, i64), PeriodError> {
        let now = now_ms - now_ms.rem_euclid(60_000);
        let rolling = |h: i64| Ok((now - h * HOUR_MS, now));
        let year = ts(now)?.to_zoned_datetime(tz.clone()).year();
        match self {
            Window::Hour => rolling(1),
            Window::Day => rolling(24),
            Window::Days30 => rolling(30 * 24),
            Window::Days365 => rolling(365 * 24),
            Window::YearToDate => Ok((calendar_year(year, tz)?.0, now)),
            Window::Year => calendar_year(year - 1, tz),
        }
    }
}

/// An annual quantity (GOs per calendar year, kWh) brought down to
/// `[from_ms, to_ms)`: Σ over the calendar years it overlaps of
/// annual × overlap / year length. Additive over any split of the range, and
/// a whole year gets its whole quantity.
pub fn pro_rata_temporis(annual: &[(i16, f64)], from_ms: i64, to_ms: i64, tz: &TimeZone) -> Result<f64, PeriodError> {
    if from_ms >= to_ms {
        return Ok(0.0);
    }
    let mut total = 0.0;
    for &(year, qty) in annual {
        let (a, b) = calendar_year(year, tz)?;
        let overlap = to_ms.min(b) - from_ms.max(a);
        if overlap > 0 {
            total += qty * overlap as f64 / (b - a) as f64;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn paris() -> TimeZone {
        TimeZone::get("Europe/Paris").expect("Europe/Paris in the system tzdb")
    }

    fn ms(s: &str) -> i64 {
        s.parse::<Timestamp>().expect("RFC 3339").as_millisecond()
    }

    const NOW: i64 = i64::MAX / 2;

    /// Spring forward (2025-03-30) is a 23-hour day, fall back (2025-10-26) a 25-hour day.
    #[test]
    fn dst_days_in_paris() {
        let p = split(ms("2025-03-28T23:00:00Z"), ms("2025-04-01T22:00:00Z"), Step::Day, &paris(), NOW).expect("split");
        let hours: Vec<i64> = p.iter().map(|p| (p.to_ms - p.from_ms) / HOUR_MS).collect();
        assert_eq!(hours, vec![24, 23, 24, 24]);
        assert_eq!(p[1].from_ms, ms("2025-03-29T23:00:00Z"));
        assert_eq!(p[1].to_ms, ms("2025-03-30T22:00:00Z"));
        let p = split(ms("2025-10-25T22:00:00Z"), ms("2025-10-27T23:00:00Z"), Step::Day, &paris(), NOW).expect("split");
        let hours: Vec<i64> = p.iter().map(|p| (p.to_ms - p.from_ms) / HOUR_MS).collect();
        assert_eq!(hours, vec![25, 24]);
        assert!(p.iter().all(|p| p.interim));
        // The 25-hour day in hours: 25 periods, the repeated 02:00 hour twice.
        let h = split(p[0].from_ms, p[0].to_ms, Step::Hour, &paris(), NOW).expect("split");
        assert_eq!(h.len(), 25);
        assert!(h.windows(2).all(|w| w[0].to_ms == w[1].from_ms));
    }

    /// A calendar year in Paris starts at 23:00 UTC the day before and is not
    /// interim only once it is complete and over.
    #[test]
    fn calendar_years_in_the_site_zone() {
        let (a, b) = calendar_year(2025, &paris()).expect("year");
        assert_eq!(a, ms("2024-12-31T23:00:00Z"));
        assert_eq!(b, ms("2025-12-31T23:00:00Z"));
        let p = split(a, b, Step::Year, &paris(), b).expect("split");
        assert_eq!(p, vec![Period { from_ms: a, to_ms: b, interim: false }]);
        // Not yet over: interim.
        assert!(split(a, b, Step::Year, &paris(), b - 1).expect("split")[0].interim);
        // UTC bounds are not the Paris year: both pieces are interim.
        let p = split(ms("2025-01-01T00:00:00Z"), ms("2026-01-01T00:00:00Z"), Step::Year, &paris(), NOW).expect("s");
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|p| p.interim));
        // Months are never annual.
        let m = split(a, b, Step::Month, &paris(), NOW).expect("split");
        assert_eq!(m.len(), 12);
        assert!(m.iter().all(|p| p.interim));
        assert_eq!(m[3].from_ms, ms("2025-03-31T22:00:00Z"), "April starts at CEST midnight");
        assert!(is_complete_year(a, b, &paris(), NOW));
        assert!(!is_complete_year(a, b - 1, &paris(), NOW));
    }

    #[test]
    fn clipping_and_errors() {
        let p = split(ms("2025-01-15T10:30:00Z"), ms("2025-03-02T00:00:00Z"), Step::Month, &paris(), NOW).expect("s");
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].from_ms, ms("2025-01-15T10:30:00Z"));
        assert_eq!(p[0].to_ms, ms("2025-01-31T23:00:00Z"));
        assert_eq!(p[2].to_ms, ms("2025-03-02T00:00:00Z"));
        assert_eq!(Step::parse("1w"), Err(PeriodError::Step("1w".into())));
        assert!(matches!(split(5, 5, Step::Day, &paris(), NOW), Err(PeriodError::Empty { .. })));
        assert!(matches!(
            split(0, 20 * 365 * 24 * HOUR_MS, Step::Hour, &paris(), NOW),
            Err(PeriodError::TooMany { .. })
        ));
        // Hours in a zone with a half-hour offset start at :30 UTC.
        let kolkata = TimeZone::get("Asia/Kolkata").expect("tz");
        let h = split(ms("2025-01-01T00:00:00Z"), ms("2025-01-01T02:00:00Z"), Step::Hour, &kolkata, NOW).expect("s");
        assert_eq!(h[0].to_ms, ms("2025-01-01T00:30:00Z"));
    }

    #[test]
    fn metric_windows() {
        let now = ms("2026-03-10T12:34:56Z");
        assert_eq!(Window::Year.bounds(now, &paris()), calendar_year(2025, &paris()));
        assert_eq!(
            Window::YearToDate.bounds(now, &paris()),
            Ok((ms("2025-12-31T23:00:00Z"), ms("2026-03-10T12:34:00Z")))
        );
        assert_eq!(Window::Day.bounds(now, &paris()), Ok((ms("2026-03-09T12:34:00Z"), ms("2026-03-10T12:34:00Z"))));
        assert!(Window::ALL.iter().all(|w| Window::parse(w.as_str()) == Some(*w)));
        let (a, b) = Window::Year.bounds(now, &paris()).expect("year");
        assert!(is_complete_year(a, b, &paris(), now));
    }

    #[test]
    fn pro_rata_of_annual_certificates() {
        let tz = paris();
        let (a, b) = calendar_year(2025, &tz).expect("year");
        let annual = [(2025, 8_760_000.0)];
        assert_eq!(pro_rata_temporis(&annual, a, b, &tz).expect("ok"), 8_760_000.0);
        let june = split(a, b, Step::Month, &tz, NOW).expect("s")[5];
        let got = pro_rata_temporis(&annual, june.from_ms, june.to_ms, &tz).expect("ok");
        assert!((got - 720_000.0).abs() < 1e-6, "{got}");
    }

    proptest! {
        /// Periods tile [from, to) exactly, in order, for every step.
        #[test]
        fn periods_tile_the_range(from in 1_600_000_000_000i64..1_800_000_000_000, len in 1i64..(400 * 24 * HOUR_MS), step in 0usize..4) {
            let step = [Step::Hour, Step::Day, Step::Month, Step::Year][step];
            let to = from + if step == Step::Hour { len / 50 + 1 } else { len };
            let p = split(from, to, step, &paris(), NOW).expect("split");
            prop_assert_eq!(p[0].from_ms, from);
            prop_assert_eq!(p[p.len() - 1].to_ms, to);
            prop_assert!(p.windows(2).all(|w| w[0].to_ms == w[1].from_ms && w[0].from_ms < w[0].to_ms));
        }

        /// Pro-rata allocation is additive over any split.
        #[test]
        fn pro_rata_is_additive(from in 1_700_000_000_000i64..1_750_000_000_000, a in 1i64..10_000_000_000, b in 1i64..10_000_000_000) {
            let tz = paris();
            let annual = [(2023, 1e6), (2024, 2e6), (2025, 3e6), (2026, 5e6)];
            let whole = pro_rata_temporis(&annual, from, from + a + b, &tz).expect("ok");
            let parts = pro_rata_temporis(&annual, from, from + a, &tz).expect("ok") + pro_rata_temporis(&annual, from + a, from + a + b, &tz).expect("ok");
            prop_assert!((whole - parts).abs() <= 1e-6 * whole.max(1.0));
        }
    }
}
