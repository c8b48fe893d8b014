//! The per-CPU count table (`fast_counts` in syscalls.bpf.c), read and cleared through a
//! shared memory mapping of the BPF array: a scrape reads every CPU's table without a
//! syscall per entry.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use super::skel::types::psc_fast_slot;

/// A shared mapping of the `fast_counts` array. It keeps the map alive by itself.
pub struct FastTable {
    base: NonNull<psc_fast_slot>,
    slots: usize,
    bytes: usize,
}

impl FastTable {
    /// Maps `slots` entries of the BPF array behind `fd` (created with BPF_F_MMAPABLE).
    pub fn map(fd: BorrowedFd<'_>, slots: usize) -> std::io::Result<FastTable> {
        let page = page_size();
        let bytes = (slots * std::mem::size_of::<psc_fast_slot>()).div_ceil(page) * page;
        // SAFETY: a fresh shared mapping of a BPF map fd; the kernel checks the size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<psc_fast_slot>())
            .ok_or_else(|| std::io::Error::other("mmap returned NULL"))?;
        Ok(FastTable { base, slots, bytes })
    }

    fn slot(&self, idx: usize) -> *mut psc_fast_slot {
        debug_assert!(idx < self.slots);
        // SAFETY: idx < slots, and the mapping holds `slots` entries.
        unsafe { self.base.as_ptr().add(idx) }
    }

    /// Every taken slot: ((tgid, generation), syscall number, count on that slot's CPU).
    pub fn taken(&self) -> impl Iterator<Item = ((u32, u16), u32, u64)> + '_ {
        (0..self.slots).filter_map(move |idx| {
            let slot = self.slot(idx);
            // SAFETY: the slot lies in the mapping; the kernel writes it concurrently, so
            // each field is read once, volatile. A slot is published by nr_plus_one last.
            unsafe {
                let nr_plus_one = std::ptr::read_volatile(&raw const (*slot).nr_plus_one);
                if nr_plus_one == 0 {
                    return None;
                }
                let tgid = std::ptr::read_volatile(&raw const (*slot).tgid);
                let gen = std::ptr::read_volatile(&raw const (*slot).gen);
                let count = std::ptr::read_volatile(&raw const (*slot).count);
                Some(((tgid, gen), u32::from(nr_plus_one) - 1, count))
            }
        })
    }

    /// Frees every slot of the processes `gone` selects (exited processes whose counts
    /// were folded away).
    pub fn release(&self, gone: impl Fn((u32, u16)) -> bool) -> u64 {
        let mut released = 0;
        for idx in 0..self.slots {
            let slot = self.slot(idx);
            // SAFETY: as in `taken`. Only the publishing field is cleared: a process
            // claiming the slot right after writes tgid and count before publishing it,
            // and clearing those here could overwrite its claim.
            unsafe {
                if std::ptr::read_volatile(&raw const (*slot).nr_plus_one) != 0
                    && gone((
                        std::ptr::read_volatile(&raw const (*slot).tgid),
                        std::ptr::read_volatile(&raw const (*slot).gen),
                    ))
                {
                    std::ptr::write_volatile(&raw mut (*slot).nr_plus_one, 0);
                    released += 1;
                }
            }
        }
        released
    }

    pub fn capacity(&self) -> usize {
        self.slots
    }
}

impl Drop for FastTable {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `map`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.bytes);
        }
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}
