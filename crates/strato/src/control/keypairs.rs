//! Key pairs. The private key of a created pair is returned once and never stored; only the
//! public key (for the instance metadata) and the fingerprint are kept.
//!
//! Fingerprints are computed as AWS documents them:
//! - RSA created by AWS: SHA-1 of the DER PKCS#8 private key, colon-separated hex;
//! - RSA imported: MD5 of the DER SubjectPublicKeyInfo public key, colon-separated hex;
//! - ED25519 (created or imported): SHA-256 of the SSH wire-format public key, base64.

use base64::Engine;
use md5::Md5;
use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use ssh_key::public::KeyData;
use ssh_key::{Algorithm, LineEnding, PrivateKey, PublicKey};

use super::filter::{self, Filterable};
use super::model::{Caller, KeyPair, Tags};
use super::network::select_ids;
use super::tags::{put_tags, tags_for};
use super::Control;
use crate::api::error::{ApiError, ApiResult};
use crate::api::query::{Filter, TagSpec};
use crate::ids::KeyPairId;
use crate::store;

const RSA_BITS: usize = 2048;

fn colon_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn ed25519_fingerprint(public: &PublicKey) -> ApiResult<String> {
    let blob = public.to_bytes().map_err(|e| anyhow::anyhow!("encoding public key: {e}"))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&blob)))
}

/// A new key: (private key material, OpenSSH public key, fingerprint).
fn generate(key_type: &str) -> ApiResult<(String, String, String)> {
    let mut rng = rand::rngs::OsRng;
    match key_type {
        "rsa" => {
            let private =
                rsa::RsaPrivateKey::new(&mut rng, RSA_BITS).map_err(|e| anyhow::anyhow!("generating RSA key: {e}"))?;
            let pem = private
                .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("encoding RSA key: {e}"))?;
            let der = private.to_pkcs8_der().map_err(|e| anyhow::anyhow!("encoding RSA key: {e}"))?;
            let fingerprint = colon_hex(&Sha1::digest(der.as_bytes()));
            let ssh_public = ssh_key::public::RsaPublicKey::try_from(private.to_public_key())
                .map_err(|e| anyhow::anyhow!("converting RSA key: {e}"))?;
            let public = PublicKey::from(KeyData::Rsa(ssh_public))
                .to_openssh()
                .map_err(|e| anyhow::anyhow!("encoding public key: {e}"))?;
            Ok((pem.to_string(), public, fingerprint))
        }
        "ed25519" => {
            let private = PrivateKey::random(&mut rng, Algorithm::Ed25519)
                .map_err(|e| anyhow::anyhow!("generating ed25519 key: {e}"))?;
            let material =
                private.to_openssh(LineEnding::LF).map_err(|e| anyhow::anyhow!("encoding ed25519 key: {e}"))?;
            let public = private.public_key();
            let fingerprint = ed25519_fingerprint(public)?;
            let openssh = public.to_openssh().map_err(|e| anyhow::anyhow!("encoding public key: {e}"))?;
            Ok((material.to_string(), openssh, fingerprint))
        }
        other => Err(ApiError::invalid_value(format!("Invalid value '{other}' for KeyType: rsa or ed25519"))),
    }
}

/// Parses an imported public key (OpenSSH one-line format): (type, OpenSSH form, fingerprint).
fn import(material: &[u8]) -> ApiResult<(String, String, String)> {
    let bad = || ApiError::InvalidKeyFormat("Key is not in valid OpenSSH public key format".into());
    let text = std::str::from_utf8(material).map_err(|_| bad())?.trim();
    let public = match rfc4716_blob(text) {
        Some(blob) => {
            let blob = blob.ok_or_else(bad)?;
            PublicKey::from_bytes(&blob).map_err(|_| bad())?
        }
        None => PublicKey::from_openssh(text).map_err(|_| bad())?,
    };
    match public.key_data() {
        KeyData::Rsa(k) => {
            let rsa_public = rsa::RsaPublicKey::try_from(k).map_err(|_| bad())?;
            let bits = rsa::traits::PublicKeyParts::n(&rsa_public).bits();
            if !(1024..=16384).contains(&bits) {
                return Err(ApiError::InvalidKeyFormat(format!("RSA keys must be 1024 to 16384 bits, not {bits}")));
            }
            let der = rsa_public.to_public_key_der().map_err(|_| bad())?;
            let openssh = PublicKey::from(public.key_data().clone()).to_openssh().map_err(|_| bad())?;
            Ok(("rsa".into(), openssh, colon_hex(&Md5::digest(der.as_bytes()))))
        }
        KeyData::Ed25519(_) => {
            let openssh = PublicKey::from(public.key_data().clone()).to_openssh().map_err(|_| bad())?;
            Ok(("ed25519".into(), openssh, ed25519_fingerprint(&public)?))
        }
        _ => Err(ApiError::InvalidKeyFormat("Only RSA and ED25519 public keys are supported".into())),
    }
}

/// The key blob of an RFC 4716 (`---- BEGIN SSH2 PUBLIC KEY ----`) public key: `None` when
/// the text is not in that format, `Some(None)` when it is but is broken. Header lines
/// (`Comment: ...`, continued with a trailing backslash) are skipped.
fn rfc4716_blob(text: &str) -> Option<Option<Vec<u8>>> {
    use base64::Engine;
    let body = text.strip_prefix("---- BEGIN SSH2 PUBLIC KEY ----")?;
    let Some(body) = body.trim_end().strip_suffix("---- END SSH2 PUBLIC KEY ----") else { return Some(None) };
    let mut b64 = String::new();
    let mut continued = false;
    for line in body.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if continued || line.contains(':') {
            continued = line.ends_with('\\');
            continue;
        }
        b64.push_str(line);
    }
    Some(base64::engine::general_purpose::STANDARD.decode(b64).ok())
}

fn check_name(name: &str) -> ApiResult<()> {
    if name.is_empty() {
        return Err(ApiError::MissingParameter("KeyName".into()));
    }
    if name.chars().count() > 255 || !name.is_ascii() {
        return Err(ApiError::invalid_value(format!("Invalid value '{name}' for KeyName: up to 255 ASCII characters")));
    }
    Ok(())
}

impl Filterable for KeyPair {
    const FILTERS: &'static [&'static str] = &["key-pair-id", "fingerprint", "key-name", "key-type"];
    fn filter_values(&self, name: &str) -> Vec<String> {
        match name {
            "key-pair-id" => vec![self.id.to_string()],
            "fingerprint" => vec![self.fingerprint.clone()],
            "key-name" => vec![self.name.clone()],
            "key-type" => vec![self.key_type.clone()],
            _ => vec![],
        }
    }
    fn tags(&self) -> &Tags {
        &self.tags
    }
    fn sort_key(&self) -> &str {
        &self.name
    }
}

impl Control {
    async fn insert_key(&self, caller: &Caller, k: &KeyPair) -> ApiResult<()> {
        let mut tx = self.store().begin_write().await?;
        let existing = store::key_pairs(tx.conn(), &caller.account_id).await?;
        if existing.iter().any(|e| e.name == k.name) {
            return Err(ApiError::duplicate(
                "InvalidKeyPair.Duplicate",
                format!("The keypair '{}' already exists.", k.name),
            ));
        }
        store::insert_key_pair(tx.conn(), &caller.account_id, k).await?;
        put_tags(tx.conn(), &caller.account_id, k.id.as_str(), "key-pair", &k.tags).await?;
        tx.commit().await?;
        Ok(())
    }

    /// CreateKeyPair: returns the pair and its private key material.
    pub async fn create_key_pair(
        &self,
        caller: &Caller,
        name: &str,
        key_type: &str,
        format: &str,
        specs: &[TagSpec],
    ) -> ApiResult<(KeyPair, String)> {
        check_name(name)?;
        if format != "pem" {
            return Err(ApiError::invalid_value(format!(
                "Invalid value '{format}' for KeyFormat: Strato returns keys in pem format only (ppk is not supported)"
            )));
        }
        let tags = tags_for(specs, "key-pair")?;
        // Key generation is CPU work (RSA: tens of milliseconds); keep it off the async workers.
        let kt = key_type.to_owned();
        let (material, public_key, fingerprint) = tokio::task::spawn_blocking(move || generate(&kt))
            .await
            .map_err(|e| anyhow::anyhow!("key generation task: {e}"))??;
        let k = KeyPair {
            id: KeyPairId::generate(),
            name: name.to_owned(),
            key_type: key_type.to_owned(),
            fingerprint,
            public_key,
            created_at: chrono::Utc::now(),
            tags,
        };
        self.insert_key(caller, &k).await?;
        Ok((k, material))
    }

    pub async fn import_key_pair(
        &self,
        caller: &Caller,
        name: &str,
        material: &[u8],
        specs: &[TagSpec],
    ) -> ApiResult<KeyPair> {
        check_name(name)?;
        let tags = tags_for(specs, "key-pair")?;
        let (key_type, public_key, fingerprint) = import(material)?;
        let k = KeyPair {
            id: KeyPairId::generate(),
            name: name.to_owned(),
            key_type,
            fingerprint,
            public_key,
            created_at: chrono::Utc::now(),
            tags,
        };
        self.insert_key(caller, &k).await?;
        Ok(k)
    }

    pub async fn describe_key_pairs(
        &self,
        caller: &Caller,
        names: &[String],
        ids: &[String],
        filters: &[Filter],
    ) -> ApiResult<Vec<KeyPair>> {
        for id in ids {
            KeyPairId::parse(id).map_err(|_| {
                ApiError::not_found("InvalidKeyPair.NotFound", format!("The key pair ID '{id}' does not exist"))
            })?;
        }
        filter::check_filters::<KeyPair>(filters)?;
        let mut c = self.store().read().await?;
        let mut keys = store::key_pairs(&mut c, &caller.account_id).await?;
        let mut tags = store::tags_by_type(&mut c, &caller.account_id, "key-pair").await?;
        for k in &mut keys {
            k.tags = tags.remove(k.id.as_str()).unwrap_or_default();
        }
        let keys = select_ids(
            keys,
            names,
            |k| k.name.as_str(),
            |n| ApiError::not_found("InvalidKeyPair.NotFound", format!("The key pair '{n}' does not exist")),
        )?;
        let keys = select_ids(
            keys,
            ids,
            |k| k.id.as_str(),
            |n| ApiError::not_found("InvalidKeyPair.NotFound", format!("The key pair ID '{n}' does not exist")),
        )?;
        Ok(keys.into_iter().filter(|k| filter::matches(k, filters)).collect())
    }

    /// DeleteKeyPair by name or id. Deleting a key that does not exist succeeds, as on EC2.
    pub async fn delete_key_pair(
        &self,
        caller: &Caller,
        name: Option<&str>,
        id: Option<&str>,
    ) -> ApiResult<Option<KeyPairId>> {
        let id = id
            .map(|i| {
                KeyPairId::parse(i).map_err(|_| {
                    ApiError::not_found("InvalidKeyPair.NotFound", format!("The key pair ID '{i}' does not exist"))
                })
            })
            .transpose()?;
        if name.is_none() && id.is_none() {
            return Err(ApiError::MissingParameter("KeyName or KeyPairId".into()));
        }
        let mut tx = self.store().begin_write().await?;
        let keys = store::key_pairs(tx.conn(), &caller.account_id).await?;
        let found = keys.iter().find(|k| name.is_none_or(|n| k.name == n) && id.as_ref().is_none_or(|i| &k.id == i));
        let Some(k) = found else { return Ok(None) };
        store::delete_key_pair(tx.conn(), &caller.account_id, &k.id).await?;
        store::delete_all_tags(tx.conn(), k.id.as_str()).await?;
        tx.commit().await?;
        Ok(Some(k.id.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_keys_round_trip_through_import() {
        let (_, public, fp) = generate("ed25519").unwrap();
        let (kt, public2, fp2) = import(public.as_bytes()).unwrap();
        assert_eq!(kt, "ed25519");
        assert_eq!(public, public2);
        assert_eq!(fp, fp2);
        assert_eq!(fp.len(), 44);
    }

    #[test]
    fn rsa_keys_have_aws_fingerprints() {
        let (pem, public, fp) = generate("rsa").unwrap();
        assert!(pem.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        assert_eq!(fp.len(), 20 * 3 - 1);
        let (kt, _, imported_fp) = import(public.as_bytes()).unwrap();
        assert_eq!(kt, "rsa");
        assert_eq!(imported_fp.len(), 16 * 3 - 1);
    }

    #[test]
    fn garbage_is_not_a_key() {
        assert_eq!(import(b"ssh-rsa nonsense").unwrap_err().code(), "InvalidKeyPair.Format");
        // RFC 4716, as ssh-keygen -e writes it, is the same key.
        let openssh = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPZmEmRiSzCfW+l8N1OVc/2sQsY+8gWGv5hOKLQlGshZ test";
        let rfc = "---- BEGIN SSH2 PUBLIC KEY ----\nComment: \"256-bit ED25519, converted by me@host from Op\\\nenSSH\"\nAAAAC3NzaC1lZDI1NTE5AAAAIPZmEmRiSzCfW+l8N1OVc/2sQsY+8gWGv5hOKLQlGshZ\n---- END SSH2 PUBLIC KEY ----\n";
        assert_eq!(import(rfc.as_bytes()).unwrap().2, import(openssh.as_bytes()).unwrap().2);
        let broken = "---- BEGIN SSH2 PUBLIC KEY ----\nAAAA!!!\n---- END SSH2 PUBLIC KEY ----";
        assert_eq!(import(broken.as_bytes()).unwrap_err().code(), "InvalidKeyPair.Format");
        assert_eq!(import(&[0xff, 0xfe]).unwrap_err().code(), "InvalidKeyPair.Format");
    }
}
