//! `berth-sidecar`: the per-task sidecar. Not built yet (issue "The sidecar and the mesh
//! control plane"); it says so instead of pretending to run.

fn main() {
    eprintln!("berth-sidecar: not implemented yet; see the sidecar issue");
    std::process::exit(2);
}
