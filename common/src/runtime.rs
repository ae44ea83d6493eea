//! The Tokio runtime each binary runs on, chosen by how many threads carry its traffic:
//! one is Tokio's current-thread runtime (every hop of a request on one thread, no
//! cross-thread wake-ups or work stealing: docs/benchmarks.md), more a multi-thread
//! runtime with that many workers. The gateway asks for as many as it has CPUs, the
//! sidecar for `BERTH_SIDECAR_THREADS` (default 1).

/// A runtime with `threads` threads for the traffic (0 counts as 1), I/O and timers on.
pub fn build(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    }
}

/// The runtime's name for logs: `current_thread` or `multi_thread`.
pub fn flavor(threads: usize) -> &'static str {
    if threads <= 1 { "current_thread" } else { "multi_thread" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_thread_is_the_current_thread_runtime() {
        use tokio::runtime::RuntimeFlavor;
        for (threads, want) in [
            (0, RuntimeFlavor::CurrentThread),
            (1, RuntimeFlavor::CurrentThread),
            (3, RuntimeFlavor::MultiThread),
        ] {
            let rt = build(threads).expect("runtime");
            assert_eq!(rt.handle().runtime_flavor(), want, "{threads}");
            assert_eq!(rt.block_on(async { 7 }), 7);
            assert_eq!(
                flavor(threads),
                if want == RuntimeFlavor::CurrentThread {
                    "current_thread"
                } else {
                    "multi_thread"
                }
            );
        }
    }
}
