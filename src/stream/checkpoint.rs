//! The checkpoint: what a full reconcile proved, kept in MongoDB so that the
//! next start needs to look only at what changed since (issue 14).
//!
//! In the `mirror_checkpoint` collection:
//! - `head`: the change-stream resume token taken before the reconcile's
//!   reads, the id of the database it belongs to (`mirror_state`), a
//!   fingerprint of the layout, mapping rules and indexes it was made under,
//!   and the hash of its file list;
//! - `files:<hash>#<part>`: the file list (per source file, the digest of its
//!   bytes as settled, the file's stamp when it proves those bytes (see
//!   [`crate::source::Stamp::settled`]), its record count and the group that
//!   holds its memo),
//!   named by its hash, so a save cut short never spoils the list the
//!   current head names;
//! - `<group>#<part>`: watch's per-file memo ([`super::memo_codec`]), files
//!   grouped (a large file alone, small ones by a hash of their name) and
//!   split into parts well under MongoDB's 16 MB document limit, so a change
//!   rewrites only the groups it touched and a start loads only the groups
//!   of the files that changed.
//!
//! A checkpoint stays a valid proof as long as its token resumes: every
//! write since is replayed, and a file whose bytes still match its digest is
//! what the reconcile read (a file whose stamp is still the stamp stored with
//! the digest has those bytes: its last change was seconds before they were
//! read, so any later write changed its ctime). A group whose stored bytes do
//! not match the hash the head names (a save cut short) is not used: its
//! files are compared with MongoDB in full instead.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use bson::{doc, Bson, Document};

use super::memo_codec;
use crate::error::Fatal;
use crate::reconcile::memo::{FileMemo, Memory};
use crate::reconcile::Engine;
use crate::sink::{Sink, WriteOp};

/// Where checkpoints live.
pub const CHECKPOINTS: &str = "mirror_checkpoint";
/// Bumped when the checkpoint's meaning changes: older ones are not used.
const FORMAT: i64 = 6;
/// A file whose memo is larger than this has a group of its own.
const BIG_FILE: usize = 1 << 20;
/// Parts of a group are at most this large, and written one at a time: a
/// save's copies (the write, its command, the driver's message) are of one
/// part, not of the whole group.
const PART_BYTES: usize = 1 << 20;
/// The start of the name of a group that holds one large file's memo.
pub const OWN_GROUP: &str = "f:";
/// Small files are spread over this many groups by a hash of their name.
const BUCKETS: u64 = 64;

pub use super::memo_codec::FileEntry;

/// One group of memos: the hash of its bytes and how many parts hold them.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupEntry {
    pub hash: String,
    pub parts: u32,
}

/// The checkpoint's head document.
#[derive(Debug, Clone)]
pub struct Head {
    pub database_id: String,
    pub fingerprint: String,
    pub token: Bson,
    pub at: bson::DateTime,
    /// Shared: a start proves the files on another thread while the memos load.
    pub files: std::sync::Arc<BTreeMap<String, FileEntry>>,
    /// The stored file list: its hash and parts.
    pub list: GroupEntry,
    pub groups: BTreeMap<String, GroupEntry>,
    /// Documents others wrote while the run that made the checkpoint ran:
    /// checked on the next start like those the stream shows (collection, id).
    pub pending: Vec<(String, String)>,
}

/// What a checkpoint must have been made under to be used: the format, the
/// layout, every source's mapping rules, the index set, and the rules that
/// decide what a reconcile writes (`--conflict`, `--on-delete`): under other
/// rules the files it found settled might not be.
pub fn fingerprint(engine: &Engine) -> String {
    let layout = serde_json::to_string(&*engine.layout).unwrap_or_default();
    let text = format!(
        "{FORMAT}\u{0}{layout}\u{0}{}\u{0}{:?}\u{0}{:?}\u{0}{:?}",
        engine.fingerprints.join("\u{0}"),
        engine.indexes,
        engine.conflict,
        engine.on_delete
    );
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(text.as_bytes()))
}

/// The group a small file's memo goes to.
pub fn bucket(rel: &str) -> String {
    format!("b{:02}", xxhash_rust::xxh3::xxh3_64(rel.as_bytes()) % BUCKETS)
}

fn part_id(group: &str, i: u32) -> String {
    format!("{group}#{i}")
}

/// The group that holds a file list with this hash.
fn list_group(hash: &str) -> String {
    format!("files:{hash}")
}

fn hex(h: u128) -> String {
    format!("{h:032x}")
}

fn lock(memory: &Memory) -> Result<std::sync::MutexGuard<'_, crate::reconcile::memo::Memo>, Fatal> {
    memory.memo.lock().map_err(|_| Fatal::Internal("the memo lock is poisoned".into()))
}

/// The stored head without its file list (`files` empty), if there is one
/// that this version can read.
pub async fn load_head_bare(sink: &Sink) -> Result<Option<Head>, Fatal> {
    let found = sink.find_all(CHECKPOINTS, doc! { "_id": "head" }, None).await?;
    Ok(found.first().and_then(parse_head))
}

/// The stored head with its file list, if there is one that this version
/// can read and its list is whole.
pub async fn load_head(sink: &Sink) -> Result<Option<Head>, Fatal> {
    let Some(mut head) = load_head_bare(sink).await? else { return Ok(None) };
    let g = list_group(&head.list.hash);
    let mut parts = read_parts(sink, std::slice::from_ref(&(g.clone(), head.list.clone()))).await?;
    // 200,000 job files' list is tens of megabytes to hash and decode: off the async workers.
    let list = head.list.clone();
    let decoded =
        tokio::task::spawn_blocking(move || whole(&g, &list, &mut parts).map(|b| memo_codec::decode_entries(&b)))
            .await
            .map_err(Fatal::task("checkpoint file list"))?;
    match decoded {
        Some(Ok(files)) => {
            head.files = std::sync::Arc::new(files);
            Ok(Some(head))
        }
        _ => {
            tracing::info!("The checkpoint's file list is not whole (a save was cut short); it is not used");
            Ok(None)
        }
    }
}

/// The stored parts of these groups, by part id.
async fn read_parts(sink: &Sink, groups: &[(String, GroupEntry)]) -> Result<HashMap<String, Vec<u8>>, Fatal> {
    let ids: Vec<String> = groups.iter().flat_map(|(g, e)| (0..e.parts).map(move |i| part_id(g, i))).collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let docs = sink.find_by_ids(CHECKPOINTS, &ids, None).await?;
    Ok(docs
        .into_iter()
        .filter_map(|d| {
            let id = d.get_str("_id").ok()?.to_string();
            match d.into_iter().find(|(k, _)| k == "data") {
                Some((_, Bson::Binary(b))) => Some((id, b.bytes)),
                _ => None,
            }
        })
        .collect())
}

/// A group's bytes, when every part is there and they match its hash.
fn whole(g: &str, entry: &GroupEntry, parts: &mut HashMap<String, Vec<u8>>) -> Option<Vec<u8>> {
    let len: usize = (0..entry.parts).filter_map(|i| parts.get(&part_id(g, i)).map(Vec::len)).sum();
    let mut bytes = Vec::with_capacity(len);
    let all = (0..entry.parts).all(|i| parts.remove(&part_id(g, i)).map(|p| bytes.extend(p)).is_some());
    (all && hex(xxhash_rust::xxh3::xxh3_128(&bytes)) == entry.hash).then_some(bytes)
}

async fn write_part(sink: &Sink, g: &str, i: u32, bytes: Vec<u8>) -> Result<(), Fatal> {
    let data = bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes };
    let op = WriteOp::Update {
        coll: CHECKPOINTS.into(),
        filter: doc! { "_id": part_id(g, i) },
        update: doc! { "$set": { "data": Bson::Binary(data) } },
        upsert: true,
    };
    sink.write(vec![op]).await?;
    Ok(())
}

/// The hash of a group's bytes and their length, a part's worth at a time.
fn group_hash(files: &[memo_codec::Snapshot]) -> (u128, usize) {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let (mut encoder, mut buf, mut len) = (memo_codec::Encoder::new(files), Vec::with_capacity(2 * PART_BYTES), 0);
    loop {
        let more = encoder.fill(&mut buf, PART_BYTES);
        hasher.update(&buf);
        len += buf.len();
        buf.clear();
        if !more {
            return (hasher.digest128(), len);
        }
    }
}

/// A group's parts, encoded as they are written (`parts` from [`group_hash`]'s length).
async fn write_group(sink: &Sink, g: &str, files: &[memo_codec::Snapshot], parts: u32) -> Result<(), Fatal> {
    let (mut encoder, mut buf) = (memo_codec::Encoder::new(files), Vec::with_capacity(2 * PART_BYTES));
    for i in 0..parts {
        encoder.fill(&mut buf, PART_BYTES);
        let part: Vec<u8> = buf.drain(..buf.len().min(PART_BYTES)).collect();
        write_part(sink, g, i, part).await?;
    }
    if !buf.is_empty() || encoder.fill(&mut buf, 1) {
        return Err(Fatal::Internal(format!("checkpoint group {g} came out longer than its {parts} parts")));
    }
    Ok(())
}

/// The file list's hash and length, encoded an entry at a time.
fn list_hash(files: &BTreeMap<Arc<str>, FileEntry>) -> (u128, usize) {
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let (mut buf, mut len) = (Vec::with_capacity(512), 0);
    for (rel, f) in files {
        buf.clear();
        memo_codec::encode_entry(&mut buf, rel, f);
        hasher.update(&buf);
        len += buf.len();
    }
    (hasher.digest128(), len)
}

/// The file list's parts, encoded as they are written (`parts` from [`list_hash`]'s length).
async fn write_list(sink: &Sink, g: &str, files: &BTreeMap<Arc<str>, FileEntry>, parts: u32) -> Result<(), Fatal> {
    let mut written = 0;
    for part in ListParts::new(files) {
        write_part(sink, g, written, part).await?;
        written += 1;
    }
    if written != parts {
        return Err(Fatal::Internal(format!("checkpoint list {g} came out in {written} parts, not {parts}")));
    }
    Ok(())
}

/// The file list in parts of [`PART_BYTES`] (the last one shorter; an empty
/// list is one empty part), encoded as they are asked for.
struct ListParts<'a> {
    files: std::collections::btree_map::Iter<'a, Arc<str>, FileEntry>,
    buf: Vec<u8>,
    given: usize,
}

impl<'a> ListParts<'a> {
    fn new(files: &'a BTreeMap<Arc<str>, FileEntry>) -> ListParts<'a> {
        ListParts { files: files.iter(), buf: Vec::with_capacity(2 * PART_BYTES), given: 0 }
    }
}

impl Iterator for ListParts<'_> {
    type Item = Vec<u8>;
    fn next(&mut self) -> Option<Vec<u8>> {
        while self.buf.len() < PART_BYTES {
            let Some((rel, f)) = self.files.next() else { break };
            memo_codec::encode_entry(&mut self.buf, rel, f);
        }
        if self.buf.is_empty() && self.given > 0 {
            return None;
        }
        self.given += 1;
        Some(self.buf.drain(..self.buf.len().min(PART_BYTES)).collect())
    }
}

/// How many parts hold `len` bytes.
fn parts_for(g: &str, len: usize) -> Result<u32, Fatal> {
    u32::try_from(len.div_ceil(PART_BYTES).max(1))
        .map_err(|_| Fatal::Internal(format!("checkpoint group {g} too large")))
}

fn parse_head(d: &Document) -> Option<Head> {
    if d.get_i64("format").ok()? != FORMAT {
        return None;
    }
    let list = d.get_document("files").ok()?;
    let list =
        GroupEntry { hash: list.get_str("h").ok()?.to_string(), parts: u32::try_from(list.get_i64("p").ok()?).ok()? };
    let mut groups = BTreeMap::new();
    for g in d.get_array("groups").ok()? {
        let g = g.as_document()?;
        let parts = u32::try_from(g.get_i64("p").ok()?).ok()?;
        groups.insert(g.get_str("g").ok()?.to_string(), GroupEntry { hash: g.get_str("h").ok()?.to_string(), parts });
    }
    let mut pending = Vec::new();
    for p in d.get_array("pending").ok()? {
        let p = p.as_document()?;
        pending.push((p.get_str("c").ok()?.to_string(), p.get_str("i").ok()?.to_string()));
    }
    Some(Head {
        pending,
        database_id: d.get_str("database_id").ok()?.to_string(),
        fingerprint: d.get_str("fingerprint").ok()?.to_string(),
        token: d.get("token")?.clone(),
        at: *d.get_datetime("at").ok()?,
        files: std::sync::Arc::default(),
        list,
        groups,
    })
}

/// Load the memos of these groups: per file, the memo, for the files whose
/// memo matches the digest the head names. Groups whose bytes do not match
/// their hash are left out (their files are then compared in full).
pub async fn load_groups(
    sink: &Sink,
    head: &Head,
    groups: &HashSet<String>,
) -> Result<Vec<(Arc<str>, FileMemo)>, Fatal> {
    let wanted: Vec<(String, GroupEntry)> =
        groups.iter().filter_map(|g| head.groups.get(g).map(|e| (g.clone(), e.clone()))).collect();
    if wanted.is_empty() {
        return Ok(Vec::new());
    }
    let parts = read_parts(sink, &wanted).await?;
    // Hashing and decoding a million records' memo is CPU work: off the async workers.
    let files = head.files.clone();
    tokio::task::spawn_blocking(move || decode_groups(&wanted, parts, &files))
        .await
        .map_err(Fatal::task("checkpoint memo"))
}

/// [`load_groups`]' work on the bytes read.
fn decode_groups(
    wanted: &[(String, GroupEntry)],
    mut parts: HashMap<String, Vec<u8>>,
    files: &BTreeMap<String, FileEntry>,
) -> Vec<(Arc<str>, FileMemo)> {
    let mut out = Vec::new();
    for (g, entry) in wanted {
        let Some(bytes) = whole(g, entry, &mut parts) else {
            tracing::info!(group = %g, "A checkpoint group does not match its hash (a save was cut short); its files are compared in full");
            continue;
        };
        match memo_codec::decode_files(&bytes) {
            // The stamps are in the file list only (a group is rewritten
            // when its records change, not when a file is touched).
            Ok(decoded) => out.extend(decoded.into_iter().filter_map(|(rel, mut m)| {
                let f = files.get(&rel)?;
                let same = f.group == *g && (f.digest.is_none() || f.digest == m.digest);
                m.stamp = f.stamp.filter(|_| f.digest.is_some() && f.digest == m.digest);
                same.then(|| (Arc::from(rel), m))
            })),
            Err(e) => {
                tracing::warn!(group = %g, error = %e, "A checkpoint group cannot be read; its files are compared in full")
            }
        }
    }
    out
}

/// What a save knows: everything (after a full reconcile), or only the
/// groups a start loaded (the others are kept as they are).
pub enum Known<'a> {
    All,
    Groups { prev: &'a Head, loaded: &'a HashSet<String> },
}

/// What a checkpoint records besides the memo.
pub struct Proof<'a> {
    pub database_id: &'a str,
    /// Where the next start resumes the stream.
    pub token: &'a Bson,
    /// Documents others wrote meanwhile (collection, id).
    pub pending: &'a [(String, String)],
    /// Files that exist but have no memo: compared in full next time.
    pub others: &'a [String],
    /// Large files' memos stored before the save ([`Stored`]).
    pub stored: &'a [Stored],
}

/// A large file's memo that `sync` stored once its source was settled (see
/// [`crate::reconcile::memo::Spill`]): its entry in the file list and its group.
#[derive(Debug, Clone)]
pub struct Stored {
    pub rel: Arc<str>,
    pub file: FileEntry,
    pub entry: GroupEntry,
}

/// Whether a file's memo is large enough for a group of its own, and its name.
pub fn own_group(rel: &str, memo: &FileMemo) -> Option<String> {
    (memo_codec::encoded_len(rel, memo) > BIG_FILE).then(|| format!("{OWN_GROUP}{rel}"))
}

/// Store one group of memos, a part at a time, unless the previous head
/// names it with these very bytes; its entry for the head.
pub async fn store_group(
    sink: &Sink,
    g: &str,
    files: Vec<memo_codec::Snapshot>,
    prev: Option<&Head>,
) -> Result<GroupEntry, Fatal> {
    // Encoding a million records to hash them is CPU work: off the async workers.
    let (files, (hash, len)) = tokio::task::spawn_blocking(move || {
        let hashed = group_hash(&files);
        (files, hashed)
    })
    .await
    .map_err(Fatal::task("checkpoint"))?;
    let entry = GroupEntry { hash: hex(hash), parts: parts_for(g, len)? };
    if prev.and_then(|p| p.groups.get(g)) != Some(&entry) {
        write_group(sink, g, &files, entry.parts).await?;
    }
    Ok(entry)
}

/// Store a checkpoint: `memory`'s memo and the `proof`.
// Long: one pass that builds the groups, writes what changed, then the head, then cleans up.
pub async fn save(
    sink: &Sink,
    engine: &Engine,
    memory: &Memory,
    proof: Proof<'_>,
    known: Known<'_>,
) -> Result<(), Fatal> {
    let others = proof.others;
    let prev = match &known {
        Known::All => load_head_bare(sink).await?,
        Known::Groups { prev, .. } => Some((*prev).clone()),
    };
    let complete = |g: &str| match &known {
        Known::All => true,
        Known::Groups { prev, loaded } => loaded.contains(g) || !prev.groups.contains_key(g),
    };
    // Files of the groups this save rewrites, from memory; the rest as they were.
    // (Keyed by the memo's own names: 200,000 job files, no copies.)
    let mut files: BTreeMap<Arc<str>, FileEntry> = BTreeMap::new();
    let mut members: BTreeMap<String, Vec<Arc<str>>> = BTreeMap::new();
    {
        let memo = lock(memory)?;
        for (rel, m) in memo.iter() {
            let group = own_group(rel, m).unwrap_or_else(|| bucket(rel));
            if !complete(&group) {
                continue;
            }
            let records = u64::try_from(m.recs.len()).unwrap_or(u64::MAX);
            files.insert(rel.clone(), FileEntry { digest: m.digest, stamp: m.stamp, group: group.clone(), records });
            members.entry(group).or_default().push(rel.clone());
        }
    }
    if let Known::Groups { prev, .. } = &known {
        for (rel, f) in prev.files.iter() {
            if !f.group.is_empty() && !complete(&f.group) {
                files.entry(Arc::from(rel.as_str())).or_insert_with(|| f.clone());
            }
        }
    }
    for rel in others {
        files.entry(Arc::from(rel.as_str())).or_insert(FileEntry {
            digest: None,
            stamp: None,
            group: String::new(),
            records: 0,
        });
    }
    // Write the groups whose bytes changed, one group at a time and one
    // part at a time: a group's memos are held (shared) while it is hashed
    // and written, its bytes never whole.
    let mut entries: BTreeMap<String, GroupEntry> = BTreeMap::new();
    for (g, mut rels) in members {
        rels.sort();
        let files: Vec<memo_codec::Snapshot> = {
            let memo = lock(memory)?;
            rels.iter().filter_map(|rel| Some(memo_codec::Snapshot::of(rel, memo.get(&**rel)?))).collect()
        };
        let entry = store_group(sink, &g, files, prev.as_ref()).await?;
        entries.insert(g, entry);
    }
    // Large files' memos `sync` stored as their sources settled.
    for s in proof.stored {
        files.insert(s.rel.clone(), s.file.clone());
        entries.insert(s.file.group.clone(), s.entry.clone());
    }
    if let Known::Groups { prev, .. } = &known {
        for (g, e) in &prev.groups {
            if !complete(g) {
                entries.entry(g.clone()).or_insert_with(|| e.clone());
            }
        }
    }
    // The file list, under a name of its own hash: the list the current head
    // names stays whole until the new head replaces it.
    // Encoded an entry at a time, twice (to hash it, then to write it): 200,000
    // job files' list is about 27 MB, never held whole beside the entries.
    let (hash, len) = list_hash(&files);
    let hash = hex(hash);
    let list_entry = GroupEntry { parts: parts_for(&list_group(&hash), len)?, hash };
    // (A head read bare was not checked for a whole list: write it again.)
    let checked = matches!(known, Known::Groups { .. });
    if !checked || prev.as_ref().map(|p| &p.list) != Some(&list_entry) {
        write_list(sink, &list_group(&list_entry.hash), &files, list_entry.parts).await?;
    }
    drop(files);
    let head = head_doc(engine, &proof, &list_entry, &entries);
    if bson::to_vec(&head).map_or(usize::MAX, |b| b.len()) > 15 << 20 {
        tracing::warn!(
            groups = entries.len(),
            pending = proof.pending.len(),
            "The checkpoint head would be over 15 MB; the next start reconciles in full"
        );
        return Ok(());
    }
    let head_op = WriteOp::Update {
        coll: CHECKPOINTS.into(),
        filter: doc! { "_id": "head" },
        update: doc! { "$set": head },
        upsert: true,
    };
    sink.write(vec![head_op]).await?;
    // Parts no head names any more.
    let mut stale = Vec::new();
    if let Some(p) = &prev {
        for (g, e) in &p.groups {
            let now = entries.get(g).map_or(0, |n| n.parts);
            stale.extend((now..e.parts).map(|i| Bson::String(part_id(g, i))));
        }
        if p.list.hash != list_entry.hash {
            stale.extend((0..p.list.parts).map(|i| Bson::String(part_id(&list_group(&p.list.hash), i))));
        }
    }
    if !stale.is_empty() {
        sink.write(vec![WriteOp::DeleteMany { coll: CHECKPOINTS.into(), filter: doc! { "_id": { "$in": stale } } }])
            .await?;
    }
    Ok(())
}

fn head_doc(engine: &Engine, proof: &Proof<'_>, list: &GroupEntry, groups: &BTreeMap<String, GroupEntry>) -> Document {
    let files = doc! { "h": &list.hash, "p": i64::from(list.parts) };
    let groups: Vec<Bson> =
        groups.iter().map(|(g, e)| Bson::Document(doc! { "g": g, "h": &e.hash, "p": i64::from(e.parts) })).collect();
    let pending: Vec<Bson> = proof.pending.iter().map(|(c, i)| Bson::Document(doc! { "c": c, "i": i })).collect();
    doc! {
        "format": FORMAT,
        "database_id": proof.database_id,
        "fingerprint": fingerprint(engine),
        "token": proof.token.clone(),
        "pending": pending,
        "at": bson::DateTime::now(),
        "files": files,
        "groups": groups,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_hashed_an_entry_at_a_time_is_the_whole_lists_hash_and_length() {
        let mut files: BTreeMap<Arc<str>, FileEntry> = BTreeMap::new();
        assert_eq!(list_hash(&files), (xxhash_rust::xxh3::xxh3_128(&[]), 0));
        for i in 0..3000u64 {
            let stamp =
                (i % 2 == 0).then_some(crate::source::Stamp { len: i, mtime_ns: 5, ctime_ns: 6, ino: i, dev: 1 });
            let entry = FileEntry {
                digest: (i % 3 != 0).then_some(u128::from(i) << 70),
                stamp,
                group: bucket(&i.to_string()),
                records: i,
            };
            files.insert(Arc::from(format!("artifacts/jobs/job_{i:06}.json")), entry);
        }
        let whole = memo_codec::encode_entries(&files);
        assert_eq!(list_hash(&files), (xxhash_rust::xxh3::xxh3_128(&whole), whole.len()));
        assert!(whole.len() > 100_000, "{}", whole.len());
    }

    #[test]
    fn a_list_comes_in_whole_parts_of_a_megabyte_that_join_up_to_it() {
        let none: BTreeMap<Arc<str>, FileEntry> = BTreeMap::new();
        assert_eq!(ListParts::new(&none).collect::<Vec<_>>(), vec![Vec::<u8>::new()], "one empty part");
        let mut files: BTreeMap<Arc<str>, FileEntry> = BTreeMap::new();
        for i in 0..40_000u64 {
            let entry =
                FileEntry { digest: Some(u128::from(i)), stamp: None, group: bucket(&i.to_string()), records: 1 };
            files.insert(
                Arc::from(format!("artifacts/jobs/job_{i:06}_{}.json", "x".repeat(usize::try_from(i % 7).unwrap()))),
                entry,
            );
        }
        let whole = memo_codec::encode_entries(&files);
        let parts: Vec<Vec<u8>> = ListParts::new(&files).collect();
        assert!(parts.len() >= 2, "{} bytes in {} parts", whole.len(), parts.len());
        assert_eq!(u32::try_from(parts.len()).unwrap(), parts_for("files", whole.len()).unwrap());
        assert!(parts[..parts.len() - 1].iter().all(|p| p.len() == PART_BYTES));
        assert_eq!(parts.concat(), whole);
    }
}
