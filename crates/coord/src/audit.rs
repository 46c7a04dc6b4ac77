//! The lease audit: vector time that decides something. Every node logs each grant and
//! release of a lease with its vector timestamp; merged, the logs must show, for every
//! key, any two critical sections ordered by happened-before (one's release before the
//! other's grant). Two that are concurrent mean two holders at once, whatever the clocks
//! on the wall said; the audit names them.
//!
//! Pure: the node keeps the log ([`crate::node`]), `cluster lease audit` fetches and
//! merges, the simulator logs the same events for the algorithms' tests.

use crate::clock::{Causality, NodeId, VectorStamp};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub enum Kind {
    Grant,
    Release,
}

/// One logged event: which node, its position in that node's log, the key, and the
/// vector time of the event.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Event {
    pub node: NodeId,
    pub seq: u64,
    pub key: Vec<u8>,
    pub kind: Kind,
    pub vector: Vec<(NodeId, u64)>,
}

/// A critical section: a grant and the release that ended it (none: still held).
#[derive(Debug, Clone)]
struct Section {
    node: NodeId,
    seq: u64,
    grant: VectorStamp,
    release: Option<VectorStamp>,
}

/// Two critical sections of one key that happened-before does not order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub key: Vec<u8>,
    /// (node, log position of the grant) of each.
    pub a: (NodeId, u64),
    pub b: (NodeId, u64),
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key {}: the critical section granted at node {} (event {}) and the one at node {} (event {}) are concurrent",
            crate::node::hex(&self.key),
            self.a.0,
            self.a.1,
            self.b.0,
            self.b.1
        )
    }
}

/// What the audit saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub keys: usize,
    pub sections: usize,
}

fn stamp(v: &[(NodeId, u64)]) -> VectorStamp {
    VectorStamp(v.iter().copied().collect())
}

/// `a` ended before `b` began.
fn before(a: &Section, b: &Section) -> bool {
    a.release.as_ref().is_some_and(|r| r.compare(&b.grant) == Causality::Before)
}

/// Checks the merged logs of every node (any order; each node's events in its order).
pub fn audit(events: &[Event]) -> Result<Report, Violation> {
    let mut by_node: BTreeMap<NodeId, Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_node.entry(e.node).or_default().push(e);
    }
    let mut by_key: BTreeMap<Vec<u8>, Vec<Section>> = BTreeMap::new();
    for (_, mut evs) in by_node {
        evs.sort_by_key(|e| e.seq);
        for e in evs {
            let sections = by_key.entry(e.key.clone()).or_default();
            match e.kind {
                Kind::Grant => {
                    sections.push(Section { node: e.node, seq: e.seq, grant: stamp(&e.vector), release: None })
                }
                Kind::Release => {
                    if let Some(s) = sections.iter_mut().rev().find(|s| s.node == e.node && s.release.is_none()) {
                        s.release = Some(stamp(&e.vector));
                    }
                }
            }
        }
    }
    let mut report = Report { keys: by_key.len(), sections: 0 };
    for (key, sections) in by_key {
        report.sections += sections.len();
        for (i, a) in sections.iter().enumerate() {
            for b in &sections[i + 1..] {
                if !before(a, b) && !before(b, a) {
                    return Err(Violation { key, a: (a.node, a.seq), b: (b.node, b.seq) });
                }
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(node: NodeId, seq: u64, kind: Kind, vector: &[(NodeId, u64)]) -> Event {
        Event { node, seq, key: b"k".to_vec(), kind, vector: vector.to_vec() }
    }

    /// Node 1 holds, releases, passes the token (its stamp reaches node 2), node 2 holds:
    /// ordered. Had node 2 been granted without that message, the two are concurrent and
    /// the audit names them.
    #[test]
    fn ordered_sections_pass_and_concurrent_ones_are_named() {
        let ordered = [
            ev(1, 0, Kind::Grant, &[(1, 1)]),
            ev(1, 1, Kind::Release, &[(1, 2)]),
            // The token message carried (1, 3); node 2's receive merged it.
            ev(2, 0, Kind::Grant, &[(1, 3), (2, 2)]),
            ev(2, 1, Kind::Release, &[(1, 3), (2, 3)]),
        ];
        assert_eq!(audit(&ordered), Ok(Report { keys: 1, sections: 2 }));
        let concurrent = [
            ev(1, 0, Kind::Grant, &[(1, 1)]),
            ev(1, 1, Kind::Release, &[(1, 2)]),
            ev(2, 0, Kind::Grant, &[(2, 1)]),
            ev(2, 1, Kind::Release, &[(2, 2)]),
        ];
        let v = audit(&concurrent).unwrap_err();
        assert_eq!((v.a, v.b), ((1, 0), (2, 0)));
        assert!(v.to_string().contains("are concurrent"), "{v}");
        // A section still held is ordered only if the other ended before it began.
        let held = [ev(1, 0, Kind::Grant, &[(1, 1)]), ev(2, 0, Kind::Grant, &[(1, 1), (2, 1)])];
        assert!(audit(&held).is_err());
    }
}
