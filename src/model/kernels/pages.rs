//! Memory for the repacked weights (and `bench`'s bandwidth buffer) that can lie on 2 MiB pages
//! from end to end.
//!
//! The allocator places a large block anywhere within a 2 MiB page, and the kernel backs only
//! whole, aligned 2 MiB ranges with huge pages, so a `Vec` loses up to 2 MiB at each end: on the
//! 1B model only ~58% of the weights were on huge pages (`AnonHugePages` 290 of 500 MB). A
//! [`HugePageBuffer`] is its own mapping, starting on a 2 MiB boundary, so everything but the
//! last partial 2 MiB of it can be a huge page — and nothing past its end is, so the rounding
//! costs no memory.

use std::ops::{Deref, DerefMut};

/// The huge page size of x86-64 and of most arm64 kernels.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const HUGE_PAGE: usize = 2 << 20;

/// `len` values of a plain-data type, on a mapping of their own aligned to [`HUGE_PAGE`] and
/// advised onto huge pages (Linux); an ordinary `Vec` where that is not possible.
pub struct HugePageBuffer<T: Copy> {
    storage: Storage<T>,
}

enum Storage<T> {
    #[cfg(target_os = "linux")]
    Mapped {
        values: std::ptr::NonNull<T>,
        len: usize,
        /// Bytes mapped from `values` (whole 4 KiB pages).
        mapped: usize,
    },
    Heap(Vec<T>),
}

// SAFETY: the buffer owns its values exactly as a `Vec<T>` would; nothing else points into the
// mapping.
unsafe impl<T: Copy + Send> Send for HugePageBuffer<T> {}
// SAFETY: shared access only reads the values, as through `&[T]`.
unsafe impl<T: Copy + Sync> Sync for HugePageBuffer<T> {}

impl<T: Copy> HugePageBuffer<T> {
    /// `len` copies of `fill`; `None` when the memory cannot be had.
    pub fn new(len: usize, fill: T) -> Option<Self> {
        #[cfg(target_os = "linux")]
        if let Some(storage) = Self::map(len, fill) {
            return Some(Self { storage });
        }
        let mut values = Vec::new();
        values.try_reserve_exact(len).ok()?;
        values.resize(len, fill);
        Some(Self {
            storage: Storage::Heap(values),
        })
    }

    /// Whether the values are on a mapping of their own (the kernel may still back it with
    /// small pages, when none are free or THP is off).
    pub fn is_mapped(&self) -> bool {
        !matches!(self.storage, Storage::Heap(_))
    }

    #[cfg(target_os = "linux")]
    fn map(len: usize, fill: T) -> Option<Storage<T>> {
        const PAGE: usize = 4096;
        if std::mem::size_of::<T>() == 0 || std::mem::align_of::<T>() > PAGE {
            return None;
        }
        let bytes = len.checked_mul(std::mem::size_of::<T>())?;
        if bytes < HUGE_PAGE {
            // Too small to hold a huge page: not worth a mapping of its own.
            return None;
        }
        let mapped = bytes.checked_next_multiple_of(PAGE)?;
        // Over-map by a huge page, then trim to the first 2 MiB boundary.
        let reserve = mapped.checked_add(HUGE_PAGE)?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                reserve,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let start = (base as usize).next_multiple_of(HUGE_PAGE);
        let head = start - base as usize;
        let tail = reserve - head - mapped;
        // SAFETY: both ranges lie inside the mapping just made and outside what is kept; a
        // failed unmap only leaves unused address space reserved.
        unsafe {
            if head > 0 {
                libc::munmap(base, head);
            }
            if tail > 0 {
                libc::munmap((start + mapped) as *mut libc::c_void, tail);
            }
            // A failure (THP off, an old kernel) only leaves the pages small.
            libc::madvise(start as *mut libc::c_void, mapped, libc::MADV_HUGEPAGE);
        }
        let values = std::ptr::NonNull::new(start as *mut T)?;
        for i in 0..len {
            // SAFETY: `i < len`, and `len` values fit in the `mapped` bytes, which are aligned
            // for `T` (a 2 MiB boundary, and `T`'s alignment is at most a page).
            unsafe { values.as_ptr().add(i).write(fill) };
        }
        Some(Storage::Mapped {
            values,
            len,
            mapped,
        })
    }
}

impl<T: Copy> Drop for HugePageBuffer<T> {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Storage::Mapped { values, mapped, .. } = self.storage {
            // SAFETY: the mapping was made by `map` with exactly this start and length, and the
            // values (plain data) need no drop.
            unsafe { libc::munmap(values.as_ptr().cast(), mapped) };
        }
    }
}

impl<T: Copy> Deref for HugePageBuffer<T> {
    type Target = [T];

    fn deref(&self) -> &[T] {
        match &self.storage {
            #[cfg(target_os = "linux")]
            // SAFETY: `len` initialised values live at `values` for as long as `self`.
            Storage::Mapped { values, len, .. } => unsafe {
                std::slice::from_raw_parts(values.as_ptr(), *len)
            },
            Storage::Heap(values) => values,
        }
    }
}

impl<T: Copy> DerefMut for HugePageBuffer<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.storage {
            #[cfg(target_os = "linux")]
            // SAFETY: as in `deref`, and `&mut self` makes this the only access.
            Storage::Mapped { values, len, .. } => unsafe {
                std::slice::from_raw_parts_mut(values.as_ptr(), *len)
            },
            Storage::Heap(values) => values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_its_values_and_can_be_written() {
        for len in [0, 1, 1000, (HUGE_PAGE / 8) + 3, 3 * HUGE_PAGE / 8] {
            let mut buffer = HugePageBuffer::new(len, 7u64).unwrap();
            assert_eq!(buffer.len(), len);
            assert!(buffer.iter().all(|&v| v == 7));
            if len > 0 {
                buffer[len - 1] = 9;
                assert_eq!(buffer[len - 1], 9);
                assert_eq!(buffer.iter().filter(|&&v| v == 9).count(), 1);
            }
        }
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_large_buffer_starts_on_a_huge_page_boundary_and_a_small_one_stays_on_the_heap() {
        let large = HugePageBuffer::new(HUGE_PAGE + 100, 1u8).unwrap();
        assert!(large.is_mapped());
        assert_eq!(large.as_ptr() as usize % HUGE_PAGE, 0);
        let small = HugePageBuffer::new(HUGE_PAGE - 1, 1u8).unwrap();
        assert!(!small.is_mapped());
    }
}
