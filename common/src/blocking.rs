//! A small pool of threads for CPU-heavy work asked for by the request path (a bcrypt
//! verification costs tens to hundreds of milliseconds): run there, it never stalls the
//! async workers that carry every other request. Bounded twice: a few threads, and a queue
//! of [`QUEUE`] jobs; past that a job is refused at once ([`Busy`]) rather than queued
//! without limit. Runtime-agnostic: the result comes back through a future of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll, Waker};

/// Jobs waiting for a thread, at most.
const QUEUE: usize = 256;
/// Threads at most (fewer on a smaller machine: one per core).
const MAX_THREADS: usize = 4;

type Job = Box<dyn FnOnce() + Send>;

/// The queue is full: too much heavy work is already waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the pool for heavy work is busy")]
pub struct Busy;

fn pool() -> &'static Mutex<Option<SyncSender<Job>>> {
    static POOL: OnceLock<Mutex<Option<SyncSender<Job>>>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        let threads = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_THREADS);
        let mut started = 0;
        for i in 0..threads {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("berth-heavy-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                });
            started += usize::from(spawned.is_ok());
        }
        // Without a thread the work could never run: refuse it instead of queueing.
        Mutex::new((started > 0).then_some(tx))
    })
}

/// Run `f` on the pool; the future resolves to its result.
pub fn run<T, F>(f: F) -> Result<Done<T>, Busy>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let slot = Arc::new(Mutex::new(Slot::<T> {
        value: None,
        waker: None,
    }));
    let theirs = slot.clone();
    let job: Job = Box::new(move || {
        let value = f();
        let mut s = theirs.lock().unwrap_or_else(|e| e.into_inner());
        s.value = Some(value);
        if let Some(w) = s.waker.take() {
            w.wake();
        }
    });
    let sender = pool().lock().unwrap_or_else(|e| e.into_inner()).clone().ok_or(Busy)?;
    match sender.try_send(job) {
        Ok(()) => Ok(Done { slot }),
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => Err(Busy),
    }
}

struct Slot<T> {
    value: Option<T>,
    waker: Option<Waker>,
}

/// The result of a job given to [`run`].
pub struct Done<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> std::fmt::Debug for Done<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Done")
    }
}

impl<T> Future for Done<T> {
    type Output = T;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut s = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Drive a future to completion on this thread (for tests and synchronous callers).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl std::task::Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = std::pin::pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_off_the_caller_and_refuses_past_its_queue() {
        let caller = std::thread::current().id();
        let ran_on = block_on(run(move || std::thread::current().id()).expect("room"));
        assert_ne!(ran_on, caller);

        // Fill every thread and the whole queue with jobs that wait on a gate.
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let mut done = Vec::new();
        let mut refused = 0;
        for _ in 0..(QUEUE + MAX_THREADS + 8) {
            let gate = gate.clone();
            match run(move || {
                let (open, cv) = &*gate;
                let mut o = open.lock().unwrap();
                while !*o {
                    o = cv.wait(o).unwrap();
                }
            }) {
                Ok(d) => done.push(d),
                Err(Busy) => refused += 1,
            }
        }
        assert!(refused > 0, "a full queue refuses");
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
        for d in done {
            block_on(d);
        }
        assert!(block_on(run(|| 7).expect("room again")) == 7);
    }
}
