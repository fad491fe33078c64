//! A replica's output on the node: `logs/<id>.log`, appended to by its container across
//! restarts, rotated to `.log.1` when a run starts and the file is over
//! [`ROTATE_BYTES`]; the tail of a run is the crash evidence `describe` shows.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::StateDir;

/// A log file is rotated (to `.1`) when a run starts and it is larger than this.
pub const ROTATE_BYTES: u64 = 10 << 20;
/// The most of a run's end read for its evidence.
const EVIDENCE_BYTES: u64 = 16 << 10;

/// Prepares the log for a new run of `replica`: rotates a large file and returns where
/// the run's output will start.
pub fn start_run(state: &StateDir, replica: &str) -> u64 {
    let log = state.log(replica);
    if std::fs::metadata(&log).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let _ = std::fs::rename(&log, state.rotated_log(replica));
    }
    std::fs::metadata(&log).map_or(0, |m| m.len())
}

/// Removes a replica's logs (current and rotated).
pub fn remove(state: &StateDir, replica: &str) {
    let _ = std::fs::remove_file(state.rotated_log(replica));
    let _ = std::fs::remove_file(state.log(replica));
}

/// The last `lines` lines of `bytes` (all of them for 0), with their newlines.
pub fn tail(bytes: &[u8], lines: usize) -> &[u8] {
    if lines == 0 {
        return bytes;
    }
    let trimmed = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut seen = 0;
    for (i, byte) in trimmed.iter().enumerate().rev() {
        if *byte == b'\n' {
            seen += 1;
            if seen == lines {
                return &bytes[i + 1..];
            }
        }
    }
    bytes
}

/// The last `lines` lines written to `path` from `offset` on (at most 16 KiB read),
/// without the final newline: a run's crash evidence.
pub fn evidence(path: &Path, offset: u64, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else { return String::new() };
    let length = file.metadata().map_or(0, |m| m.len());
    let start = offset.max(length.saturating_sub(EVIDENCE_BYTES)).min(length);
    if file.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut bytes = Vec::new();
    let _ = file.take(EVIDENCE_BYTES).read_to_end(&mut bytes);
    let last = tail(&bytes, lines);
    String::from_utf8_lossy(last.strip_suffix(b"\n").unwrap_or(last)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        let text = b"a\nb\nc\n";
        assert_eq!(tail(text, 2), b"b\nc\n");
        assert_eq!(tail(text, 0), text);
        assert_eq!(tail(text, 5), text);
        assert_eq!(tail(b"a\nb", 1), b"b");
    }

    #[test]
    fn the_evidence_starts_at_the_run() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("r.log");
        std::fs::write(&log, "old run\n").expect("write");
        let offset = std::fs::metadata(&log).expect("meta").len();
        let lines: String = (1..=60).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&log, format!("old run\n{lines}")).expect("write");
        let tail = evidence(&log, offset, 50);
        assert_eq!(tail.lines().count(), 50);
        assert!(tail.starts_with("line 11\n") && tail.ends_with("line 60"), "{tail}");
        assert_eq!(evidence(&log, std::fs::metadata(&log).expect("meta").len(), 50), "");
        assert_eq!(evidence(&dir.path().join("missing"), 0, 50), "");
        std::fs::write(&log, "only\n").expect("write");
        assert_eq!(evidence(&log, 0, 50), "only");
    }

    #[test]
    fn a_large_log_is_rotated_when_a_run_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        std::fs::create_dir_all(state.logs()).expect("logs");
        std::fs::write(state.log("r"), "small\n").expect("write");
        assert_eq!(start_run(&state, "r"), 6, "a small log goes on");
        std::fs::write(state.log("r"), vec![b'x'; usize::try_from(ROTATE_BYTES).expect("size") + 1]).expect("write");
        assert_eq!(start_run(&state, "r"), 0);
        assert!(state.rotated_log("r").exists() && !state.log("r").exists());
        remove(&state, "r");
        assert!(!state.rotated_log("r").exists());
    }
}
