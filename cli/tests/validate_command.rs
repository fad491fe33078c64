//! `orch validate` as a user runs it: the real binary, real files, exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn orch(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child =
        Command::new(env!("CARGO_BIN_EXE_orch")).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn orch");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("wait orch")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

const WEBAPP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/webapp.yaml");

#[test]
fn the_example_manifest_is_valid() {
    let out = orch(&["validate", "-f", WEBAPP], None);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("service/webapp valid"), "{}", text(&out.stdout));
}

#[test]
fn invalid_input_exits_1_with_file_document_and_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: orch/v1\nkind: Service\nmetadata: {name: x}\nspec:\n  image: busybox\n  replicas: -2\n").expect("write");
    let out = orch(&["validate", "-f", bad.to_str().expect("utf-8 path")], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains(&format!("{}: document 1: spec.replicas: must be between 0 and 10000, got -2", bad.display())), "{stderr}");
}

#[test]
fn directories_and_stdin_are_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::copy(WEBAPP, dir.path().join("a.yaml")).expect("copy");
    std::fs::write(
        dir.path().join("b.yml"),
        std::fs::read_to_string(WEBAPP).expect("read").replace("name: webapp", "name: api").replace("nodePort: 30080", "nodePort: 30081"),
    )
    .expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a manifest").expect("write");
    let out = orch(&["validate", "-f", dir.path().to_str().expect("utf-8")], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("service/webapp valid") && stdout.contains("service/api valid"), "{stdout}");

    let manifest = std::fs::read_to_string(WEBAPP).expect("read");
    let out = orch(&["validate", "-f", "-"], Some(&manifest));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = orch(&["validate", "-f", "-"], Some("kind: Service\napiVersion: orch/v1\nmetadata: {name: x}\nspec: {image: busybox, bogus: 1}\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("-: document 1: spec.bogus: unknown field `bogus`"), "{}", text(&out.stderr));
}

#[test]
fn duplicate_services_across_files_are_rejected() {
    let out = orch(&["validate", "-f", WEBAPP, "-f", WEBAPP], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("already defined"), "{}", text(&out.stderr));
}

#[test]
fn unreadable_and_empty_inputs_fail_with_one_line() {
    let out = orch(&["validate", "-f", "/nonexistent/orch.yaml"], None);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.starts_with("error: cannot read /nonexistent/orch.yaml"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let dir = tempfile::tempdir().expect("tempdir");
    let out = orch(&["validate", "-f", dir.path().to_str().expect("utf-8")], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no manifests"), "{}", text(&out.stderr));

    let binary = dir.path().join("bin.yaml");
    std::fs::write(&binary, [0xff, 0xfe, 0x00]).expect("write");
    let out = orch(&["validate", "-f", binary.to_str().expect("utf-8")], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("is not UTF-8"), "{}", text(&out.stderr));

    let out = orch(&["validate", "-f", "-"], Some("# nothing here\n"));
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("no services found in -"), "{}", text(&out.stderr));
}

/// A 200 KB manifest whose aliases stand for 8 million strings (a "billion laughs").
fn alias_bomb() -> String {
    let anchor = format!("a: &big [{}]", vec!["\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\""; 200].join(","));
    let aliases = format!("b: [{}]", vec!["*big"; 40_000].join(","));
    format!("apiVersion: orch/v1\nkind: Service\nmetadata:\n  name: bomb\n  labels:\n    {anchor}\n    {aliases}\nspec:\n  image: busybox\n")
}

#[test]
fn an_alias_bomb_and_an_endless_file_fail_fast_in_bounded_memory() {
    let bomb = alias_bomb();
    assert!((190_000..210_000).contains(&bomb.len()), "{}", bomb.len());
    let out = orch(&["validate", "-f", "-"], Some(&bomb));
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("-: document 1:") && stderr.contains("once its aliases are expanded (an alias bomb?)"), "{stderr}");
    let out = orch(&["validate", "-f", "/dev/zero"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("/dev/zero: more than 4 MiB of manifests"), "{}", text(&out.stderr));
    // Every orch this test process ran and waited for: none grew past 64 MiB (the bomb
    // expanded took over 600 MiB before it was bounded).
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    assert!(usage.max_rss() < 64 << 10, "an orch process used {} KiB", usage.max_rss());
}
