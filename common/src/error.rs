//! Error text for logs and messages: every cause in an error's chain, each said once
//! (io errors repeat themselves through wrappers).

/// `outer: cause: root cause`, skipping a cause that repeats the text before it.
pub fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        let next = inner.to_string();
        if !s.ends_with(&next) {
            s.push_str(": ");
            s.push_str(&next);
        }
        cur = inner.source();
    }
    s
}
