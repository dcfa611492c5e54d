//! TLS session tickets from a key file, so that a session made with one instance
//! resumes on another that reads the same file (behind a balancer, or after a restart),
//! as nginx's `ssl_session_ticket_key` does.
//!
//! The file holds 48 random bytes (`openssl rand 48 > ticket.key`, mode 0600): a
//! 16-byte key name, then a 32-byte AES-256-GCM key. A ticket is the key name, a
//! random 12-byte nonce, and the session state sealed with the key (the name as
//! associated data). Reading the file again (SIGHUP) makes its key the one that
//! encrypts, and keeps the one before it for decrypting tickets already out, so a
//! rotation does not cost every client a full handshake. A file that group or others
//! can read is refused: whoever reads it can decrypt every session made under it.

use std::fmt;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};

/// The key file's length: a 16-byte name and a 32-byte key.
pub const KEY_FILE_LEN: usize = 48;
const NAME_LEN: usize = 16;
/// How long a client may keep a ticket, in seconds (a hint; rotating the key is what
/// ends a ticket's use).
const LIFETIME_SECS: u32 = 12 * 3600;

struct Key {
    name: [u8; NAME_LEN],
    aead: LessSafeKey,
    /// The file's bytes, to tell a rotation from a reload of the same key.
    raw: [u8; KEY_FILE_LEN],
}

struct Keys {
    current: Key,
    previous: Option<Key>,
}

/// The ticket keys of a `--tls-ticket-keys` file.
pub(crate) struct TicketKeys {
    path: PathBuf,
    keys: RwLock<Keys>,
    rng: SystemRandom,
}

impl fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKeys")
            .field("path", &self.path)
            .finish()
    }
}

fn invalid(path: &Path, msg: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("--tls-ticket-keys {}: {msg}", path.display()),
    )
}

fn load(path: &Path) -> io::Result<Key> {
    let meta = std::fs::metadata(path).map_err(|e| invalid(path, &e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(invalid(
            path,
            "group or others may read it: make it 0600 (whoever reads it can decrypt \
             every session made with it)",
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| invalid(path, &e.to_string()))?;
    let raw: [u8; KEY_FILE_LEN] = bytes.as_slice().try_into().map_err(|_| {
        invalid(
            path,
            &format!(
                "{} bytes, not {KEY_FILE_LEN} (make one with `openssl rand 48`)",
                bytes.len()
            ),
        )
    })?;
    let mut name = [0u8; NAME_LEN];
    name.copy_from_slice(&raw[..NAME_LEN]);
    let key =
        UnboundKey::new(&AES_256_GCM, &raw[NAME_LEN..]).map_err(|_| invalid(path, "not a key"))?;
    Ok(Key {
        name,
        aead: LessSafeKey::new(key),
        raw,
    })
}

impl TicketKeys {
    pub fn open(path: &Path) -> io::Result<TicketKeys> {
        Ok(TicketKeys {
            path: path.to_path_buf(),
            keys: RwLock::new(Keys {
                current: load(path)?,
                previous: None,
            }),
            rng: SystemRandom::new(),
        })
    }

    /// Reads the file again: a new key encrypts from now on, the one before it still
    /// decrypts. `Ok(true)` when the key changed.
    pub fn reload(&self) -> io::Result<bool> {
        let key = load(&self.path)?;
        let mut keys = self.keys.write().unwrap_or_else(|e| e.into_inner());
        if key.raw == keys.current.raw {
            return Ok(false);
        }
        let old = std::mem::replace(&mut keys.current, key);
        keys.previous = Some(old);
        Ok(true)
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }

    fn lifetime(&self) -> u32 {
        LIFETIME_SECS
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = &keys.current;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(NAME_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&key.name);
        out.extend_from_slice(&nonce);
        let mut sealed = plain.to_vec();
        key.aead
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut sealed,
            )
            .ok()?;
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        // Attacker-controlled: every length is checked before a slice is taken.
        let name = cipher.get(..NAME_LEN)?;
        let nonce: [u8; NONCE_LEN] = cipher
            .get(NAME_LEN..NAME_LEN + NONCE_LEN)?
            .try_into()
            .ok()?;
        let sealed = cipher.get(NAME_LEN + NONCE_LEN..)?;
        let keys = self.keys.read().unwrap_or_else(|e| e.into_inner());
        let key = [Some(&keys.current), keys.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|k| k.name == name)?;
        let mut buf = sealed.to_vec();
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&key.name),
                &mut buf,
            )
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    fn key_file(dir: &Path, name: &str, fill: u8, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, [fill; KEY_FILE_LEN]).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn tickets_round_trip_survive_one_rotation_and_refuse_tampering() {
        let dir = std::env::temp_dir().join(format!("reactor-tickets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = key_file(&dir, "k", 1, 0o600);
        let a = TicketKeys::open(&path).unwrap();
        let b = TicketKeys::open(&path).unwrap();
        let t = a.encrypt(b"session state").unwrap();
        // Another instance with the same file decrypts it.
        assert_eq!(b.decrypt(&t).unwrap(), b"session state");
        // Tampered, truncated or empty: refused.
        let mut bad = t.clone();
        *bad.last_mut().unwrap() ^= 1;
        assert!(b.decrypt(&bad).is_none());
        assert!(b.decrypt(&t[..20]).is_none());
        assert!(b.decrypt(&[]).is_none());
        // Rotated once: the old ticket still opens; rotated twice: it does not.
        std::fs::write(&path, [2u8; KEY_FILE_LEN]).unwrap();
        assert!(b.reload().unwrap());
        assert_eq!(b.decrypt(&t).unwrap(), b"session state");
        assert!(!b.reload().unwrap(), "the same key again is no rotation");
        std::fs::write(&path, [3u8; KEY_FILE_LEN]).unwrap();
        assert!(b.reload().unwrap());
        assert!(b.decrypt(&t).is_none());
        // Another key file: nothing opens.
        let other = TicketKeys::open(&key_file(&dir, "o", 9, 0o600)).unwrap();
        assert!(other.decrypt(&a.encrypt(b"x").unwrap()).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_readable_or_short_key_file_is_refused() {
        let dir = std::env::temp_dir().join(format!("reactor-tickets-bad-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let e = TicketKeys::open(&key_file(&dir, "r", 1, 0o640)).unwrap_err();
        assert!(e.to_string().contains("0600"), "{e}");
        let short = dir.join("s");
        std::fs::write(&short, [1u8; 10]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        let e = TicketKeys::open(&short).unwrap_err();
        assert!(e.to_string().contains("not 48"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
