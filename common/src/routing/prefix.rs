//! The routers of one host (or of any host) in priority order, with a prefix tree over
//! the path prefix each rule requires: a request is tested only against the routers whose
//! required prefix its path starts with, and those whose rule requires none, still in
//! priority order. With 1,000 `PathPrefix` routers on one host, finding the last one is a
//! walk down the request's path, not 1,000 rule evaluations (issue 27).

/// At most this many bytes of a required prefix are indexed: a path that starts with the
/// prefix starts with these too, and the rule itself checks the rest. A trie node per byte
/// of a 64 KiB hostile prefix would cost some 80 times its text.
const MAX_INDEXED_BYTES: usize = 64;

/// Routers in priority order, indexed by required path prefix.
#[derive(Debug, Clone, Default)]
pub struct RouteList {
    /// Router indices (into `Snapshot::routers`), highest priority first.
    order: Vec<u32>,
    /// Positions in `order` of the routers whose rule requires no path prefix.
    unfiltered: Vec<u32>,
    /// A byte trie over required prefixes; node 0 is the root (the empty prefix).
    nodes: Vec<TrieNode>,
}

#[derive(Debug, Clone, Default)]
struct TrieNode {
    /// Children by next byte, sorted by it.
    children: Vec<(u8, u32)>,
    /// Positions in `order` of the routers whose prefix ends here, ascending.
    here: Vec<u32>,
}

impl RouteList {
    /// Append a router of lower priority than every one before it, with the path prefix
    /// its rule requires.
    pub fn push(&mut self, router: u32, prefix: Option<&str>) {
        let pos = self.order.len() as u32;
        self.order.push(router);
        let Some(prefix) = prefix else {
            self.unfiltered.push(pos);
            return;
        };
        if self.nodes.is_empty() {
            self.nodes.push(TrieNode::default());
        }
        let mut at = 0usize;
        for &b in prefix.as_bytes().iter().take(MAX_INDEXED_BYTES) {
            at = match self.nodes[at].children.binary_search_by_key(&b, |c| c.0) {
                Ok(i) => self.nodes[at].children[i].1 as usize,
                Err(i) => {
                    let next = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    self.nodes[at].children.insert(i, (b, next as u32));
                    next
                }
            };
        }
        self.nodes[at].here.push(pos);
    }

    /// Every router, highest priority first.
    pub fn all(&self) -> &[u32] {
        &self.order
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The routers a request on `path` may match, highest priority first: those whose
    /// required prefix `path` starts with, and those that require none.
    pub fn candidates(&self, path: &str) -> Candidates<'_> {
        let mut hits = Vec::new();
        if let Some(mut node) = self.nodes.first() {
            hits.extend_from_slice(&node.here);
            for &b in path.as_bytes() {
                match node.children.binary_search_by_key(&b, |c| c.0) {
                    Ok(i) => node = &self.nodes[node.children[i].1 as usize],
                    Err(_) => break,
                }
                hits.extend_from_slice(&node.here);
            }
            hits.sort_unstable();
        }
        Candidates {
            order: &self.order,
            unfiltered: &self.unfiltered,
            hits,
            i: 0,
            j: 0,
        }
    }
}

/// [`RouteList::candidates`]: two ascending lists of positions merged.
pub struct Candidates<'a> {
    order: &'a [u32],
    unfiltered: &'a [u32],
    hits: Vec<u32>,
    i: usize,
    j: usize,
}

impl Iterator for Candidates<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let pos = match (self.unfiltered.get(self.i), self.hits.get(self.j)) {
            (Some(&a), Some(&b)) if a < b => {
                self.i += 1;
                a
            }
            (_, Some(&b)) => {
                self.j += 1;
                b
            }
            (Some(&a), None) => {
                self.i += 1;
                a
            }
            (None, None) => return None,
        };
        self.order.get(pos as usize).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::RouteList;

    #[test]
    fn candidates_keep_priority_order_and_skip_prefixes_the_path_lacks() {
        let mut l = RouteList::default();
        l.push(10, Some("/api/v2"));
        l.push(11, None);
        l.push(12, Some("/api"));
        l.push(13, Some("/web"));
        l.push(14, Some("/"));
        l.push(15, None);
        assert_eq!(l.candidates("/api/v2/x").collect::<Vec<_>>(), [10, 11, 12, 14, 15]);
        assert_eq!(l.candidates("/api/v1").collect::<Vec<_>>(), [11, 12, 14, 15]);
        assert_eq!(l.candidates("/web").collect::<Vec<_>>(), [11, 13, 14, 15]);
        assert_eq!(l.candidates("").collect::<Vec<_>>(), [11, 15]);
        assert_eq!(l.all(), [10, 11, 12, 13, 14, 15]);
    }

    #[test]
    fn long_prefixes_index_their_start_only() {
        let long = format!("/{}", "a".repeat(64 * 1024));
        let mut l = RouteList::default();
        l.push(1, Some(&long));
        l.push(2, Some("/b"));
        assert!(l.nodes.len() <= super::MAX_INDEXED_BYTES + 3, "{} nodes", l.nodes.len());
        // A candidate, not a match: the rule decides on the whole prefix.
        assert_eq!(l.candidates(&format!("/{}", "a".repeat(100))).collect::<Vec<_>>(), [1]);
        assert_eq!(l.candidates("/b").collect::<Vec<_>>(), [2]);
    }

    #[test]
    fn an_empty_prefix_matches_every_path() {
        let mut l = RouteList::default();
        l.push(1, Some(""));
        l.push(2, Some("/a"));
        assert_eq!(l.candidates("/b").collect::<Vec<_>>(), [1]);
        assert_eq!(l.candidates("/a").collect::<Vec<_>>(), [1, 2]);
    }
}
