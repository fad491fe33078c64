//! An image's `USER` by name (`USER redis`, `USER nginx:www-data`), resolved from the
//! image's own `/etc/passwd` and `/etc/group` as runc does: a name is looked up in the
//! image, never on the node. Parsing is pure; [`ImageAccounts::read`] finds the files
//! in the unpacked layers (the topmost layer that has them, a whiteout hiding them).

use std::path::PathBuf;

/// The image's `/etc/passwd` and `/etc/group` (empty when it has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageAccounts {
    pub passwd: String,
    pub group: String,
}

impl ImageAccounts {
    /// Reads the files from `layers`, top layer first (as the image store lists them).
    pub fn read(layers: &[PathBuf]) -> ImageAccounts {
        ImageAccounts { passwd: layered_file(layers, "etc/passwd").unwrap_or_default(), group: layered_file(layers, "etc/group").unwrap_or_default() }
    }

    /// `name`'s uid and primary gid.
    fn user(&self, name: &str) -> Option<(u32, u32)> {
        self.passwd.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [user, _, uid, gid, ..] if *user == name => Some((uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
    }

    fn group(&self, name: &str) -> Option<u32> {
        self.group.lines().find_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [group, _, gid, ..] if *group == name => gid.parse().ok(),
                _ => None,
            }
        })
    }
}

/// The file at `relative` as the container would see it through `layers` (top first):
/// the topmost layer that has it, unless a whiteout (a 0:0 character device) above
/// hides it. Only regular files are read.
fn layered_file(layers: &[PathBuf], relative: &str) -> Option<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for layer in layers {
        let path = layer.join(relative);
        let Ok(meta) = std::fs::symlink_metadata(&path) else { continue };
        if meta.file_type().is_char_device() && meta.rdev() == 0 {
            return None;
        }
        if meta.is_file() {
            return std::fs::read_to_string(&path).ok();
        }
        return None;
    }
    None
}

/// An image's `USER` as `(uid, gid)`; `None` for root. `uid[:gid]` numbers are taken as
/// they are (no group: the gid is the uid); names are looked up in the image's accounts,
/// a user's gid being its primary group unless a group is given.
pub fn resolve_user(user: &str, accounts: &ImageAccounts) -> Result<Option<(u32, u32)>, String> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    if u.is_empty() {
        return Err(format!("image user {user:?}: no user before the ':'"));
    }
    let (uid, primary) = match u.parse::<u32>() {
        Ok(uid) => (uid, uid),
        Err(_) if u == "root" => (0, 0),
        Err(_) => accounts.user(u).ok_or_else(|| format!("image user {user:?}: no user {u:?} in the image's /etc/passwd"))?,
    };
    let gid = match (g, g.parse::<u32>()) {
        ("", _) => primary,
        (_, Ok(gid)) => gid,
        ("root", _) => 0,
        (name, Err(_)) => accounts.group(name).ok_or_else(|| format!("image user {user:?}: no group {name:?} in the image's /etc/group"))?,
    };
    Ok(if (uid, gid) == (0, 0) { None } else { Some((uid, gid)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> ImageAccounts {
        ImageAccounts {
            passwd: "root:x:0:0:root:/root:/bin/sh\nredis:x:999:998::/var/lib/redis:/usr/sbin/nologin\nbroken:x:nope:1::/:/bin/false\n".into(),
            group: "root:x:0:\nredis:x:998:\nwww-data:x:33:redis\n".into(),
        }
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table
    fn names_and_numbers_resolve_as_runc_does() {
        let accounts = accounts();
        let table: [(&str, Result<Option<(u32, u32)>, &str>); 10] = [
            ("root", Ok(None)),
            ("0:0", Ok(None)),
            ("33", Ok(Some((33, 33)))),
            ("1000:100", Ok(Some((1000, 100)))),
            ("redis", Ok(Some((999, 998)))),
            ("redis:www-data", Ok(Some((999, 33)))),
            ("redis:0", Ok(Some((999, 0)))),
            ("1000:redis", Ok(Some((1000, 998)))),
            ("nobody", Err("no user \"nobody\" in the image's /etc/passwd")),
            ("redis:staff", Err("no group \"staff\" in the image's /etc/group")),
        ];
        for (user, want) in table {
            let got = resolve_user(user, &accounts);
            match want {
                Ok(want) => assert_eq!(got, Ok(want), "{user}"),
                Err(message) => assert!(got.as_ref().is_err_and(|e| e.contains(message) && e.contains(user)), "{user}: {got:?}"),
            }
        }
        assert!(resolve_user("broken", &accounts).is_err(), "an unreadable entry is no user");
        assert!(resolve_user(":5", &accounts).is_err());
        assert!(resolve_user("redis", &ImageAccounts::default()).is_err(), "an image without /etc/passwd has no named users");
    }

    #[test]
    fn the_topmost_layer_wins_and_a_whiteout_hides() {
        let root = tempfile::tempdir().expect("temporary directory");
        let layer = |name: &str, passwd: Option<&str>| {
            let dir = root.path().join(name);
            std::fs::create_dir_all(dir.join("etc")).expect("etc");
            if let Some(text) = passwd {
                std::fs::write(dir.join("etc/passwd"), text).expect("passwd");
            }
            dir
        };
        let bottom = layer("bottom", Some("app:x:1:1::/:/bin/sh\n"));
        let middle = layer("middle", None);
        let top = layer("top", Some("app:x:2:2::/:/bin/sh\n"));
        assert_eq!(ImageAccounts::read(&[top.clone(), middle.clone(), bottom.clone()]).user("app"), Some((2, 2)));
        assert_eq!(ImageAccounts::read(&[middle.clone(), bottom.clone()]).user("app"), Some((1, 1)));
        let whiteout = layer("whiteout", None);
        nix::sys::stat::mknod(&whiteout.join("etc/passwd"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0).expect("a whiteout (as root)");
        assert_eq!(ImageAccounts::read(&[whiteout, bottom]).passwd, "", "removed by a layer above");
    }
}
