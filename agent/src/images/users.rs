//! An image's `USER` by name (`USER redis`, `USER nginx:www-data`), resolved from the
//! image's own `/etc/passwd` and `/etc/group` as runc does: a name is looked up in the
//! image, never on the node. Parsing is pure; [`ImageAccounts::read`] finds the files
//! in the unpacked layers (the topmost layer that has them, a whiteout hiding them).

use std::path::PathBuf;

use crate::runtime::User;

/// The image's `/etc/passwd` and `/etc/group` (empty when it has none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageAccounts {
    pub passwd: String,
    pub group: String,
}

impl ImageAccounts {
    /// Reads the files from `layers`, top layer first (as the image store lists them).
    pub fn read(layers: &[PathBuf]) -> ImageAccounts {
        ImageAccounts {
            passwd: super::layered::layered_file(layers, "etc/passwd").unwrap_or_default(),
            group: super::layered::layered_file(layers, "etc/group").unwrap_or_default(),
        }
    }

    /// The passwd entries as (name, uid, gid); lines that do not parse are no users.
    fn users(&self) -> impl Iterator<Item = (&str, u32, u32)> {
        self.passwd.lines().filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [name, _, uid, gid, ..] => Some((*name, uid.parse().ok()?, gid.parse().ok()?)),
                _ => None,
            }
        })
    }

    /// The group entries as (name, gid, members).
    fn groups(&self) -> impl Iterator<Item = (&str, u32, Vec<&str>)> {
        self.group.lines().filter_map(|line| {
            let fields: Vec<&str> = line.split(':').collect();
            match fields.as_slice() {
                [name, _, gid, members, ..] => Some((*name, gid.parse().ok()?, members.split(',').map(str::trim).filter(|m| !m.is_empty()).collect())),
                [name, _, gid] => Some((*name, gid.parse().ok()?, Vec::new())),
                _ => None,
            }
        })
    }
}

/// An image's `USER` (`user`, `uid`, `user:group`, `uid:gid`, …) as numeric ids, the
/// way runc resolves it: a name must be in the image's accounts, a number need not be. A
/// user found in /etc/passwd (by name, or a number by uid) brings its primary group;
/// a number that is not there gets group 0. Without an explicit group, the groups
/// that list the user as a member become its supplementary groups; with one, there
/// are none. `None` is root with no other groups.
pub fn resolve_user(user: &str, accounts: &ImageAccounts) -> Result<Option<User>, String> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    if u.is_empty() {
        return Err(format!("image user {user:?}: no user before the ':'"));
    }
    let entry = match u.parse::<u32>() {
        Ok(uid) => accounts.users().find(|(_, id, _)| *id == uid).or(Some(("", uid, 0))),
        Err(_) => accounts.users().find(|(name, _, _)| *name == u).or((u == "root").then_some(("root", 0, 0))),
    };
    let (name, uid, primary) = entry.ok_or_else(|| format!("image user {user:?}: no user {u:?} in the image's /etc/passwd"))?;
    let resolved = if g.is_empty() {
        let groups = if name.is_empty() {
            Vec::new()
        } else {
            accounts.groups().filter(|(_, gid, members)| *gid != primary && members.contains(&name)).map(|(_, gid, _)| gid).collect()
        };
        User { uid, gid: primary, groups }
    } else {
        let gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => accounts
                .groups()
                .find(|(group, _, _)| *group == g)
                .map(|(_, gid, _)| gid)
                .or((g == "root").then_some(0))
                .ok_or_else(|| format!("image user {user:?}: no group {g:?} in the image's /etc/group"))?,
        };
        User::ids(uid, gid)
    };
    Ok((resolved != User::ids(0, 0)).then_some(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts() -> ImageAccounts {
        ImageAccounts {
            passwd: "root:x:0:0:root:/root:/bin/sh\nredis:x:999:998::/var/lib/redis:/usr/sbin/nologin\nwww-data:x:33:33::/var/www:/bin/false\nbroken:x:nope:1::/:/bin/false\n"
                .into(),
            group: "root:x:0:\nredis:x:998:\nwww-data:x:33:redis\nstaff:x:50:www-data, redis\nodd:x:bad:redis\n".into(),
        }
    }

    #[test]
    #[allow(clippy::type_complexity)] // a table
    fn names_and_numbers_resolve_as_runc_does() {
        let accounts = accounts();
        let user = |uid, gid, groups: &[u32]| Some(User { uid, gid, groups: groups.to_vec() });
        let table: [(&str, Result<Option<User>, &str>); 13] = [
            ("root", Ok(None)),
            ("0:0", Ok(None)),
            ("0", Ok(None)),
            ("1000", Ok(user(1000, 0, &[]))),
            ("33", Ok(user(33, 33, &[50]))),
            ("1000:100", Ok(user(1000, 100, &[]))),
            ("redis", Ok(user(999, 998, &[33, 50]))),
            ("999", Ok(user(999, 998, &[33, 50]))),
            ("redis:www-data", Ok(user(999, 33, &[]))),
            ("redis:0", Ok(user(999, 0, &[]))),
            ("1000:redis", Ok(user(1000, 998, &[]))),
            ("nobody", Err("no user \"nobody\" in the image's /etc/passwd")),
            ("redis:wheel", Err("no group \"wheel\" in the image's /etc/group")),
        ];
        for (spec, want) in table {
            let got = resolve_user(spec, &accounts);
            match want {
                Ok(want) => assert_eq!(got, Ok(want), "{spec}"),
                Err(message) => assert!(got.as_ref().is_err_and(|e| e.contains(message) && e.contains(spec)), "{spec}: {got:?}"),
            }
        }
        assert!(resolve_user("broken", &accounts).is_err(), "an unreadable entry is no user");
        assert!(resolve_user(":5", &accounts).is_err());
        assert!(resolve_user("redis", &ImageAccounts::default()).is_err(), "an image without /etc/passwd has no named users");
        assert_eq!(resolve_user("7:8", &ImageAccounts::default()), Ok(user(7, 8, &[])), "numbers need no accounts");
        assert_eq!(user(1, 2, &[3, 2, 3]).map(|u| u.group_list()), Some(vec![2, 3]), "the primary group first, each once");
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
        assert_eq!(resolve_user("app", &ImageAccounts::read(&[top.clone(), middle.clone(), bottom.clone()])), Ok(Some(User::ids(2, 2))));
        assert_eq!(resolve_user("app", &ImageAccounts::read(&[middle.clone(), bottom.clone()])), Ok(Some(User::ids(1, 1))));
        let whiteout = layer("whiteout", None);
        nix::sys::stat::mknod(&whiteout.join("etc/passwd"), nix::sys::stat::SFlag::S_IFCHR, nix::sys::stat::Mode::empty(), 0).expect("a whiteout (as root)");
        assert_eq!(ImageAccounts::read(&[whiteout, bottom]).passwd, "", "removed by a layer above");
    }
}
