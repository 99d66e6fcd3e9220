//! What keeps tenants' secrets and files private on the host.
//!
//! - **Secrets at rest.** Secret access keys and the agent API's TLS key are sealed with
//!   AES-256-GCM before they reach the database, under a key kept outside it: by default
//!   `DATA_DIR/secrets.key` (made at first start, mode 0600), or a file the operator gives
//!   (`--secrets-key-file`, the same one for every server of a shared PostgreSQL database).
//!   The file holds 64 hex digits (`openssl rand -hex 32` makes one). A sealed value is
//!   `sealed1:` + base64(nonce, ciphertext, tag), with what it is (`access_key/AKIA...`) as
//!   associated data, so a value copied onto another row does not open. Secrets are opened
//!   in memory only, when SigV4 needs one; values stored in clear by older versions are
//!   sealed at start, and a key that does not open what is stored stops the start.
//! - **Files.** The process's umask is 077, and at start the data and storage dirs are made
//!   private (directories 0700, files lose every group and other bit), also for files made
//!   before: the database, volumes, snapshots, consoles and keys are root's only.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The prefix of a sealed value (plain secret keys are letters and digits only).
const SEALED: &str = "sealed1:";

/// Seals and opens secrets with the key from outside the database.
pub struct Sealer {
    key: LessSafeKey,
    rng: SystemRandom,
    /// Where the key came from, for messages.
    pub source: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer").field("source", &self.source).finish_non_exhaustive()
    }
}

impl Sealer {
    /// A sealer with this key (32 bytes).
    pub fn new(key: &[u8; 32], source: &str) -> anyhow::Result<Sealer> {
        let key = UnboundKey::new(&AES_256_GCM, key).map_err(|_| anyhow::anyhow!("an AES-256 key is 32 bytes"))?;
        Ok(Sealer { key: LessSafeKey::new(key), rng: SystemRandom::new(), source: source.to_owned() })
    }

    /// The key in `path`, made (64 hex digits, mode 0600) when `create` and the file does not
    /// exist. A key file that other users can read is refused.
    pub fn from_file(path: &Path, create: bool) -> anyhow::Result<Sealer> {
        let source = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => {
                let mode = std::fs::metadata(path)?.permissions().mode();
                anyhow::ensure!(
                    mode & 0o077 == 0,
                    "the secrets key {source} is readable by other users (mode {:o}): chmod 600 it",
                    mode & 0o777
                );
                t
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let mut key = [0u8; 32];
                SystemRandom::new().fill(&mut key).map_err(|_| anyhow::anyhow!("the system's RNG failed"))?;
                let text = hex::encode(key);
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .with_context(|| format!("making the secrets key {source}"))?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
                tracing::info!(path = %source, "secrets key made");
                text
            }
            Err(e) => return Err(e).with_context(|| format!("reading the secrets key {source}")),
        };
        let bytes = hex::decode(text.trim()).ok().and_then(|b| <[u8; 32]>::try_from(b).ok());
        let key = bytes.ok_or_else(|| anyhow::anyhow!("the secrets key {source} is not 64 hex digits"))?;
        Sealer::new(&key, &source)
    }

    /// `plain`, sealed for the use `what` (associated data).
    pub fn seal(&self, what: &str, plain: &[u8]) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| anyhow::anyhow!("the system's RNG failed"))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(what.as_bytes()), &mut buf)
            .map_err(|_| anyhow::anyhow!("sealing {what}"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!("{SEALED}{}", base64::engine::general_purpose::STANDARD.encode(out)))
    }

    /// A sealed value opened (it must have been sealed for `what` with this key).
    pub fn open(&self, what: &str, stored: &str) -> anyhow::Result<Vec<u8>> {
        let body = stored.strip_prefix(SEALED).ok_or_else(|| anyhow::anyhow!("{what} is not sealed"))?;
        let raw = base64::engine::general_purpose::STANDARD.decode(body).with_context(|| format!("{what}: base64"))?;
        anyhow::ensure!(raw.len() > NONCE_LEN, "{what}: too short to be sealed");
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("{what}: nonce"))?;
        let mut buf = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(what.as_bytes()), &mut buf)
            .map_err(|_| anyhow::anyhow!("{what} does not open with the secrets key {}", self.source))?;
        Ok(plain.to_vec())
    }

    /// `open`, as text.
    pub fn open_str(&self, what: &str, stored: &str) -> anyhow::Result<String> {
        String::from_utf8(self.open(what, stored)?).with_context(|| format!("{what}: not UTF-8"))
    }
}

/// Whether a stored value is sealed (older versions stored secrets in clear).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED)
}

/// What an access key's secret is sealed as (its associated data).
pub fn access_key_context(access_key_id: &str) -> String {
    format!("access_key/{access_key_id}")
}

/// The process's umask: files and directories it makes are its user's only.
pub fn private_umask() {
    // SAFETY: umask only sets the process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
}

/// Makes a tree private: the root and every directory 0700 (keeping no group or other bit),
/// every file and socket without group or other bits. Symbolic links are not followed.
/// Returns how many entries it changed.
pub fn make_private(root: &Path) -> anyhow::Result<usize> {
    let mut changed = 0;
    let mut stack = vec![root.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            // Removed while we walk (a VM's run directory): nothing to protect.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        if meta.file_type().is_symlink() {
            continue;
        }
        let mode = meta.permissions().mode() & 0o7777;
        let want = if meta.is_dir() { (mode & 0o700) | 0o700 } else { mode & 0o700 };
        if want != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(want))
                .with_context(|| format!("making {} private", path.display()))?;
            changed += 1;
        }
        if meta.is_dir() {
            for entry in std::fs::read_dir(&path).with_context(|| format!("listing {}", path.display()))? {
                stack.push(entry?.path());
            }
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_use_and_key() {
        let s = Sealer::new(&[7; 32], "test").unwrap();
        let sealed = s.seal("access_key/AKIA1", b"secret").unwrap();
        assert!(is_sealed(&sealed) && !sealed.contains("secret"));
        assert_eq!(s.open_str("access_key/AKIA1", &sealed).unwrap(), "secret");
        assert!(s.open("access_key/AKIA2", &sealed).is_err(), "another row's value opened");
        let other = Sealer::new(&[8; 32], "other").unwrap();
        assert!(other.open("access_key/AKIA1", &sealed).is_err(), "another key opened it");
        assert_ne!(s.seal("x", b"a").unwrap(), s.seal("x", b"a").unwrap(), "nonces repeat");
        assert!(s.open("x", "sealed1:AAAA").is_err() && s.open("x", "plain").is_err());
    }

    #[test]
    fn key_files_are_made_private_and_refused_when_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets.key");
        assert!(Sealer::from_file(&path, false).is_err(), "a missing key is made only when asked");
        let a = Sealer::from_file(&path, true).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let b = Sealer::from_file(&path, false).unwrap();
        assert_eq!(b.open_str("k", &a.seal("k", b"v").unwrap()).unwrap(), "v");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Sealer::from_file(&path, false).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::write(&path, "short").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Sealer::from_file(&path, false).is_err());
    }

    #[test]
    fn trees_lose_group_and_other_bits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("data");
        std::fs::create_dir_all(root.join("volumes")).unwrap();
        std::fs::write(root.join("volumes/vol.qcow2"), b"x").unwrap();
        std::fs::write(root.join("run.sh"), b"x").unwrap();
        for (p, m) in [("", 0o755), ("volumes", 0o775), ("volumes/vol.qcow2", 0o644), ("run.sh", 0o755)] {
            std::fs::set_permissions(root.join(p), std::fs::Permissions::from_mode(m)).unwrap();
        }
        std::os::unix::fs::symlink("/etc/hostname", root.join("link")).unwrap();
        assert_eq!(make_private(&root).unwrap(), 4);
        for (p, m) in [("", 0o700), ("volumes", 0o700), ("volumes/vol.qcow2", 0o600), ("run.sh", 0o700)] {
            assert_eq!(std::fs::metadata(root.join(p)).unwrap().permissions().mode() & 0o777, m, "{p}");
        }
        assert_ne!(std::fs::metadata("/etc/hostname").unwrap().permissions().mode() & 0o044, 0, "a link was followed");
        assert_eq!(make_private(&root).unwrap(), 0);
    }
}
