//! The allocator, and handing freed memory back to the system.
//!
//! jemalloc wherever it builds (everywhere but MSVC): a full scan builds
//! records on the scan's thread and frees them on the writer's, the pattern
//! glibc's malloc handles worst (a third of a PostgreSQL sync's CPU went to
//! its bookkeeping; with jemalloc the sync takes 15% less time, at the same
//! peak memory: BENCHMARKS.md).

#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Hand the memory freed so far back to the system. A full scan of a large
/// source frees tens of MB; without this, the daemon's resident size stays at
/// that high-water mark until the allocator's own decay (seconds, and only
/// while it is busy) returns it, and every later change adds its own peak on
/// top.
pub fn release_freed() {
    #[cfg(not(target_env = "msvc"))]
    {
        #[allow(unsafe_code)]
        // SAFETY: `arena.<MALLCTL_ARENAS_ALL>.purge` (4096 is "all arenas")
        // reads and writes nothing, and both pointers are null as it requires;
        // it only returns the unused dirty pages of every arena to the system.
        let status = unsafe {
            tikv_jemalloc_sys::mallctl(
                c"arena.4096.purge".as_ptr(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        if status != 0 {
            tracing::debug!(status, "The allocator did not purge its free pages");
        }
    }
}

#[cfg(all(test, target_os = "linux", not(target_env = "msvc")))]
mod tests {
    /// Resident pages of this process, in bytes (`/proc/self/statm`).
    fn resident() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
        let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("statm's resident field");
        pages * 4096
    }

    #[test]
    fn freed_memory_goes_back_to_the_system() {
        const MB: u64 = 1 << 20;
        // Many small blocks, as a scan's records are (a large block would be
        // unmapped by itself when freed).
        let blocks: Vec<Vec<u8>> = (0..200_000).map(|i| vec![u8::try_from(i % 251).unwrap_or(0); 600]).collect();
        let held = resident();
        drop(blocks);
        super::release_freed();
        let after = resident();
        assert!(
            after + 80 * MB < held,
            "200,000 blocks of 600 bytes freed, yet resident {} MB -> {} MB",
            held / MB,
            after / MB
        );
    }
}
