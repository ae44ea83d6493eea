//! berth-local, the demo apps and the benchmarks (not built yet).
