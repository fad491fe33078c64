//! Signal names as Docker, Kubernetes and image configs write them (`SIGTERM`, `TERM`,
//! `15`, `SIGRTMIN+3`), numbered as Linux numbers them on x86-64 and arm64, with
//! glibc's `SIGRTMIN` of 34 (two real-time signals are the C library's own; moby counts
//! the same way). Pure: the manifest validation and the agent share it.

/// The first real-time signal a program may use (glibc's `SIGRTMIN`).
pub const SIGRTMIN: i32 = 34;
/// The last real-time signal.
pub const SIGRTMAX: i32 = 64;
pub const SIGTERM: i32 = 15;
pub const SIGKILL: i32 = 9;
/// sysvinit's power-failure signal: what LXC sends a system container's init to stop it.
pub const SIGPWR: i32 = 30;
/// systemd's "halt" request (what `machinectl poweroff` and Podman send its PID 1).
pub const SIGRTMIN_3: i32 = SIGRTMIN + 3;
/// What the kernel raises for a faulting instruction: SIGSEGV, SIGBUS, SIGILL, SIGFPE.
/// orch's init does not pass them on, so they stop nothing.
pub const FAULTS: [i32; 4] = [11, 7, 4, 8];
pub const SIGCHLD: i32 = 17;

/// The standard signals by name, without `SIG` (aliases after the canonical name).
const STANDARD: [(&str, i32); 34] = [
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("IOT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("POLL", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// The number of a signal written as a name (any case, `SIG` optional), a real-time
/// offset (`SIGRTMIN+3`, `RTMAX-1`) or a number from 1 to 64 other than the C library's
/// own 32 and 33.
pub fn parse(text: &str) -> Result<i32, String> {
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let number = if let Ok(number) = name.parse::<i32>() {
        Some(number)
    } else if let Some(rest) = name.strip_prefix("RTMIN") {
        offset(rest).map(|o| SIGRTMIN + o)
    } else if let Some(rest) = name.strip_prefix("RTMAX") {
        offset(rest).map(|o| SIGRTMAX + o)
    } else {
        STANDARD.iter().find(|(n, _)| *n == name).map(|(_, number)| *number)
    };
    match number {
        Some(n) if (1..=31).contains(&n) || (SIGRTMIN..=SIGRTMAX).contains(&n) => Ok(n),
        _ => Err(format!("{trimmed:?} is not a signal (a name such as SIGTERM or SIGRTMIN+3, or a number from 1 to 64 but 32 and 33)")),
    }
}

/// `""` (no offset), `+N` or `-N`.
fn offset(rest: &str) -> Option<i32> {
    if rest.is_empty() {
        return Some(0);
    }
    let (sign, digits) = rest.split_at(1);
    // At most two digits: no offset is larger, and the sum cannot overflow.
    let n: i32 = digits.parse().ok().filter(|_| !digits.starts_with(['+', '-']) && digits.len() <= 2)?;
    match sign {
        "+" => Some(n),
        "-" => Some(-n),
        _ => None,
    }
}

/// The canonical name of signal `number` (`SIGTERM`, `SIGRTMIN+3`).
pub fn name(number: i32) -> String {
    match STANDARD.iter().find(|(_, n)| *n == number) {
        Some((name, _)) => format!("SIG{name}"),
        None if (SIGRTMIN..=SIGRTMAX).contains(&number) => match number - SIGRTMIN {
            0 => "SIGRTMIN".to_owned(),
            offset => format!("SIGRTMIN+{offset}"),
        },
        None => format!("signal {number}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_numbers_and_real_time_offsets_parse_as_docker_writes_them() {
        for (text, number) in [
            ("SIGTERM", 15),
            ("term", 15),
            ("15", 15),
            (" SIGQUIT ", 3),
            ("SIGPWR", 30),
            ("SIGIOT", 6),
            ("SIGRTMIN", 34),
            ("SIGRTMIN+3", 37),
            ("rtmin+3", 37),
            ("RTMAX", 64),
            ("SIGRTMAX-2", 62),
            ("64", 64),
        ] {
            assert_eq!(parse(text), Ok(number), "{text}");
        }
        for bad in [
            "",
            "SIGFOO",
            "0",
            "32",
            "33",
            "65",
            "-1",
            "SIGRTMIN+31",
            "SIGRTMAX+1",
            "SIGRTMIN3",
            "SIGRTMIN+",
            "SIGRTMIN++3",
            "RTMIN-1",
            "SIGRTMIN+2147483614",
            "RTMAX-2147483647",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(parse("SIGFOO").is_err_and(|e| e.contains("\"SIGFOO\" is not a signal")));
    }

    #[test]
    fn names_are_canonical_and_parse_back() {
        assert_eq!(
            (name(15), name(6), name(29), name(34), name(37), name(64)),
            ("SIGTERM".to_owned(), "SIGABRT".to_owned(), "SIGIO".to_owned(), "SIGRTMIN".to_owned(), "SIGRTMIN+3".to_owned(), "SIGRTMIN+30".to_owned())
        );
        for number in (1..=31).chain(SIGRTMIN..=SIGRTMAX) {
            assert_eq!(parse(&name(number)), Ok(number));
        }
    }
}
