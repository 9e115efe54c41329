//! The layout: which files hold which records, and how each record becomes a
//! document. One [`SourceSpec`] per source; the default layout (the ML Training
//! Platform's) is built in from `layouts/default.json`, and `--layout FILE`
//! swaps in another one without code changes.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// Collections docmirror owns; a layout may not map records into them.
/// The field in which every mirrored document keeps docmirror's bookkeeping
/// (`_mirror: {source, hash, fields, at}`): no record may use it.
pub const MIRROR_FIELD: &str = "_mirror";

pub const RESERVED_COLLECTIONS: &[&str] = &["mirror_rejects", "mirror_archive", "mirror_state"];

const DEFAULT_LAYOUT: &str = include_str!("../layouts/default.json");

/// Which configured folder a source lives under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Root {
    /// `--data-dir` (the platform's `data/`).
    Data,
    /// `--artifacts-dir` (the platform's `artifacts/`).
    Artifacts,
}

impl Root {
    /// The label used in `_mirror.source` and in messages: `data/users.json`.
    pub fn label(self) -> &'static str {
        match self {
            Root::Data => "data",
            Root::Artifacts => "artifacts",
        }
    }
}

/// How records sit in a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// The file holds a JSON array of records (`users.json`).
    Array,
    /// The file holds one record, a JSON object (`jobs/<id>.json`).
    Object,
}

/// One source of records and its mapping into one collection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceSpec {
    /// A short name for logs and metrics.
    pub name: String,
    pub root: Root,
    /// Path below the root. The last component may hold one `*`
    /// (`jobs/*.json`): every matching regular file is one source file.
    pub path: String,
    pub shape: Shape,
    pub collection: String,
    /// The record field whose (string) value becomes `_id`.
    pub id_field: String,
    /// Fields converted from ISO-8601 strings (or epoch milliseconds) to BSON dates.
    #[serde(default)]
    pub dates: Vec<String>,
    /// Fields stored as 64-bit integers.
    #[serde(default)]
    pub int64: Vec<String>,
    /// Fields that must be JSON objects; stored as embedded documents.
    #[serde(default)]
    pub documents: Vec<String>,
    /// Required string fields that are lower-cased and trimmed (emails).
    #[serde(default)]
    pub normalize_email: Vec<String>,
    /// A field holding a bcrypt hash; plaintext found there is hashed before writing.
    #[serde(default)]
    pub password_field: Option<String>,
    /// The record's own version time (`updatedAt`), if it has one.
    #[serde(default)]
    pub version_field: Option<String>,
    /// The zone of times written without an offset (`2025-10-13T12:00:00`, as
    /// Python's `isoformat()` writes), as an IANA name; UTC when absent.
    /// Left out of the fingerprint when absent, so the default rewrites nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub naive_timezone: Option<String>,
}

impl SourceSpec {
    /// The zone of times without an offset (UTC when the layout names none).
    pub fn naive_zone(&self) -> chrono_tz::Tz {
        self.naive_timezone.as_deref().and_then(|z| z.parse().ok()).unwrap_or(chrono_tz::UTC)
    }

    /// The folder part of `path` and the file-name pattern.
    pub fn split_path(&self) -> (&str, &str) {
        match self.path.rsplit_once('/') {
            Some((dir, file)) => (dir, file),
            None => ("", self.path.as_str()),
        }
    }

    /// Whether `path` names many files (`jobs/*.json`) rather than one.
    pub fn is_pattern(&self) -> bool {
        self.split_path().1.contains('*')
    }

    /// Whether a file name matches this source's last path component.
    pub fn matches_file_name(&self, name: &str) -> bool {
        let pattern = self.split_path().1;
        match pattern.split_once('*') {
            None => name == pattern,
            Some((prefix, suffix)) => {
                name.len() >= prefix.len() + suffix.len()
                    && name.starts_with(prefix)
                    && name.ends_with(suffix)
                    && !name.starts_with('.')
            }
        }
    }

    /// Whether a path relative to this source's root is one of its files.
    pub fn matches_rel(&self, rel: &Path) -> bool {
        let (dir, _) = self.split_path();
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            return false;
        };
        let parent = rel.parent().map(Path::new).unwrap_or(Path::new(""));
        parent == Path::new(dir) && self.matches_file_name(name)
    }

    /// Whether a source label (`data/users.json`, as in `_mirror.source`)
    /// names one of this source's files.
    pub fn owns_rel(&self, rel: &str) -> bool {
        rel.strip_prefix(self.root.label())
            .and_then(|r| r.strip_prefix('/'))
            .is_some_and(|r| self.matches_rel(Path::new(r)))
    }
}

/// The whole layout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    pub sources: Vec<SourceSpec>,
}

impl Layout {
    /// Read times without an offset in `zone` (an IANA name), in every source.
    pub fn with_naive_timezone(mut self, zone: &str) -> Result<Self, String> {
        for s in &mut self.sources {
            s.naive_timezone = (zone != "UTC").then(|| zone.to_string());
        }
        self.validate()?;
        Ok(self)
    }

    /// The platform's layout, needing no configuration.
    pub fn builtin() -> Self {
        // The built-in layout is checked by a unit test; a failure here is a build defect.
        Self::parse(DEFAULT_LAYOUT).unwrap_or_else(|e| panic!("built-in layout is invalid: {e}"))
    }

    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read layout {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| anyhow::anyhow!("layout {}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let layout: Layout = serde_json::from_str(text).map_err(|e| e.to_string())?;
        layout.validate()?;
        Ok(layout)
    }

    fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for s in &self.sources {
            if s.collection.is_empty() || s.collection.contains('$') {
                return Err(format!("source {:?}: invalid collection name", s.name));
            }
            if RESERVED_COLLECTIONS.contains(&s.collection.as_str()) {
                return Err(format!("source {:?}: collection {:?} is reserved for docmirror", s.name, s.collection));
            }
            if !seen.insert(s.collection.as_str()) {
                return Err(format!("collection {:?} is mapped by two sources", s.collection));
            }
            let (dir, file) = s.split_path();
            if dir.contains('*') || file.matches('*').count() > 1 || file.is_empty() {
                return Err(format!(
                    "source {:?}: path {:?} may hold one '*', in its last component only",
                    s.name, s.path
                ));
            }
            if let Some(z) = &s.naive_timezone {
                if z.parse::<chrono_tz::Tz>().is_err() {
                    return Err(format!(
                        "source {:?}: naive_timezone {z:?} is not a time zone name (e.g. \"Europe/Berlin\", \"UTC\")",
                        s.name
                    ));
                }
            }
            if s.path.starts_with('/') || s.path.split('/').any(|c| c == "..") {
                return Err(format!("source {:?}: path {:?} must stay below its root", s.name, s.path));
            }
            // `_mirror` is docmirror's bookkeeping and `_id` the identity: no rule may
            // convert them (`_id` may be the id field itself).
            let named = s.dates.iter().chain(&s.int64).chain(&s.documents).chain(&s.normalize_email);
            let named = named.chain(&s.password_field).chain(&s.version_field);
            if s.id_field == MIRROR_FIELD || named.clone().any(|f| f == "_id" || f == "_mirror") {
                return Err(format!("source {:?}: `_id` and `_mirror` are reserved and cannot be mapped", s.name));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_layout_is_the_platforms() {
        let l = Layout::builtin();
        let names: Vec<_> = l.sources.iter().map(|s| s.collection.as_str()).collect();
        assert_eq!(names, ["users", "datasets", "training_jobs"]);
        assert_eq!(l.sources[2].split_path(), ("jobs", "*.json"));
        assert!(l.sources[2].is_pattern());
        assert!(!l.sources[0].is_pattern());
    }

    #[test]
    fn patterns_match_json_files_only() {
        let jobs = &Layout::builtin().sources[2];
        assert!(jobs.matches_rel(Path::new("jobs/job_1.json")));
        assert!(!jobs.matches_rel(Path::new("jobs/job_1.json.tmp")));
        assert!(!jobs.matches_rel(Path::new("jobs/.job_1.json")));
        assert!(!jobs.matches_rel(Path::new("jobs/sub/job_1.json")));
        assert!(!jobs.matches_rel(Path::new("job_1.json")));
        let users = &Layout::builtin().sources[0];
        assert!(users.matches_rel(Path::new("users.json")));
        assert!(!users.matches_rel(Path::new("users.json~")));
    }

    #[test]
    fn layouts_are_validated() {
        let bad = r#"{"sources":[{"name":"x","root":"data","path":"a/*/b.json","shape":"array","collection":"x","id_field":"id"}]}"#;
        assert!(Layout::parse(bad).is_err());
        let reserved = r#"{"sources":[{"name":"x","root":"data","path":"a.json","shape":"array","collection":"mirror_rejects","id_field":"id"}]}"#;
        assert!(Layout::parse(reserved).unwrap_err().contains("reserved"));
        let unknown = r#"{"sources":[{"name":"x","root":"data","path":"a.json","shape":"array","collection":"x","id_field":"id","colour":1}]}"#;
        assert!(Layout::parse(unknown).is_err());
        let mirror = r#"{"sources":[{"name":"x","root":"data","path":"a.json","shape":"array","collection":"x","id_field":"_mirror"}]}"#;
        assert!(Layout::parse(mirror).unwrap_err().contains("reserved"));
        let id_date = r#"{"sources":[{"name":"x","root":"data","path":"a.json","shape":"array","collection":"x","id_field":"_id","dates":["_id"]}]}"#;
        assert!(Layout::parse(id_date).unwrap_err().contains("reserved"));
        let id = r#"{"sources":[{"name":"x","root":"data","path":"a.json","shape":"array","collection":"x","id_field":"_id"}]}"#;
        assert!(Layout::parse(id).is_ok());
    }
}
