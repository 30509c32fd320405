//! Giving the kernel back the pages of the agent's own program that it no
//! longer uses (issue 15, item 6).
//!
//! An idle agent's resident set was mostly its executable's pages (7 of
//! 10 MiB): what start-up ran once (argument and config parsing, the store,
//! TLS set-up) and, around each of those pages, the neighbours the kernel maps
//! ahead (fault-around, 64 KiB at a time). Once started, and after each
//! renewal, the agent unmaps the clean read-only mappings of its executable
//! (`madvise(MADV_DONTNEED)`): the file stays in the page cache, so what the
//! agent runs next (a handout, the next renewal) maps back in with minor
//! faults and no I/O. Linux only; elsewhere a no-op.

#![allow(unsafe_code)]

/// Unmaps the clean, read-only mappings of this process's executable;
/// returns how many bytes were resident in them.
pub fn release_code_pages() -> usize {
    #[cfg(target_os = "linux")]
    {
        linux::release()
    }
    #[cfg(not(target_os = "linux"))]
    {
        0
    }
}

#[cfg(target_os = "linux")]
mod linux {
    /// One mapping of `/proc/self/smaps`, with the fields the decision needs.
    #[derive(Debug, Default)]
    pub(super) struct Mapping {
        pub start: usize,
        pub len: usize,
        pub writable: bool,
        pub private: bool,
        pub path: String,
        pub rss_kib: usize,
        pub anonymous_kib: usize,
    }

    impl Mapping {
        /// Every page of it is the file's, not a private copy: dropping the
        /// page-table entries loses nothing (the next access maps the same
        /// page-cache page back). A written page of a private mapping is an
        /// anonymous copy (`Anonymous`); `Private_Dirty` alone also counts
        /// file pages not yet written back to disk (a freshly linked binary),
        /// which stay in the page cache either way.
        pub(super) fn is_clean_read_only(&self) -> bool {
            self.private && !self.writable && self.anonymous_kib == 0
        }
    }

    pub(super) fn release() -> usize {
        let Ok(exe) = std::fs::read_link("/proc/self/exe") else {
            return 0;
        };
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return 0;
        };
        let mut released: usize = 0;
        for mapping in parse(&smaps) {
            if std::path::Path::new(&mapping.path) != exe
                || !mapping.is_clean_read_only()
                || mapping.rss_kib == 0
            {
                continue;
            }
            // SAFETY: the range is one whole mapping of this process's own
            // executable, private and without write permission, with no
            // anonymous (copied-on-write) page: every page is the page
            // cache's copy of the file, and without write permission none
            // can become a private copy between the read of smaps and this
            // call (the agent never `mprotect`s; the loader's RELRO pages
            // were written before it made them read-only, so they are
            // anonymous and skipped). MADV_DONTNEED on such a mapping drops
            // page-table entries only: the next access maps the same page
            // back, whichever thread makes it.
            let advised = unsafe {
                rustix::mm::madvise(
                    mapping.start as *mut std::ffi::c_void,
                    mapping.len,
                    rustix::mm::Advice::LinuxDontNeed,
                )
            };
            if advised.is_ok() {
                released = released.saturating_add(mapping.rss_kib.saturating_mul(1024));
            }
        }
        released
    }

    /// The mappings in `/proc/PID/smaps` text.
    pub(super) fn parse(smaps: &str) -> Vec<Mapping> {
        let mut out: Vec<Mapping> = Vec::new();
        for line in smaps.lines() {
            let mut fields = line.split_whitespace();
            let Some(first) = fields.next() else {
                continue;
            };
            if let Some((start, end)) = first.split_once('-')
                && let (Ok(start), Ok(end)) = (
                    usize::from_str_radix(start, 16),
                    usize::from_str_radix(end, 16),
                )
            {
                let perms = fields.next().unwrap_or("");
                // offset, device, inode, then the path (which may hold spaces)
                let path = fields.skip(3).collect::<Vec<_>>().join(" ");
                out.push(Mapping {
                    start,
                    len: end.saturating_sub(start),
                    writable: perms.as_bytes().get(1) == Some(&b'w'),
                    private: perms.as_bytes().get(3) == Some(&b'p'),
                    path,
                    ..Mapping::default()
                });
                continue;
            }
            let Some(current) = out.last_mut() else {
                continue;
            };
            let kib = || {
                fields
                    .clone()
                    .next()
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0)
            };
            match first {
                "Rss:" => current.rss_kib = kib(),
                "Anonymous:" => current.anonymous_kib = kib(),
                _ => {}
            }
        }
        out
    }
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::linux::parse;
    use super::release_code_pages;

    fn executable_rss_kib() -> usize {
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        parse(&smaps)
            .iter()
            .filter(|m| std::path::Path::new(&m.path) == exe && !m.writable)
            .map(|m| m.rss_kib)
            .sum()
    }

    #[test]
    fn parses_mappings_and_their_sizes() {
        let text = "\
55d08afbb000-55d08b3a7000 r--p 00000000 fe:00 10248334                   /usr/bin/regent d
Size:               4016 kB
Rss:                1236 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
55d08beea000-55d08bf43000 r--p 00f2e000 fe:00 10248334                   /usr/bin/regent d
Rss:                 356 kB
Private_Dirty:       356 kB
Anonymous:           356 kB
7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]
Rss:                   4 kB
";
        let maps = parse(text);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].start, 0x55d0_8afb_b000);
        assert_eq!(maps[0].len, 0x55d0_8b3a_7000 - 0x55d0_8afb_b000);
        assert_eq!(maps[0].path, "/usr/bin/regent d");
        assert_eq!((maps[0].rss_kib, maps[0].anonymous_kib), (1236, 0));
        assert!(maps[0].private && !maps[0].writable);
        assert!(maps[0].is_clean_read_only());
        // RELRO: read-only now, but written by the loader: never dropped.
        assert!(!maps[1].is_clean_read_only());
        assert!(maps[2].writable && !maps[2].is_clean_read_only());
    }

    #[test]
    fn releases_this_programs_code_and_it_still_runs() {
        let before = executable_rss_kib();
        let released = release_code_pages();
        assert!(released > 0, "nothing released ({before} KiB resident)");
        let after = executable_rss_kib();
        assert!(
            after < before,
            "{after} KiB resident after, {before} before"
        );
        // Code and constants fault back in from the page cache.
        let again: usize = (1..=1000).sum();
        assert_eq!(again, 500_500);
    }
}
