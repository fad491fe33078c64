//! Facts about processes from /proc.

/// The process's start time in clock ticks since boot (field 22 of /proc/PID/stat):
/// with the PID it identifies a process for good, since PIDs are recycled.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

pub(crate) fn parse_start_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: skip past the last ')'.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    // Fields from 3 (state) on; starttime is field 22.
    after_comm.split_whitespace().nth(22 - 3)?.parse().ok()
}

/// The parent of `pid` (field 4 of /proc/PID/stat).
pub fn parent_pid(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(4 - 3)?.parse().ok()
}

/// Whether `pid` is alive and is the process that started at `ticks` (not a zombie).
pub fn is_same_process(pid: i32, ticks: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next());
    state != Some("Z") && parse_start_ticks(&stat) == Some(ticks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_start_time_past_odd_command_names() {
        let stat = "1234 (we ird) (name)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn this_process_is_itself() {
        let pid = i32::try_from(std::process::id()).expect("pid fits");
        let ticks = start_ticks(pid).expect("own start time");
        assert!(is_same_process(pid, ticks));
        assert!(!is_same_process(pid, ticks + 1));
        assert_eq!(parent_pid(pid), Some(nix::unistd::getppid().as_raw()));
    }
}
