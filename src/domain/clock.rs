//! The injected clock. Campaign windows and coupon expiry are decided against
//! it, and the Lua scripts receive its reading as an argument instead of
//! calling Redis `TIME`, so tests can move time and every replica of the
//! service decides with the same rule.

use std::fmt::Debug;
use std::sync::Mutex;
use time::OffsetDateTime;

/// A source of "now".
pub trait Clock: Send + Sync + Debug {
    fn now(&self) -> OffsetDateTime;

    /// Milliseconds since the Unix epoch, as the scripts store time.
    fn now_ms(&self) -> i64 {
        to_ms(self.now())
    }
}

/// Wall-clock time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    /// Straight from the system clock: a claim reads it a few times, and
    /// the way through a calendar date cost several times as much.
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
    }
}

/// A clock that only moves when told to: for tests and benches.
#[derive(Debug)]
pub struct ManualClock(Mutex<OffsetDateTime>);

impl ManualClock {
    pub fn new(at: OffsetDateTime) -> Self {
        Self(Mutex::new(at))
    }

    pub fn set(&self, at: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    pub fn advance(&self, by: time::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub fn to_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The inverse of [`to_ms`]; out-of-range values clamp to the epoch.
pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 in UTC with millisecond precision, the API's time format.
pub fn rfc3339(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside what four digits hold (not a clock this service reads).
        return format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            year,
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        );
    }
    // Every claim answers a time: written digit by digit, not through
    // `core::fmt` (a tenth of the answer's cost, measured).
    let mut out = [0u8; 24];
    let mut put = |at: usize, width: usize, mut v: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (v % 10) as u8;
            v /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, u8::from(t.month()).into());
    put(8, 2, t.day().into());
    put(11, 2, t.hour().into());
    put(14, 2, t.minute().into());
    put(17, 2, t.second().into());
    put(20, 3, t.millisecond().into());
    for (at, sep) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        out[at] = sep;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ms_round_trip_and_format() {
        let t = time::macros::datetime!(2026-11-11 00:00:01.250 UTC);
        assert_eq!(from_ms(to_ms(t)), t);
        assert_eq!(rfc3339(t), "2026-11-11T00:00:01.250Z");
        let t = time::macros::datetime!(1999-12-31 23:59:59.007 +08:00);
        assert_eq!(rfc3339(t), "1999-12-31T15:59:59.007Z");
        let t = time::macros::datetime!(0001-01-02 03:04:05.600 UTC);
        assert_eq!(rfc3339(t), "0001-01-02T03:04:05.600Z");
    }

    #[test]
    fn the_system_clock_reads_the_same_ms_both_ways() {
        let c = SystemClock;
        let (a, ms, b) = (to_ms(c.now()), c.now_ms(), to_ms(c.now()));
        assert!(a <= ms && ms <= b, "{a} {ms} {b}");
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let t = time::macros::datetime!(2026-11-11 00:00 UTC);
        let c = ManualClock::new(t);
        assert_eq!(c.now(), t);
        c.advance(time::Duration::days(1));
        assert_eq!(c.now(), time::macros::datetime!(2026-11-12 00:00 UTC));
    }
}
