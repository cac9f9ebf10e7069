//! Signing (HMAC-SHA-256, part 0x0200), encryption (AES-256-OFB with a SHA-1 checksum,
//! part 0x0210), security levels and the auth file, as collectd's network plugin has them.

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// Bytes of a signature part before the user name: header and MAC.
pub(crate) const SIGNATURE_HEADER_BYTES: usize = 4 + 32;
/// Bytes of an encryption part besides user name and payload: header, user name
/// length, IV and SHA-1.
pub(crate) const ENCRYPTION_OVERHEAD_BYTES: usize = 4 + 2 + 16 + 20;
/// Longest user name we send (collectd's daemon reserves room for 64 bytes).
pub const USER_BYTES_MAX: usize = 64;

/// A `Listen` block's `SecurityLevel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecurityLevel {
    /// Everything is processed; with an auth file, signatures are verified.
    #[default]
    None,
    /// Only signed or encrypted content is processed.
    Sign,
    /// Only encrypted content is processed.
    Encrypt,
}

impl std::str::FromStr for SecurityLevel {
    type Err = SecurityError;

    /// collectd's words, any case: `none`, `sign`, `encrypt`.
    fn from_str(s: &str) -> Result<SecurityLevel, SecurityError> {
        match s.to_ascii_lowercase().as_str() {
            "none" => Ok(SecurityLevel::None),
            "sign" => Ok(SecurityLevel::Sign),
            "encrypt" => Ok(SecurityLevel::Encrypt),
            _ => Err(SecurityError::UnknownLevel(s.to_owned())),
        }
    }
}

/// Configuration mistakes in security settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecurityError {
    /// Not `none`, `sign` or `encrypt`.
    #[error("unknown security level {0:?} (want none, sign or encrypt)")]
    UnknownLevel(String),
    /// collectd refuses a `Sign` or `Encrypt` listener without `AuthFile`.
    #[error("security level {0:?} needs an auth file")]
    AuthFileRequired(SecurityLevel),
    /// User names are 1 to 64 bytes without NUL.
    #[error("user name must be 1 to {USER_BYTES_MAX} bytes without NUL")]
    BadUser,
}

/// One auth file entry, with its keys derived once.
#[derive(Clone)]
pub(crate) struct User {
    name: Vec<u8>,
    /// HMAC keyed with the password, cloned per packet.
    pub(crate) hmac: HmacSha256,
    /// SHA-256 of the password.
    pub(crate) aes_key: [u8; 32],
}

impl User {
    fn new(name: &[u8], password: &[u8]) -> User {
        User {
            name: name.to_vec(),
            hmac: HmacSha256::new_from_slice(password).expect("HMAC takes any key length"),
            aes_key: Sha256::digest(password).into(),
        }
    }
}

/// collectd's `AuthFile`: lines of `user: password` (`utils_fbhash.c`).
#[derive(Clone, Default)]
pub struct AuthFile {
    users: Vec<User>,
}

impl std::fmt::Debug for AuthFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the passwords.
        f.debug_list()
            .entries(self.users.iter().map(|u| String::from_utf8_lossy(&u.name)))
            .finish()
    }
}

impl AuthFile {
    /// Parses the file's bytes as collectd does: trailing CR/LF dropped; leading
    /// whitespace skipped; blank lines, `#` comments and lines without `:` skipped; the
    /// user is everything before the first `:` (trailing spaces kept), the password
    /// everything after it less leading whitespace; lines with an empty password
    /// skipped; for a repeated user the first line wins.
    pub fn parse(text: &[u8]) -> AuthFile {
        let mut users: Vec<User> = Vec::new();
        for line in text.split(|&b| b == b'\n') {
            let mut line = line;
            while let [rest @ .., b'\r' | b'\n'] = line {
                line = rest;
            }
            let line = trim_c_space_start(line);
            if line.is_empty() || line[0] == b'#' {
                continue;
            }
            let Some(colon) = memchr::memchr(b':', line) else {
                continue;
            };
            let name = &line[..colon];
            let value = &line[colon + 1..];
            let password = trim_c_space_start(value);
            // C strings: a NUL ends either.
            let name = until_nul(name);
            let password = until_nul(password);
            if password.is_empty() || users.iter().any(|u| u.name == name) {
                continue;
            }
            users.push(User::new(name, password));
        }
        AuthFile { users }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether no line gave a user.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The entry for a user name as read from a packet (up to its first NUL, as C reads
    /// it).
    pub(crate) fn get(&self, name: &[u8]) -> Option<&User> {
        let name = until_nul(name);
        self.users.iter().find(|u| u.name == name)
    }
}

/// `s` without its leading C `isspace` bytes ("C" locale).
fn trim_c_space_start(s: &[u8]) -> &[u8] {
    let is_c_space = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r');
    let start = s.iter().position(|b| !is_c_space(b)).unwrap_or(s.len());
    &s[start..]
}

pub(crate) fn until_nul(s: &[u8]) -> &[u8] {
    match memchr::memchr(0, s) {
        Some(i) => &s[..i],
        None => s,
    }
}

/// A listener's security: its level and, when configured, its auth file.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub(crate) level: SecurityLevel,
    pub(crate) auth: Option<AuthFile>,
}

impl Security {
    /// Checks the pair as collectd does: `Sign` and `Encrypt` need an auth file.
    pub fn new(level: SecurityLevel, auth: Option<AuthFile>) -> Result<Security, SecurityError> {
        if level != SecurityLevel::None && auth.is_none() {
            return Err(SecurityError::AuthFileRequired(level));
        }
        Ok(Security { level, auth })
    }

    /// The level.
    pub fn level(&self) -> SecurityLevel {
        self.level
    }
}

/// A sender's user name and password (a `Server` block's `Username`/`Password`).
#[derive(Clone)]
pub struct Credentials {
    pub(crate) user: User,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?})", String::from_utf8_lossy(self.name()))
    }
}

impl Credentials {
    /// A user name (1 to 64 bytes, no NUL) and its password.
    pub fn new(user: &[u8], password: &[u8]) -> Result<Credentials, SecurityError> {
        if user.is_empty() || user.len() > USER_BYTES_MAX || user.contains(&0) {
            return Err(SecurityError::BadUser);
        }
        Ok(Credentials {
            user: User::new(user, until_nul(password)),
        })
    }

    /// The user name, as it goes on the wire.
    pub(crate) fn name(&self) -> &[u8] {
        &self.user.name
    }
}

/// How an encoder protects its packets.
#[derive(Debug, Clone, Default)]
pub enum SendSecurity {
    /// Plain packets.
    #[default]
    None,
    /// HMAC-SHA-256 signature part first.
    Sign(Credentials),
    /// One AES-256-OFB encryption part around the whole payload.
    Encrypt(Credentials),
}

/// HMAC-SHA-256 of `msg` (user name then payload) under the user's password.
pub(crate) fn mac(user: &User, msg: &[u8]) -> [u8; 32] {
    let mut h = user.hmac.clone();
    h.update(msg);
    h.finalize().into_bytes().into()
}

/// Whether `tag` is the MAC of `msg`, compared in constant time.
pub(crate) fn mac_ok(user: &User, msg: &[u8], tag: &[u8]) -> bool {
    let mut h = user.hmac.clone();
    h.update(msg);
    h.verify_slice(tag).is_ok()
}

/// AES-256-OFB over `data` in place (encrypting and decrypting are the same).
pub(crate) fn ofb(key: &[u8; 32], iv: &[u8; 16], data: &mut [u8]) {
    let mut c = ofb::Ofb::<aes::Aes256>::new(key.into(), iv.into());
    c.apply_keystream(data);
}

/// SHA-1, the encryption part's checksum.
pub(crate) fn sha1(data: &[u8]) -> [u8; 20] {
    Sha1::digest(data).into()
}

/// Unique, unpredictable IVs without a system call per packet: SHA-256 of a secret
/// seed (from std's per-process random keys) and a counter.
pub(crate) struct IvSource {
    seed: [u8; 16],
    counter: u64,
}

impl IvSource {
    pub(crate) fn new() -> IvSource {
        use std::hash::{BuildHasher, Hasher};
        let mut seed = [0u8; 16];
        for (i, chunk) in seed.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
        IvSource { seed, counter: 0 }
    }

    pub(crate) fn next_iv(&mut self) -> [u8; 16] {
        self.counter += 1;
        let mut h = Sha256::new();
        h.update(self.seed);
        h.update(self.counter.to_le_bytes());
        let d = h.finalize();
        d[..16].try_into().expect("16 of 32 bytes")
    }
}
