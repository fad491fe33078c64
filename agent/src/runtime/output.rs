//! A container's output on the node, written by its shim (which outlives agent
//! restarts, as containerd's shim and conmon do): the command's stdout and stderr are
//! pipes the shim reads, and every line becomes a record in the CRI log format that
//! Kubernetes' runtimes write and log shippers parse —
//! `2026-12-01T02:48:37.123456789Z stdout F the line` (`P` for a piece of a line longer
//! than [`MAX_RECORD_BYTES`] or cut by the end of the output). The file is rotated by
//! size as it is written: `X.log` is renamed `X.log.1` (which becomes `.2`, … up to
//! `max_files - 1`) and a new `X.log` started, so nothing the command writes is lost
//! between the two and the disk holds about `max_files` × `max_bytes` per replica (a
//! record is not cut to fit, and the agent keeps the previous run's last file besides).
//! The current file goes aside as `X.log.0` for the moment of a rotation, until the new
//! `X.log` exists: a full disk leaves the log as it was, written on past its size, and
//! the rotation is tried again a second later.
//! A write that fails (a full disk) drops the record and is told in the next record
//! that can be written.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The longest content of one record; a longer line is cut into `P` records.
pub const MAX_RECORD_BYTES: usize = 16 << 10;

/// How much is read from a pipe at once.
const READ_BYTES: usize = 64 << 10;

/// Where the shim writes a container's output and when it rotates it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogSettings {
    pub path: PathBuf,
    pub max_bytes: u64,
    /// The current file included (at least 2).
    pub max_files: u32,
}

/// The `n`th rotated file of the log at `path` (`X.log.n`).
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Which of the command's streams a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// One record of a log file, parsed. A line in another format (written by an earlier
/// build, or by the shim before it knew where the log goes) is all content, untimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// Nanoseconds since the Unix epoch.
    pub time: Option<u64>,
    /// The content is a piece of a line: no newline after it.
    pub partial: bool,
    pub content: &'a [u8],
}

/// Parses one line of a log file (without its newline).
pub fn parse_record(line: &[u8]) -> Record<'_> {
    let raw = Record { time: None, partial: false, content: line };
    let mut fields = line.splitn(4, |b| *b == b' ');
    let (Some(time), Some(stream), Some(tag)) = (fields.next(), fields.next(), fields.next()) else { return raw };
    let Some(time) = std::str::from_utf8(time).ok().and_then(parse_rfc3339) else { return raw };
    if stream != b"stdout" && stream != b"stderr" {
        return raw;
    }
    let partial = match tag {
        b"F" => false,
        b"P" => true,
        _ => return raw,
    };
    Record { time: Some(time), partial, content: fields.next().unwrap_or_default() }
}

/// `2026-12-01T02:48:37.123456789Z` for `nanos` since the epoch.
pub fn format_rfc3339(nanos: u64) -> String {
    let seconds = nanos / 1_000_000_000;
    let (year, month, day) = orch_api::tls::civil_from_days(i64::try_from(seconds / 86_400).unwrap_or(i64::MAX));
    let of_day = seconds % 86_400;
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z", of_day / 3600, of_day / 60 % 60, of_day % 60, nanos % 1_000_000_000)
}

/// The inverse of [`format_rfc3339`] (that exact shape: UTC, nine digits).
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 30 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' || b[19] != b'.' || b[29] != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        text.get(range)?.bytes().try_fold(0u64, |n, d| d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0')))
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, nanos) = (number(11..13)?, number(14..16)?, number(17..19)?, number(20..29)?);
    if !(1970..=9999).contains(&year) || !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some((days * 86_400 + hour * 3600 + minute * 60 + second) * 1_000_000_000 + nanos)
}

/// Howard Hinnant's `days_from_civil`, for dates from 1970 on.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Nanoseconds since the epoch, now.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Appends one record, `TIME STREAM F|P CONTENT\n`, to `out`.
fn push_record(out: &mut Vec<u8>, time: u64, stream: Stream, partial: bool, content: &[u8]) {
    out.extend_from_slice(format_rfc3339(time).as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Writes records to a log file, rotating it by size.
pub struct LogWriter {
    settings: LogSettings,
    file: File,
    size: u64,
    /// Records dropped since the last one written, and why.
    dropped: Option<(u64, String)>,
    rotations: u64,
    /// After a rotation failed (a full disk), the file grows past its size until then.
    retry_rotation: Option<std::time::Instant>,
}

/// How long a failed rotation waits before the next try.
const ROTATION_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

fn open_log(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

impl LogWriter {
    pub fn open(settings: LogSettings) -> std::io::Result<LogWriter> {
        let file = open_log(&settings.path)?;
        let size = file.metadata()?.len();
        Ok(LogWriter { settings, file, size, dropped: None, rotations: 0, retry_rotation: None })
    }

    /// Appends one record (`content` without its newline), rotating first when it
    /// would take the file over its size. After records were lost, a notice saying how
    /// many goes first, in the same write: both land or neither.
    pub fn write(&mut self, time: u64, stream: Stream, partial: bool, content: &[u8]) {
        let mut bytes = Vec::with_capacity(content.len() + 128);
        if let Some((count, reason)) = &self.dropped {
            let notice = format!("[orch: {count} records of output were lost: {reason}]");
            push_record(&mut bytes, time, Stream::Stderr, false, notice.as_bytes());
        }
        push_record(&mut bytes, time, stream, partial, content);
        match self.append(&bytes) {
            Ok(()) => self.dropped = None,
            Err(error) => {
                let count = self.dropped.as_ref().map_or(0, |(count, _)| *count);
                self.dropped = Some((count + 1, error.to_string()));
            }
        }
    }

    fn append(&mut self, record: &[u8]) -> std::io::Result<()> {
        let waiting = self.retry_rotation.is_some_and(|at| std::time::Instant::now() < at);
        if self.size > 0 && self.size + record.len() as u64 > self.settings.max_bytes && !waiting {
            match self.rotate() {
                Ok(()) => self.retry_rotation = None,
                Err(_) => self.retry_rotation = Some(std::time::Instant::now() + ROTATION_RETRY),
            }
        }
        // The file's real length (the shim's own messages may land in it too).
        let before = self.file.metadata().map_or(self.size, |m| m.len());
        if let Err(error) = self.file.write_all(record) {
            // No half record left for the next one to be glued to.
            let _ = self.file.set_len(before);
            return Err(error);
        }
        self.size += record.len() as u64;
        Ok(())
    }

    /// `X.log.(n-1)` dropped, each `X.log.i` to `.i+1`, `X.log` to `.1`, a new `X.log`.
    /// When the new file cannot be made (a full disk), the current one is renamed back
    /// and written on; nothing older is dropped before the new file exists.
    fn rotate(&mut self) -> std::io::Result<()> {
        let path = self.settings.path.clone();
        let last = self.settings.max_files.saturating_sub(1).max(1);
        let aside = rotated_path(&path, 0);
        match std::fs::rename(&path, &aside) {
            Ok(()) => {}
            // Removed by someone: a new file is all it takes.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
        let fresh = match open_log(&path) {
            Ok(file) => file,
            Err(error) => {
                let _ = std::fs::rename(&aside, &path);
                return Err(error);
            }
        };
        let _ = std::fs::remove_file(rotated_path(&path, last));
        for n in (0..last).rev() {
            let _ = std::fs::rename(rotated_path(&path, n), rotated_path(&path, n + 1));
        }
        self.file = fresh;
        self.size = 0;
        self.rotations += 1;
        Ok(())
    }

    /// The current file (the shim points its own stderr at it after a rotation).
    pub fn file(&self) -> &File {
        &self.file
    }
}

/// What is left of a stream's last line, waiting for its newline.
struct Pending {
    stream: Stream,
    fd: Option<OwnedFd>,
    line: Vec<u8>,
    /// A terminal's lines end in CR LF: the CR is no part of the line.
    terminal: bool,
}

impl Pending {
    /// Records every complete line of `data` (and pieces over [`MAX_RECORD_BYTES`]).
    fn take(&mut self, writer: &mut LogWriter, time: u64, mut data: &[u8]) {
        while let Some(end) = data.iter().position(|b| *b == b'\n') {
            self.line.extend_from_slice(&data[..end]);
            if self.terminal && self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            self.cut(writer, time);
            // A line longer than a record ends with its last piece, a full record.
            writer.write(time, self.stream, false, &self.line);
            self.line.clear();
            data = &data[end + 1..];
        }
        self.line.extend_from_slice(data);
        self.cut(writer, time);
    }

    /// Writes pieces of a line over [`MAX_RECORD_BYTES`] as `P` records.
    fn cut(&mut self, writer: &mut LogWriter, time: u64) {
        while self.line.len() > MAX_RECORD_BYTES {
            let rest = self.line.split_off(MAX_RECORD_BYTES);
            writer.write(time, self.stream, true, &self.line);
            self.line = rest;
        }
    }

    /// The end of the stream: a last line without a newline is a piece.
    fn finish(&mut self, writer: &mut LogWriter, time: u64) {
        if !self.line.is_empty() {
            writer.write(time, self.stream, true, &self.line);
            self.line.clear();
        }
        self.fd = None;
    }
}

/// Copies the command's stdout and stderr (the read ends of their pipes) into the log,
/// a poll at a time on the caller's thread (the shim has unshared a PID namespace and
/// may start no thread).
pub struct Copier {
    /// stdout, stderr, and a system container's console (a pty's master) when it has one.
    streams: Vec<Pending>,
    writer: LogWriter,
    buffer: Vec<u8>,
    /// Who is attached to the console (`orch console`).
    console_client: Option<std::os::unix::net::UnixStream>,
}

impl Copier {
    pub fn new(stdout: OwnedFd, stderr: OwnedFd, writer: LogWriter) -> Copier {
        let streams = vec![
            Pending { stream: Stream::Stdout, fd: Some(stdout), line: Vec::new(), terminal: false },
            Pending { stream: Stream::Stderr, fd: Some(stderr), line: Vec::new(), terminal: false },
        ];
        Copier { streams, writer, buffer: vec![0u8; READ_BYTES], console_client: None }
    }

    /// Also copies what is written to a console, read from its pty's `master`, as
    /// stdout (the caller keeps a slave open, so the master never reports a hang-up
    /// while no process has the console open).
    pub fn add_console(&mut self, master: OwnedFd) {
        self.streams.push(Pending { stream: Stream::Stdout, fd: Some(master), line: Vec::new(), terminal: true });
    }

    /// `orch console`'s connection (one at a time: a new one replaces the last): it gets
    /// what the console prints from now on, besides the log.
    pub fn attach_console(&mut self, client: std::os::unix::net::UnixStream) {
        let _ = client.set_nonblocking(true);
        self.console_client = Some(client);
    }

    /// Reads what the console's client typed and writes it to the console; the client
    /// goes when it hangs up.
    pub fn console_input(&mut self) {
        use std::io::Read;
        let Some(client) = self.console_client.as_mut() else { return };
        let mut typed = [0u8; 4096];
        match client.read(&mut typed) {
            Ok(0) => self.console_client = None,
            Ok(n) => {
                if let Some(master) = self.streams.get(2).and_then(|s| s.fd.as_ref()) {
                    let _ = nix::unistd::write(master, &typed[..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => self.console_client = None,
        }
    }

    /// Whether a pipe is still open (a process may still write); a console does not
    /// count (it never ends by itself).
    pub fn is_open(&self) -> bool {
        self.streams.iter().take(2).any(|s| s.fd.is_some())
    }

    /// Whether a console is still copied (a system container's init closes its stdout
    /// and stderr and writes to its console from then on).
    pub fn has_console(&self) -> bool {
        self.streams.get(2).is_some_and(|s| s.fd.is_some())
    }

    /// Waits (at most `timeout`) for output or for `also` to turn readable, and copies
    /// what came; whether `also` is readable. `on_rotate` gets the new file after a
    /// rotation.
    pub fn step(&mut self, also: Option<BorrowedFd>, timeout: nix::poll::PollTimeout, on_rotate: &impl Fn(&File)) -> bool {
        self.step_with(also.as_slice(), timeout, on_rotate).first().copied().unwrap_or(false)
    }

    /// [`Copier::step`] watching several more descriptors: which of `extra` are readable
    /// (all of them when nothing can be waited on).
    pub fn step_with(&mut self, extra: &[BorrowedFd], timeout: nix::poll::PollTimeout, on_rotate: &impl Fn(&File)) -> Vec<bool> {
        use nix::poll::{poll, PollFd, PollFlags};
        let open: Vec<usize> = (0..self.streams.len()).filter(|i| self.streams[*i].fd.is_some()).collect();
        let (ready, extra_ready) = {
            let mut fds: Vec<PollFd> = open.iter().filter_map(|i| self.streams[*i].fd.as_ref()).map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)).collect();
            for fd in extra {
                fds.push(PollFd::new(*fd, PollFlags::POLLIN));
            }
            if let Some(client) = &self.console_client {
                fds.push(PollFd::new(client.as_fd(), PollFlags::POLLIN));
            }
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => return vec![false; extra.len()],
                // Nothing can be waited on: the pipes are given up.
                Err(_) => {
                    self.finish();
                    return vec![true; extra.len()];
                }
            }
            let is_ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            let ready: Vec<usize> = open.iter().zip(&fds).filter(|(_, fd)| is_ready(fd)).map(|(i, _)| *i).collect();
            let typed = self.console_client.is_some() && fds.last().is_some_and(is_ready);
            let extra_ready: Vec<bool> = fds[open.len()..open.len() + extra.len()].iter().map(is_ready).collect();
            (ready, (extra_ready, typed))
        };
        let (extra_ready, typed) = extra_ready;
        if typed {
            self.console_input();
        }
        for index in ready {
            let Some(fd) = self.streams[index].fd.as_ref() else { continue };
            let read = nix::unistd::read(fd, &mut self.buffer);
            let before = self.writer.rotations;
            let time = now_nanos();
            match read {
                Ok(0) => self.streams[index].finish(&mut self.writer, time),
                Ok(n) => {
                    if index == 2 {
                        // A client that cannot keep up loses output (the log has it all).
                        if let Some(client) = self.console_client.as_mut() {
                            if let Err(e) = client.write_all(&self.buffer[..n]) {
                                if e.kind() != std::io::ErrorKind::WouldBlock {
                                    self.console_client = None;
                                }
                            }
                        }
                    }
                    self.streams[index].take(&mut self.writer, time, &self.buffer[..n])
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => self.streams[index].finish(&mut self.writer, time),
            }
            if self.writer.rotations != before {
                on_rotate(self.writer.file());
            }
        }
        extra_ready
    }

    /// Writes what is left of unfinished lines and closes the pipes.
    pub fn finish(&mut self) {
        let time = now_nanos();
        for stream in &mut self.streams {
            stream.finish(&mut self.writer, time);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_round_trip() {
        let table = [
            (0, "1970-01-01T00:00:00.000000000Z"),
            (951_782_400_000_000_001, "2000-02-29T00:00:00.000000001Z"),
            (1_764_557_317_123_456_789, "2025-12-01T02:48:37.123456789Z"),
            (4_107_542_399_999_999_999, "2100-02-28T23:59:59.999999999Z"),
        ];
        for (nanos, text) in table {
            assert_eq!(format_rfc3339(nanos), text);
            assert_eq!(parse_rfc3339(text), Some(nanos), "{text}");
        }
        for bad in ["2025-12-01T02:48:37Z", "2025-13-01T02:48:37.123456789Z", "2025-12-01 02:48:37.123456789Z", "x"] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn records_parse_and_other_lines_are_content() {
        let line = b"2025-12-01T02:48:37.123456789Z stdout F hello world";
        assert_eq!(parse_record(line), Record { time: Some(1_764_557_317_123_456_789), partial: false, content: b"hello world" });
        let piece = b"2025-12-01T02:48:37.123456789Z stderr P ";
        assert_eq!(parse_record(piece), Record { time: Some(1_764_557_317_123_456_789), partial: true, content: b"" });
        for raw in [&b"plain output"[..], b"2025-12-01T02:48:37.123456789Z stdin F x", b"2025-12-01T02:48:37.123456789Z stdout X x", b""] {
            assert_eq!(parse_record(raw), Record { time: None, partial: false, content: raw });
        }
    }

    fn settings(dir: &Path, max_bytes: u64, max_files: u32) -> LogSettings {
        LogSettings { path: dir.join("r.log"), max_bytes, max_files }
    }

    fn lines(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(|l| String::from_utf8_lossy(parse_record(l.as_bytes()).content).into_owned()).collect()
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_max_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settings(dir.path(), 200, 3);
        let mut writer = LogWriter::open(settings.clone()).expect("open");
        for n in 0..20 {
            writer.write(n, Stream::Stdout, false, format!("line {n:02}").as_bytes());
        }
        // Each record is 48 bytes: four to a file.
        for path in [settings.path.clone(), rotated_path(&settings.path, 1), rotated_path(&settings.path, 2)] {
            assert!(std::fs::metadata(&path).expect("file").len() <= 200, "{}", path.display());
        }
        assert!(!rotated_path(&settings.path, 3).exists(), "at most 3 files");
        assert_eq!(lines(&rotated_path(&settings.path, 2)), ["line 08", "line 09", "line 10", "line 11"]);
        assert_eq!(lines(&settings.path), ["line 16", "line 17", "line 18", "line 19"]);
    }

    /// Copies until both pipes end — when the last process holding them exits.
    fn copy_output(stdout: OwnedFd, stderr: OwnedFd, writer: LogWriter) {
        let mut copier = Copier::new(stdout, stderr, writer);
        while copier.is_open() {
            copier.step(None, nix::poll::PollTimeout::NONE, &|_| {});
        }
    }

    #[test]
    fn pipes_become_records_with_long_lines_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settings(dir.path(), 1 << 20, 2);
        let (out_read, out_write) = nix::unistd::pipe().expect("pipe");
        let (err_read, err_write) = nix::unistd::pipe().expect("pipe");
        let writer = LogWriter::open(settings.clone()).expect("open");
        let copier = std::thread::spawn(move || copy_output(out_read, err_read, writer));
        let mut out = File::from(out_write);
        let mut err = File::from(err_write);
        out.write_all(b"one\ntw").expect("write");
        err.write_all(b"oops\n").expect("write");
        out.write_all(b"o\n").expect("write");
        out.write_all(&vec![b'x'; MAX_RECORD_BYTES + 10]).expect("write");
        out.write_all(b"\nlast without newline").expect("write");
        drop((out, err));
        copier.join().expect("copier");
        let text = std::fs::read_to_string(&settings.path).expect("log");
        let records: Vec<Record> = text.lines().map(|l| parse_record(l.as_bytes())).collect();
        assert!(records.iter().all(|r| r.time.is_some()), "{text}");
        let stdout: Vec<(bool, usize)> =
            text.lines().filter(|l| l.contains(" stdout ")).map(|l| parse_record(l.as_bytes())).map(|r| (r.partial, r.content.len())).collect();
        assert_eq!(stdout, [(false, 3), (false, 3), (true, MAX_RECORD_BYTES), (false, 10), (true, 20)]);
        assert_eq!(text.lines().filter(|l| l.contains(" stderr F oops")).count(), 1);
    }
}
