//! Durations as the command line and the configuration write them. A leaf module:
//! the configuration and the handlers' `--work` both read durations.

use std::time::Duration;

/// Parses "30" (seconds), "30s", "250ms", "2m".
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (try 30s or 250ms)"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s or m)")),
    };
    if d > MAX_DURATION {
        return Err(format!(
            "`{s}` is longer than the longest duration, 20 days"
        ));
    }
    Ok(d)
}

/// The longest duration a flag takes: a connection keeps its times as 32-bit
/// millisecond stamps, read back within 49 days (`conn::Stamp`), and a deadline must
/// stay well inside that.
pub const MAX_DURATION: Duration = Duration::from_secs(20 * 86_400);
