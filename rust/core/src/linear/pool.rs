//! A small persistent thread pool for [`super::PackedLinear::forward`]: a decoding step makes
//! ~200 linear calls of 0.05-1 ms each, so spawning threads per call (tens of microseconds
//! each) would cost a noticeable share of the step. Workers are started on first use (as many
//! as the largest thread count asked for, minus the calling thread), then sleep on a condition
//! variable between calls. One call runs at a time (others wait their turn).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

type Job = dyn Fn(usize) + Sync;

/// The job of the current call, its lifetime erased (see the SAFETY note in [`run`]).
#[derive(Clone, Copy)]
struct JobPtr(*const Job);

// SAFETY: the pointer is only dereferenced by workers while `run` keeps the job alive, and the
// job is `Sync`, so calling it from several threads at once is allowed.
unsafe impl Send for JobPtr {}

struct State {
    generation: u64,
    job: Option<(JobPtr, usize)>,
    pending: usize,
}

struct Shared {
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
            state: Mutex::new(State { generation: 0, job: None, pending: 0 }),
            wake: Condvar::new(),
            done: Condvar::new(),
        }),
        workers: Mutex::new(0),
        turn: Mutex::new(()),
    })
}

fn worker(index: usize, shared: Arc<Shared>) {
    let mut seen = 0u64;
    loop {
        let mut st = lock(&shared.state);
        while st.generation == seen {
            st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        seen = st.generation;
        let Some((job, parts)) = st.job else { continue };
        drop(st);
        if index >= parts {
            continue;
        }
        // SAFETY: `run` published this job and waits until `pending` is 0, which needs this
        // worker's decrement below, so the job is alive while it is called.
        let _ = catch_unwind(AssertUnwindSafe(|| unsafe { (*job.0)(index) }));
        let mut st = lock(&shared.state);
        st.pending -= 1;
        if st.pending == 0 {
            shared.done.notify_all();
        }
    }
}

/// Starts workers until there are `want` (or a spawn fails); returns how many there are.
fn ensure_workers(p: &Pool, want: usize) -> usize {
    let mut n = lock(&p.workers);
    while *n < want {
        let shared = Arc::clone(&p.shared);
        let index = *n + 1;
        let spawned = std::thread::Builder::new()
            .name(format!("tokenloom-linear-{index}"))
            .spawn(move || worker(index, shared));
        if spawned.is_err() {
            break;
        }
        *n += 1;
    }
    *n
}

/// Calls `f(0)`, ..., `f(parts - 1)`, each once, `f(0)` on the calling thread and the others on
/// the pool's workers, and returns when all have returned (with fewer workers than asked for,
/// the calling thread runs the parts left over). A panic in `f` is re-raised here after every
/// part has finished.
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
    // SAFETY: the lifetime of `f` is erased to hand it to the workers; this function does not
    // return (nor unwind: the caller's own parts run under catch_unwind) before `pending` is 0,
    // i.e. before every worker call of `f` has returned, and the job is taken back below.
    let job = JobPtr(unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + '_), *const Job>(f) });
    {
        let mut st = lock(&p.shared.state);
        st.generation += 1;
        st.job = Some((job, on_workers));
        st.pending = on_workers - 1;
    }
    p.shared.wake.notify_all();
    let mine = catch_unwind(AssertUnwindSafe(|| {
        f(0);
        for part in on_workers..parts {
            f(part);
        }
    }));
    let mut st = lock(&p.shared.state);
    while st.pending > 0 {
        st = p.shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
    }
    st.job = None;
    drop(st);
    if let Err(e) = mine {
        resume_unwind(e);
    }
}
