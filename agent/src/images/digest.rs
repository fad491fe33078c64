//! Content digests (`sha256:<hex>`): parsing, hashing while copying, verifying files.

use std::fmt;
use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use super::ImageError;

/// A sha256 content digest, validated: 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    hex: String,
}

impl Digest {
    pub fn parse(text: &str) -> Result<Digest, ImageError> {
        let hex = text.strip_prefix("sha256:").ok_or_else(|| ImageError::InvalidDigest(text.to_owned()))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(ImageError::InvalidDigest(text.to_owned()));
        }
        Ok(Digest { hex: hex.to_owned() })
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest { hex: hex::encode(Sha256::digest(bytes)) }
    }

    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Checks `bytes` against this digest.
    pub fn verify(&self, bytes: &[u8]) -> Result<(), ImageError> {
        let actual = Digest::of(bytes);
        if &actual == self {
            Ok(())
        } else {
            Err(ImageError::DigestMismatch { digest: self.to_string(), detail: format!("content hashes to {actual}") })
        }
    }

    /// Checks the file at `path` against this digest (and `size`, when known).
    pub fn verify_file(&self, path: &Path, size: Option<u64>) -> Result<(), ImageError> {
        let mut file = std::fs::File::open(path).map_err(ImageError::io("cannot open", path))?;
        let mut hasher = HashingWriter::new(std::io::sink());
        let copied = std::io::copy(&mut file, &mut hasher).map_err(ImageError::io("cannot read", path))?;
        if let Some(size) = size.filter(|s| *s != copied) {
            return Err(ImageError::DigestMismatch {
                digest: self.to_string(),
                detail: format!("{copied} bytes where the descriptor says {size} (truncated or padded)"),
            });
        }
        let actual = hasher.digest();
        if &actual == self {
            Ok(())
        } else {
            Err(ImageError::DigestMismatch { digest: self.to_string(), detail: format!("content hashes to {actual}") })
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

/// A writer that hashes what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new() }
    }

    pub fn digest(&self) -> Digest {
        Digest { hex: hex::encode(self.hasher.clone().finalize()) }
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_verify() {
        let d = Digest::of(b"hello");
        assert_eq!(d.to_string(), "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(Digest::parse(&d.to_string()).ok(), Some(d.clone()));
        assert!(d.verify(b"hello").is_ok());
        assert!(matches!(d.verify(b"hellO"), Err(ImageError::DigestMismatch { .. })));
        for bad in ["", "sha256:", "md5:abc", "sha256:ABC", &format!("sha256:{}", "g".repeat(64))] {
            assert!(Digest::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn verify_file_catches_truncation_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blob");
        std::fs::write(&path, b"layer bytes").expect("write");
        let d = Digest::of(b"layer bytes");
        assert!(d.verify_file(&path, Some(11)).is_ok());
        std::fs::write(&path, b"layer byt").expect("write");
        let err = d.verify_file(&path, Some(11)).expect_err("truncated");
        assert!(err.to_string().contains("truncated"), "{err}");
        std::fs::write(&path, b"layer bytez").expect("write");
        assert!(d.verify_file(&path, Some(11)).is_err());
    }
}
