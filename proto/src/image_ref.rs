//! Image references the agent accepts (see the images part of ARCHITECTURE.md):
//! `oci:PATH[:TAG]`, `oci-archive:PATH[:TAG]`, and registry references
//! `[HOST[:PORT]/]REPO[:TAG][@sha256:HEX]`.

use std::fmt;

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI image layout directory.
    OciLayout { path: String, tag: Option<String> },
    /// An OCI image layout packed as a tar file.
    OciArchive { path: String, tag: Option<String> },
    /// An image in a registry speaking the OCI distribution API.
    Registry { registry: String, repository: String, tag: Option<String>, digest: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{reference:?} is not an image reference: {reason}")]
pub struct ImageRefError {
    pub reference: String,
    pub reason: String,
}

/// Registry used for references without a host, as Docker does.
pub const DEFAULT_REGISTRY: &str = "docker.io";

impl ImageRef {
    /// The reference may name different images over time: no digest, and no tag or
    /// `:latest`. Kubernetes pulls such images before every start by default.
    pub fn floats(&self) -> bool {
        match self {
            ImageRef::OciLayout { tag, .. } | ImageRef::OciArchive { tag, .. } => tag.as_deref().is_none_or(|t| t == "latest"),
            ImageRef::Registry { tag, digest, .. } => digest.is_none() && tag.as_deref().is_none_or(|t| t == "latest"),
        }
    }

    /// The pull policy a service gets when its manifest names none.
    pub fn default_pull_policy(&self) -> crate::pb::ImagePullPolicy {
        if self.floats() {
            crate::pb::ImagePullPolicy::Always
        } else {
            crate::pb::ImagePullPolicy::IfNotPresent
        }
    }

    pub fn parse(text: &str) -> Result<ImageRef, ImageRefError> {
        let fail = |reason: &str| ImageRefError { reference: text.to_owned(), reason: reason.to_owned() };
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(fail("it contains whitespace or control characters"));
        }
        if let Some(rest) = text.strip_prefix("oci:") {
            let (path, tag) = split_layout(rest).map_err(|r| fail(&r))?;
            return Ok(ImageRef::OciLayout { path, tag });
        }
        if let Some(rest) = text.strip_prefix("oci-archive:") {
            let (path, tag) = split_layout(rest).map_err(|r| fail(&r))?;
            return Ok(ImageRef::OciArchive { path, tag });
        }
        parse_registry(text).map_err(|r| fail(&r))
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::OciLayout { path, tag } => write!(f, "oci:{path}").and_then(|()| tag.as_ref().map_or(Ok(()), |t| write!(f, ":{t}"))),
            ImageRef::OciArchive { path, tag } => write!(f, "oci-archive:{path}").and_then(|()| tag.as_ref().map_or(Ok(()), |t| write!(f, ":{t}"))),
            ImageRef::Registry { registry, repository, tag, digest } => {
                write!(f, "{registry}/{repository}")?;
                if let Some(tag) = tag {
                    write!(f, ":{tag}")?;
                }
                if let Some(digest) = digest {
                    write!(f, "@{digest}")?;
                }
                Ok(())
            }
        }
    }
}

/// `PATH[:TAG]`: a `:` after the last `/` starts the tag.
fn split_layout(rest: &str) -> Result<(String, Option<String>), String> {
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (path, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err("the layout path is empty".to_owned());
    }
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    Ok((path.to_owned(), tag.map(str::to_owned)))
}

fn parse_registry(text: &str) -> Result<ImageRef, String> {
    let (name_tag, digest) = match text.split_once('@') {
        Some((name, digest)) => {
            check_digest(digest)?;
            (name, Some(digest.to_owned()))
        }
        None => (text, None),
    };
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (&name_tag[..last_slash + i], Some(&name_tag[last_slash + i + 1..])),
        None => (name_tag, None),
    };
    if let Some(tag) = tag {
        check_tag(tag)?;
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') || first == "localhost" => (first.to_owned(), rest.to_owned()),
        _ => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
    };
    check_host(&registry)?;
    check_repository(&repository)?;
    Ok(ImageRef::Registry { registry, repository, tag: tag.map(str::to_owned), digest })
}

fn check_tag(tag: &str) -> Result<(), String> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("tag {tag:?} must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'"))
    }
}

fn check_digest(digest: &str) -> Result<(), String> {
    let ok = match digest.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64,
        Some(("sha512", hex)) => hex.len() == 128,
        _ => false,
    } && digest.split_once(':').is_some_and(|(_, hex)| hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    if ok {
        Ok(())
    } else {
        Err(format!("digest {digest:?} must be sha256:<64 hex digits> or sha512:<128 hex digits>"))
    }
}

fn check_host(host: &str) -> Result<(), String> {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) => (name, Some(port)),
        None => (host, None),
    };
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("registry port {port:?} must be 1-65535"));
        }
    }
    let ok = !name.is_empty() && name.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(format!("registry host {name:?} must be a host name or IPv4 address"))
    }
}

fn check_repository(repository: &str) -> Result<(), String> {
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        !b.is_empty()
            && b.iter().all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-'))
            && b.first().is_some_and(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
            && b.last().is_some_and(|x| x.is_ascii_lowercase() || x.is_ascii_digit())
    };
    if !repository.is_empty() && repository.len() <= 255 && repository.split('/').all(component_ok) {
        Ok(())
    } else {
        Err(format!("repository {repository:?} must be '/'-separated lowercase components of letters, digits, '.', '_' or '-'"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry(registry: &str, repository: &str, tag: Option<&str>, digest: Option<&str>) -> ImageRef {
        ImageRef::Registry { registry: registry.into(), repository: repository.into(), tag: tag.map(Into::into), digest: digest.map(Into::into) }
    }

    #[test]
    fn parses_the_accepted_forms() {
        let d = format!("sha256:{}", "a".repeat(64));
        let table = [
            ("oci:/var/lib/orch/images/demo-web:1.0", ImageRef::OciLayout { path: "/var/lib/orch/images/demo-web".into(), tag: Some("1.0".into()) }),
            ("oci:./layout", ImageRef::OciLayout { path: "./layout".into(), tag: None }),
            ("oci-archive:/tmp/x.tar:v2", ImageRef::OciArchive { path: "/tmp/x.tar".into(), tag: Some("v2".into()) }),
            ("127.0.0.1:5000/orch/demo-web:1.0", registry("127.0.0.1:5000", "orch/demo-web", Some("1.0"), None)),
            ("localhost/x", registry("localhost", "x", None, None)),
            ("busybox", registry("docker.io", "busybox", None, None)),
            ("orch/demo-web:1.0", registry("docker.io", "orch/demo-web", Some("1.0"), None)),
        ];
        for (text, want) in table {
            assert_eq!(ImageRef::parse(text), Ok(want.clone()), "{text}");
            assert_eq!(ImageRef::parse(&want.to_string()), Ok(want), "round trip of {text}");
        }
        assert_eq!(ImageRef::parse(&format!("reg.local:5000/app@{d}")), Ok(registry("reg.local:5000", "app", None, Some(&d))));
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "oci:", "oci::tag", "Upper/Case", "a b", "x:", "x:-bad", "host:0/x", "x@sha256:abc", "a//b", "reg.io/"] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
