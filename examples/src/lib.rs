//! berth-local (a local ECS), the demo apps and the benchmarks. The binaries live in `src/bin/`.
