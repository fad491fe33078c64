//! Unpacking one image layer (a tar, gzip-compressed or not) into a directory in
//! overlayfs' layer format: whiteouts (`.wh.NAME`) become 0:0 character devices and
//! opaque markers (`.wh..wh..opq`) the `trusted.overlay.opaque` xattr, so stacking
//! the layer directories as lowerdirs gives the image's tree.
//!
//! Layers are untrusted: an entry whose path leaves the root (`..`), that would be
//! written through a symlink or a hard link to outside the layer is rejected with the
//! entry named. Device nodes and FIFOs, which images built from root filesystems carry
//! (`dev/console`, `dev/null`…), are skipped with a debug line, as containerd does for
//! devices it may not create: a container gets its own `/dev`, and nothing an image
//! ships can be a device on the node. Symlink targets are stored as they are: they are
//! resolved inside the container's root, and unpacking never follows them.
#![allow(unsafe_code)]

use std::cell::Cell;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::{mknod, Mode, SFlag};
use tar::EntryType;

use super::ImageError;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// The most one layer may unpack to: its files' bytes and its entries. A layer is
/// untrusted, and gzip turns a few megabytes into terabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerLimits {
    pub max_bytes: u64,
    pub max_entries: usize,
}

impl Default for LayerLimits {
    /// Far above any image people run (the largest CUDA layers are a few GiB, the
    /// busiest `node_modules` a few hundred thousand files).
    fn default() -> LayerLimits {
        LayerLimits { max_bytes: 32 << 30, max_entries: 1_000_000 }
    }
}

/// The most tar headers, long names and PAX records one entry may come with (a
/// path is at most 4 KiB; PAX records carry a few attributes).
const HEADER_BYTES_PER_ENTRY: u64 = 1 << 20;

/// A reader that fails once more than `allowed` bytes were read from it: the
/// unpacker raises `allowed` by each entry's declared size as it goes, so only the
/// headers between entries are held to [`HEADER_BYTES_PER_ENTRY`].
struct Metered<R> {
    inner: R,
    read: u64,
    allowed: Rc<Cell<u64>>,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.allowed.get().saturating_sub(self.read);
        if left == 0 {
            return Err(std::io::Error::other(format!(
                "more than {} KiB of tar headers, long names or PAX records for one entry",
                HEADER_BYTES_PER_ENTRY >> 10
            )));
        }
        let len = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        self.read += n as u64;
        Ok(n)
    }
}

/// What unpacking a layer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnpackStats {
    pub entries: usize,
    pub whiteouts: usize,
    pub opaque_dirs: usize,
    /// Device nodes and FIFOs left out.
    pub skipped: usize,
    /// The bytes of its files, as their headers (PAX records included) declare them.
    pub bytes: u64,
}

/// Unpacks the layer read from `reader` into `dest` (an empty directory), refusing it at
/// the first entry over `limits`. `digest` names the layer in errors.
pub fn unpack_layer(reader: impl Read, dest: &Path, digest: &str, limits: LayerLimits) -> Result<UnpackStats, ImageError> {
    let mut buffered = BufReader::new(reader);
    let magic = buffered.fill_buf().map_err(ImageError::io("cannot read layer", dest))?;
    let decompressed: Box<dyn Read> = if magic.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(buffered))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Err(ImageError::Layer { digest: digest.to_owned(), message: "zstd-compressed layers are not supported".into() });
    } else {
        Box::new(buffered)
    };
    // Long names and PAX records are read into memory whole by the tar reader; the
    // stream is metered so that what comes between two entries' data stays small.
    let allowed = Rc::new(Cell::new(HEADER_BYTES_PER_ENTRY));
    let metered = Metered { inner: decompressed, read: 0, allowed: Rc::clone(&allowed) };
    let mut archive = tar::Archive::new(metered);
    archive.set_preserve_permissions(true);
    archive.set_preserve_ownerships(true);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let layer_error = |message: String| ImageError::Layer { digest: digest.to_owned(), message };
    let mut stats = UnpackStats::default();
    for entry in archive.entries().map_err(|e| layer_error(format!("not a tar archive: {e}")))? {
        let mut entry = entry.map_err(|e| layer_error(format!("corrupt tar stream: {e}")))?;
        // Its data (padded to a block), then at most this much before the next entry.
        let size = entry.size();
        allowed.set(allowed.get().saturating_add(size.div_ceil(512).saturating_mul(512)).saturating_add(HEADER_BYTES_PER_ENTRY));
        let raw_path = entry.path().map_err(|e| layer_error(format!("bad entry path: {e}")))?.into_owned();
        let unsafe_entry =
            |reason: &str| ImageError::UnsafeEntry { digest: digest.to_owned(), entry: raw_path.display().to_string(), reason: reason.to_owned() };
        let Some(relative) = normalize(&raw_path).map_err(&unsafe_entry)? else { continue };
        stats.entries += 1;
        stats.bytes = stats.bytes.saturating_add(size);
        if stats.entries > limits.max_entries {
            return Err(layer_error(format!("more than {} entries (the node's --max-layer-entries)", limits.max_entries)));
        }
        if stats.bytes > limits.max_bytes {
            return Err(layer_error(format!("more than {} bytes unpacked (the node's --max-layer-size)", limits.max_bytes)));
        }
        let parent_rel = relative.parent().map(Path::to_owned).unwrap_or_default();
        let name = relative.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let parent = ensure_real_dirs(dest, &parent_rel).map_err(|reason| unsafe_entry(&reason))?;

        if name == OPAQUE_MARKER {
            set_opaque(&parent).map_err(|e| unsafe_entry(&format!("cannot mark the directory opaque: {e}")))?;
            stats.opaque_dirs += 1;
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == "." || hidden == ".." {
                return Err(unsafe_entry("whiteout of nothing"));
            }
            let target = parent.join(hidden);
            remove_any(&target);
            mknod(&target, SFlag::S_IFCHR, Mode::empty(), 0).map_err(|e| unsafe_entry(&format!("cannot create the whiteout: {e}")))?;
            stats.whiteouts += 1;
            continue;
        }
        let target = parent.join(&name);
        match entry.header().entry_type() {
            kind @ (EntryType::Char | EntryType::Block | EntryType::Fifo) => {
                tracing::debug!(layer = digest, entry = %raw_path.display(), ?kind, "skipping a device node or FIFO");
                stats.skipped += 1;
            }
            EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(|e| layer_error(format!("bad hard link: {e}")))?
                    .ok_or_else(|| unsafe_entry("hard link without a target"))?
                    .into_owned();
                let link_rel = normalize(&link)
                    .map_err(|reason| unsafe_entry(&format!("hard link target {}: {reason}", link.display())))?
                    .ok_or_else(|| unsafe_entry("hard link to the root"))?;
                let link_parent = ensure_real_dirs(dest, link_rel.parent().unwrap_or(Path::new("")))
                    .map_err(|reason| unsafe_entry(&format!("hard link target: {reason}")))?;
                let source = link_parent.join(link_rel.file_name().unwrap_or_default());
                let meta =
                    std::fs::symlink_metadata(&source).map_err(|_| unsafe_entry(&format!("hard link to {} which is not in this layer", link.display())))?;
                if meta.is_dir() {
                    return Err(unsafe_entry("hard link to a directory"));
                }
                remove_any(&target);
                std::fs::hard_link(&source, &target).map_err(|e| unsafe_entry(&format!("cannot link: {e}")))?;
            }
            EntryType::Directory => {
                if std::fs::symlink_metadata(&target).is_ok_and(|m| !m.is_dir()) {
                    remove_any(&target);
                }
                entry.unpack(&target).map_err(|e| unsafe_entry(&format!("cannot create: {e}")))?;
            }
            EntryType::Regular | EntryType::Continuous | EntryType::Symlink => {
                if std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    remove_any(&target);
                }
                entry.unpack(&target).map_err(|e| unsafe_entry(&format!("cannot create: {e}")))?;
            }
            // PAX and GNU headers are consumed by the tar reader; anything else is skipped.
            _ => {}
        }
    }
    Ok(stats)
}

/// The entry's path relative to the layer root, or `None` for the root itself.
fn normalize(path: &Path) -> Result<Option<PathBuf>, &'static str> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir => return Err("path leaves the layer root (..)"),
            Component::Prefix(_) => return Err("not a Unix path"),
        }
    }
    Ok(if out.as_os_str().is_empty() { None } else { Some(out) })
}

/// Makes sure every component of `relative` under `root` is a real directory (creating
/// missing ones), never a symlink that could lead writes outside the layer.
fn ensure_real_dirs(root: &Path, relative: &Path) -> Result<PathBuf, String> {
    let mut current = root.to_owned();
    for component in relative.components() {
        current.push(component);
        match std::fs::symlink_metadata(&current) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(format!("its parent {} is a symlink in this layer", current.strip_prefix(root).unwrap_or(&current).display()));
            }
            Ok(_) => {
                return Err(format!("its parent {} is not a directory", current.strip_prefix(root).unwrap_or(&current).display()));
            }
            Err(_) => std::fs::create_dir(&current).map_err(|e| format!("cannot create {}: {e}", current.display()))?,
        }
    }
    Ok(current)
}

fn remove_any(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// `setxattr(dir, "trusted.overlay.opaque", "y")`: overlayfs hides the lower layers'
/// content of this directory.
fn set_opaque(dir: &Path) -> Result<(), nix::errno::Errno> {
    let path = CString::new(dir.as_os_str().as_bytes()).map_err(|_| nix::errno::Errno::EINVAL)?;
    let name = c"trusted.overlay.opaque";
    // SAFETY: both strings are NUL-terminated and live across the call; the value is a
    // one-byte buffer whose length is passed.
    let rc = unsafe { nix::libc::setxattr(path.as_ptr(), name.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
    if rc < 0 {
        Err(nix::errno::Errno::last())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalize_table() {
        assert_eq!(normalize(Path::new("./a/b")), Ok(Some(PathBuf::from("a/b"))));
        assert_eq!(normalize(Path::new("/etc/passwd")), Ok(Some(PathBuf::from("etc/passwd"))));
        assert_eq!(normalize(Path::new("./")), Ok(None));
        assert!(normalize(Path::new("../evil")).is_err());
        assert!(normalize(Path::new("a/../../evil")).is_err());
    }
}
