//! The report `berth-gateway check` and `berth-sidecar check` print, as `linkerd check`
//! does: a line per check, `ok` or `FAIL` with what to change, then a summary and the
//! exit code. One module so both binaries read the same way.

/// The checks so far, and how many failed.
#[derive(Debug, Default)]
pub struct Checklist {
    pub failed: usize,
}

impl Checklist {
    pub fn ok(&mut self, what: &str, detail: impl std::fmt::Display) {
        println!("ok   {what}: {detail}");
    }

    pub fn fail(&mut self, what: &str, detail: impl std::fmt::Display, fix: impl std::fmt::Display) {
        self.failed += 1;
        println!("FAIL {what}: {detail}\n     fix: {fix}");
    }

    /// Print the summary; the exit code (1 when a check failed).
    pub fn finish(self) -> i32 {
        if self.failed == 0 {
            println!("all checks passed");
            0
        } else {
            println!("{} check(s) failed", self.failed);
            1
        }
    }
}
