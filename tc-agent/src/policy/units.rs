//! Rates and sizes as operators write them: `20Mbit`, `1.5Gbit`, `256KiB`.
//!
//! Rates are bits per second with SI prefixes (`kbit` = 1000 bit/s), as in
//! `tc`. `bps` is refused on purpose: `tc` reads it as *bytes* per second and
//! the ambiguity has burnt too many operators. Sizes are bytes, with SI
//! (`KB` = 1000) or binary (`KiB` = 1024) prefixes.

use std::fmt;

/// Lowest bandwidth a channel may have: below it a single MTU-sized packet
/// takes longer than a second to earn.
pub const MIN_RATE_BPS: u64 = 8_000;
/// Highest bandwidth: beyond any NIC this agent would run on.
pub const MAX_RATE_BPS: u64 = 400_000_000_000;

/// Parses a bandwidth such as `20Mbit` into bits per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, unit) = split_number(s)?;
    let mult: f64 = match unit {
        "bit" => 1.0,
        "kbit" | "Kbit" => 1e3,
        "mbit" | "Mbit" => 1e6,
        "gbit" | "Gbit" => 1e9,
        "tbit" | "Tbit" => 1e12,
        "" => {
            return Err(format!(
                "`{s}` has no unit; write it as e.g. `{num}Mbit` (units: bit, kbit, Mbit, Gbit)"
            ))
        }
        u if u.ends_with("bps") || u.ends_with("Bps") => {
            return Err(format!(
                "`{s}`: `{u}` is ambiguous (tc reads it as bytes per second); use bit-based units: bit, kbit, Mbit, Gbit"
            ))
        }
        u => return Err(format!("`{s}`: unknown rate unit `{u}`; use bit, kbit, Mbit or Gbit")),
    };
    let bps = (num * mult).round();
    if !(MIN_RATE_BPS as f64..=MAX_RATE_BPS as f64).contains(&bps) {
        return Err(format!(
            "`{s}` is out of range: a bandwidth must be between 8kbit and 400Gbit"
        ));
    }
    Ok(bps as u64)
}

/// Parses a size such as `256KiB` or `1500` into bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, unit) = split_number(s)?;
    let mult: f64 = match unit {
        "" | "B" | "b" => 1.0,
        "KB" | "kB" | "k" | "K" => 1e3,
        "MB" | "M" => 1e6,
        "GB" | "G" => 1e9,
        "KiB" | "Ki" => 1024.0,
        "MiB" | "Mi" => 1024.0 * 1024.0,
        "GiB" | "Gi" => 1024.0 * 1024.0 * 1024.0,
        u => {
            return Err(format!(
                "`{s}`: unknown size unit `{u}`; use B, KB, KiB, MB, MiB, GB or GiB"
            ))
        }
    };
    Ok((num * mult).round() as u64)
}

/// Parses a duration such as `50ms`, `1s` or `500us` into nanoseconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let (num, unit) = split_number(s)?;
    let mult: f64 = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        _ => return Err(format!("`{s}`: give a unit: ns, us, ms or s")),
    };
    Ok((num * mult).round() as u64)
}

fn split_number(s: &str) -> Result<(f64, &str), String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num
        .parse()
        .map_err(|_| format!("`{s}` does not start with a number"))?;
    if !num.is_finite() || num <= 0.0 {
        return Err(format!("`{s}` must be greater than zero"));
    }
    Ok((num, unit.trim()))
}

/// Human form of a rate in bits per second, for tables.
pub struct Rate(pub f64);

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        let (d, u) = if v >= 1e9 {
            (1e9, "Gbit")
        } else if v >= 1e6 {
            (1e6, "Mbit")
        } else if v >= 1e3 {
            (1e3, "kbit")
        } else {
            (1.0, "bit")
        };
        write!(f, "{:.1}{u}", v / d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("20Mbit"), Ok(20_000_000));
        assert_eq!(parse_rate("1.5Gbit"), Ok(1_500_000_000));
        assert_eq!(parse_rate("500kbit"), Ok(500_000));
        assert!(parse_rate("0Mbit")
            .unwrap_err()
            .contains("greater than zero"));
        assert!(parse_rate("20").unwrap_err().contains("no unit"));
        assert!(parse_rate("20Mbps").unwrap_err().contains("ambiguous"));
        assert!(parse_rate("1bit").unwrap_err().contains("out of range"));
        assert!(parse_rate("1Tbit").unwrap_err().contains("out of range"));
        assert!(parse_rate("fast").unwrap_err().contains("number"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256KiB"), Ok(262_144));
        assert_eq!(parse_size("64KB"), Ok(64_000));
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("3 parsecs").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("50ms"), Ok(50_000_000));
        assert_eq!(parse_duration("1s"), Ok(1_000_000_000));
        assert_eq!(parse_duration("250us"), Ok(250_000));
        assert!(parse_duration("50").unwrap_err().contains("unit"));
    }

    #[test]
    fn display() {
        assert_eq!(Rate(20e6).to_string(), "20.0Mbit");
        assert_eq!(Rate(1.5e9).to_string(), "1.5Gbit");
    }
}
