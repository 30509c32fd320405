//! Splitting long secrets over several keychain entries. Windows Credential
//! Manager keeps at most 2,560 bytes per credential (DESIGN §5), and `keyring`
//! stores a password there as UTF-16 (two bytes per unit), so values longer
//! than 1,000 UTF-16 units (1,000 characters of an ASCII token) are stored as
//! entries `NAME#G.1` … `NAME#G.N` plus a head entry `NAME` holding
//! `regent-chunked:v1:G:N`. The generation `G` changes
//! on every chunked write and the head is written last, so a crash mid-write
//! leaves the previous value readable. A value that itself starts with
//! `regent-chunked:` is always stored chunked, so every value round-trips.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use regent_proto::ErrorCode;
use zeroize::Zeroizing;

use crate::error::Error;
use crate::secret::{ExposeSecret, SecretString, secret};

/// Largest value stored in one entry, in UTF-16 units; longer ones are
/// chunked. Windows keeps 2,560 bytes per credential, as UTF-16: 1,280 units,
/// so 1,000 units leave room to spare. (Counted in UTF-8 bytes, as before
/// issue 13, a 2,000-byte chunk was 4,000 bytes on Windows and refused.)
const CHUNK_UNITS: usize = 1000;

/// Most chunks one value may take (128,000 UTF-16 units). Bounds what a
/// damaged head entry can make the reader allocate.
const MAX_CHUNKS: usize = 128;

/// How a head entry that points to chunks begins.
const CHUNKED_PREFIX: &str = "regent-chunked:";

/// Single keychain entries, each small enough for every platform.
pub(crate) trait EntryStore: Send + Sync + 'static {
    /// The entry's value, or `None` when there is no such entry.
    fn read(&self, account: &str) -> Result<Option<Zeroizing<String>>, Error>;
    /// Creates or replaces the entry.
    fn write(&self, account: &str, value: &str) -> Result<(), Error>;
    /// Removes the entry; a missing entry is not an error.
    fn remove(&self, account: &str) -> Result<(), Error>;
    /// For messages: what and where the store is.
    fn describe(&self) -> String;
}

/// What a head entry says.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// The value itself.
    Plain,
    /// The value is in `count` chunks of generation `generation`.
    Chunked { generation: u32, count: usize },
    /// Starts like a chunk header but cannot be read (damaged, or written by a
    /// newer regent).
    Unreadable,
}

fn parse_head(head: &str) -> Head {
    let Some(rest) = head.strip_prefix(CHUNKED_PREFIX) else {
        return Head::Plain;
    };
    let mut parts = rest.split(':');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("v1"), Some(generation), Some(count), None) => {
            match (generation.parse::<u32>(), count.parse::<usize>()) {
                (Ok(generation), Ok(count)) if (1..=MAX_CHUNKS).contains(&count) => {
                    Head::Chunked { generation, count }
                }
                _ => Head::Unreadable,
            }
        }
        _ => Head::Unreadable,
    }
}

fn chunk_account(name: &str, generation: u32, index: usize) -> String {
    format!("{name}#{generation}.{index}")
}

/// A value's length as Windows stores it: UTF-16 units.
fn utf16_units(value: &str) -> usize {
    value.chars().map(char::len_utf16).sum()
}

/// Splits `value` into pieces of at most [`CHUNK_UNITS`] UTF-16 units, on
/// character boundaries.
fn split_chunks(value: &str) -> Vec<&str> {
    let mut chunks = Vec::with_capacity(value.len() / CHUNK_UNITS + 1);
    let mut start = 0;
    let mut units = 0;
    for (at, c) in value.char_indices() {
        if units + c.len_utf16() > CHUNK_UNITS {
            chunks.push(&value[start..at]);
            start = at;
            units = 0;
        }
        units += c.len_utf16();
    }
    if start < value.len() {
        chunks.push(&value[start..]);
    }
    chunks
}

/// Chunking on top of an [`EntryStore`].
pub(crate) struct Chunked<S> {
    entries: S,
    /// A reader must not see a head whose chunks a writer is replacing.
    lock: Mutex<()>,
}

impl<S: fmt::Debug> fmt::Debug for Chunked<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.entries.fmt(f)
    }
}

impl<S: EntryStore> Chunked<S> {
    pub(crate) fn new(entries: S) -> Self {
        Chunked {
            entries,
            lock: Mutex::new(()),
        }
    }

    /// The single entries underneath.
    pub(crate) fn entries(&self) -> &S {
        &self.entries
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot have left it inconsistent.
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check_name(&self, name: &str) -> Result<(), Error> {
        if name.is_empty() || name.contains('#') {
            return Err(Error::new(
                ErrorCode::StoreUnavailable,
                format!(
                    "invalid secret name {name:?} for the {}: names are non-empty and \
                     contain no '#'",
                    self.entries.describe()
                ),
            ));
        }
        Ok(())
    }

    fn damaged(&self, name: &str, what: &str) -> Error {
        Error::new(
            ErrorCode::StoreUnavailable,
            format!(
                "the entry {name} in the {} {what}; remove it (regent unenroll) and enroll again",
                self.entries.describe()
            ),
        )
    }

    pub(crate) fn get(&self, name: &str) -> Result<Option<SecretString>, Error> {
        self.check_name(name)?;
        let _guard = self.locked();
        let Some(head) = self.entries.read(name)? else {
            return Ok(None);
        };
        match parse_head(&head) {
            Head::Plain => Ok(Some(secret(String::from(head.as_str())))),
            Head::Unreadable => Err(self.damaged(
                name,
                "has an unreadable chunk header (written by a newer regent?)",
            )),
            Head::Chunked { generation, count } => {
                let mut value = Zeroizing::new(String::with_capacity(count * CHUNK_UNITS));
                for index in 1..=count {
                    match self.entries.read(&chunk_account(name, generation, index))? {
                        Some(chunk) => value.push_str(&chunk),
                        None => {
                            return Err(self.damaged(
                                name,
                                &format!("is incomplete (part {index} of {count} is missing)"),
                            ));
                        }
                    }
                }
                Ok(Some(secret(String::from(value.as_str()))))
            }
        }
    }

    pub(crate) fn set(&self, name: &str, value: &SecretString) -> Result<(), Error> {
        self.check_name(name)?;
        let value = value.expose_secret();
        let _guard = self.locked();
        let old = match self.entries.read(name)? {
            Some(head) => parse_head(&head),
            None => Head::Plain,
        };
        if utf16_units(value) <= CHUNK_UNITS && !value.starts_with(CHUNKED_PREFIX) {
            self.entries.write(name, value)?;
        } else {
            let chunks = split_chunks(value);
            if chunks.len() > MAX_CHUNKS {
                return Err(Error::new(
                    ErrorCode::StoreUnavailable,
                    format!(
                        "the secret {name} is {} UTF-16 units long, more than the {} can hold ({} units)",
                        utf16_units(value),
                        self.entries.describe(),
                        MAX_CHUNKS * CHUNK_UNITS
                    ),
                ));
            }
            let generation = match old {
                Head::Chunked { generation, .. } => generation.checked_add(1).unwrap_or(1),
                _ => 1,
            };
            for (i, chunk) in chunks.iter().enumerate() {
                if let Err(e) = self
                    .entries
                    .write(&chunk_account(name, generation, i + 1), chunk)
                {
                    self.remove_chunks(name, generation, i);
                    return Err(e);
                }
                // A crash here leaves the old head, which names the old chunks.
                crate::crash::crash_point_with(crate::crash::CrashPoint::MidChunkWrite, || {
                    format!("{name}: part {} of {} written", i + 1, chunks.len())
                });
            }
            let head = format!("{CHUNKED_PREFIX}v1:{generation}:{}", chunks.len());
            if let Err(e) = self.entries.write(name, &head) {
                self.remove_chunks(name, generation, chunks.len());
                return Err(e);
            }
        }
        // The new value is in place; the old chunks are only garbage now.
        if let Head::Chunked { generation, count } = old {
            self.remove_chunks(name, generation, count);
        }
        Ok(())
    }

    pub(crate) fn delete(&self, name: &str) -> Result<(), Error> {
        self.check_name(name)?;
        let _guard = self.locked();
        let Some(head) = self.entries.read(name)? else {
            return Ok(());
        };
        // Head first: a crash in between leaves unreachable chunks, never a head
        // pointing to missing ones.
        self.entries.remove(name)?;
        if let Head::Chunked { generation, count } = parse_head(&head) {
            for index in 1..=count {
                self.entries
                    .remove(&chunk_account(name, generation, index))?;
            }
        }
        Ok(())
    }

    /// Best-effort removal of chunks `1..=count` that nothing points to.
    fn remove_chunks(&self, name: &str, generation: u32, count: usize) {
        for index in 1..=count {
            if let Err(e) = self.entries.remove(&chunk_account(name, generation, index)) {
                tracing::warn!(
                    entry = %chunk_account(name, generation, index),
                    store = %self.entries.describe(),
                    error = %e,
                    "could not remove an unused chunk of a secret"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! The splitting logic against an in-memory [`EntryStore`]. The real keychain
    //! is tested against a real Secret Service in `tests/keychain.rs`.
    use super::*;
    use std::collections::BTreeMap;

    /// Entries in memory; refuses values longer than a Windows credential and can
    /// fail the n-th write, like a keyring that gets locked mid-way.
    #[derive(Default)]
    struct MemoryEntries {
        entries: Mutex<BTreeMap<String, String>>,
        writes_before_failure: Mutex<Option<usize>>,
    }

    impl MemoryEntries {
        fn accounts(&self) -> Vec<String> {
            self.entries.lock().unwrap().keys().cloned().collect()
        }
        fn raw(&self, account: &str) -> Option<String> {
            self.entries.lock().unwrap().get(account).cloned()
        }
        fn fail_after(&self, writes: usize) {
            *self.writes_before_failure.lock().unwrap() = Some(writes);
        }
    }

    impl EntryStore for MemoryEntries {
        fn read(&self, account: &str) -> Result<Option<Zeroizing<String>>, Error> {
            Ok(self.raw(account).map(Zeroizing::new))
        }
        fn write(&self, account: &str, value: &str) -> Result<(), Error> {
            let mut budget = self.writes_before_failure.lock().unwrap();
            if let Some(left) = budget.as_mut() {
                if *left == 0 {
                    return Err(Error::new(
                        ErrorCode::StoreUnavailable,
                        "the keyring is locked",
                    ));
                }
                *left -= 1;
            }
            // Windows' rule: 2,560 bytes of UTF-16 per credential.
            assert!(
                utf16_units(value) * 2 <= 2560,
                "entry {account} is {} bytes as UTF-16",
                utf16_units(value) * 2
            );
            self.entries
                .lock()
                .unwrap()
                .insert(account.to_owned(), value.to_owned());
            Ok(())
        }
        fn remove(&self, account: &str) -> Result<(), Error> {
            self.entries.lock().unwrap().remove(account);
            Ok(())
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    fn get(store: &Chunked<MemoryEntries>, name: &str) -> Option<String> {
        store
            .get(name)
            .unwrap()
            .map(|v| v.expose_secret().to_owned())
    }

    fn set(store: &Chunked<MemoryEntries>, name: &str, value: &str) {
        store.set(name, &secret(value.to_owned())).unwrap();
    }

    #[test]
    fn short_values_are_one_plain_entry() {
        let store = Chunked::new(MemoryEntries::default());
        set(&store, "refresh_token", "rt");
        assert_eq!(store.entries.accounts(), ["refresh_token"]);
        assert_eq!(store.entries.raw("refresh_token").as_deref(), Some("rt"));
        assert_eq!(get(&store, "refresh_token").as_deref(), Some("rt"));
        let exact = "x".repeat(CHUNK_UNITS);
        set(&store, "exact", &exact);
        assert_eq!(store.entries.raw("exact"), Some(exact));
    }

    #[test]
    fn long_values_are_chunked_and_reassembled() {
        let store = Chunked::new(MemoryEntries::default());
        let long: String = (0..3000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        set(&store, "access_token", &long);
        assert_eq!(
            store.entries.accounts(),
            [
                "access_token",
                "access_token#1.1",
                "access_token#1.2",
                "access_token#1.3"
            ]
        );
        assert_eq!(
            store.entries.raw("access_token").as_deref(),
            Some("regent-chunked:v1:1:3")
        );
        assert_eq!(get(&store, "access_token"), Some(long));
    }

    #[test]
    fn multibyte_text_is_split_on_character_boundaries() {
        let store = Chunked::new(MemoryEntries::default());
        // 3-byte characters (one unit each) and 4-byte ones (two units):
        // no chunk splits a character or passes the limit.
        let long = "€".repeat(1500);
        set(&store, "t", &long);
        assert_eq!(get(&store, "t"), Some(long));
        let mixed = "é€😀".repeat(700);
        let chunks = split_chunks(&mixed);
        assert_eq!(chunks.concat(), mixed);
        for chunk in chunks {
            assert!(utf16_units(chunk) <= CHUNK_UNITS && !chunk.is_empty());
        }
        let emoji = "😀".repeat(CHUNK_UNITS);
        assert_eq!(split_chunks(&emoji).len(), 2);
    }

    #[test]
    fn values_that_look_like_a_chunk_header_round_trip() {
        let store = Chunked::new(MemoryEntries::default());
        for tricky in [
            "regent-chunked:v1:1:3",
            "regent-chunked:",
            "regent-chunked:v9:x",
        ] {
            set(&store, "t", tricky);
            assert_eq!(get(&store, "t").as_deref(), Some(tricky));
        }
    }

    #[test]
    fn replacing_and_deleting_leave_no_stale_chunks() {
        let store = Chunked::new(MemoryEntries::default());
        set(&store, "t", &"a".repeat(3500));
        set(&store, "t", &"b".repeat(2250));
        assert_eq!(store.entries.accounts(), ["t", "t#2.1", "t#2.2", "t#2.3"]);
        assert_eq!(get(&store, "t"), Some("b".repeat(2250)));
        set(&store, "t", "short");
        assert_eq!(store.entries.accounts(), ["t"]);
        set(&store, "t", &"c".repeat(1250));
        store.delete("t").unwrap();
        assert!(store.entries.accounts().is_empty());
        assert_eq!(get(&store, "t"), None);
        store.delete("t").unwrap();
    }

    #[test]
    fn a_failed_write_keeps_the_previous_value() {
        let store = Chunked::new(MemoryEntries::default());
        let old = "o".repeat(2500);
        set(&store, "t", &old);
        // The second chunk of the new value fails, as if the keyring locked.
        store.entries.fail_after(1);
        let err = store.set("t", &secret("n".repeat(2500))).unwrap_err();
        assert_eq!(err.code, ErrorCode::StoreUnavailable);
        *store.entries.writes_before_failure.lock().unwrap() = None;
        assert_eq!(get(&store, "t"), Some(old.clone()));
        // The head is written last: failing it also keeps the old value.
        store.entries.fail_after(3);
        assert!(store.set("t", &secret("n".repeat(2500))).is_err());
        *store.entries.writes_before_failure.lock().unwrap() = None;
        assert_eq!(get(&store, "t"), Some(old));
        assert_eq!(store.entries.accounts(), ["t", "t#1.1", "t#1.2", "t#1.3"]);
    }

    #[test]
    fn damaged_heads_and_missing_chunks_are_errors() {
        let store = Chunked::new(MemoryEntries::default());
        set(&store, "t", &"a".repeat(2500));
        store.entries.remove("t#1.2").unwrap();
        let err = store.get("t").unwrap_err();
        assert!(
            err.message.contains("part 2 of 3 is missing"),
            "{}",
            err.message
        );
        store
            .entries
            .write("t", "regent-chunked:v1:1:99999")
            .unwrap();
        let err = store.get("t").unwrap_err();
        assert!(
            err.message.contains("unreadable chunk header"),
            "{}",
            err.message
        );
        // Deleting still works, so the user can recover.
        store.delete("t").unwrap();
        assert_eq!(get(&store, "t"), None);
    }

    #[test]
    fn oversized_values_and_bad_names_are_refused() {
        let store = Chunked::new(MemoryEntries::default());
        let err = store
            .set("t", &secret("z".repeat(MAX_CHUNKS * CHUNK_UNITS + 1)))
            .unwrap_err();
        assert!(err.message.contains("128000"), "{}", err.message);
        assert!(store.entries.accounts().is_empty());
        assert!(store.get("a#1.1").is_err());
        assert!(store.set("", &secret("v".into())).is_err());
    }

    #[test]
    fn heads_parse_strictly() {
        assert_eq!(parse_head("plain"), Head::Plain);
        assert_eq!(
            parse_head("regent-chunked:v1:7:3"),
            Head::Chunked {
                generation: 7,
                count: 3
            }
        );
        for bad in [
            "regent-chunked:v1:7:0",
            "regent-chunked:v1:7",
            "regent-chunked:v1:x:3",
            "regent-chunked:v1:7:3:9",
            "regent-chunked:v2:7:3",
        ] {
            assert_eq!(parse_head(bad), Head::Unreadable, "{bad}");
        }
    }
}
