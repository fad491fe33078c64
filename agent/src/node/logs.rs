//! A replica's output on the node: `logs/<id>.log`, records its shim writes and rotates
//! by size while the replica runs (`.log.1`, `.log.2`… older; see
//! [`crate::runtime::output`]). When a new run starts the last file of the one before
//! becomes `.log.previous` (`orch logs --previous`) and its rotated files go. The tail
//! of a run is the crash evidence `describe` shows.
//!
//! [`LogReader`] serves the node API: it reads in bounded chunks, never a whole file,
//! from where `--tail` and `--since` start, and stops at `--limit-bytes`.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::runtime::output::{format_rfc3339, parse_record, rotated_path};
use crate::StateDir;

/// The most rotated files a log may have (the manifest allows 16 files in all).
const MAX_ROTATED: u32 = 16;
/// The most of a run's end read for its evidence.
const EVIDENCE_BYTES: u64 = 16 << 10;
/// How much a reader reads at once, and about the most one chunk carries.
const CHUNK_BYTES: usize = 64 << 10;
/// A line longer than this without a newline (a file an earlier build wrote) is
/// passed on as it is.
const MAX_PENDING: usize = 256 << 10;

/// Prepares the log for a new run of `replica`: the last file of the run before becomes
/// the previous log, and that run's rotated files go.
pub fn start_run(state: &StateDir, replica: &str) {
    let log = live_file(&state.log(replica));
    // A run that wrote nothing leaves no previous log (not the one of the run before).
    let _ = std::fs::remove_file(state.previous_log(replica));
    if std::fs::metadata(&log).is_ok_and(|m| m.len() > 0) {
        let _ = std::fs::rename(&log, state.previous_log(replica));
    }
    for path in log_paths(&state.log(replica)) {
        let _ = std::fs::remove_file(path);
    }
}

/// Removes a replica's logs (current, rotated and previous).
pub fn remove(state: &StateDir, replica: &str) {
    for path in log_paths(&state.log(replica)) {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_file(state.previous_log(replica));
}

/// The last `lines` lines of the log at `path` — with the end of the file rotated
/// before it, in case the run rotated just before it ended — at most 16 KiB of each,
/// without the final newline: a run's crash evidence.
pub fn evidence(path: &Path, lines: usize) -> String {
    let mut text = Vec::new();
    let live = live_file(path);
    // The rotated file only when the live one is read from its start: nothing between.
    let short = std::fs::metadata(&live).map_or(true, |m| m.len() < EVIDENCE_BYTES);
    let files = if short { vec![rotated_path(path, 1), live] } else { vec![live] };
    for file in files {
        let Ok(mut file) = File::open(file) else { continue };
        let length = file.metadata().map_or(0, |m| m.len());
        let start = length.saturating_sub(EVIDENCE_BYTES);
        if file.seek(SeekFrom::Start(start)).is_err() {
            continue;
        }
        let mut bytes = Vec::new();
        let _ = file.take(EVIDENCE_BYTES).read_to_end(&mut bytes);
        // A cut first line is no line.
        let whole = if start > 0 { bytes.iter().position(|b| *b == b'\n').map_or(&bytes[..0], |i| &bytes[i + 1..]) } else { &bytes[..] };
        for line in lines_of(whole) {
            render(&mut text, line, false);
        }
    }
    let last = tail(&text, lines);
    String::from_utf8_lossy(last.strip_suffix(b"\n").unwrap_or(last)).into_owned()
}

/// The file a run's last output is in: the log, or — when its shim died in the middle
/// of a rotation, with the log set aside and no new one written to yet — `.0`.
fn live_file(log: &Path) -> PathBuf {
    let aside = rotated_path(log, 0);
    let empty = |path: &Path| std::fs::metadata(path).map_or(true, |m| m.len() == 0);
    if empty(log) && !empty(&aside) {
        aside
    } else {
        log.to_owned()
    }
}

/// The lines of `bytes` without their newlines (an empty line is one; the newline
/// ending the last is no line after it).
fn lines_of(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    body.split(|b| *b == b'\n').filter(move |_| !bytes.is_empty())
}

/// Appends the output of one log line (a record, or a line in another format) to `out`.
fn render(out: &mut Vec<u8>, line: &[u8], timestamps: bool) {
    let record = parse_record(line);
    if let (true, Some(time)) = (timestamps, record.time) {
        out.extend_from_slice(format_rfc3339(time).as_bytes());
        out.push(b' ');
    }
    out.extend_from_slice(record.content);
    if !record.partial {
        out.push(b'\n');
    }
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

/// What a logs request asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// The last N lines only (0: all).
    pub tail_lines: usize,
    /// Lines written at or after this time only (Unix nanoseconds).
    pub since: Option<u64>,
    /// Stop after this many bytes of output.
    pub limit_bytes: Option<u64>,
    /// Each line prefixed with when it was written.
    pub timestamps: bool,
}

/// Reads a replica's log files in order, in chunks, following the live file across
/// rotations when asked to.
pub struct LogReader {
    /// Open files still to read, oldest first; the last is the live `X.log` unless
    /// this reads the previous run.
    files: Vec<File>,
    /// Where the live log is, to notice a rotation (its inode changes); `None` when
    /// not following (the reader ends at the end of the files opened).
    live: Option<PathBuf>,
    pending: Vec<u8>,
    query: LogQuery,
    sent: u64,
    /// The live file was read to its end once more after it was rotated away.
    drained: bool,
}

impl LogReader {
    /// A reader of `replica`'s log (or of its previous run's), positioned for `query`.
    /// `None` when there is no such log.
    pub fn open(state: &StateDir, replica: &str, previous: bool, follow: bool, query: LogQuery) -> std::io::Result<Option<LogReader>> {
        let (paths, live) = if previous { (vec![state.previous_log(replica)], None) } else { (log_paths(&state.log(replica)), Some(state.log(replica))) };
        // Opened together, newest first: a rotation while this opens them renames them,
        // and a file met twice under two names is read once.
        let mut files: Vec<File> = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for path in paths.iter().rev() {
            if let Ok(file) = File::open(path) {
                if seen.insert(file.metadata()?.ino()) {
                    files.push(file);
                }
            }
        }
        files.reverse();
        if files.is_empty() {
            return Ok(None);
        }
        let live = live.filter(|_| follow);
        let (mut index, mut offset) = (0, 0);
        if query.tail_lines > 0 {
            (index, offset) = tail_start(&mut files, query.tail_lines)?;
        }
        if let Some(since) = query.since {
            let (since_index, since_offset) = (since_start(&mut files, since)?, 0);
            if (since_index, since_offset) > (index, offset) {
                (index, offset) = (since_index, since_offset);
            }
        }
        files.drain(..index);
        // The search moved every file's position: the first starts at `offset`, the
        // others at their beginnings.
        for (n, file) in files.iter_mut().enumerate() {
            file.seek(SeekFrom::Start(if n == 0 { offset } else { 0 }))?;
        }
        Ok(Some(LogReader { files, live, pending: Vec::new(), query, sent: 0, drained: false }))
    }

    /// Whether `--limit-bytes` was reached: nothing more will come.
    pub fn finished(&self) -> bool {
        self.query.limit_bytes.is_some_and(|limit| self.sent >= limit)
    }

    /// The next output, about [`CHUNK_BYTES`] at most; `None` when there is nothing more
    /// for now (at the end of the live log) or ever.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        let mut buffer = vec![0u8; CHUNK_BYTES];
        while out.len() < CHUNK_BYTES && !self.finished() {
            let Some(file) = self.files.first_mut() else { break };
            let room = (CHUNK_BYTES - out.len()).max(4096);
            let read = file.read(&mut buffer[..room])?;
            if read == 0 {
                let last = self.files.len() == 1;
                if last && self.live.is_none() {
                    // The end: a last line without its newline is a line.
                    if !self.pending.is_empty() {
                        let line = std::mem::take(&mut self.pending);
                        self.emit(&mut out, &line);
                    }
                    break;
                }
                if last && !self.rotated()? {
                    break;
                }
                let is_live = last;
                if is_live && !std::mem::take(&mut self.drained) {
                    // Rotated away: once more to its end, for what was written just before.
                    self.drained = true;
                    continue;
                }
                // The end of a finished file: what is left of its last line is a line.
                if !self.pending.is_empty() {
                    let line = std::mem::take(&mut self.pending);
                    self.emit(&mut out, &line);
                }
                let done = self.files.remove(0);
                if is_live {
                    if let Some(next) = self.after_rotation(&done) {
                        self.files.push(next);
                    }
                }
                continue;
            }
            self.pending.extend_from_slice(&buffer[..read]);
            let complete = self.pending.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            let complete = if complete == 0 && self.pending.len() > MAX_PENDING { self.pending.len() } else { complete };
            let lines: Vec<u8> = self.pending.drain(..complete).collect();
            for line in lines_of(&lines) {
                self.emit(&mut out, line);
                if self.finished() {
                    break;
                }
            }
        }
        Ok(if out.is_empty() { None } else { Some(out) })
    }

    /// The file written after `done` once it was rotated: the one after it among
    /// `.N … .1, X.log`, or the oldest there if it is gone already.
    fn after_rotation(&self, done: &File) -> Option<File> {
        let live = self.live.as_ref()?;
        let inode = done.metadata().ok()?.ino();
        let paths = log_paths(live);
        let position = || paths.iter().position(|path| std::fs::metadata(path).is_ok_and(|m| m.ino() == inode));
        // A rotation between finding it and opening the next shifts both: try again.
        for _ in 0..8 {
            let before = position();
            let next = paths[before.map_or(0, |i| i + 1)..].iter().find_map(|path| File::open(path).ok());
            if position() == before {
                return next;
            }
        }
        File::open(live).ok()
    }

    /// Whether the live log was rotated away from the file being read.
    fn rotated(&self) -> std::io::Result<bool> {
        let (Some(live), Some(file)) = (&self.live, self.files.first()) else { return Ok(false) };
        let reading = file.metadata()?.ino();
        Ok(std::fs::metadata(live).is_ok_and(|m| m.ino() != reading))
    }

    fn emit(&mut self, out: &mut Vec<u8>, line: &[u8]) {
        if let (Some(since), Some(time)) = (self.query.since, parse_record(line).time) {
            if time < since {
                return;
            }
        }
        let start = out.len();
        render(out, line, self.query.timestamps);
        if let Some(limit) = self.query.limit_bytes {
            let allowed = usize::try_from(limit.saturating_sub(self.sent)).unwrap_or(usize::MAX);
            out.truncate(start + (out.len() - start).min(allowed));
        }
        self.sent += (out.len() - start) as u64;
    }
}

/// The files of the log at `log`, oldest first: `.16` … `.1`, `.0` (the current file
/// for the moment of a rotation), the log itself.
fn log_paths(log: &Path) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = (0..=MAX_ROTATED).rev().map(|n| rotated_path(log, n)).collect();
    paths.push(log.to_owned());
    paths
}

/// Where the last `lines` lines of `files` (oldest first) start: a file's index and an
/// offset in it. Reads backwards, a block at a time.
fn tail_start(files: &mut [File], lines: usize) -> std::io::Result<(usize, u64)> {
    let mut wanted = lines;
    let mut block = vec![0u8; CHUNK_BYTES];
    for index in (0..files.len()).rev() {
        let file = &mut files[index];
        let length = file.metadata()?.len();
        let mut end = length;
        let mut skip_last_newline = true;
        while end > 0 {
            let start = end.saturating_sub(CHUNK_BYTES as u64);
            let size = usize::try_from(end - start).unwrap_or(CHUNK_BYTES);
            file.seek(SeekFrom::Start(start))?;
            file.read_exact(&mut block[..size])?;
            for i in (0..size).rev() {
                if block[i] != b'\n' {
                    skip_last_newline = false;
                    continue;
                }
                if std::mem::take(&mut skip_last_newline) {
                    continue;
                }
                wanted -= 1;
                if wanted == 0 {
                    return Ok((index, start + i as u64 + 1));
                }
            }
            end = start;
        }
        // The whole file: its first line counts too.
        if length > 0 && !skip_last_newline {
            wanted -= 1;
            if wanted == 0 {
                return Ok((index, 0));
            }
        }
    }
    Ok((0, 0))
}

/// The index of the file (oldest first) lines written at or after `since` start in:
/// the last one whose first record is older.
fn since_start(files: &mut [File], since: u64) -> std::io::Result<usize> {
    let mut chosen = 0;
    let mut head = vec![0u8; CHUNK_BYTES];
    for (index, file) in files.iter_mut().enumerate() {
        file.seek(SeekFrom::Start(0))?;
        let read = file.read(&mut head)?;
        let first = head[..read].split(|b| *b == b'\n').next().unwrap_or_default();
        match parse_record(first).time {
            Some(time) if time <= since => chosen = index,
            Some(_) => break,
            None => {}
        }
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::output::{LogSettings, LogWriter, Stream};

    #[test]
    fn tails() {
        let text = b"a\nb\nc\n";
        assert_eq!(tail(text, 2), b"b\nc\n");
        assert_eq!(tail(text, 0), text);
        assert_eq!(tail(text, 5), text);
        assert_eq!(tail(b"a\nb", 1), b"b");
    }

    /// A log of `count` records `line N` at times N seconds, rotated every `max_bytes`.
    fn written(state: &StateDir, count: u64, max_bytes: u64) {
        std::fs::create_dir_all(state.logs()).expect("logs");
        let mut writer = LogWriter::open(LogSettings { path: state.log("r"), max_bytes, max_files: 4 }).expect("open");
        for n in 0..count {
            writer.write(n * 1_000_000_000, Stream::Stdout, false, format!("line {n}").as_bytes());
        }
    }

    fn read_all(state: &StateDir, previous: bool, query: LogQuery) -> String {
        let mut reader = LogReader::open(state, "r", previous, false, query).expect("open").expect("a log");
        let mut out = Vec::new();
        while let Some(chunk) = reader.next_chunk().expect("read") {
            assert!(chunk.len() <= CHUNK_BYTES + crate::runtime::output::MAX_RECORD_BYTES, "a chunk of {}", chunk.len());
            out.extend(chunk);
        }
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn a_reader_tails_and_starts_at_a_time_across_rotated_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        // 20,000 records of about 50 bytes in files of 256 KiB: four files hold the
        // last ~20k; the oldest are gone.
        written(&state, 20_000, 256 << 10);
        assert!(rotated_path(&state.log("r"), 3).exists() && !rotated_path(&state.log("r"), 4).exists());
        let all = read_all(&state, false, LogQuery::default());
        let first: u64 = all.lines().next().and_then(|l| l.strip_prefix("line ")).and_then(|n| n.parse().ok()).expect("a first line");
        assert!(all.ends_with("line 19999\n"));
        assert_eq!(all.lines().count() as u64, 20_000 - first, "every line of the kept files, in order, once");

        let last = read_all(&state, false, LogQuery { tail_lines: 3, ..LogQuery::default() });
        assert_eq!(last, "line 19997\nline 19998\nline 19999\n");
        let many = read_all(&state, false, LogQuery { tail_lines: 12_000, ..LogQuery::default() });
        assert_eq!(many.lines().count(), 12_000, "a tail across files");
        assert!(many.starts_with("line 8000\n"));

        let since = read_all(&state, false, LogQuery { since: Some(19_990 * 1_000_000_000), ..LogQuery::default() });
        assert_eq!(since.lines().count(), 10);
        assert!(since.starts_with("line 19990\n"));
        let both = read_all(&state, false, LogQuery { since: Some(19_990 * 1_000_000_000), tail_lines: 2, ..LogQuery::default() });
        assert_eq!(both, "line 19998\nline 19999\n");
        let limited = read_all(&state, false, LogQuery { tail_lines: 2, limit_bytes: Some(14), ..LogQuery::default() });
        assert_eq!(limited, "line 19998\nlin");
        let stamped = read_all(&state, false, LogQuery { tail_lines: 1, timestamps: true, ..LogQuery::default() });
        assert_eq!(stamped, "1970-01-01T05:33:19.000000000Z line 19999\n");
    }

    #[test]
    fn a_new_run_keeps_the_last_file_of_the_one_before_as_previous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        written(&state, 5_000, 64 << 10);
        assert!(rotated_path(&state.log("r"), 1).exists());
        start_run(&state, "r");
        assert!(!state.log("r").exists() && !rotated_path(&state.log("r"), 1).exists());
        assert!(read_all(&state, true, LogQuery { tail_lines: 1, ..LogQuery::default() }) == "line 4999\n");
        assert!(LogReader::open(&state, "r", false, false, LogQuery::default()).expect("open").is_none(), "no log yet");
        assert_eq!(evidence(&state.previous_log("r"), 2), "line 4998\nline 4999");
        remove(&state, "r");
        assert_eq!(std::fs::read_dir(state.logs()).expect("logs").count(), 0);
    }

    #[test]
    fn a_follower_racing_the_writer_sees_every_line_once_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        std::fs::create_dir_all(state.logs()).expect("logs");
        // 15,000 records fit in 16 files of 64 KiB: nothing is dropped, so a line the
        // follower misses is lost at a rotation.
        let mut writer = LogWriter::open(LogSettings { path: state.log("r"), max_bytes: 64 << 10, max_files: 16 }).expect("open");
        let mut reader = LogReader::open(&state, "r", false, true, LogQuery::default()).expect("open").expect("a log");
        let writing = std::thread::spawn(move || {
            for n in 0..15_000u64 {
                writer.write(n, Stream::Stdout, false, format!("line {n}").as_bytes());
                if n % 500 == 0 {
                    std::thread::yield_now();
                }
            }
        });
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !seen.ends_with(b"line 14999\n") {
            assert!(std::time::Instant::now() < deadline, "stuck after {} bytes", seen.len());
            match reader.next_chunk().expect("read") {
                Some(chunk) => seen.extend(chunk),
                None => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        writing.join().expect("writer");
        let text = String::from_utf8(seen).expect("utf-8");
        for (expected, line) in text.lines().enumerate() {
            assert_eq!(line, format!("line {expected}"), "line {expected} lost or repeated");
        }
        assert_eq!(text.lines().count(), 15_000);
    }

    #[test]
    fn following_crosses_a_rotation_and_lines_of_other_builds_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        std::fs::create_dir_all(state.logs()).expect("logs");
        std::fs::write(state.log("r"), "an old line\n").expect("write");
        let mut writer = LogWriter::open(LogSettings { path: state.log("r"), max_bytes: 200, max_files: 4 }).expect("open");
        let mut reader = LogReader::open(&state, "r", false, true, LogQuery::default()).expect("open").expect("a log");
        assert_eq!(reader.next_chunk().expect("read"), Some(b"an old line\n".to_vec()));
        assert_eq!(reader.next_chunk().expect("read"), None, "nothing new yet");
        let mut expected = String::new();
        for n in 0..10 {
            writer.write(n, Stream::Stderr, false, format!("new {n}").as_bytes());
            expected.push_str(&format!("new {n}\n"));
        }
        let mut seen = Vec::new();
        while let Some(chunk) = reader.next_chunk().expect("read") {
            seen.extend(chunk);
        }
        assert!(rotated_path(&state.log("r"), 2).exists(), "rotated twice meanwhile");
        assert_eq!(String::from_utf8_lossy(&seen), expected);
    }
}
