//! Keeping credentials out of logs. Redaction fails closed: a connection
//! string is shown with its password and every credential-bearing option as
//! `***`, even when it is malformed (an unescaped `/`, `?` or `@` in the
//! password, which the driver refuses to parse), and any text that may hold
//! one (driver and server errors) is scrubbed the same way before it is
//! logged or printed.
//!
//! Rules, for `mongodb://`, `mongodb+srv://`, `postgres://` and `postgresql://`:
//! - The user info ends at the last `@` that is not clearly inside the options:
//!   an `@` counts as part of the options only if what comes before it reads as
//!   a host list (`host[:port],...`, ports in digits), an optional `/database`,
//!   then `?` and a `name=` parameter, and what follows it cannot be a host list
//!   (`?appName=me@site&w=1`). When in doubt, more is masked, never less:
//!   `?appName=me@site` at the very end masks up to that `@`. Everything between
//!   the user name's `:` and the chosen `@` is the password, shown as `***`
//!   (the user name stays visible).
//! - Options whose name suggests a secret (`password`, `pwd`, `pass`, `secret`,
//!   `token`, `key`, `credential`, `authMechanismProperties`, ...) have their
//!   values shown as `***`.
//! - In error text ([`Scrubber::scrub`]), every such URI is redacted in place,
//!   and the known secrets of the configured URI are removed: its password,
//!   each piece of it between URI delimiters (the driver echoes pieces: "invalid
//!   server address u:s3cret ... got s3cret" for the password `s3cret?x`), and
//!   the secret option values, raw and percent-decoded. A secret of at least
//!   [`MIN_FREE_SECRET`] characters is removed wherever it occurs; a shorter one
//!   only where it stands as a whole word (not next to a letter or digit), so a
//!   two-letter password never turns up, yet words that merely contain it (`pa`
//!   in `password`) stay readable.

/// URI schemes whose user info and options may carry credentials.
const SCHEMES: &[&str] = &["mongodb+srv://", "mongodb://", "postgresql://", "postgres://"];

/// Secrets at least this long are removed wherever they appear in text.
pub const MIN_FREE_SECRET: usize = 3;

const MASK: &str = "***";

/// Where the credentials of one URI are, as byte offsets into it.
#[derive(Debug, Default)]
struct Anatomy {
    /// The password: from after the user name's `:` to the `@` ending the user info.
    password: Option<(usize, usize)>,
    /// The values of secret options.
    secret_values: Vec<(usize, usize)>,
}

/// Take a URI apart (`uri` starts with its scheme). Never fails: whatever
/// might be a password is treated as one.
fn anatomy(uri: &str) -> Anatomy {
    let Some(start) = uri.find("://").map(|i| i + 3) else {
        return Anatomy::default();
    };
    let rest = &uri[start..];
    let mut out = Anatomy::default();
    let mut hosts_from = 0;
    if let Some(at) = userinfo_end(rest) {
        let userinfo = &rest[..at];
        if let Some(colon) = userinfo.find(':') {
            out.password = Some((start + colon + 1, start + at));
        }
        hosts_from = at + 1;
    }
    // Options: after the first `?` past the user info.
    if let Some(q) = rest[hosts_from..].find('?') {
        let opts_from = hosts_from + q + 1;
        let opts_end = rest[opts_from..].find('#').map_or(rest.len(), |i| opts_from + i);
        let mut at = opts_from;
        for param in rest[opts_from..opts_end].split(['&', ';']) {
            if let Some((name, value)) = param.split_once('=') {
                if secret_name(name) && !value.is_empty() {
                    let from = start + at + name.len() + 1;
                    out.secret_values.push((from, from + value.len()));
                }
            }
            at += param.len() + 1;
        }
    }
    out
}

/// The `@` (offset in `rest`, the URI after `://`) that ends the user info, if any.
fn userinfo_end(rest: &str) -> Option<usize> {
    let mut chosen: Option<usize> = None;
    for (at, _) in rest.match_indices('@') {
        if let Some(c) = chosen {
            if in_options(&rest[c + 1..at]) && !is_uri_tail(&rest[at + 1..]) {
                break;
            }
        }
        chosen = Some(at);
    }
    chosen
}

/// Whether the text between the end of the user info and a later `@` reads as
/// `hosts[/database]?...name=value`: the `@` is then inside an option.
fn in_options(between: &str) -> bool {
    let Some(host_end) = between.find(['/', '?']) else {
        return false;
    };
    if !is_host_list(&between[..host_end]) {
        return false;
    }
    let Some(q) = between[host_end..].find('?') else {
        return false;
    };
    let options = &between[host_end + q + 1..];
    let param = options.rsplit(['&', ';']).next().unwrap_or(options);
    match param.split_once('=') {
        Some((name, _)) => {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        }
        None => false,
    }
}

/// Whether text could be what follows the user info: a host list, then
/// nothing, a `/` or a `?`.
fn is_uri_tail(s: &str) -> bool {
    is_host_list(&s[..s.find(['/', '?']).unwrap_or(s.len())])
}

/// `host[:port](,host[:port])*`, ports in digits, IPv6 in brackets.
fn is_host_list(s: &str) -> bool {
    !s.is_empty()
        && s.split(',').all(|h| {
            let (host, port) = match h.rfind(':') {
                Some(i) if !h[i..].contains(']') => (&h[..i], Some(&h[i + 1..])),
                _ => (h, None),
            };
            !host.is_empty()
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b'%' | b'[' | b']' | b':'))
                && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        })
}

/// Whether an option's name suggests that its value is a credential.
fn secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key", "credential", "auth_mechanism_properties", "authmechanismproperties"]
        .iter()
        .any(|s| n.contains(s))
}

/// The URI with its password and secret options replaced by `***`. Text that
/// is not a URI comes back unchanged.
pub fn redact_uri(uri: &str) -> String {
    let a = anatomy(uri);
    let mut spans: Vec<(usize, usize)> = a.password.into_iter().chain(a.secret_values).collect();
    spans.sort_unstable();
    let mut out = String::with_capacity(uri.len());
    let mut at = 0;
    for (from, to) in spans {
        if from < at {
            continue;
        }
        out.push_str(&uri[at..from]);
        out.push_str(MASK);
        at = to;
    }
    out.push_str(&uri[at..]);
    out
}

/// Every credential-bearing URI in `text` redacted in place. A URI runs from
/// its scheme to the next whitespace or quote.
pub fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some((i, _)) = SCHEMES
        .iter()
        .filter_map(|s| find_ascii_ci(rest, s).map(|i| (i, s.len())))
        .min_by_key(|&(i, len)| (i, std::cmp::Reverse(len)))
    {
        out.push_str(&rest[..i]);
        let uri = &rest[i..];
        let end =
            uri.find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>')).unwrap_or(uri.len());
        out.push_str(&redact_uri(&uri[..end]));
        rest = &uri[end..];
    }
    out.push_str(rest);
    out
}

/// The first occurrence of an ASCII needle, ignoring ASCII case.
fn find_ascii_ci(hay: &str, needle: &str) -> Option<usize> {
    let (h, n) = (hay.as_bytes(), needle.as_bytes());
    if n.is_empty() || h.len() < n.len() {
        return None;
    }
    (0..=h.len() - n.len()).find(|&i| h[i..i + n.len()].eq_ignore_ascii_case(n) && hay.is_char_boundary(i))
}

/// The password in a URI, percent-decoded, if it has one.
pub fn uri_password(uri: &str) -> Option<String> {
    let (from, to) = anatomy(uri).password?;
    (to > from).then(|| percent_decode(&uri[from..to]))
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            if let Some(v) = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok()) {
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

/// Removes credentials from text before it is logged or printed.
#[derive(Debug, Clone, Default)]
pub struct Scrubber {
    /// The configured URI's password and secret option values, raw and
    /// percent-decoded, longest first.
    secrets: Vec<String>,
}

impl Scrubber {
    pub fn for_uri(uri: &str) -> Self {
        let a = anatomy(uri);
        let mut secrets = Vec::new();
        let mut add = |s: &str| {
            if !s.is_empty() {
                secrets.push(s.to_string());
            }
        };
        for (from, to) in a.password.into_iter().chain(a.secret_values) {
            let raw = &uri[from..to];
            let decoded = percent_decode(raw);
            add(raw);
            add(&decoded);
            // The pieces a parser that splits at these characters may echo.
            for piece in raw.split(['/', '?', '#', '@', ':', ';', '&', ',', '=']) {
                add(piece);
                add(&percent_decode(piece));
            }
        }
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { secrets }
    }

    pub fn scrub(&self, text: &str) -> String {
        let mut out = redact_text(text);
        for s in &self.secrets {
            if s.chars().count() >= MIN_FREE_SECRET {
                out = out.replace(s.as_str(), MASK);
            } else {
                out = replace_whole_words(&out, s);
            }
        }
        out
    }
}

/// `text` with every occurrence of `word` that is not next to a letter or digit replaced by `***`.
fn replace_whole_words(text: &str, word: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    for (i, _) in text.match_indices(word) {
        if i < last {
            continue;
        }
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        if before.is_some_and(char::is_alphanumeric) || after.is_some_and(char::is_alphanumeric) {
            continue;
        }
        out.push_str(&text[last..i]);
        out.push_str(MASK);
        last = i + word.len();
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_removed_from_uris() {
        assert_eq!(redact_uri("mongodb://u:p4ss@h:27017/db?x=1"), "mongodb://u:***@h:27017/db?x=1");
        assert_eq!(redact_uri("mongodb://localhost:27017/db"), "mongodb://localhost:27017/db");
        assert_eq!(redact_uri("mongodb://user@h/db"), "mongodb://user@h/db");
        assert_eq!(redact_uri("not a uri"), "not a uri");
        assert_eq!(redact_uri("mongodb://u:@h/db"), "mongodb://u:***@h/db");
    }

    #[test]
    fn an_unescaped_at_in_the_password() {
        assert_eq!(redact_uri("mongodb://u:p@ss@h/db"), "mongodb://u:***@h/db");
        assert_eq!(redact_uri("mongodb://u:p@ss/w@h/db"), "mongodb://u:***@h/db");
    }

    #[test]
    fn an_unescaped_slash_in_the_password() {
        // The driver cannot parse it (the authority would end at the `/`).
        assert_eq!(redact_uri("mongodb://u:pa/ss@host/db"), "mongodb://u:***@host/db");
        assert_eq!(redact_uri("mongodb://u:/@host/db"), "mongodb://u:***@host/db");
    }

    #[test]
    fn an_unescaped_question_mark_or_hash_in_the_password() {
        assert_eq!(redact_uri("mongodb://u:p?x=y@host/db?w=1"), "mongodb://u:***@host/db?w=1");
        assert_eq!(redact_uri("mongodb://u:p#q@host/db"), "mongodb://u:***@host/db");
    }

    #[test]
    fn an_at_in_an_option_is_not_the_end_of_the_user_info() {
        assert_eq!(
            redact_uri("mongodb://u:pw@h1:27017,h2/db?appName=me@site&w=1"),
            "mongodb://u:***@h1:27017,h2/db?appName=me@site&w=1"
        );
        assert_eq!(redact_uri("mongodb://u:pw@h/?appName=me@site&w=1"), "mongodb://u:***@h/?appName=me@site&w=1");
        // When what follows the `@` could be a host, more is masked, never less.
        assert_eq!(redact_uri("mongodb://u:pw@h?appName=me@site"), "mongodb://u:***@site");
        assert_eq!(redact_uri("mongodb://u:a@b/c?d=e@h1/db"), "mongodb://u:***@h1/db");
    }

    #[test]
    fn srv_uris() {
        assert_eq!(redact_uri("mongodb+srv://u:p@ss@cluster/db"), "mongodb+srv://u:***@cluster/db");
        assert_eq!(
            redact_uri("mongodb+srv://admin:s3cr%2Ft@cluster0.ab1cd.mongodb.net/?retryWrites=true"),
            "mongodb+srv://admin:***@cluster0.ab1cd.mongodb.net/?retryWrites=true"
        );
    }

    #[test]
    fn several_hosts() {
        assert_eq!(
            redact_uri("mongodb://docmirror:pw@db1:27017,db2:27017,[::1]:27018/ml?replicaSet=rs0"),
            "mongodb://docmirror:***@db1:27017,db2:27017,[::1]:27018/ml?replicaSet=rs0"
        );
    }

    #[test]
    fn one_and_two_character_passwords() {
        assert_eq!(redact_uri("mongodb://u:x@h/db"), "mongodb://u:***@h/db");
        assert_eq!(redact_uri("mongodb://u:ab@h/db"), "mongodb://u:***@h/db");
        // In error text: inside a URI by structure, elsewhere as a whole word
        // only, so words that merely contain it stay readable.
        let s = Scrubber::for_uri("mongodb://u:pa@h/db");
        assert_eq!(
            s.scrub("cannot reach mongodb://u:pa@h/db: got pa, wrong password (u:pa)"),
            "cannot reach mongodb://u:***@h/db: got ***, wrong password (u:***)"
        );
        let s = Scrubber::for_uri("mongodb://u:x@h/db");
        assert_eq!(s.scrub("x: 1 max exceeded"), "***: 1 max exceeded");
    }

    #[test]
    fn aws_session_token_in_auth_mechanism_properties() {
        assert_eq!(
            redact_uri("mongodb://AKIAX:secretkey@h/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:FQoGZXIvYXdzE"),
            "mongodb://AKIAX:***@h/?authMechanism=MONGODB-AWS&authMechanismProperties=***"
        );
    }

    #[test]
    fn password_options() {
        assert_eq!(redact_uri("mongodb://h/db?password=hunter2&w=1"), "mongodb://h/db?password=***&w=1");
        assert_eq!(
            redact_uri("mongodb://h/?tls=true&tlsCertificateKeyFilePassword=kfp&tlsCertificateKeyFile=/etc/k.pem"),
            "mongodb://h/?tls=true&tlsCertificateKeyFilePassword=***&tlsCertificateKeyFile=***"
        );
        assert_eq!(
            redact_uri("mongodb://h/?sslClientCertificateKeyPassword=x"),
            "mongodb://h/?sslClientCertificateKeyPassword=***"
        );
        assert_eq!(
            redact_uri("mongodb://h/?ssl=true;sslPEMKeyPassword=x"),
            "mongodb://h/?ssl=true;sslPEMKeyPassword=***"
        );
    }

    #[test]
    fn any_option_whose_name_suggests_a_secret() {
        for name in ["apiKey", "access_token", "client_secret", "pwd", "MyCredentials", "PASSWORD"] {
            assert_eq!(
                redact_uri(&format!("mongodb://h/db?{name}=v&appName=x")),
                format!("mongodb://h/db?{name}=***&appName=x"),
                "{name}"
            );
        }
        // Ordinary options stay readable.
        let plain = "mongodb://h/db?replicaSet=rs0&authSource=admin&authMechanism=SCRAM-SHA-256&w=majority";
        assert_eq!(redact_uri(plain), plain);
    }

    #[test]
    fn postgresql_urls() {
        assert_eq!(redact_uri("postgres://user:pw@host/db"), "postgres://user:***@host/db");
        assert_eq!(
            redact_uri("postgresql://user:p/w@host:5432,host2:5433/db?sslmode=require&sslpassword=k"),
            "postgresql://user:***@host:5432,host2:5433/db?sslmode=require&sslpassword=***"
        );
        assert_eq!(redact_uri("postgresql://host/db?password=pw"), "postgresql://host/db?password=***");
    }

    #[test]
    fn uris_inside_text_are_redacted_whatever_the_configured_one() {
        let text = "error: \"MongoDB://u:p/w@h/db\" and postgres://a:b@c/d, then mongodb+srv://x:y@z?token=t end";
        assert_eq!(
            Scrubber::default().scrub(text),
            "error: \"MongoDB://u:***@h/db\" and postgres://a:***@c/d, then mongodb+srv://x:***@z?token=*** end"
        );
        assert_eq!(redact_text("no uri here: a@b"), "no uri here: a@b");
    }

    #[test]
    fn scrubber_removes_raw_and_decoded_secrets_anywhere() {
        let s = Scrubber::for_uri("mongodb://admin:s%40cret-pw@h/db");
        assert_eq!(uri_password("mongodb://admin:s%40cret-pw@h/db").as_deref(), Some("s@cret-pw"));
        assert_eq!(s.scrub("auth failed for s@cret-pw and s%40cret-pw"), "auth failed for *** and ***");
        assert_eq!(Scrubber::for_uri("mongodb://h/db").scrub("x"), "x");
        let s = Scrubber::for_uri("mongodb://u:pa/ss@host/db?authMechanismProperties=AWS_SESSION_TOKEN:tok123");
        assert_eq!(s.scrub("bad password pa/ss; token AWS_SESSION_TOKEN:tok123"), "bad password ***; token ***");
        assert_eq!(uri_password("mongodb://u:pa/ss@host/db").as_deref(), Some("pa/ss"));
    }

    proptest::proptest! {
        /// Passwords of uppercase letters and every URI delimiter, the rest of
        /// the URI in lowercase: no uppercase letter may survive redaction.
        #[test]
        fn no_piece_of_any_password_survives(
            scheme in proptest::sample::select(vec!["mongodb", "mongodb+srv", "postgres", "postgresql"]),
            user in "[a-z]{1,6}",
            password in "[A-Z/?#@:&=;,%.]{0,4}[A-Z][A-Z/?#@:&=;,%.]{0,8}",
            hosts in proptest::sample::select(vec!["h", "h:27017", "h1:1,h2:2", "[::1]:5", "db.example.com"]),
            path in proptest::sample::select(vec!["", "/", "/db", "/d@b"]),
            options in proptest::sample::select(vec!["", "?w=1", "?appname=me@site&w=1", "?appname=me@site", "?token=t&w=1"]),
        ) {
            let uri = format!("{scheme}://{user}:{password}@{hosts}{path}{options}");
            let shown = redact_uri(&uri);
            proptest::prop_assert!(!shown.chars().any(|c| c.is_ascii_uppercase()), "{} -> {}", uri, shown);
            let text = format!("error for {uri}: got {password}");
            let scrubbed = Scrubber::for_uri(&uri).scrub(&text);
            proptest::prop_assert!(!scrubbed.chars().any(|c| c.is_ascii_uppercase()), "{} -> {}", text, scrubbed);
        }
    }

    /// What the driver itself says about URIs it cannot parse, scrubbed as
    /// `Sink::connect` scrubs it, never holds the password.
    #[tokio::test]
    async fn driver_errors_about_malformed_uris_leak_nothing() {
        let uris = [
            "mongodb://u:pa/ss@host/db",
            "mongodb://u:p@ss@host/db",
            "mongodb://u:s3cret?x@host/db",
            "mongodb://u:s3cret:x@host/db",
            "mongodb://u:pw?x@host/db",
            "mongodb+srv://u:pa/ss@host:27017/db",
            "mongodb://u:pw@host:notaport/db",
            "mongodb://u:pw@host/db?authMechanismProperties=AWS_SESSION_TOKEN:Zq9tok&authMechanism=bogus",
        ];
        for uri in uris {
            let scrub = Scrubber::for_uri(uri);
            let shown = redact_uri(uri);
            let Err(e) = mongodb::options::ClientOptions::parse(uri).await else {
                continue;
            };
            let message = format!("invalid MongoDB URI {shown}: {}", scrub.scrub(&e.to_string()));
            for secret in ["pa/ss", "p@ss", "s3cret", "Zq9tok"] {
                if uri.contains(secret) {
                    assert!(!message.contains(secret), "{uri}: {message}");
                }
            }
            if uri.contains(":pw") {
                assert!(!message.contains("pw ") && !message.contains(":pw"), "{uri}: {message}");
            }
        }
    }
}
