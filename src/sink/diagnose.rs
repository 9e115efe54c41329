//! Why MongoDB could not be reached, in words a person can act on.
//!
//! The driver reports an unreachable server as a server-selection timeout
//! whose message is a dump of its topology; the real cause (connection
//! refused, a host name that does not resolve, a timeout) is the error of the
//! server monitor's last check. [`Monitor`] records those checks as they
//! happen (SDAM heartbeat events), so the cause is read by kind from the
//! driver's own error values, never parsed out of a Debug dump.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mongodb::error::{Error as MongoError, ErrorKind};
use mongodb::event::sdam::SdamEvent;
use mongodb::event::EventHandler;

use super::SinkError;
use crate::error::Fatal;
use crate::redact::Scrubber;

/// MongoDB's AuthenticationFailed error code.
const AUTHENTICATION_FAILED: i32 = 18;

/// The likely cause of a failure to reach MongoDB.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    Refused,
    HostNotFound,
    TimedOut,
    NetworkUnreachable,
    /// The server closed the connection (not MongoDB, or it wants TLS).
    Closed,
    Authentication,
    /// Servers answered, but none can serve the request (no primary).
    NoSuitableServer,
    /// No server answered a check before the wait ran out.
    NoAnswer,
    /// An operation got no answer within --operation-timeout-secs.
    OperationTimeout(Duration),
    Other(String),
}

impl Cause {
    /// A few words for inside brackets.
    pub fn text(&self) -> String {
        match self {
            Cause::Refused => "connection refused".into(),
            Cause::HostNotFound => "host name not found".into(),
            Cause::TimedOut => "connection timed out".into(),
            Cause::NetworkUnreachable => "network unreachable".into(),
            Cause::Closed => "the server closed the connection".into(),
            Cause::Authentication => "authentication failed".into(),
            Cause::NoSuitableServer => "no server can take the request".into(),
            Cause::NoAnswer => "no answer".into(),
            Cause::OperationTimeout(d) => format!("no answer within {} s", d.as_secs()),
            Cause::Other(s) => s.clone(),
        }
    }

    /// What to check.
    pub fn hint(&self) -> &'static str {
        match self {
            Cause::Refused => "is mongod running? check --mongodb-uri",
            Cause::HostNotFound => "check the host name in --mongodb-uri",
            Cause::TimedOut | Cause::NoAnswer => "is the host up and reachable (firewall, VPN)? check --mongodb-uri",
            Cause::NetworkUnreachable => "check the network and the host in --mongodb-uri",
            Cause::Closed => "is it a MongoDB server, and does it need TLS (tls=true)? check --mongodb-uri",
            Cause::Authentication => "check the user name, the password and authSource in --mongodb-uri",
            Cause::NoSuitableServer => {
                "does the replica set have a primary? check replicaSet / directConnection in --mongodb-uri"
            }
            Cause::OperationTimeout(_) => "is the server overloaded or stopped? see --operation-timeout-secs",
            Cause::Other(_) => "check --mongodb-uri",
        }
    }
}

/// The cause of a driver error, by kind, looking through wrapped errors.
/// A server-selection timeout says nothing by itself: see [`Monitor::cause`].
pub fn cause_of(e: &MongoError) -> Cause {
    match e.kind.as_ref() {
        ErrorKind::Io(io) => io_cause(io),
        ErrorKind::DnsResolve { .. } => Cause::HostNotFound,
        ErrorKind::Authentication { .. } => Cause::Authentication,
        ErrorKind::Command(c) if c.code == AUTHENTICATION_FAILED => Cause::Authentication,
        ErrorKind::ServerSelection { .. } => Cause::NoAnswer,
        kind => match std::error::Error::source(e).and_then(|s| s.downcast_ref::<MongoError>()) {
            Some(inner) => cause_of(inner),
            None => Cause::Other(kind.to_string()),
        },
    }
}

fn io_cause(io: &std::io::Error) -> Cause {
    use std::io::ErrorKind as K;
    match io.kind() {
        K::ConnectionRefused => Cause::Refused,
        K::TimedOut => Cause::TimedOut,
        K::HostUnreachable | K::NetworkUnreachable => Cause::NetworkUnreachable,
        K::ConnectionReset | K::ConnectionAborted | K::UnexpectedEof | K::BrokenPipe => Cause::Closed,
        // getaddrinfo failures have no kind of their own (std reports them uncategorized).
        _ if io.to_string().starts_with("failed to lookup address information") => Cause::HostNotFound,
        _ => Cause::Other(io.to_string()),
    }
}

/// The outcome of the driver's last check of each server, from its SDAM events.
#[derive(Debug, Clone, Default)]
pub struct Monitor {
    last_check: Arc<Mutex<BTreeMap<String, Result<(), MongoError>>>>,
}

impl Monitor {
    /// The handler to install as `ClientOptions::sdam_event_handler`.
    pub fn handler(&self) -> EventHandler<SdamEvent> {
        let checks = self.last_check.clone();
        EventHandler::callback(move |event| {
            let (address, outcome) = match event {
                SdamEvent::ServerHeartbeatSucceeded(e) => (e.server_address.to_string(), Ok(())),
                SdamEvent::ServerHeartbeatFailed(e) => (e.server_address.to_string(), Err(e.failure)),
                _ => return,
            };
            if let Ok(mut checks) = checks.lock() {
                checks.insert(address, outcome);
            }
        })
    }

    /// The cause of `e`; for a server-selection timeout, the cause of the
    /// servers' last failed checks.
    pub fn cause(&self, e: &MongoError) -> Cause {
        if !matches!(e.kind.as_ref(), ErrorKind::ServerSelection { .. }) {
            return cause_of(e);
        }
        let Ok(checks) = self.last_check.lock() else {
            return Cause::NoAnswer;
        };
        if let Some(failure) = checks.values().find_map(|c| c.as_ref().err()) {
            return cause_of(failure);
        }
        if checks.is_empty() {
            Cause::NoAnswer
        } else {
            Cause::NoSuitableServer
        }
    }

    /// A short description of `e` for a log line: the cause, not the topology dump.
    pub fn brief(&self, e: &MongoError) -> String {
        match self.cause(e) {
            Cause::Other(text) => text,
            cause => cause.text(),
        }
    }
}

/// The fatal error for a failed connect: one line saying what failed,
/// where, why, and what to check; the driver's own words as the detail.
pub fn connect_failed(
    e: SinkError,
    last: Option<&MongoError>,
    monitor: &Monitor,
    hosts: &str,
    scrub: &Scrubber,
) -> Fatal {
    let (cause, waited, detail) = match (&e, last) {
        (SinkError::Cancelled, _) => return Fatal::Interrupted,
        // The last attempt was cut short by the budget; the one before it says why.
        (SinkError::Unavailable { waited, .. }, Some(err)) => (monitor.cause(err), Some(*waited), err.to_string()),
        (SinkError::Unavailable { waited, last }, None) => (
            if last.starts_with("no answer within") { Cause::NoAnswer } else { Cause::Other(last.clone()) },
            Some(*waited),
            last.clone(),
        ),
        (SinkError::Permanent(_) | SinkError::Refused { .. }, Some(err)) => (monitor.cause(err), None, err.to_string()),
        (SinkError::Permanent(msg) | SinkError::Refused { message: msg, .. }, None) => {
            (Cause::Other(msg.clone()), None, msg.clone())
        }
    };
    Fatal::Connect { message: scrub.scrub(&connect_message(hosts, &cause, waited)), detail: scrub.scrub(&detail) }
}

/// The error for a URI the driver cannot parse: one line, the password
/// masked even when the URI is too broken for [`crate::redact::redact_uri`].
pub fn bad_uri(uri: &str, e: &MongoError) -> Fatal {
    let (shown, password) = mask_userinfo(uri);
    let mut why = Scrubber::for_uri(uri).scrub(&e.kind.to_string());
    if let Some(pw) = password.filter(|p| p.len() >= 3) {
        why = why.replace(&pw, "***");
    }
    Fatal::Config(format!("invalid MongoDB URI {shown}: {why}; check --mongodb-uri"))
}

/// `uri` with everything between the user name and the last `@` masked,
/// and what was masked.
fn mask_userinfo(uri: &str) -> (String, Option<String>) {
    let start = uri.find("://").map_or(0, |i| i + 3);
    let Some(at) = uri.rfind('@').filter(|at| *at >= start) else {
        return (uri.to_string(), None);
    };
    match uri[start..at].split_once(':') {
        Some((user, pw)) => (format!("{}{user}:***{}", &uri[..start], &uri[at..]), Some(pw.to_string())),
        None => (uri.to_string(), None),
    }
}

/// `cannot reach MongoDB at HOST (CAUSE; gave up after N s): HINT`.
pub fn connect_message(hosts: &str, cause: &Cause, waited: Option<Duration>) -> String {
    let after = waited.map(|w| format!("; gave up after {:.1} s", w.as_secs_f64())).unwrap_or_default();
    let what = match cause {
        Cause::Authentication => format!("MongoDB at {hosts} refused to log in"),
        _ => format!("cannot reach MongoDB at {hosts}"),
    };
    format!("{what} ({}{after}): {}", cause.text(), cause.hint())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind, text: &str) -> MongoError {
        MongoError::from(std::io::Error::new(kind, text.to_string()))
    }

    #[test]
    fn io_errors_are_classified_by_kind() {
        use std::io::ErrorKind as K;
        assert_eq!(cause_of(&io(K::ConnectionRefused, "Connection refused (os error 111)")), Cause::Refused);
        assert_eq!(cause_of(&io(K::TimedOut, "timed out")), Cause::TimedOut);
        assert_eq!(cause_of(&io(K::ConnectionReset, "reset")), Cause::Closed);
        assert_eq!(cause_of(&io(K::NetworkUnreachable, "x")), Cause::NetworkUnreachable);
        assert_eq!(
            cause_of(&io(K::Other, "failed to lookup address information: Name or service not known")),
            Cause::HostNotFound
        );
        assert!(matches!(cause_of(&io(K::PermissionDenied, "nope")), Cause::Other(t) if t.contains("nope")));
    }

    #[test]
    fn a_broken_uri_never_shows_its_password() {
        for uri in ["mongodb//admin:s3cret@h/db", "mongodb://admin:s3c/ret@h:x/db", "admin:s3cret@h"] {
            let (shown, pw) = mask_userinfo(uri);
            assert!(!shown.contains("s3c"), "{uri} -> {shown}");
            assert!(shown.contains("admin:***@h"), "{uri} -> {shown}");
            assert!(pw.is_some_and(|p| p.starts_with("s3c")));
        }
        assert_eq!(mask_userinfo("mongodb://h:27017/db").0, "mongodb://h:27017/db");
    }

    #[test]
    fn the_message_says_what_where_why_and_what_to_check() {
        let m = connect_message("127.0.0.1:1", &Cause::Refused, Some(Duration::from_millis(2040)));
        assert_eq!(
            m,
            "cannot reach MongoDB at 127.0.0.1:1 (connection refused; gave up after 2.0 s): is mongod running? check --mongodb-uri"
        );
        let m = connect_message("db1:27017", &Cause::Authentication, None);
        assert_eq!(
            m,
            "MongoDB at db1:27017 refused to log in (authentication failed): check the user name, the password and authSource in --mongodb-uri"
        );
    }
}
