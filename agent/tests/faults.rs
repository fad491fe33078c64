//! Faults of the node's disk, made for real: the agent's state and a replica's log on a
//! small tmpfs that fills up (blocks or inodes). Clear errors naming the file, and
//! nothing written before is lost. Root only (it mounts); each tmpfs is unmounted when
//! its test ends, also after a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failure is the point

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use orch_agent::net::ipam::{Ipam, Subnet};
use orch_agent::runtime::output::{parse_record, rotated_path, LogSettings, LogWriter, Stream};

/// A tmpfs of its own, mounted on a fresh directory with `options`.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(options: &str) -> Tmpfs {
        assert!(nix::unistd::geteuid().is_root(), "these tests mount a tmpfs: run them as root (`sudo bash deploy/test.sh`)");
        let dir = tempfile::Builder::new().prefix("orch-faults-").tempdir().expect("tempdir");
        nix::mount::mount(Some("tmpfs"), dir.path(), Some("tmpfs"), nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV, Some(options))
            .expect("mount a tmpfs");
        Tmpfs { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(self.dir.path(), nix::mount::MntFlags::MNT_DETACH);
    }
}

/// Fills the file system `dir` is on with one file; returns it.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).expect("filler");
    let block = vec![0u8; 4096];
    loop {
        match file.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                assert_eq!(error.raw_os_error(), Some(nix::libc::ENOSPC), "{error}");
                break;
            }
        }
    }
    path
}

#[test]
fn a_full_state_disk_loses_no_address_allocation() {
    let disk = Tmpfs::new("size=256k,mode=0700");
    let network = disk.path().join("network");
    let file = network.join("br.json");
    let ipam = Ipam::new(&file, &network.join("br.lock"), Subnet::parse("10.99.0.0/24").expect("subnet"));
    let first: Vec<Ipv4Addr> = (0..20).map(|n| ipam.allocate(&format!("r{n}")).expect("allocate")).collect();
    let filler = fill(disk.path());

    let error = ipam.allocate("late").expect_err("the disk is full").to_string();
    assert!(error.contains("br.json") && error.contains("No space left on device"), "{error}");
    let error = ipam.release("r0").expect_err("the disk is full").to_string();
    assert!(error.contains("br.json"), "{error}");
    // Every allocation is still on disk, and no temporary file is left beside it.
    let kept: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).expect("the IPAM file")).expect("whole JSON");
    let owners: Vec<&str> = kept["allocations"].as_object().expect("allocations").values().filter_map(|v| v.as_str()).collect();
    assert_eq!(owners.len(), 20, "{kept}");
    let names: Vec<String> = std::fs::read_dir(&network).expect("network").flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(names.iter().all(|n| n == "br.json" || n == "br.lock"), "{names:?}");

    // Space again: the next address is a new one, r0 still holds its own.
    std::fs::remove_file(filler).expect("free the disk");
    let late = ipam.allocate("late").expect("allocate after");
    assert!(!first.contains(&late), "{late} was handed out twice");
    assert_eq!(ipam.allocate("r0").expect("idempotent"), first[0]);
}

/// The records' contents of a log file, checking every line is a whole record.
fn records(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let record = parse_record(line.as_bytes());
            assert!(record.time.is_some(), "not a whole record: {line:?}");
            String::from_utf8_lossy(record.content).into_owned()
        })
        .collect()
}

#[test]
fn a_full_disk_drops_log_records_and_the_next_one_says_so() {
    let disk = Tmpfs::new("size=64k,mode=0700");
    let path = disk.path().join("r.log");
    let mut writer = LogWriter::open(LogSettings { path: path.clone(), max_bytes: 1 << 20, max_files: 2 }).expect("open");
    for n in 0..10 {
        writer.write(n, Stream::Stdout, false, format!("before {n}").as_bytes());
    }
    let filler = fill(disk.path());
    for n in 0..5 {
        writer.write(100 + n, Stream::Stdout, false, format!("while full {n} {}", "x".repeat(5000)).as_bytes());
    }
    std::fs::remove_file(filler).expect("free the disk");
    writer.write(200, Stream::Stdout, false, b"after");
    let lines = records(&path);
    let expected_before: Vec<String> = (0..10).map(|n| format!("before {n}")).collect();
    assert_eq!(lines[..10], expected_before[..], "{lines:?}");
    assert_eq!(lines.len(), 12, "{lines:?}");
    assert!(lines[10].starts_with("[orch: 5 records of output were lost: No space left on device"), "{lines:?}");
    assert_eq!(lines[11], "after");
}

#[test]
fn a_rotation_the_disk_refuses_keeps_the_log_whole() {
    // Two inodes: the root directory and the log; a new log file cannot be made.
    let disk = Tmpfs::new("size=1m,nr_inodes=2,mode=0700");
    let path = disk.path().join("r.log");
    let mut writer = LogWriter::open(LogSettings { path: path.clone(), max_bytes: 200, max_files: 3 }).expect("open");
    for n in 0..10 {
        writer.write(n, Stream::Stdout, false, format!("line {n}").as_bytes());
    }
    let lines = records(&path);
    assert_eq!(lines, (0..10).map(|n| format!("line {n}")).collect::<Vec<_>>(), "every record in the one file");
    assert!(!rotated_path(&path, 0).exists() && !rotated_path(&path, 1).exists());
    // Inodes again: a later record rotates the file (tried again after a second).
    nix::mount::mount(None::<&str>, disk.path(), None::<&str>, nix::mount::MsFlags::MS_REMOUNT, Some("nr_inodes=16")).expect("remount");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut n = 10;
    while !rotated_path(&path, 1).exists() {
        assert!(std::time::Instant::now() < deadline, "the log was never rotated once it could be");
        writer.write(n, Stream::Stdout, false, format!("line {n}").as_bytes());
        n += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut all = records(&rotated_path(&path, 1));
    all.extend(records(&path));
    assert_eq!(all, (0..n).map(|n| format!("line {n}")).collect::<Vec<_>>(), "every record once, in order");
}
