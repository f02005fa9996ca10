//! A small persistent thread pool for [`super::PackedLinear::forward`]: a decoding step makes
//! ~200 linear calls of 0.05-1 ms each, so spawning threads per call (tens of microseconds
//! each) would cost a noticeable share of the step. Workers are started on first use (as many
//! as the largest thread count asked for, minus the calling thread). One call runs at a time
//! (others wait their turn).
//!
//! Between calls a worker first spins for a short while ([`SPIN`]) watching an atomic
//! generation counter, and only then sleeps on a condition variable. Waking a sleeping worker
//! costs a futex system call on the caller's side and a scheduler wake-up (34-51 us a call
//! measured from Python on a 2-core Xeon; ~40 us in the linear tests' `tiny_call_cost` after a
//! gap longer than the spin), more than a small linear itself; a spinning worker sees the new
//! generation within a fraction of a microsecond and the caller makes no system call at all
//! (it notifies the condition variable only when some worker is parked). The caller waits for
//! the workers' parts the same way: a bounded spin, then the condition variable.
//!
//! Protocol (no lost wake-ups): the job, its generation and the parked count's meaning are
//! guarded by one mutex. A worker parks by taking the mutex, counting itself in `parked`, and
//! re-checking the generation before it waits (which releases the mutex); the caller publishes
//! a job under the same mutex and reads `parked` after releasing it, so either the worker saw
//! the new generation or the caller sees it parked and notifies. The last worker to finish a
//! part likewise takes the mutex before it checks whether the caller sleeps.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

type Job = dyn Fn(usize) + Sync;

/// How long an idle worker (and a caller waiting for its workers) spins before it sleeps on
/// the condition variable. Long enough to span the longest gap between two linear calls of one
/// model step (the norms, rotary, cache append and attention between v_proj and o_proj: up to
/// a few hundred microseconds for a 17-33-token tree with torch on one thread), so the next
/// call finds its workers awake; short enough that a worker stops burning its core soon after
/// the step ends (e.g. while Python samples or builds the next tree). Measured on the 2-core
/// Intel Xeon (the embedded model, float32, tiles-trees, 200 cached tokens, medians of 5): a
/// 9 / 17 / 33-token step took 51.8 / 63.1 / 89.8 ms with 100 us, 44.9 / 53.3 / 77.0 ms with
/// 1 ms and 45.0 / 54.4 / 79.5 ms with 3 ms; a one-token step in tiles 37.1 / 33.3 / 33.6 ms.
/// Spinners yield every [`YIELD_EVERY`] iterations, so on a machine with as many cores as
/// threads (2 here) they never keep torch's own OpenMP threads off a core.
pub(super) const SPIN: Duration = Duration::from_millis(1);

/// Spin iterations (`spin_loop` hints, ~40-150 cycles each) between two `yield_now` calls.
const YIELD_EVERY: u32 = 16;

/// The job of the current call, its lifetime erased (see the SAFETY note in [`run`]).
#[derive(Clone, Copy)]
struct JobPtr(*const Job);

// SAFETY: the pointer is only dereferenced by workers while `run` keeps the job alive, and the
// job is `Sync`, so calling it from several threads at once is allowed.
unsafe impl Send for JobPtr {}

struct State {
    generation: u64,
    job: Option<(JobPtr, usize)>,
    /// The caller sleeps on `done` (set and cleared under the mutex).
    caller_waiting: bool,
    /// The first panic of a worker's part in the current call, re-raised by the caller.
    panic: Option<Box<dyn Any + Send>>,
}

/// A value alone on its cache line (what spinners read is not invalidated by other writes).
#[repr(align(64))]
struct Padded<T>(T);

struct Shared {
    /// `State::generation`, readable without the mutex: what spinning workers watch.
    generation: Padded<AtomicU64>,
    /// Worker parts of the current call not finished yet.
    pending: Padded<AtomicUsize>,
    /// Workers parked (or about to park) on `wake`; changed under the mutex.
    parked: AtomicUsize,
    state: Mutex<State>,
    wake: Condvar,
    done: Condvar,
}

struct Pool {
    shared: Arc<Shared>,
    workers: Mutex<usize>,
    turn: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker never panics while holding a lock (jobs run outside it, under catch_unwind).
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        shared: Arc::new(Shared {
            generation: Padded(AtomicU64::new(0)),
            pending: Padded(AtomicUsize::new(0)),
            parked: AtomicUsize::new(0),
            state: Mutex::new(State { generation: 0, job: None, caller_waiting: false, panic: None }),
            wake: Condvar::new(),
            done: Condvar::new(),
        }),
        workers: Mutex::new(0),
        turn: Mutex::new(()),
    })
}

/// Spins until `ready()` or for at most [`SPIN`]; returns whether it became ready.
fn spin_until(ready: impl Fn() -> bool) -> bool {
    if ready() {
        return true;
    }
    let start = Instant::now();
    let mut i = 0u32;
    loop {
        if ready() {
            return true;
        }
        i = i.wrapping_add(1);
        if i.is_multiple_of(YIELD_EVERY) {
            std::thread::yield_now();
            if start.elapsed() >= SPIN {
                return ready();
            }
        } else {
            std::hint::spin_loop();
        }
    }
}

fn worker(index: usize, shared: Arc<Shared>, mut seen: u64) {
    loop {
        if !spin_until(|| shared.generation.0.load(Ordering::Acquire) != seen) {
            let mut st = lock(&shared.state);
            shared.parked.fetch_add(1, Ordering::SeqCst);
            while st.generation == seen {
                st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            shared.parked.fetch_sub(1, Ordering::SeqCst);
        }
        let st = lock(&shared.state);
        // A worker that takes no part in a call may only look now, after the next call was
        // published: it then takes that one (it cannot have missed a part of its own, since a
        // call ends only after all its parts ran).
        seen = st.generation;
        let Some((job, parts)) = st.job else { continue };
        drop(st);
        if index >= parts {
            continue;
        }
        // SAFETY: `run` published this job and waits until `pending` is 0, which needs this
        // worker's decrement below, so the job is alive while it is called.
        if let Err(e) = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.0)(index) })) {
            // Stored before `pending` drops: the caller takes it only after that.
            lock(&shared.state).panic.get_or_insert(e);
        }
        if shared.pending.0.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Under the mutex: the caller either has not yet checked `pending` (and will see
            // 0) or already sleeps on `done` with `caller_waiting` set.
            let st = lock(&shared.state);
            if st.caller_waiting {
                shared.done.notify_all();
            }
        }
    }
}

/// Starts workers until there are `want` (or a spawn fails); returns how many there are.
fn ensure_workers(p: &Pool, want: usize) -> usize {
    let mut n = lock(&p.workers);
    while *n < want {
        let shared = Arc::clone(&p.shared);
        let index = *n + 1;
        let seen = shared.generation.0.load(Ordering::Acquire);
        let spawned = std::thread::Builder::new()
            .name(format!("tokenloom-linear-{index}"))
            .spawn(move || worker(index, shared, seen));
        if spawned.is_err() {
            break;
        }
        *n += 1;
    }
    *n
}

/// Calls `f(0)`, ..., `f(parts - 1)`, each once, `f(0)` on the calling thread and the others on
/// the pool's workers, and returns when all have returned (with fewer workers than asked for,
/// the calling thread runs the parts left over). A panic in `f` (the caller's part first, else
/// the first worker's) is re-raised here after every part has finished.
pub(super) fn run(parts: usize, f: &(dyn Fn(usize) + Sync)) {
    if parts <= 1 {
        if parts == 1 {
            f(0);
        }
        return;
    }
    let p = pool();
    let _turn = lock(&p.turn);
    let have = ensure_workers(p, parts - 1);
    let on_workers = parts.min(have + 1);
    let sh = &*p.shared;
    // SAFETY: the lifetime of `f` is erased to hand it to the workers; this function does not
    // return (nor unwind: the caller's own parts run under catch_unwind) before `pending` is 0,
    // i.e. before every worker call of `f` has returned, and the job is taken back below.
    let job = JobPtr(unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Job>(f) });
    {
        let mut st = lock(&sh.state);
        st.generation += 1;
        st.job = Some((job, on_workers));
        sh.pending.0.store(on_workers - 1, Ordering::Relaxed);
        // Release: a spinner that sees the generation sees `pending` too (the job it reads
        // under the mutex).
        sh.generation.0.store(st.generation, Ordering::Release);
    }
    // Read after the mutex is released: a worker that took the mutex to park before the
    // publication above is counted and already waiting (the wait released the mutex), so the
    // notification reaches it; one that takes it after sees the new generation and never waits.
    // Spinning workers need no notification (no system call then).
    if sh.parked.load(Ordering::SeqCst) > 0 {
        sh.wake.notify_all();
    }
    let mine = catch_unwind(AssertUnwindSafe(|| {
        f(0);
        for part in on_workers..parts {
            f(part);
        }
    }));
    if !spin_until(|| sh.pending.0.load(Ordering::Acquire) == 0) {
        let mut st = lock(&sh.state);
        st.caller_waiting = true;
        while sh.pending.0.load(Ordering::Acquire) > 0 {
            st = sh.done.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.caller_waiting = false;
    }
    let mut st = lock(&sh.state);
    st.job = None;
    let theirs = st.panic.take();
    drop(st);
    if let Err(e) = mine {
        resume_unwind(e);
    }
    if let Some(e) = theirs {
        resume_unwind(e);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::{run, SPIN};

    #[test]
    fn every_part_runs_once_over_many_calls_and_after_sleeps() {
        for round in 0..200 {
            let parts = 2 + round % 3;
            let hits: Vec<AtomicUsize> = (0..parts).map(|_| AtomicUsize::new(0)).collect();
            run(parts, &|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
            if round % 50 == 0 {
                std::thread::sleep(SPIN * 3);
            }
        }
    }

    #[test]
    fn a_worker_panic_reaches_the_caller() {
        let r = std::panic::catch_unwind(|| {
            run(2, &|i| {
                if i == 1 {
                    panic!("part one failed");
                }
            })
        });
        let e = r.expect_err("the worker's panic is re-raised");
        assert_eq!(e.downcast_ref::<&str>().copied(), Some("part one failed"));
        // and the pool still works
        let hits = AtomicUsize::new(0);
        run(2, &|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }
}
