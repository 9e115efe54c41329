//! Keeping credentials out of logs: connection strings are shown with the
//! password replaced, and any text we log about MongoDB errors is scrubbed of
//! the password in case a server or driver echoes it back.

/// The URI with its password (if any) replaced by `***`.
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    // The userinfo ends at the last '@' of the authority (passwords may hold '@' unescaped).
    let Some(at) = authority.rfind('@') else {
        return uri.to_string();
    };
    let userinfo = &authority[..at];
    let user = match userinfo.split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => userinfo.to_string(),
    };
    format!("{}://{}@{}", &uri[..scheme_end], user, &rest[at + 1..])
}

/// The password in a URI, percent-decoded, if it has one.
pub fn uri_password(uri: &str) -> Option<String> {
    let rest = &uri[uri.find("://")? + 3..];
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let (_, pw) = userinfo.split_once(':')?;
    (!pw.is_empty()).then(|| percent_decode(pw))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes known secrets from text before it is logged or printed.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    secrets: Vec<String>,
}

impl Scrubber {
    pub fn for_uri(uri: &str) -> Self {
        let mut secrets = Vec::new();
        if let Some(pw) = uri_password(uri) {
            // Both the decoded and the raw (percent-encoded) spelling.
            if let Some(raw) = uri.find("://").and_then(|i| {
                let rest = &uri[i + 3..];
                let auth = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
                auth.rfind('@').and_then(|at| auth[..at].split_once(':').map(|(_, p)| p.to_string()))
            }) {
                if raw != pw {
                    secrets.push(raw);
                }
            }
            secrets.push(pw);
        }
        Self { secrets }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if s.len() >= 3 {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_removed_from_uris() {
        assert_eq!(redact_uri("mongodb://u:p4ss@h:27017/db?x=1"), "mongodb://u:***@h:27017/db?x=1");
        assert_eq!(redact_uri("mongodb+srv://u:p@ss@cluster/db"), "mongodb+srv://u:***@cluster/db");
        assert_eq!(redact_uri("mongodb://localhost:27017/db"), "mongodb://localhost:27017/db");
        assert_eq!(redact_uri("mongodb://user@h/db"), "mongodb://user@h/db");
        assert_eq!(redact_uri("not a uri"), "not a uri");
    }

    #[test]
    fn scrubber_removes_raw_and_decoded_passwords() {
        let s = Scrubber::for_uri("mongodb://admin:s%40cret-pw@h/db");
        assert_eq!(uri_password("mongodb://admin:s%40cret-pw@h/db").as_deref(), Some("s@cret-pw"));
        assert_eq!(s.scrub("auth failed for s@cret-pw and s%40cret-pw"), "auth failed for *** and ***");
        assert_eq!(Scrubber::for_uri("mongodb://h/db").scrub("x"), "x");
    }
}
