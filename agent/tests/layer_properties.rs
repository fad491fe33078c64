//! Property test of layer unpacking over generated hostile tars: paths with `..`,
//! `.` and a leading `/`, symlinks to outside the layer (relative and absolute) that
//! later entries write through or over, hard links out, whiteouts and opaque markers
//! in odd places, entries that replace each other's types. Whether the layer is
//! accepted or refused, nothing is written outside the layer directory: the tree
//! around it (a sibling directory with a file that symlinks and hard links aim at)
//! is exactly as before. As root: whiteouts are device nodes, ownership is kept.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests and benchmarks: a failure is the point

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use orch_agent::images::{unpack_layer, LayerLimits};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(Target),
    HardLink(Target),
    Fifo,
}

/// Where a link points: up and out of the layer (never past the test's own
/// directory: the layer is three levels down, and at most three `..` are used), into
/// the sibling directory by absolute path, or at other entries.
#[derive(Debug, Clone)]
enum Target {
    Up(usize),
    UpToOutside(&'static str),
    Outside(&'static str),
    Entry(String),
}

impl Target {
    fn resolve(&self, outside: &Path) -> String {
        match self {
            Target::Up(n) => vec![".."; *n].join("/"),
            Target::UpToOutside(rest) => format!("../../../outside{rest}"),
            Target::Outside(rest) => format!("{}{rest}", outside.display()),
            Target::Entry(path) => path.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: Kind,
    /// Mode, owner and time unlike the files around the layer's, so that a chmod,
    /// chown or utimes through a link out of the layer would show.
    mode: u32,
    owner: u64,
    mtime: u64,
}

/// Path components, hostile ones included.
const COMPONENTS: &[&str] = &["a", "b", "l", "..", ".", "", "etc", "sentinel", ".wh.a", ".wh.l", ".wh..wh..opq", ".wh..", ".wh."];

fn path() -> impl Strategy<Value = String> {
    (prop::bool::weighted(0.2), prop::collection::vec(prop::sample::select(COMPONENTS), 1..4)).prop_map(|(absolute, parts)| {
        let joined = parts.join("/");
        if absolute {
            format!("/{joined}")
        } else {
            joined
        }
    })
}

fn target() -> impl Strategy<Value = Target> {
    let rest = prop::sample::select(&["", "/sentinel", "/new"][..]);
    prop_oneof![
        1 => (1usize..=3).prop_map(Target::Up),
        1 => rest.clone().prop_map(Target::UpToOutside),
        1 => rest.prop_map(Target::Outside),
        2 => path().prop_map(Target::Entry),
    ]
}

fn entry() -> impl Strategy<Value = Entry> {
    let kind = prop_oneof![
        3 => prop::collection::vec(any::<u8>(), 0..16).prop_map(Kind::File),
        2 => Just(Kind::Dir),
        3 => target().prop_map(Kind::Symlink),
        2 => target().prop_map(Kind::HardLink),
        1 => Just(Kind::Fifo),
    ];
    let mode = prop::sample::select(&[0o600, 0o4777, 0o1777, 0o000, 0o711][..]);
    let owner = prop::sample::select(&[1234u64, 65534][..]);
    let mtime = prop::sample::select(&[1u64, 1_000_000_000][..]);
    (path(), kind, mode, owner, mtime).prop_map(|(path, kind, mode, owner, mtime)| Entry { path, kind, mode, owner, mtime })
}

/// A gzip-compressed (or plain) tar of `entries`, links into `outside` resolved, names
/// written byte for byte (the tar crate's own builder refuses `..`, as a hostile one
/// would not).
fn tar_of(entries: &[Entry], outside: &Path, gzip: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = tar::Header::new_old();
        let (kind, data, link): (tar::EntryType, &[u8], Option<String>) = match &entry.kind {
            Kind::File(data) => (tar::EntryType::Regular, data, None),
            Kind::Dir => (tar::EntryType::Directory, &[], None),
            Kind::Symlink(target) => (tar::EntryType::Symlink, &[], Some(target.resolve(outside))),
            Kind::HardLink(target) => (tar::EntryType::Link, &[], Some(target.resolve(outside))),
            Kind::Fifo => (tar::EntryType::Fifo, &[], None),
        };
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(entry.mode);
        header.set_uid(entry.owner);
        header.set_gid(entry.owner);
        header.set_mtime(entry.mtime);
        let name = entry.path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0; 1024]);
    if !gzip {
        return out;
    }
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut encoder, &out).expect("gzip");
    encoder.finish().expect("gzip")
}

/// Every path under `root` but `skip` and what it holds, with what it is: type, mode,
/// owner, size, modification time, link count, and a file's content or a symlink's
/// target.
fn snapshot(root: &Path, skip: &Path) -> BTreeMap<PathBuf, String> {
    let mut seen = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for item in std::fs::read_dir(&dir).expect("read_dir") {
            let path = item.expect("dir entry").path();
            if path == skip {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).expect("lstat");
            let link = std::fs::read_link(&path).map(|t| t.display().to_string()).unwrap_or_default();
            let content = if meta.is_file() { String::from_utf8_lossy(&std::fs::read(&path).expect("read")).into_owned() } else { String::new() };
            seen.insert(
                path.clone(),
                format!(
                    "{:o} {}:{} {} {}.{} {} {link}{content:?}",
                    meta.mode(),
                    meta.uid(),
                    meta.gid(),
                    meta.len(),
                    meta.mtime(),
                    meta.mtime_nsec(),
                    meta.nlink()
                ),
            );
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    seen
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn nothing_is_written_outside_the_layer_directory(entries in prop::collection::vec(entry(), 1..12), gzip in any::<bool>()) {
        common::require_root();
        let root = tempfile::tempdir().expect("tempdir");
        let outside = root.path().join("outside");
        std::fs::create_dir(&outside).expect("mkdir");
        std::fs::write(outside.join("sentinel"), "keep").expect("sentinel");
        let layer = root.path().join("d1/d2/layer");
        std::fs::create_dir_all(&layer).expect("mkdir");
        assert!(outside.as_os_str().len() < 90, "a link target must fit an old tar header: {}", outside.display());

        let before = snapshot(root.path(), &layer);
        let outcome = unpack_layer(tar_of(&entries, &outside, gzip).as_slice(), &layer, "sha256:prop", LayerLimits::default());
        let after = snapshot(root.path(), &layer);
        prop_assert_eq!(&before, &after, "written outside the layer (unpack gave {:?}) by {:#?}", outcome, entries);
        prop_assert_eq!(std::fs::read_to_string(outside.join("sentinel")).expect("sentinel"), "keep");
    }
}
