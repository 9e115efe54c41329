//! What a password field holds: a hash in a format a platform may use
//! (kept as it is), a placeholder for "no usable password" (kept), or plaintext
//! (hashed with bcrypt). Recognising formats is pure string work.

#[allow(unused_imports)]
use super::*;

/// What a password field's string holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordForm {
    /// A hash in a format the platform may already hold (the scheme is named):
    /// stored as it is.
    Hash(&'static str),
    /// No usable password: `""`, `"!"`, `"*"`, blanks, or `!`/`*` before a
    /// recognised hash (a locked account). Stored as it is, never hashed: a
    /// bcrypt compare against it fails, so it can never become a login.
    Placeholder,
    /// A password: hashed with bcrypt before it is written.
    Plaintext,
    /// Starts like a hash of the named scheme but is not a well-formed one:
    /// most likely a damaged hash. Hashing it as a password would lock the
    /// user out; keeping it would store garbage. The record is rejected.
    Malformed(&'static str),
}

/// Classify a password field's string. See [`PasswordForm`].
pub fn password_form(s: &str) -> PasswordForm {
    if s.chars().all(|c| c == '!' || c == '*' || c.is_whitespace()) {
        return PasswordForm::Placeholder;
    }
    match hash_scheme(s) {
        Some(Ok(scheme)) => return PasswordForm::Hash(scheme),
        Some(Err(scheme)) => return PasswordForm::Malformed(scheme),
        None => {}
    }
    // `!` or `*` before a hash: a locked account, as /etc/shadow writes it.
    let unlocked = s.trim_start_matches(['!', '*']);
    if unlocked.len() < s.len() {
        match hash_scheme(unlocked) {
            Some(Ok(_)) => return PasswordForm::Placeholder,
            Some(Err(scheme)) => return PasswordForm::Malformed(scheme),
            None => {}
        }
    }
    PasswordForm::Plaintext
}

/// Whether a password field's string must not be stored or hashed quickly as
/// it is (plaintext, or something malformed that may be a password).
pub fn password_needs_hiding(s: &str) -> bool {
    matches!(password_form(s), PasswordForm::Plaintext | PasswordForm::Malformed(_))
}

/// `None`: no known hash prefix. `Some(Ok(scheme))`: a well-formed hash.
/// `Some(Err(scheme))`: the prefix of `scheme`, but malformed.
pub(super) fn hash_scheme(s: &str) -> Option<Result<&'static str, &'static str>> {
    let check = |scheme: &'static str, ok: bool| Some(if ok { Ok(scheme) } else { Err(scheme) });
    let b = s.as_bytes();
    if s.starts_with("$2") && b.len() > 4 && b[3] == b'$' {
        return check("bcrypt", is_bcrypt(s));
    }
    for variant in ["$argon2id$", "$argon2i$", "$argon2d$"] {
        if let Some(rest) = s.strip_prefix(variant) {
            return check("Argon2", argon2_rest(rest));
        }
    }
    if let Some(rest) = s.strip_prefix("$scrypt$") {
        return check("scrypt", phc_rest(rest, &["ln", "r", "p"]));
    }
    if let Some(rest) = s.strip_prefix("$7$") {
        return check("scrypt", scrypt7_rest(rest));
    }
    for variant in ["$pbkdf2$", "$pbkdf2-sha1$", "$pbkdf2-sha256$", "$pbkdf2-sha512$"] {
        if let Some(rest) = s.strip_prefix(variant) {
            return check("PBKDF2", pbkdf2_rest(rest));
        }
    }
    if let Some(rest) = s.strip_prefix("$5$") {
        return check("SHA-256-crypt", sha_crypt_rest(rest, 43));
    }
    if let Some(rest) = s.strip_prefix("$6$") {
        return check("SHA-512-crypt", sha_crypt_rest(rest, 86));
    }
    // Django's formats: `<algorithm>$<fields>`.
    for variant in ["pbkdf2_sha256$", "pbkdf2_sha1$"] {
        if let Some(rest) = s.strip_prefix(variant) {
            return check("Django PBKDF2", django_pbkdf2_rest(rest));
        }
    }
    if let Some(rest) = s.strip_prefix("argon2$") {
        let ok = ["argon2id$", "argon2i$", "argon2d$"].iter().any(|v| rest.strip_prefix(v).is_some_and(argon2_rest));
        return check("Django Argon2", ok);
    }
    for variant in ["bcrypt_sha256$", "bcrypt$"] {
        if let Some(rest) = s.strip_prefix(variant) {
            return check("Django bcrypt", is_bcrypt(rest));
        }
    }
    if let Some(rest) = s.strip_prefix("scrypt$") {
        let p: Vec<&str> = rest.split('$').collect();
        let ok = p.len() == 5 && digits(p[0]) && !p[1].is_empty() && digits(p[2]) && digits(p[3]) && b64(p[4]);
        return check("Django scrypt", ok);
    }
    None
}

pub(super) fn digits(s: &str) -> bool {
    !s.is_empty() && s.len() <= 12 && s.bytes().all(|c| c.is_ascii_digit())
}

/// Base64 in any of the spellings hash formats use (standard, URL-safe,
/// passlib's `.` for `+`), padding allowed.
pub(super) fn b64(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && s.len() - body.len() <= 2
        && body.bytes().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/' | b'.' | b'-' | b'_'))
}

/// crypt(3)'s base64 alphabet: `./0-9A-Za-z`.
pub(super) fn crypt64(s: &str) -> bool {
    s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'/')
}

/// PHC parameters `k=v,k=v` with each `required` key present and numeric.
pub(super) fn phc_params(s: &str, required: &[&str]) -> bool {
    let mut seen = 0;
    for pair in s.split(',') {
        let Some((k, v)) = pair.split_once('=') else {
            return false;
        };
        if k.is_empty() || !k.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-') || v.is_empty()
        {
            return false;
        }
        if required.contains(&k) {
            if !digits(v) {
                return false;
            }
            seen += 1;
        } else if !b64(v) {
            return false;
        }
    }
    seen == required.len()
}

/// `params$salt$hash`.
pub(super) fn phc_rest(rest: &str, required: &[&str]) -> bool {
    let p: Vec<&str> = rest.split('$').collect();
    p.len() == 3 && phc_params(p[0], required) && b64(p[1]) && b64(p[2])
}

/// `[v=19$]m=..,t=..,p=..$salt$hash`.
pub(super) fn argon2_rest(rest: &str) -> bool {
    let rest = match rest.split_once('$') {
        Some((v, after)) if v.starts_with("v=") => {
            if !digits(&v[2..]) {
                return false;
            }
            after
        }
        _ => rest,
    };
    phc_rest(rest, &["m", "t", "p"])
}

/// `$7$`: 11 characters of N, r, p, the salt, `$`, 43 characters of hash.
pub(super) fn scrypt7_rest(rest: &str) -> bool {
    let Some((setting, hash)) = rest.split_once('$') else {
        return false;
    };
    setting.len() >= 11 && setting.is_char_boundary(11) && crypt64(&setting[..11]) && hash.len() == 43 && crypt64(hash)
}

/// passlib's `rounds$salt$hash` (or PHC `i=..[,l=..]$salt$hash`).
pub(super) fn pbkdf2_rest(rest: &str) -> bool {
    let p: Vec<&str> = rest.split('$').collect();
    p.len() == 3 && (digits(p[0]) || phc_params(p[0], &["i"])) && b64(p[1]) && b64(p[2])
}

/// `[rounds=N$]salt$hash`, salt at most 16 characters.
pub(super) fn sha_crypt_rest(rest: &str, hash_len: usize) -> bool {
    let rest = match rest.strip_prefix("rounds=") {
        Some(after) => match after.split_once('$') {
            Some((n, after)) if digits(n) => after,
            _ => return false,
        },
        None => rest,
    };
    let Some((salt, hash)) = rest.split_once('$') else {
        return false;
    };
    salt.chars().count() <= 16 && !salt.contains(['\0', '\n']) && hash.len() == hash_len && crypt64(hash)
}

/// Django: `iterations$salt$hash`.
pub(super) fn django_pbkdf2_rest(rest: &str) -> bool {
    let p: Vec<&str> = rest.split('$').collect();
    p.len() == 3 && digits(p[0]) && !p[1].is_empty() && b64(p[2])
}

pub(super) enum Password<'a> {
    /// A recognised hash, a placeholder or `null`: stored as the file has it.
    Keep,
    Plain(&'a str),
    Malformed(&'static str),
    NotAString(&'static str),
}

pub(super) fn password_kind(v: &Value) -> Password<'_> {
    match v {
        Value::Null => Password::Keep,
        Value::String(s) => match password_form(s) {
            PasswordForm::Hash(_) | PasswordForm::Placeholder => Password::Keep,
            PasswordForm::Plaintext => Password::Plain(s),
            PasswordForm::Malformed(scheme) => Password::Malformed(scheme),
        },
        other => Password::NotAString(kind_of(other)),
    }
}

/// `$2a$`, `$2b$` or `$2y$`, a two-digit cost, `$`, then 53 characters of bcrypt's base64.
pub fn is_bcrypt(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 60
        && b[0] == b'$'
        && b[1] == b'2'
        && matches!(b[2], b'a' | b'b' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
        && b[7..].iter().all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
}
