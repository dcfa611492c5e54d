//! Wall-clock strings cached per second: the HTTP `Date` header (IMF-fixdate) and the
//! RFC 3339 timestamp of the JSON protocol. Each reactor refreshes its own copy once per
//! loop iteration; formatting happens at most once a second.

use std::time::{SystemTime, UNIX_EPOCH};

/// The cached wall-clock strings of one reactor.
///
/// ```
/// let clock = reactor::clock::Clock::default();
/// assert!(clock.http_date().ends_with(b" GMT"));
/// ```
pub struct Clock {
    secs: u64,
    http: [u8; 29],
    rfc3339: [u8; 20],
}

impl Default for Clock {
    fn default() -> Self {
        let mut c = Clock {
            secs: u64::MAX,
            http: [b' '; 29],
            rfc3339: [b' '; 20],
        };
        c.refresh();
        c
    }
}

impl Clock {
    /// Re-reads the system time and reformats if the second changed.
    pub fn refresh(&mut self) {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.set(secs);
    }

    /// Sets the time to `secs` since the Unix epoch.
    pub fn set(&mut self, secs: u64) {
        if secs == self.secs {
            return;
        }
        self.secs = secs;
        let days = (secs / 86_400) as i64;
        let rem = secs % 86_400;
        let (h, m, s) = (rem / 3600, rem / 60 % 60, rem % 60);
        let (y, mo, d) = civil_from_days(days);
        // 1970-01-01 was a Thursday.
        let wd = (days + 4).rem_euclid(7) as usize;
        const WD: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
        const MO: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let http = format!(
            "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
            WD[wd],
            d,
            MO[(mo - 1) as usize],
            y,
            h,
            m,
            s
        );
        let rfc = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z");
        self.http.copy_from_slice(&http.as_bytes()[..29]);
        self.rfc3339.copy_from_slice(&rfc.as_bytes()[..20]);
    }

    /// `Sun, 06 Nov 1994 08:49:37 GMT`
    pub fn http_date(&self) -> &[u8] {
        &self.http
    }

    /// `1994-11-06T08:49:37Z`
    pub fn rfc3339(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.rfc3339).unwrap_or("1970-01-01T00:00:00Z")
    }
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        let mut c = Clock::default();
        c.set(784_111_777);
        assert_eq!(c.http_date(), b"Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(c.rfc3339(), "1994-11-06T08:49:37Z");
        c.set(951_782_400); // leap day
        assert_eq!(c.rfc3339(), "2000-02-29T00:00:00Z");
        assert_eq!(&c.http_date()[..3], b"Tue");
        c.set(0);
        assert_eq!(c.http_date(), b"Thu, 01 Jan 1970 00:00:00 GMT");
    }
}
