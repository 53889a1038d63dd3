//! Bearer tokens that cost no database read (PC-4.1), and password hashes.
//!
//! A token is `v1.<user id>.<expiry unix seconds>.<signature>`, where the
//! signature is HMAC-SHA256 over the part before it, keyed with the data
//! directory's secret (`signing.key`, created with mode 600 on first start).
//! Verifying one is a hash computation and a lookup of the user in the
//! in-memory directory (which also catches disabled and deleted users: their
//! ids disappear or are flagged at once).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use crate::domain::UserId;

type HmacSha256 = Hmac<Sha256>;

const KEY_FILE: &str = "signing.key";

/// The secret that signs tokens.
#[derive(Clone)]
pub struct Keys {
    secret: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

impl Keys {
    /// Loads the data directory's key, creating it on first use.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Keys> {
        let path = dir.join(KEY_FILE);
        match fs::read(&path) {
            Ok(bytes) => Keys::from_file_bytes(&bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut secret = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut secret);
                // Written whole under a name of this process's, then linked
                // into place: nodes of a pool starting together on one data
                // directory either create the key or read a complete one.
                let tmp = dir.join(format!("{KEY_FILE}.{}", std::process::id()));
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(URL_SAFE_NO_PAD.encode(secret).as_bytes())?;
                f.sync_all()?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
                let linked = fs::hard_link(&tmp, &path);
                let _ = fs::remove_file(&tmp);
                match linked {
                    Ok(()) => Ok(Keys { secret }),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Keys::from_file_bytes(&fs::read(&path)?)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Loads an existing key only (the admin CLI must not invent one).
    pub fn load(dir: &Path) -> std::io::Result<Keys> {
        Keys::from_file_bytes(&fs::read(dir.join(KEY_FILE))?)
    }

    fn from_file_bytes(bytes: &[u8]) -> std::io::Result<Keys> {
        let raw = URL_SAFE_NO_PAD
            .decode(String::from_utf8_lossy(bytes).trim())
            .map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("bad signing key: {e}"),
                )
            })?;
        let secret: [u8; 32] = raw.try_into().map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "signing key is not 32 bytes",
            )
        })?;
        Ok(Keys { secret })
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        // HMAC accepts keys of any length.
        let mut mac = HmacSha256::new_from_slice(&self.secret).expect("hmac key");
        mac.update(payload.as_bytes());
        mac
    }

    /// Issues a token for `user` valid until `expires` (Unix seconds).
    pub fn issue(&self, user: UserId, expires: i64) -> String {
        let payload = format!("v1.{}.{}", user.0, expires);
        let sig = self.mac(&payload).finalize().into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(&sig[..20]))
    }

    /// Checks a token's signature and expiry; returns its user.
    pub fn verify(&self, token: &str, now: i64) -> Option<UserId> {
        if token.len() > 512 {
            return None;
        }
        let (payload, sig) = token.rsplit_once('.')?;
        let mut parts = payload.split('.');
        if parts.next()? != "v1" {
            return None;
        }
        let user: i64 = parts.next()?.parse().ok()?;
        let expires: i64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || expires < now {
            return None;
        }
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        if sig.len() != 20 {
            return None;
        }
        self.mac(payload).verify_truncated_left(&sig).ok()?;
        Some(UserId(user))
    }
}

/// Hashes a password with Argon2id (a deliberately slow hash).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    // Hashing with default parameters and a fresh salt does not fail.
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 hash")
        .to_string()
}

pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

pub fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire_and_not_when_altered() {
        let dir = tempfile::tempdir().unwrap();
        let keys = Keys::load_or_create(dir.path()).unwrap();
        let t = keys.issue(UserId(42), 1_000);
        assert_eq!(keys.verify(&t, 999), Some(UserId(42)));
        assert_eq!(keys.verify(&t, 1_001), None);
        let forged = t.replacen("v1.42.", "v1.43.", 1);
        assert_eq!(keys.verify(&forged, 999), None);
        let other = Keys::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert_eq!(other.verify(&t, 999), None);
        // The key persists.
        assert_eq!(
            Keys::load(dir.path()).unwrap().verify(&t, 999),
            Some(UserId(42))
        );
        let mode = fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("s3cret");
        assert!(verify_password("s3cret", &h));
        assert!(!verify_password("S3cret", &h));
    }
}
