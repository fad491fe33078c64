//! The cluster's secrets key: 32 random bytes (hex in `secrets.key`, 0600, beside the
//! PKI every controller shares) that seal each Secret's content with AES-256-GCM before
//! it reaches the store (ring's AEAD). The record's store key is the associated data, so
//! a sealed value moved to another key does not open.

use std::path::{Path, PathBuf};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::pb;

/// The key file's name in a PKI directory.
pub const SECRETS_KEY_FILE: &str = "secrets.key";

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{path}: {reason}")]
    KeyFile { path: PathBuf, reason: String },
    #[error("the system's random source failed")]
    Random,
    #[error("sealed with key {found}, but this controller holds key {held}: every controller needs the same {SECRETS_KEY_FILE}")]
    WrongKey { found: String, held: String },
    #[error("a sealed value does not open (corrupt, or moved from another key)")]
    Open,
}

/// The key, loaded or made.
pub struct SecretsKey {
    key: LessSafeKey,
    id: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretsKey({})", self.id)
    }
}

fn key_id(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest.as_ref()[..4].iter().map(|b| format!("{b:02x}")).collect()
}

impl SecretsKey {
    fn from_bytes(bytes: &[u8; 32]) -> SecretsKey {
        // A 32-byte key is what AES-256 takes: this cannot fail.
        let unbound = UnboundKey::new(&AES_256_GCM, bytes).unwrap_or_else(|_| unreachable!("AES-256 takes 32-byte keys"));
        SecretsKey { key: LessSafeKey::new(unbound), id: key_id(bytes), rng: SystemRandom::new() }
    }

    /// A fresh random key (tests; [`ensure_key_file`] for a cluster).
    pub fn generate() -> Result<SecretsKey, SecretsError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new().fill(&mut bytes).map_err(|_| SecretsError::Random)?;
        Ok(SecretsKey::from_bytes(&bytes))
    }

    /// Reads a key file: 64 hex digits, readable by its owner only.
    pub fn load(path: &Path) -> Result<SecretsKey, SecretsError> {
        use std::os::unix::fs::MetadataExt;
        let bad = |reason: String| SecretsError::KeyFile { path: path.to_owned(), reason };
        let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
        if meta.mode() & 0o077 != 0 {
            return Err(bad(format!("mode {:o}: a secrets key must be readable by its owner only (chmod 600)", meta.mode() & 0o777)));
        }
        let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return Err(bad(format!("expected 64 hex digits (32 bytes), got {} characters", text.len())));
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|_| bad("not hexadecimal".into()))?;
        }
        Ok(SecretsKey::from_bytes(&bytes))
    }

    /// The first bytes of the key's SHA-256, in hex: which key sealed a value.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn seal(&self, associated: &str, plaintext: &[u8]) -> Result<pb::SealedData, SecretsError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| SecretsError::Random)?;
        let mut buffer = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(associated.as_bytes()), &mut buffer)
            .map_err(|_| SecretsError::Random)?;
        Ok(pb::SealedData { key_id: self.id.clone(), nonce: nonce.to_vec(), ciphertext: buffer })
    }

    pub fn open(&self, associated: &str, sealed: &pb::SealedData) -> Result<Vec<u8>, SecretsError> {
        if sealed.key_id != self.id {
            return Err(SecretsError::WrongKey { found: sealed.key_id.clone(), held: self.id.clone() });
        }
        let nonce: [u8; NONCE_LEN] = sealed.nonce.as_slice().try_into().map_err(|_| SecretsError::Open)?;
        let mut buffer = sealed.ciphertext.clone();
        let plain =
            self.key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(associated.as_bytes()), &mut buffer).map_err(|_| SecretsError::Open)?;
        Ok(plain.to_vec())
    }
}

/// Makes `dir/secrets.key` unless it exists (0600, written to a temporary name and
/// renamed); returns its path.
pub fn ensure_key_file(dir: &Path) -> Result<PathBuf, SecretsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(SECRETS_KEY_FILE);
    if path.exists() {
        return Ok(path);
    }
    let bad = |reason: String| SecretsError::KeyFile { path: path.clone(), reason };
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes).map_err(|_| SecretsError::Random)?;
    let text: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let temporary = dir.join(format!(".{SECRETS_KEY_FILE}.{}.tmp", std::process::id()));
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary).map_err(|e| bad(e.to_string()))?;
    file.write_all(format!("{text}\n").as_bytes()).and_then(|()| file.sync_all()).map_err(|e| bad(e.to_string()))?;
    // A link fails where the name exists: two starts at once never replace a key that
    // may have sealed Secrets already.
    let linked = std::fs::hard_link(&temporary, &path);
    let _ = std::fs::remove_file(&temporary);
    match linked {
        Ok(()) => Ok(path),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(path),
        Err(e) => Err(bad(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_key_and_record() {
        let key = SecretsKey::generate().expect("key");
        let sealed = key.seal("/orch/secrets/db", b"hunter2").expect("seal");
        assert!(!sealed.ciphertext.windows(7).any(|w| w == b"hunter2"), "no clear text in the sealed value");
        assert_eq!(key.open("/orch/secrets/db", &sealed).expect("open"), b"hunter2");
        assert!(matches!(key.open("/orch/secrets/other", &sealed), Err(SecretsError::Open)), "moved to another record");
        let other = SecretsKey::generate().expect("key");
        assert!(matches!(other.open("/orch/secrets/db", &sealed), Err(SecretsError::WrongKey { .. })));
        assert_ne!(key.seal("/orch/secrets/db", b"hunter2").expect("seal").nonce, sealed.nonce, "a nonce per seal");
    }

    #[test]
    fn the_key_file_is_made_once_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = ensure_key_file(dir.path()).expect("made");
        assert_eq!(std::fs::metadata(&path).expect("meta").permissions().mode() & 0o777, 0o600);
        let key = SecretsKey::load(&path).expect("load");
        ensure_key_file(dir.path()).expect("kept");
        assert_eq!(SecretsKey::load(&path).expect("load").id(), key.id(), "not replaced");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(SecretsKey::load(&path).is_err_and(|e| e.to_string().contains("chmod 600")));
    }
}
