//! A path as a container will see it through an image's unpacked layers (top first): the
//! topmost layer with an entry wins, a whiteout (a 0:0 character device) above hides
//! it, and symbolic links resolve inside the image, never on the node.

use std::path::{Path, PathBuf};

/// Links followed at most (Linux's own limit), so a loop ends.
const MAX_LINKS: usize = 40;

/// The entry at `relative` in the topmost layer that has it: its path on the node and
/// its own metadata (a link is not followed). `None` when no layer has it or a
/// whiteout hides it. Each layer is walked a component at a time without following
/// anything: a link or a file on the way in a layer hides what the layers below have
/// under that name (the link itself is the caller's to resolve), and no host path is
/// ever reached through one.
fn entry(layers: &[PathBuf], relative: &Path) -> Option<(PathBuf, std::fs::Metadata)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let parts: Vec<_> = relative.components().collect();
    let (last, parents) = parts.split_last()?;
    'layers: for layer in layers {
        let mut path = layer.clone();
        for part in parents {
            path.push(part);
            match std::fs::symlink_metadata(&path) {
                Err(_) => continue 'layers,
                Ok(meta) if meta.file_type().is_dir() => {}
                // A whiteout, a file or a link: nothing below this name in this layer or under it.
                Ok(_) => return None,
            }
        }
        path.push(last);
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            return None;
        }
        return Some((path, meta));
    }
    None
}

/// The regular file at `relative` as the container would see it (a link there is not
/// followed); `None` when there is none.
pub fn layered_file(layers: &[PathBuf], relative: &str) -> Option<String> {
    let (path, meta) = entry(layers, Path::new(relative))?;
    if meta.is_file() {
        std::fs::read_to_string(path).ok()
    } else {
        None
    }
}

/// Where `path` (absolute, as the container names it) leads once every link on the way
/// is followed inside the image — `/sbin/init` to `/usr/lib/systemd/systemd` in a Debian
/// image with systemd — or `None` when some part of it does not exist (or links loop).
/// `..` stops at the root, as it does in the container.
pub fn resolve(layers: &[PathBuf], path: &str) -> Option<PathBuf> {
    let mut pending: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
    let mut parts: Vec<String> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => parts.push(part),
        }
        let relative: PathBuf = parts.iter().collect();
        let (host, meta) = entry(layers, &relative)?;
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return None;
            }
            let target = std::fs::read_link(&host).ok()?;
            let target = target.to_str()?;
            parts.pop();
            if target.starts_with('/') {
                parts.clear();
            }
            pending.extend(target.split('/').rev().map(str::to_owned));
        }
    }
    Some(Path::new("/").join(parts.iter().collect::<PathBuf>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_layers_and_the_topmost_entry_wins() {
        let root = tempfile::tempdir().expect("temporary directory");
        let bottom = root.path().join("bottom");
        let top = root.path().join("top");
        for dir in ["usr/lib/systemd", "usr/sbin", "etc"] {
            std::fs::create_dir_all(bottom.join(dir)).expect("directories");
        }
        std::fs::create_dir_all(top.join("usr/sbin")).expect("directories");
        std::fs::write(bottom.join("usr/lib/systemd/systemd"), "").expect("systemd");
        let link = |target: &str, at: &Path| std::os::unix::fs::symlink(target, at).expect("link");
        link("usr/sbin", &bottom.join("sbin"));
        link("usr/lib", &bottom.join("lib"));
        link("../lib/systemd/systemd", &bottom.join("usr/sbin/init"));
        link("/etc/b", &bottom.join("etc/a"));
        link("../../../etc/a", &bottom.join("etc/b"));
        link("/usr/lib/systemd/systemd", &bottom.join("etc/escape"));
        std::fs::write(top.join("usr/sbin/init"), "sysvinit").expect("init");
        // A layer whose `opt` leads onto the node: never followed by the lookup.
        let host = root.path().join("host");
        std::fs::create_dir_all(host.join("secret")).expect("host dir");
        std::fs::write(host.join("secret/file"), "the node's").expect("host file");
        let escaping = root.path().join("escaping");
        std::fs::create_dir_all(&escaping).expect("layer");
        link(&host.display().to_string(), &escaping.join("opt"));
        assert_eq!(layered_file(std::slice::from_ref(&escaping), "opt/secret/file"), None, "a link on the way is not followed onto the node");
        assert_eq!(
            resolve(std::slice::from_ref(&escaping), "/opt/secret/file"),
            None,
            "an absolute link resolves inside the image, where there is no such file"
        );

        let image = [bottom.clone()];
        assert_eq!(resolve(&image, "/sbin/init"), Some(PathBuf::from("/usr/lib/systemd/systemd")));
        assert_eq!(resolve(&image, "/lib/systemd/../systemd/./systemd"), Some(PathBuf::from("/usr/lib/systemd/systemd")));
        assert_eq!(resolve(&image, "/../../usr/sbin/init"), Some(PathBuf::from("/usr/lib/systemd/systemd")), "`..` stops at the root");
        assert_eq!(resolve(&image, "/etc/escape"), Some(PathBuf::from("/usr/lib/systemd/systemd")), "an absolute link is the image's");
        assert_eq!(resolve(&image, "/etc/a"), None, "a loop ends");
        assert_eq!(resolve(&image, "/sbin/nothing"), None);
        assert_eq!(resolve(&[top.clone(), bottom.clone()], "/sbin/init"), Some(PathBuf::from("/usr/sbin/init")), "the top layer's file wins");
        assert_eq!(layered_file(&[top, bottom.clone()], "usr/sbin/init").as_deref(), Some("sysvinit"));
        assert_eq!(layered_file(&[bottom], "usr/sbin/init"), None, "a link is no regular file");
    }
}
