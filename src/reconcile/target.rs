//! What the reconcile core needs from the database it mirrors into: a small
//! trait, so that a second target (PostgreSQL) plugs in beside the MongoDB
//! sink without touching the core. The core decides *what* to write; a
//! target decides *how*: its documents or rows, its batching and retries, and
//! the version check that must happen in the same server-side operation as
//! the write it guards.
//!
//! Every method reports per-record problems as data ([`Outcome`]) and returns
//! `Err` only for what stops the run (the database unreachable past its
//! budget, a refused command).

use std::collections::{HashMap, HashSet};
use std::future::Future;

use super::memo::Memo;
use super::rejects::RejectRecord;
use super::scan::Candidate;
use crate::error::Fatal;
use crate::layout::SourceSpec;

/// What the target holds for one document, as far as the mirror cares.
#[derive(Debug, Clone, Default)]
pub struct Existing {
    /// The content hash the mirror wrote (`_mirror.hash`).
    pub hash: Option<Box<str>>,
    /// The file it was mirrored from (`_mirror.source`).
    pub source: Option<Box<str>>,
    /// The fields the mirror owns (`_mirror.fields`).
    pub fields: Box<[String]>,
    /// The version field (`updatedAt`, `updated_at`), where it was read.
    pub version: Held,
}

/// What the target holds in a document's version field.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Held {
    /// Not read: what watch's picture knows of a document it wrote. The
    /// write's filter then asks for a date not newer than the file's, so
    /// anything else (a missing version included) is refused and planned
    /// again from a fresh read.
    #[default]
    Unread,
    /// Read, and missing or null.
    Absent,
    /// A date.
    Date(bson::DateTime),
    /// Anything else the app stored (an ISO string, epoch milliseconds, ...).
    /// Boxed: rare, and a `Bson` takes 112 bytes whatever it holds, which
    /// every [`Existing`] would carry otherwise (a full reconcile holds one
    /// per document of the collection: a million at the scale this is built for).
    Other(Box<bson::Bson>),
}

// A full reconcile holds an [`Existing`] for every document of a collection,
// in a table sized to a power of two: each byte here is two MB at a million.
const _: () = assert!(std::mem::size_of::<Existing>() <= 64);

/// One write the core asks for.
#[derive(Debug, Clone, Copy)]
pub enum Write<'a> {
    /// A document the target does not hold yet.
    Insert(&'a Candidate),
    /// Set the record's fields on a held document and remove the fields the
    /// mirror owned (`was.fields`) that the record no longer has. Under
    /// newer-wins, only if the held version is not newer than the file's:
    /// the target checks that in the same operation as the write.
    Update { c: &'a Candidate, was: &'a Existing },
}

impl<'a> Write<'a> {
    pub fn candidate(&self) -> &'a Candidate {
        match self {
            Write::Insert(c) | Write::Update { c, .. } => c,
        }
    }
}

/// What happened to one write or delete.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Applied. `matched` is the number of documents matched (updates,
    /// deletes), when the server said so per operation.
    Applied { matched: Option<u64> },
    /// A unique index refused it.
    DuplicateKey { message: String },
    /// Refused for another, permanent reason.
    Failed { code: i32, message: String },
}

/// A database the core can mirror into.
pub trait Target: Clone + Send + Sync + 'static {
    /// A whole source was reconciled (every write of it is done): a target
    /// loading it in bulk may finish what it deferred for its table.
    fn whole_source_done(&self, _spec: &SourceSpec) -> impl Future<Output = ()> + Send {
        async {}
    }

    /// Every document's id and content hash (what a full scan compares with).
    fn hashes(&self, spec: &SourceSpec) -> impl Future<Output = Result<HashMap<String, Existing>, Fatal>> + Send;

    /// The same, and where the target keeps them beside its rows, the raw
    /// texts of the records it wrote, per file (see [`crate::reconcile::scan::scan_source`]).
    /// `None` where it does not keep them (MongoDB: its checkpoint does that job).
    fn hashes_and_texts(
        &self,
        spec: &SourceSpec,
    ) -> impl Future<Output = Result<(HashMap<String, Existing>, Option<Memo>), Fatal>> + Send {
        async move { Ok((self.hashes(spec).await?, None)) }
    }

    /// Everything [`Existing`] holds, for these ids (those the target holds).
    fn existing(
        &self,
        spec: &SourceSpec,
        ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, Existing>, Fatal>> + Send;

    /// Everything [`Existing`] holds, for every document of the collection
    /// (one read, where looking many ids up one batch at a time costs more).
    fn existing_all(&self, spec: &SourceSpec) -> impl Future<Output = Result<HashMap<String, Existing>, Fatal>> + Send;

    /// Everything [`Existing`] holds, for every document mirrored from these files.
    fn existing_from_files(
        &self,
        spec: &SourceSpec,
        rels: &[String],
    ) -> impl Future<Output = Result<HashMap<String, Existing>, Fatal>> + Send;

    /// The stored value of the password field, by id (to compare plaintext
    /// records with bcrypt).
    fn passwords(
        &self,
        spec: &SourceSpec,
        field: &str,
        ids: &[String],
    ) -> impl Future<Output = Result<HashMap<String, String>, Fatal>> + Send;

    /// Apply writes to the source's collection, one outcome per write, in order.
    fn write(
        &self,
        spec: &SourceSpec,
        writes: &[Write<'_>],
        newer_wins: bool,
    ) -> impl Future<Output = Result<Vec<Outcome>, Fatal>> + Send;

    /// Another document (not `id`) that holds one of these unique
    /// `(field, value)` pairs: the value it holds and its id.
    fn holder(
        &self,
        spec: &SourceSpec,
        id: &str,
        unique: &[(String, String)],
    ) -> impl Future<Output = Result<Option<(String, String)>, Fatal>> + Send;

    /// Give up these documents' unique values (`fields`) for a moment, under
    /// the same version condition as their updates: the first step of a swap
    /// (A takes B's email while B takes A's), whose updates then go through.
    /// Each released document is marked so that a later run rewrites it even
    /// if the second step never comes.
    fn release(
        &self,
        spec: &SourceSpec,
        writes: &[Write<'_>],
        fields: &[String],
        newer_wins: bool,
    ) -> impl Future<Output = Result<(), Fatal>> + Send;

    /// About how many documents the collection holds (the mass-delete guard).
    fn count(&self, spec: &SourceSpec) -> impl Future<Output = Result<u64, Fatal>> + Send;

    /// Delete documents, each only if it still holds the content hash the
    /// core saw; with `archive`, first copy each into the archive (and keep
    /// the copy only if the document was deleted). One answer per document:
    /// whether it was deleted.
    fn delete(
        &self,
        spec: &SourceSpec,
        gone: &[(String, Existing)],
        archive: bool,
    ) -> impl Future<Output = Result<Vec<bool>, Fatal>> + Send;

    /// The keys of the stored rejects of a collection, of these files only
    /// (`Some`) or of all of them.
    fn reject_keys(
        &self,
        collection: &str,
        files: Option<&[String]>,
    ) -> impl Future<Output = Result<HashSet<String>, Fatal>> + Send;

    /// Store new rejects (their records already made safe to store).
    fn add_rejects(&self, rejects: &[RejectRecord]) -> impl Future<Output = Result<(), Fatal>> + Send;

    /// Remove rejects that no longer hold.
    fn drop_rejects(&self, keys: &[String]) -> impl Future<Output = Result<(), Fatal>> + Send;
}

/// What `verify` reads from a target besides what the core needs: the
/// stored records in the form the mapping produces them, and the stored
/// rejects. (A second, small trait: the core itself never reads whole records.)
pub trait Inspect: Target {
    /// The target's name in reports ("MongoDB", "PostgreSQL").
    fn name(&self) -> &'static str;

    /// Every stored record of a source's collection or table, as the document
    /// its record maps to (`_id`, the record's fields, `_mirror.fields`).
    fn documents(&self, spec: &SourceSpec) -> impl Future<Output = Result<Vec<bson::Document>, Fatal>> + Send;

    /// The same, each turned into a `U` as it arrives (`None` drops it): a
    /// target that streams its rows never holds the collection twice.
    fn documents_map<U, F>(&self, spec: &SourceSpec, f: F) -> impl Future<Output = Result<Vec<U>, Fatal>> + Send
    where
        U: Send,
        F: Fn(bson::Document) -> Option<U> + Send + Sync;

    /// The stored rejects of a collection, as documents with `_id` (the key),
    /// `source`, `position`, `record_id`, `reason_code` and `reason`.
    fn stored_rejects(&self, collection: &str) -> impl Future<Output = Result<Vec<bson::Document>, Fatal>> + Send;
}
