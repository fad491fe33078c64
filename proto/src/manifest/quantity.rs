//! Resource quantities as Kubernetes writes them: cpu in cores (`0.5`, `2`) or
//! millicores (`500m`); memory in bytes with a decimal (`k`, `M`, `G`, …) or binary
//! (`Ki`, `Mi`, `Gi`, …) suffix, fractions allowed when they come out whole (`1.5Gi`).

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum QuantityError {
    #[error("empty quantity")]
    Empty,
    #[error("{0:?} is negative; quantities must be zero or more")]
    Negative(String),
    #[error("{text:?} is not a quantity: expected {expected}")]
    Malformed { text: String, expected: &'static str },
    #[error("{text:?} has an unknown suffix {suffix:?}: expected {expected}")]
    UnknownSuffix { text: String, suffix: String, expected: &'static str },
    #[error("{0:?} is finer than the smallest unit ({1})")]
    TooPrecise(String, &'static str),
    #[error("{0:?} is too large")]
    TooLarge(String),
}

const CPU_EXPECTED: &str = "cores such as 0.5 or 2, or millicores such as 500m";
const MEMORY_EXPECTED: &str = "bytes with an optional suffix k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi or Ei";

/// Parses a cpu quantity into millicores.
pub fn parse_cpu_millis(text: &str) -> Result<u64, QuantityError> {
    let (number, suffix) = split_suffix(text, CPU_EXPECTED)?;
    let multiplier = match suffix {
        "" => 1000,
        "m" => 1,
        other => return Err(QuantityError::UnknownSuffix { text: text.to_owned(), suffix: other.to_owned(), expected: CPU_EXPECTED }),
    };
    scale(text, number, multiplier, "1m", CPU_EXPECTED)
}

/// Parses a memory quantity into bytes.
pub fn parse_memory_bytes(text: &str) -> Result<u64, QuantityError> {
    let (number, suffix) = split_suffix(text, MEMORY_EXPECTED)?;
    let multiplier: u128 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "E" => 1_000_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        "Ei" => 1 << 60,
        other => return Err(QuantityError::UnknownSuffix { text: text.to_owned(), suffix: other.to_owned(), expected: MEMORY_EXPECTED }),
    };
    scale(text, number, multiplier, "1 byte", MEMORY_EXPECTED)
}

/// Millicores as a person writes them: `2`, `1.5`, `250m`.
pub fn format_cpu_millis(millis: u64) -> String {
    if millis.is_multiple_of(1000) {
        format!("{}", millis / 1000)
    } else if millis.is_multiple_of(100) {
        format!("{}.{}", millis / 1000, (millis % 1000) / 100)
    } else {
        format!("{millis}m")
    }
}

/// Bytes with the largest binary suffix that divides them: `64Mi`, `1536Ki`, `100`.
pub fn format_memory_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u32); 6] = [("Ei", 60), ("Pi", 50), ("Ti", 40), ("Gi", 30), ("Mi", 20), ("Ki", 10)];
    if bytes == 0 {
        return "0".to_owned();
    }
    for (suffix, shift) in UNITS {
        let unit = 1u64 << shift;
        if bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Splits `"1.5Gi"` into `("1.5", "Gi")` after checking the sign and the digits.
fn split_suffix<'a>(text: &'a str, expected: &'static str) -> Result<(&'a str, &'a str), QuantityError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(QuantityError::Empty);
    }
    if trimmed.starts_with('-') {
        return Err(QuantityError::Negative(text.to_owned()));
    }
    let unsigned = trimmed.strip_prefix('+').unwrap_or(trimmed);
    let split = unsigned.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(unsigned.len());
    let (number, suffix) = unsigned.split_at(split);
    let dots = number.matches('.').count();
    let digits = number.len() - dots;
    if digits == 0 || dots > 1 {
        return Err(QuantityError::Malformed { text: text.to_owned(), expected });
    }
    Ok((number, suffix))
}

/// `number × multiplier`, exact in integers: `"1.5" × 1024 = 1536`.
fn scale(text: &str, number: &str, multiplier: u128, smallest: &'static str, expected: &'static str) -> Result<u64, QuantityError> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let digits: String = format!("{whole}{fraction}");
    // 39 digits overflow u128; anything that long is absurd anyway.
    if digits.len() > 30 {
        return Err(QuantityError::TooLarge(text.to_owned()));
    }
    let mantissa: u128 = digits.parse().map_err(|_| QuantityError::Malformed { text: text.to_owned(), expected })?;
    let divisor = 10u128.pow(u32::try_from(fraction.len()).map_err(|_| QuantityError::TooLarge(text.to_owned()))?);
    let scaled = mantissa.checked_mul(multiplier).ok_or_else(|| QuantityError::TooLarge(text.to_owned()))?;
    if scaled % divisor != 0 {
        return Err(QuantityError::TooPrecise(text.to_owned(), smallest));
    }
    u64::try_from(scaled / divisor).map_err(|_| QuantityError::TooLarge(text.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_table() {
        let table: &[(&str, Result<u64, ()>)] = &[
            ("500m", Ok(500)),
            ("0.5", Ok(500)),
            ("2", Ok(2000)),
            ("1.25", Ok(1250)),
            ("+1", Ok(1000)),
            ("0.0001", Err(())),
            ("-1", Err(())),
            ("abc", Err(())),
            ("1Gi", Err(())),
            ("", Err(())),
            ("1.2.3", Err(())),
            (".", Err(())),
            ("99999999999999999999999999999999999", Err(())),
        ];
        for (text, want) in table {
            let got = parse_cpu_millis(text).map_err(|_| ());
            assert_eq!(&got, want, "cpu {text:?}");
        }
    }

    #[test]
    fn memory_table() {
        let table: &[(&str, Result<u64, ()>)] = &[
            ("64Mi", Ok(64 << 20)),
            ("1Gi", Ok(1 << 30)),
            ("1.5Gi", Ok(3 << 29)),
            ("128M", Ok(128_000_000)),
            ("1k", Ok(1000)),
            ("4096", Ok(4096)),
            ("0.5", Err(())),
            ("1mi", Err(())),
            ("1Zi", Err(())),
            ("-64Mi", Err(())),
            ("100Ei", Err(())),
            ("Mi", Err(())),
        ];
        for (text, want) in table {
            let got = parse_memory_bytes(text).map_err(|_| ());
            assert_eq!(&got, want, "memory {text:?}");
        }
    }

    #[test]
    fn errors_name_the_problem() {
        assert_eq!(parse_cpu_millis("-2"), Err(QuantityError::Negative("-2".into())));
        assert!(matches!(parse_memory_bytes("3Xi"), Err(QuantityError::UnknownSuffix { .. })));
        assert!(matches!(parse_cpu_millis("0.0005"), Err(QuantityError::TooPrecise(..))));
    }

    #[test]
    fn format_round_trips() {
        for millis in [0, 1, 250, 500, 1000, 1500, 2000, 12345] {
            assert_eq!(parse_cpu_millis(&format_cpu_millis(millis)), Ok(millis));
        }
        for bytes in [0, 1, 1024, 64 << 20, 1536 << 10, 3 << 30, 1_000_001] {
            assert_eq!(parse_memory_bytes(&format_memory_bytes(bytes)), Ok(bytes));
        }
        assert_eq!(format_memory_bytes(64 << 20), "64Mi");
        assert_eq!(format_cpu_millis(250), "250m");
    }
}
