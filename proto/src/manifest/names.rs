//! Name rules shared by manifests, the controller and the agent: DNS labels, label keys
//! and values, port names, environment variable names.
//!
//! Each check returns `Err(what was expected)` so the caller can prefix the field path.

/// RFC 1123 label: 1–63 of `a-z 0-9 -`, starting and ending with a letter or digit.
/// Service names are DNS labels because they are answered as `<name>.orch`.
pub fn check_dns_label(name: &str) -> Result<(), String> {
    const EXPECTED: &str = "a DNS label: 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit";
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    if ok {
        Ok(())
    } else {
        Err(format!("{EXPECTED}, got {name:?}"))
    }
}

/// Label key: optional DNS-subdomain prefix and `/`, then a 1–63 character name of
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric (as Kubernetes).
pub fn check_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let prefix_ok = !prefix.is_empty() && prefix.len() <= 253 && prefix.split('.').all(|part| check_dns_label(part).is_ok());
        if !prefix_ok {
            return Err(format!("a label key prefix that is a DNS subdomain, got {key:?}"));
        }
    }
    if name.is_empty() || !is_label_name(name) {
        return Err(format!("a label key: 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, got {key:?}"));
    }
    Ok(())
}

/// Label value: empty, or a name as in [`check_label_key`] without the prefix.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!("a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit, got {value:?}"))
    }
}

fn is_label_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    bytes.len() <= 63
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// Port name (IANA service name): 1–15 of `a-z 0-9 -`, at least one letter, no leading,
/// trailing or doubled `-`.
pub fn check_port_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 15
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.iter().any(u8::is_ascii_lowercase)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--");
    if ok {
        Ok(())
    } else {
        Err(format!("a port name: 1-15 lowercase letters, digits or '-', with at least one letter, got {name:?}"))
    }
}

/// Environment variable name: a letter or `_` first, then letters, digits, `_`, `.`, `-`.
pub fn check_env_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok = bytes.first().is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        && bytes.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("an environment variable name: a letter or '_' first, then letters, digits, '_', '.' or '-', got {name:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for good in ["webapp", "a", "web-1", "0abc", &"a".repeat(63)] {
            assert!(check_dns_label(good).is_ok(), "{good}");
        }
        for bad in ["", "Web", "-web", "web-", "web_app", "web.app", &"a".repeat(64), "wéb"] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_keys_and_values() {
        for good in ["app", "orch.dev/tier", "a_b.c-d", "K8s"] {
            assert!(check_label_key(good).is_ok(), "{good}");
        }
        for bad in ["", "/app", "-app", "a/b/c", "Bad_Prefix/x", "app.", "sp ace"] {
            assert!(check_label_key(bad).is_err(), "{bad}");
        }
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2").is_ok());
        assert!(check_label_value("has space").is_err());
    }

    #[test]
    fn port_and_env_names() {
        assert!(check_port_name("http").is_ok());
        assert!(check_port_name("http-alt2").is_ok());
        for bad in ["", "123", "HTTP", "a--b", "-a", "sixteen-chars-xx"] {
            assert!(check_port_name(bad).is_err(), "{bad}");
        }
        assert!(check_env_name("PATH").is_ok());
        assert!(check_env_name("_x.y-z").is_ok());
        for bad in ["", "1X", "A=B", "A B"] {
            assert!(check_env_name(bad).is_err(), "{bad}");
        }
    }
}
