//! The CPU work of a forward pass, shared by threads that stay awake between its steps.
//!
//! Decoding one token runs about five parallel steps per layer (Q/K/V, attention, the output
//! projection, gate and up, down), each well under a millisecond, with a few microseconds of
//! serial work between them. Rayon's idle workers go to sleep after a few dozen yields, and waking
//! one costs tens of microseconds on a VM: on a 1B-shaped decode, 20 µs of serial work after
//! each product made each cost about 30 µs more (10–15% of the token). The helpers here spin for
//! a while after each step, as llama.cpp's threads do, and only then park, so that the next step
//! starts at once.
//!
//! One job runs at a time. A second caller (another thread, or a step that itself asks for a
//! parallel loop) runs its job on its own thread instead of waiting.

use std::any::Any;
use std::ops::Range;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock, PoisonError, TryLockError};
use std::time::{Duration, Instant};

/// How long a helper keeps looking for the next step before it parks: longer than the serial
/// work between two steps of a decode, short enough that an idle server soon stops using CPU.
const SPIN: Duration = Duration::from_micros(300);

/// The threads that run the model's CPU work, the caller included (0 until [`set_threads`]).
static THREADS: AtomicUsize = AtomicUsize::new(0);

/// Sets how many threads (the caller included) share the work; call before the first parallel
/// loop, which starts the helpers. Later calls change nothing.
pub fn set_threads(threads: usize) {
    let _ = THREADS.compare_exchange(0, threads.max(1), SeqCst, SeqCst);
}

/// The threads that share the work, the caller included.
pub fn threads() -> usize {
    pool().map_or(1, |pool| pool.helpers() + 1)
}

/// Calls `work` on disjoint ranges that together cover `0..units`, on this thread and the
/// helpers, and returns when all are done. Ranges are handed out in order and shrink as the work
/// runs out: long sequential streams first, small pieces to even out the end. None is shorter
/// than `min_range` (but the last).
///
/// # Panics
/// If `work` panicked, once every range has finished.
pub fn for_each_range(units: usize, min_range: usize, work: impl Fn(Range<usize>) + Sync) {
    let min_range = min_range.max(1);
    let pool = pool().filter(|_| units > min_range);
    // A panicked job poisons the lock but leaves the pool as good as before.
    let running = pool.and_then(|pool| match pool.submit.try_lock() {
        Ok(running) => Some((pool, running)),
        Err(TryLockError::Poisoned(poisoned)) => Some((pool, poisoned.into_inner())),
        Err(TryLockError::WouldBlock) => None,
    });
    let Some((pool, _running)) = running else {
        if units > 0 {
            work(0..units);
        }
        return;
    };
    pool.run(&Job {
        work: &work,
        units,
        min_range,
        participants: pool.helpers() + 1,
        next: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
        panic: Mutex::new(None),
    });
}

/// Calls `work(scratch, index, item)` for every item, in parallel, with one `scratch` (made by
/// `init`) per range of items a thread takes.
pub fn for_each_mut<T: Send, S>(
    items: &mut [T],
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, usize, &mut T) + Sync,
) {
    let items = SharedItems(items.as_mut_ptr(), items.len());
    for_each_range(items.1, 1, |range| {
        let mut scratch = init();
        for index in range {
            // SAFETY: `for_each_range` hands out disjoint ranges inside `0..len`, so each item
            // is borrowed by one call only, and `items` outlives the loop.
            work(&mut scratch, index, unsafe { items.get(index) });
        }
    });
}

/// A slice whose items the ranges of one loop borrow, each by one thread.
struct SharedItems<T>(*mut T, usize);

// SAFETY: the items are `Send`, and each is borrowed by one thread at a time (`for_each_mut`).
unsafe impl<T: Send> Sync for SharedItems<T> {}

impl<T> SharedItems<T> {
    /// # Safety
    /// `index < len`, and no other reference to that item may exist.
    #[allow(clippy::mut_from_ref)]
    unsafe fn get(&self, index: usize) -> &mut T {
        debug_assert!(index < self.1);
        unsafe { &mut *self.0.add(index) }
    }
}

/// One parallel loop, on the stack of the thread that asked for it.
struct Job<'a> {
    work: &'a (dyn Fn(Range<usize>) + Sync),
    units: usize,
    min_range: usize,
    participants: usize,
    /// The first unit no thread has claimed yet.
    next: AtomicUsize,
    /// Units whose work has returned.
    finished: AtomicUsize,
    /// The first panic of a range, rethrown on the posting thread.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job<'_> {
    /// Claims and runs ranges until none is left.
    fn help(&self) {
        let mut start = self.next.load(Relaxed);
        loop {
            if start >= self.units {
                return;
            }
            let left = self.units - start;
            let size = (left / (2 * self.participants))
                .max(self.min_range)
                .min(left);
            if let Err(now) = self
                .next
                .compare_exchange_weak(start, start + size, Relaxed, Relaxed)
            {
                start = now;
                continue;
            }
            let range = start..start + size;
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| (self.work)(range))) {
                let mut first = self.panic.lock().unwrap_or_else(PoisonError::into_inner);
                first.get_or_insert(panic);
            }
            self.finished.fetch_add(size, Release);
            start = self.next.load(Relaxed);
        }
    }
}

/// The helper threads and what they share with the thread that posts a job.
struct Pool {
    /// Helper threads started (the caller is not one).
    helpers: AtomicUsize,
    /// Held by the thread whose job is running.
    submit: Mutex<()>,
    /// Bumped once per posted job; helpers wait for it to change.
    epoch: AtomicUsize,
    /// The running job, or null.
    job: AtomicPtr<Job<'static>>,
    /// Helpers between seeing a new epoch and being done with the job they read.
    active: AtomicUsize,
    /// Helpers parked on `wake`.
    sleepers: AtomicUsize,
    park: Mutex<()>,
    wake: Condvar,
}

/// The pool, started on first use; `None` with a single thread.
fn pool() -> Option<&'static Pool> {
    static POOL: OnceLock<Option<&'static Pool>> = OnceLock::new();
    *POOL.get_or_init(|| {
        let threads = match THREADS.load(SeqCst) {
            0 => crate::model::kernels::physical_cores(),
            n => n,
        };
        if threads <= 1 {
            return None;
        }
        // Leaked: the helpers live as long as the process.
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            helpers: AtomicUsize::new(0),
            submit: Mutex::new(()),
            epoch: AtomicUsize::new(0),
            job: AtomicPtr::new(ptr::null_mut()),
            active: AtomicUsize::new(0),
            sleepers: AtomicUsize::new(0),
            park: Mutex::new(()),
            wake: Condvar::new(),
        }));
        for i in 1..threads {
            let spawned = std::thread::Builder::new()
                .name(format!("codellama-cpu-{i}"))
                .spawn(move || pool.serve());
            // Fewer helpers than asked for (a thread limit) only means fewer participants.
            if spawned.is_ok() {
                pool.helpers.fetch_add(1, SeqCst);
            }
        }
        Some(pool).filter(|pool| pool.helpers.load(SeqCst) > 0)
    })
}

impl Pool {
    fn helpers(&self) -> usize {
        self.helpers.load(Relaxed)
    }

    /// Posts `job`, works on it, and returns once no helper can touch it any more. The caller
    /// holds `submit`.
    fn run(&self, job: &Job<'_>) {
        let posted = ptr::from_ref(job).cast_mut().cast::<Job<'static>>();
        self.job.store(posted, SeqCst);
        self.epoch.fetch_add(1, SeqCst);
        if self.sleepers.load(SeqCst) > 0 {
            let _parked = self.park.lock().unwrap_or_else(PoisonError::into_inner);
            self.wake.notify_all();
        }
        job.help();
        while job.finished.load(Acquire) < job.units {
            std::hint::spin_loop();
        }
        // A helper that read `posted` counted itself in `active` before reading it (both
        // SeqCst), so once the pointer is gone and `active` is 0, none still holds it.
        self.job.store(ptr::null_mut(), SeqCst);
        while self.active.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
        let panic = job
            .panic
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(panic) = panic {
            resume_unwind(panic);
        }
    }

    /// A helper's life: wait for a job, help with it, repeat.
    fn serve(&self) {
        let mut seen = self.epoch.load(SeqCst);
        loop {
            seen = self.next_epoch(seen);
            self.active.fetch_add(1, SeqCst);
            let job = self.job.load(SeqCst);
            if !job.is_null() {
                // SAFETY: the posting thread keeps the job alive until `active` drops to 0
                // after it cleared `job` (see `run`), and this thread is counted in `active`.
                unsafe { &*job }.help();
            }
            self.active.fetch_sub(1, SeqCst);
        }
    }

    /// Waits for the epoch to move past `seen`: spinning for [`SPIN`], then parked.
    fn next_epoch(&self, seen: usize) -> usize {
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let now = self.epoch.load(SeqCst);
            if now != seen {
                return now;
            }
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                break;
            }
        }
        let mut parked = self.park.lock().unwrap_or_else(PoisonError::into_inner);
        // Counted before the check below: a poster that bumps the epoch after it sees the count
        // and takes `park` to wake this thread, so the bump cannot fall between check and wait.
        self.sleepers.fetch_add(1, SeqCst);
        loop {
            let now = self.epoch.load(SeqCst);
            if now != seen {
                self.sleepers.fetch_sub(1, SeqCst);
                return now;
            }
            parked = self
                .wake
                .wait(parked)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicBool;

    use super::*;

    #[test]
    fn every_unit_is_worked_once() {
        for units in [0, 1, 2, 3, 17, 1000, 100_000] {
            for min_range in [1, 4, 64] {
                let counts: Vec<AtomicUsize> = (0..units).map(|_| AtomicUsize::new(0)).collect();
                for_each_range(units, min_range, |range| {
                    assert!(range.end <= units && !range.is_empty());
                    for i in range {
                        counts[i].fetch_add(1, Relaxed);
                    }
                });
                assert!(
                    counts.iter().all(|c| c.load(Relaxed) == 1),
                    "{units} {min_range}"
                );
            }
        }
    }

    #[test]
    fn items_are_each_given_to_one_call() {
        let mut items: Vec<(usize, u64)> = (0..5000).map(|i| (i, 0)).collect();
        for_each_mut(
            &mut items,
            || 0u64,
            |calls, index, item| {
                *calls += 1;
                assert_eq!(item.0, index);
                item.1 += index as u64 * 3 + 1;
            },
        );
        assert!(items.iter().all(|&(i, v)| v == i as u64 * 3 + 1));
    }

    #[test]
    fn concurrent_and_nested_loops_finish() {
        // Several threads at once (tests run in parallel too), each nesting a loop in a loop:
        // whoever does not get the helpers runs its loop itself.
        let total = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..50 {
                        for_each_range(64, 1, |outer| {
                            for _ in outer {
                                for_each_range(8, 1, |inner| {
                                    total.fetch_add(inner.len(), Relaxed);
                                });
                            }
                        });
                    }
                });
            }
        });
        assert_eq!(total.load(Relaxed), 4 * 50 * 64 * 8);
    }

    #[test]
    fn a_panic_in_a_step_reaches_the_caller_after_the_others_finish() {
        let done = AtomicUsize::new(0);
        let result = catch_unwind(AssertUnwindSafe(|| {
            for_each_range(1000, 1, |range| {
                if range.contains(&500) {
                    panic!("step failed");
                }
                done.fetch_add(range.len(), Relaxed);
            })
        }));
        let message = result.expect_err("the panic is rethrown");
        assert_eq!(message.downcast_ref::<&str>(), Some(&"step failed"));
        assert!(done.load(Relaxed) < 1000);
        // The pool still works afterwards.
        let after = AtomicUsize::new(0);
        for_each_range(1000, 1, |range| {
            after.fetch_add(range.len(), Relaxed);
        });
        assert_eq!(after.load(Relaxed), 1000);
    }

    #[test]
    fn helpers_wake_after_parking() {
        if threads() < 2 {
            eprintln!("skipped: a single thread has no helpers to wake");
            return;
        }
        for _ in 0..3 {
            std::thread::sleep(SPIN * 3);
            // The caller takes unit 0 and holds it until another thread has done unit 1: only a
            // woken helper can.
            let second_done = AtomicBool::new(false);
            for_each_range(2, 1, |range| {
                if range.contains(&1) {
                    second_done.store(true, SeqCst);
                }
                if range.contains(&0) {
                    let start = Instant::now();
                    while !second_done.load(SeqCst) {
                        assert!(start.elapsed() < Duration::from_secs(10), "no helper woke");
                        std::thread::yield_now();
                    }
                }
            });
        }
    }
}
