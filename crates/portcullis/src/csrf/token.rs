//! The signed double-submit token (OWASP's recommended form), bound to the session.
//!
//! # Byte layout
//!
//! ```text
//! token = base64url-no-pad( R ‖ M )                      64 bytes → 86 characters
//! R     = 32 bytes from the OS random generator
//! M     = HMAC-SHA256( secret, "portcullis-csrf-v1" ‖ be32(len(S)) ‖ S ‖ R )
//! S     = "principal:" ‖ the principal's id               (an authenticated caller)
//!       | "anonymous:" ‖ the anonymous session cookie     (everyone else)
//! ```
//!
//! The length prefix keeps `S ‖ R` unambiguous; the label keeps these MACs apart from any
//! other use of the same secret. A token verifies when its MAC matches under **any**
//! configured secret (the first one signs): list the new secret first and keep the old one
//! while tokens signed with it may still be in use, then drop it — its tokens stop verifying.
//! Comparisons go through `subtle` and every secret is tried, so timing tells nothing about
//! which byte or which secret failed.
//!
//! ```
//! use portcullis::csrf::token::{Secret, SessionBinding, TokenSigner};
//! let signer = TokenSigner::new(vec![Secret::new(vec![7u8; 32]).unwrap()]).unwrap();
//! let session = SessionBinding::Principal("alice");
//! let token = signer.issue(session);
//! assert_eq!(token.len(), 86);
//! assert!(signer.verify(token.as_bytes(), session));
//! assert!(!signer.verify(token.as_bytes(), SessionBinding::Principal("mallory")));
//! ```

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::{Choice, ConstantTimeEq};

use crate::layer::BuildError;

type HmacSha256 = Hmac<Sha256>;

/// Random bytes at the front of a token.
///
/// ```
/// use portcullis::csrf::token::{MAC_LEN, RANDOM_LEN, TOKEN_LEN};
/// // 64 bytes in base64url without padding: 86 characters.
/// assert_eq!(TOKEN_LEN, ((RANDOM_LEN + MAC_LEN) * 4).div_ceil(3));
/// ```
pub const RANDOM_LEN: usize = 32;
/// MAC bytes at the end of a token.
///
/// ```
/// use portcullis::csrf::token::MAC_LEN;
/// assert_eq!(MAC_LEN, 32); // HMAC-SHA256
/// ```
pub const MAC_LEN: usize = 32;
/// The length of a token in base64url characters.
///
/// ```
/// use portcullis::csrf::token::{SessionBinding, TokenSigner, TOKEN_LEN, Secret};
/// let signer = TokenSigner::new(vec![Secret::generate()]).unwrap();
/// assert_eq!(signer.issue(SessionBinding::Principal("alice")).len(), TOKEN_LEN);
/// ```
pub const TOKEN_LEN: usize = 86;
/// The shortest secret accepted, in bytes.
///
/// ```
/// use portcullis::csrf::token::{MIN_SECRET_LEN, Secret};
/// assert!(Secret::new(vec![0u8; MIN_SECRET_LEN]).is_ok());
/// assert!(Secret::new(vec![0u8; MIN_SECRET_LEN - 1]).is_err());
/// ```
pub const MIN_SECRET_LEN: usize = 32;

const LABEL: &[u8] = b"portcullis-csrf-v1";

/// Key material for token MACs. Its `Debug` prints `[redacted]`.
///
/// ```
/// use portcullis::csrf::token::Secret;
/// let secret = Secret::new(b"test-only-secret-of-32-bytes-xyz".to_vec()).unwrap();
/// assert_eq!(format!("{secret:?}"), "Secret([redacted])");
/// ```
#[derive(Clone)]
pub struct Secret(Box<[u8]>);

impl Secret {
    /// A secret of at least [`MIN_SECRET_LEN`] bytes.
    ///
    /// ```
    /// use portcullis::csrf::token::Secret;
    /// assert!(Secret::new(b"test-only-secret-of-32-bytes-xyz".to_vec()).is_ok());
    /// assert!(Secret::new(b"too short".to_vec()).is_err());
    /// ```
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Secret, BuildError> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(BuildError {
                key: "csrf.secrets".into(),
                reason: format!("a secret needs at least {MIN_SECRET_LEN} bytes"),
            });
        }
        Ok(Secret(bytes.into_boxed_slice()))
    }

    /// A fresh random secret (tokens signed with it die with the process).
    ///
    /// ```
    /// use portcullis::csrf::token::{Secret, SessionBinding, TokenSigner};
    /// let a = TokenSigner::new(vec![Secret::generate()]).unwrap();
    /// let b = TokenSigner::new(vec![Secret::generate()]).unwrap();
    /// let token = a.issue(SessionBinding::Principal("alice"));
    /// assert!(!b.verify(token.as_bytes(), SessionBinding::Principal("alice")));
    /// ```
    pub fn generate() -> Secret {
        Secret(crate::random::bytes::<32>().to_vec().into_boxed_slice())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// What a token is bound to.
///
/// ```
/// use portcullis::csrf::token::{Secret, SessionBinding, TokenSigner};
/// let signer = TokenSigner::new(vec![Secret::generate()]).unwrap();
/// let token = signer.issue(SessionBinding::Anonymous("abc"));
/// // The same id as a principal is another session.
/// assert!(!signer.verify(token.as_bytes(), SessionBinding::Principal("abc")));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionBinding<'a> {
    /// An authenticated principal's id.
    Principal(&'a str),
    /// The anonymous session cookie's value.
    Anonymous(&'a str),
}

impl SessionBinding<'_> {
    fn write(self, mac: &mut HmacSha256) {
        let (kind, id): (&[u8], &str) = match self {
            SessionBinding::Principal(id) => (b"principal:", id),
            SessionBinding::Anonymous(id) => (b"anonymous:", id),
        };
        let len = u32::try_from(kind.len() + id.len()).unwrap_or(u32::MAX);
        mac.update(LABEL);
        mac.update(&len.to_be_bytes());
        mac.update(kind);
        mac.update(id.as_bytes());
    }
}

/// Signs and verifies tokens with a list of secrets: the first signs, all verify.
///
/// ```
/// use portcullis::csrf::token::{Secret, SessionBinding, TokenSigner};
/// let signer = TokenSigner::new(vec![Secret::generate()]).unwrap();
/// let token = signer.issue(SessionBinding::Principal("alice"));
/// assert!(signer.verify(token.as_bytes(), SessionBinding::Principal("alice")));
/// ```
#[derive(Clone)]
pub struct TokenSigner {
    // Keyed once: cloning a keyed HMAC skips the key schedule on every request.
    keys: Vec<HmacSha256>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("secrets", &self.keys.len())
            .finish()
    }
}

impl TokenSigner {
    /// A signer over `secrets` (at least one; the first signs).
    ///
    /// ```
    /// use portcullis::csrf::token::{Secret, TokenSigner};
    /// assert!(TokenSigner::new(vec![Secret::generate()]).is_ok());
    /// assert!(TokenSigner::new(Vec::new()).is_err());
    /// ```
    pub fn new(secrets: Vec<Secret>) -> Result<TokenSigner, BuildError> {
        if secrets.is_empty() {
            return Err(BuildError {
                key: "csrf.secrets".into(),
                reason: "at least one secret is needed".into(),
            });
        }
        let keys = secrets
            .iter()
            .map(|s| HmacSha256::new_from_slice(&s.0).expect("HMAC takes keys of any length"))
            .collect();
        Ok(TokenSigner { keys })
    }

    fn mac(key: &HmacSha256, session: SessionBinding<'_>, random: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = key.clone();
        session.write(&mut mac);
        mac.update(random);
        mac.finalize().into_bytes().into()
    }

    /// A fresh token for `session`, signed with the first secret.
    ///
    /// ```
    /// use portcullis::csrf::token::{Secret, SessionBinding, TokenSigner};
    /// let signer = TokenSigner::new(vec![Secret::generate()]).unwrap();
    /// let s = SessionBinding::Principal("alice");
    /// // Every token is fresh, and each one verifies.
    /// let (t1, t2) = (signer.issue(s), signer.issue(s));
    /// assert_ne!(t1, t2);
    /// assert!(signer.verify(t1.as_bytes(), s) && signer.verify(t2.as_bytes(), s));
    /// ```
    pub fn issue(&self, session: SessionBinding<'_>) -> String {
        let random: [u8; RANDOM_LEN] = crate::random::bytes();
        let mut raw = [0u8; RANDOM_LEN + MAC_LEN];
        raw[..RANDOM_LEN].copy_from_slice(&random);
        raw[RANDOM_LEN..].copy_from_slice(&Self::mac(&self.keys[0], session, &random));
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// True when `token` (its base64url text) was signed for `session` under any secret.
    ///
    /// ```
    /// use portcullis::csrf::token::{Secret, SessionBinding, TokenSigner};
    /// let signer = TokenSigner::new(vec![Secret::generate()]).unwrap();
    /// let s = SessionBinding::Principal("alice");
    /// let token = signer.issue(s);
    /// assert!(signer.verify(token.as_bytes(), s));
    /// assert!(!signer.verify(b"not-a-token", s));
    /// ```
    pub fn verify(&self, token: &[u8], session: SessionBinding<'_>) -> bool {
        if token.len() != TOKEN_LEN {
            return false;
        }
        let mut raw = [0u8; RANDOM_LEN + MAC_LEN];
        match URL_SAFE_NO_PAD.decode_slice(token, &mut raw) {
            Ok(n) if n == raw.len() => {}
            _ => return false,
        }
        let (random, mac) = raw.split_at(RANDOM_LEN);
        let mut ok = Choice::from(0);
        for key in &self.keys {
            ok |= Self::mac(key, session, random).ct_eq(mac);
        }
        ok.into()
    }
}

/// Compares two tokens in constant time (for equal lengths).
///
/// ```
/// use portcullis::csrf::token::tokens_equal;
/// assert!(tokens_equal(b"abc", b"abc"));
/// assert!(!tokens_equal(b"abc", b"abd"));
/// ```
pub fn tokens_equal(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The name of the form field that carries the token.
///
/// ```
/// use portcullis::csrf::token::{FORM_FIELD, form_token};
/// let body = format!("title=hi&{FORM_FIELD}=tok");
/// assert_eq!(form_token("application/x-www-form-urlencoded", body.as_bytes()).as_deref(), Some("tok"));
/// ```
pub const FORM_FIELD: &str = "csrf_token";

/// The token in a form body (`application/x-www-form-urlencoded` or `multipart/form-data`),
/// from its first `csrf_token` field. `None` for other content types, a malformed body, or a
/// form without the field.
///
/// ```
/// use portcullis::csrf::token::form_token;
/// assert_eq!(form_token("application/x-www-form-urlencoded", b"a=1&csrf_token=abc").as_deref(), Some("abc"));
/// let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\nabc\r\n--XyZ--\r\n";
/// assert_eq!(form_token("multipart/form-data; boundary=XyZ", body).as_deref(), Some("abc"));
/// ```
pub fn form_token(content_type: &str, body: &[u8]) -> Option<String> {
    let mut params = content_type.split(';');
    let essence = params.next()?.trim();
    if essence.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        urlencoded_field(body, FORM_FIELD)
    } else if essence.eq_ignore_ascii_case("multipart/form-data") {
        let boundary = params.find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("boundary")
                .then(|| v.trim().trim_matches('"'))
        })?;
        multipart_field(body, boundary, FORM_FIELD)
    } else {
        None
    }
}

/// True when `content_type` is a form the token can be read from.
///
/// ```
/// use portcullis::csrf::token::is_form;
/// assert!(is_form("multipart/form-data; boundary=XyZ"));
/// assert!(is_form("application/x-www-form-urlencoded"));
/// assert!(!is_form("application/json"));
/// ```
pub fn is_form(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/x-www-form-urlencoded")
        || essence.eq_ignore_ascii_case("multipart/form-data")
}

fn urlencoded_field(body: &[u8], name: &str) -> Option<String> {
    body.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (&pair[..i], &pair[i + 1..]),
            None => (pair, &b""[..]),
        };
        (form_decode(k)? == name.as_bytes())
            .then(|| form_decode(v).and_then(|v| String::from_utf8(v).ok()))
            .flatten()
    })
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte.
fn form_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Some(out)
}

/// Where `needle` first occurs in `hay` (the multipart readers' delimiter search).
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn multipart_field(body: &[u8], boundary: &str, name: &str) -> Option<String> {
    if boundary.is_empty() || boundary.len() > 70 {
        return None;
    }
    let delimiter = [b"--", boundary.as_bytes()].concat();
    let mut rest = &body[find(body, &delimiter)? + delimiter.len()..];
    loop {
        if rest.starts_with(b"--") {
            return None; // the closing delimiter
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&rest[..head_end]).ok()?;
        let content = &rest[head_end + 4..];
        let next = find(content, &[b"\r\n", delimiter.as_slice()].concat())?;
        if part_name(head) == Some(name) {
            return String::from_utf8(content[..next].to_vec()).ok();
        }
        rest = &content[next + 2 + delimiter.len()..];
    }
}

/// The `name` of a `Content-Disposition: form-data` part without a `filename`.
fn part_name(head: &str) -> Option<&str> {
    let line = head.split("\r\n").find(|l| {
        l.split_once(':')
            .is_some_and(|(k, _)| k.trim().eq_ignore_ascii_case("content-disposition"))
    })?;
    let (_, value) = line.split_once(':')?;
    let mut params = value.split(';');
    if !params.next()?.trim().eq_ignore_ascii_case("form-data") {
        return None;
    }
    let mut name = None;
    for p in params {
        let (k, v) = p.split_once('=')?;
        match k.trim().to_ascii_lowercase().as_str() {
            "name" => name = Some(v.trim().trim_matches('"')),
            "filename" | "filename*" => return None,
            _ => {}
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer(seed: u8) -> TokenSigner {
        TokenSigner::new(vec![Secret::new(vec![seed; 32]).unwrap()]).unwrap()
    }

    #[test]
    fn secret_debug_is_redacted() {
        let s = Secret::new(vec![1u8; 32]).unwrap();
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert!(Secret::new(vec![1u8; 31]).is_err());
    }

    #[test]
    fn tokens_are_bound_to_session_and_secret() {
        let a = signer(1);
        let t = a.issue(SessionBinding::Anonymous("s1"));
        assert!(a.verify(t.as_bytes(), SessionBinding::Anonymous("s1")));
        assert!(!a.verify(t.as_bytes(), SessionBinding::Anonymous("s2")));
        assert!(!a.verify(t.as_bytes(), SessionBinding::Principal("s1")));
        assert!(!signer(2).verify(t.as_bytes(), SessionBinding::Anonymous("s1")));
        assert!(!a.verify(&t.as_bytes()[..85], SessionBinding::Anonymous("s1")));
    }

    #[test]
    fn the_length_prefix_separates_session_and_random() {
        // "principal:ab" ‖ R and "principal:a" ‖ "b" ‖ R' must not collide.
        let a = signer(1);
        let t = a.issue(SessionBinding::Principal("ab"));
        assert!(!a.verify(t.as_bytes(), SessionBinding::Principal("a")));
    }

    #[test]
    fn rotation_verifies_under_every_listed_secret() {
        let old = Secret::new(vec![1u8; 32]).unwrap();
        let new = Secret::new(vec![2u8; 32]).unwrap();
        let before = TokenSigner::new(vec![old.clone()]).unwrap();
        let t = before.issue(SessionBinding::Principal("p"));
        let during = TokenSigner::new(vec![new.clone(), old]).unwrap();
        assert!(during.verify(t.as_bytes(), SessionBinding::Principal("p")));
        let after = TokenSigner::new(vec![new]).unwrap();
        assert!(!after.verify(t.as_bytes(), SessionBinding::Principal("p")));
    }

    #[test]
    fn form_fields_are_found() {
        let ue = "application/x-www-form-urlencoded; charset=UTF-8";
        assert_eq!(
            form_token(ue, b"csrf%5Ftoken=a%2Db+c").as_deref(),
            Some("a-b c")
        );
        assert_eq!(form_token(ue, b"x=1&csrf_tokenx=2"), None);
        assert_eq!(form_token(ue, b"csrf_token=%zz"), None);
        assert_eq!(form_token("text/plain", b"csrf_token=a"), None);
        let mp = "multipart/form-data; boundary=\"b1\"";
        let body = b"--b1\r\nContent-Disposition: form-data; name=\"file\"; filename=\"csrf_token\"\r\n\r\nxx\r\n--b1\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhi\r\n--b1\r\ncontent-disposition: form-data; name=csrf_token\r\n\r\ntok\r\n--b1--\r\n";
        assert_eq!(form_token(mp, body).as_deref(), Some("tok"));
        assert_eq!(form_token(mp, b"--b1--\r\n"), None);
        assert_eq!(form_token("multipart/form-data", body), None);
    }
}
