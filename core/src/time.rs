//! The one conversion between the API's timestamps and the tuner's clock: seconds since the
//! Unix epoch as `f64`, to the millisecond (what status keeps).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Seconds since the epoch.
pub fn seconds(t: Timestamp) -> f64 {
    t.as_millisecond() as f64 / 1000.0
}

/// The timestamp of `secs` since the epoch, rounded to the millisecond; the epoch itself for a
/// value out of range (status from a broken writer must not stop the tuner).
pub fn timestamp(secs: f64) -> Timestamp {
    let ms = (secs * 1000.0).round();
    if !ms.is_finite() {
        return Timestamp::UNIX_EPOCH;
    }
    Timestamp::from_millisecond(ms as i64).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// [`timestamp`] as the API's `Time`.
pub fn time(secs: f64) -> Time {
    Time(timestamp(secs))
}

/// `t` minus `d`; `t` itself when `d` does not fit a signed duration or the result would be
/// out of range.
pub fn before(t: Timestamp, d: std::time::Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_sub(d).ok())
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_and_timestamps_round_trip_to_the_millisecond() {
        let t = Timestamp::from_millisecond(1_700_000_000_123).unwrap();
        assert_eq!(seconds(t), 1_700_000_000.123);
        assert_eq!(timestamp(seconds(t)), t);
        assert_eq!(time(1.0004).0.as_millisecond(), 1000);
    }

    #[test]
    fn out_of_range_is_the_epoch() {
        assert_eq!(timestamp(f64::NAN), Timestamp::UNIX_EPOCH);
        assert_eq!(timestamp(1e300), Timestamp::UNIX_EPOCH);
    }

    #[test]
    fn before_subtracts_or_keeps_the_time() {
        let t = Timestamp::from_second(1000).unwrap();
        assert_eq!(
            before(t, std::time::Duration::from_secs(10)).as_second(),
            990
        );
        assert_eq!(before(t, std::time::Duration::MAX), t);
    }
}
