//! Raymond's tree as echo waves find it ([`crate::echo`]): what each `cluster node` says
//! in a wave, and what the wave's initiator decides from the answers. Pure functions.
//!
//! A wave is a consistent cut: a node sends no token message from joining a wave until
//! the wave's decision reaches it, and links are FIFO, so a token in flight when the wave
//! passes arrives before the wave's message on that link, and before the receiver
//! answers. Every token therefore shows up in exactly one answer, or is lost (with a dead
//! node, or on its way to one).
//!
//! The decision keeps the tree when it is whole (one tree epoch everywhere, every node's
//! parent answered, one token per lease), and otherwise rebuilds it on the wave's own
//! spanning tree, numbered above every tree before: each token stays where it is (the one
//! in use, else the highest fence, if there are several), and a lost token is made anew at
//! the new root with the new epoch as its fence's high half, above every fence granted.

use crate::clock::NodeId;
use crate::echo::{Report, WaveId};
use crate::mutex::raymond::Fence;
use std::collections::{BTreeMap, BTreeSet};

/// One lease key at one node.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct KeyState {
    pub key: Vec<u8>,
    /// The token is here (in use or idle).
    pub token: bool,
    pub using: bool,
    /// The fence of the token here (when `token`).
    pub fence: Fence,
    /// The local client holding the lease, if any.
    pub holder: Option<String>,
    /// Local clients waiting.
    pub waiters: u32,
}

/// What a node says in a wave.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct NodeState {
    /// The epoch of the tree it runs on (0: none yet).
    pub tree: u64,
    /// Its parent in that tree.
    pub parent: Option<NodeId>,
    pub lamport: u64,
    /// Live neighbours in the graph.
    pub neighbours: Vec<NodeId>,
    /// How many nodes its tree has.
    pub members: u32,
    pub keys: Vec<KeyState>,
}

/// A token's place in a rebuilt tree.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Placed {
    pub key: Vec<u8>,
    pub at: NodeId,
    pub fence: Fence,
    /// Made anew (it was lost).
    pub anew: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Rebuild {
    pub epoch: u64,
    /// Every node of the new tree and its parent (`None` at the root).
    pub parents: Vec<(NodeId, Option<NodeId>)>,
    pub tokens: Vec<Placed>,
}

/// What a wave's initiator decides: keep the tree (`rebuild` is `None`), or this new
/// one; or, when the wave reached no majority of the last tree's members (`no_quorum`:
/// how many answered, of how many), wait.
#[derive(Debug, Clone, PartialEq, Eq, bincode::Encode, bincode::Decode)]
pub struct Decision {
    pub rebuild: Option<Rebuild>,
    pub no_quorum: Option<(u32, u32)>,
}

/// Where one lease's tokens are, by the answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// (node, in use, fence) for every token found.
    pub at: Vec<(NodeId, bool, Fence)>,
    /// No token was found, and the tree's root answered without knowing the key: the
    /// token is at the root, not yet made (keys are made on first use).
    pub at_root: Option<NodeId>,
}

impl Tokens {
    pub fn count(&self) -> usize {
        self.at.len() + usize::from(self.at_root.is_some())
    }
}

/// The root of the tree the answers describe, if they agree on one tree whose root
/// answered.
fn old_root(r: &Report<NodeState>) -> Option<(NodeId, u64)> {
    let epochs: BTreeSet<u64> = r.nodes.values().map(|(_, s)| s.tree).collect();
    let [epoch] = epochs.into_iter().collect::<Vec<_>>()[..] else { return None };
    let roots: Vec<NodeId> = r.nodes.iter().filter(|(_, (_, s))| s.parent.is_none()).map(|(id, _)| *id).collect();
    match (epoch, roots.as_slice()) {
        (1.., [root]) => Some((*root, epoch)),
        _ => None,
    }
}

/// Every lease's tokens, by the answers.
pub fn tokens(r: &Report<NodeState>) -> BTreeMap<Vec<u8>, Tokens> {
    let mut out: BTreeMap<Vec<u8>, Tokens> = BTreeMap::new();
    for (&id, (_, s)) in &r.nodes {
        for k in &s.keys {
            let t = out.entry(k.key.clone()).or_insert(Tokens { at: Vec::new(), at_root: None });
            if k.token {
                t.at.push((id, k.using, k.fence));
            }
        }
    }
    if let Some((root, _)) = old_root(r) {
        let known: BTreeSet<&Vec<u8>> = r.nodes[&root].1.keys.iter().map(|k| &k.key).collect();
        for (key, t) in &mut out {
            if t.at.is_empty() && !known.contains(key) {
                t.at_root = Some(root);
            }
        }
    }
    out
}

/// Whether the answers describe one whole tree: one epoch, one root, every node's
/// parent among the answers, nobody reported dead, one token per lease.
pub fn whole(r: &Report<NodeState>) -> bool {
    old_root(r).is_some()
        && r.dead.is_empty()
        && r.nodes.values().all(|(_, s)| s.members as usize == r.nodes.len())
        && r.nodes.values().all(|(_, s)| s.parent.is_none_or(|p| r.nodes.contains_key(&p)))
        && tokens(r).values().all(|t| t.count() == 1)
}

/// The initiator's decision for `wave` from its answers.
pub fn decide(wave: WaveId, r: &Report<NodeState>) -> Decision {
    if whole(r) {
        return Decision { rebuild: None, no_quorum: None };
    }
    // The last tree: the highest epoch answered. A majority of its members must be here,
    // or a token it still holds elsewhere would be made again.
    let last = r.nodes.values().map(|(_, s)| s.tree).max().unwrap_or(0);
    if last > 0 {
        let members = r.nodes.values().filter(|(_, s)| s.tree == last).map(|(_, s)| s.members).max().unwrap_or(0);
        let answered = r.nodes.values().filter(|(_, s)| s.tree == last).count() as u32;
        if answered * 2 <= members {
            return Decision { rebuild: None, no_quorum: Some((answered, members)) };
        }
    }
    let epoch = wave.number.max(r.nodes.values().map(|(_, s)| s.tree + 1).max().unwrap_or(0));
    let placed = tokens(r)
        .into_iter()
        .map(|(key, t)| {
            // The token in use, else the highest fence; a lost one anew at the new root.
            let best = t.at.iter().max_by_key(|(_, using, fence)| (*using, *fence));
            match (best, t.at_root) {
                (Some(&(at, _, fence)), _) => Placed { key, at, fence, anew: false },
                (None, Some(root)) => {
                    Placed { key, at: root, fence: old_root(r).map_or(0, |(_, e)| e << 32), anew: false }
                }
                (None, None) => Placed { key, at: wave.initiator, fence: epoch << 32, anew: true },
            }
        })
        .collect();
    Decision {
        rebuild: Some(Rebuild {
            epoch,
            parents: r.nodes.iter().map(|(&id, (p, _))| (id, *p)).collect(),
            tokens: placed,
        }),
        no_quorum: None,
    }
}

/// The neighbour of `me` on the tree path to `to` (`None` when `to` is `me` or not in
/// the tree).
pub fn next_hop(parents: &BTreeMap<NodeId, Option<NodeId>>, me: NodeId, to: NodeId) -> Option<NodeId> {
    if to == me || !parents.contains_key(&to) {
        return None;
    }
    // Walk up from `to`: if we pass `me`, the node just below it is the hop; else up.
    let (mut at, mut below) = (to, to);
    for _ in 0..=parents.len() {
        if at == me {
            return Some(below);
        }
        match parents.get(&at).copied().flatten() {
            Some(p) => {
                below = at;
                at = p;
            }
            None => return parents.get(&me).copied().flatten(),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(tree: u64, parent: Option<NodeId>, keys: &[(&str, bool, bool, Fence)]) -> NodeState {
        NodeState {
            tree,
            parent,
            lamport: 0,
            neighbours: Vec::new(),
            members: 3,
            keys: keys
                .iter()
                .map(|&(k, token, using, fence)| KeyState {
                    key: k.as_bytes().to_vec(),
                    token,
                    using,
                    fence,
                    holder: None,
                    waiters: 0,
                })
                .collect(),
        }
    }

    /// Answers on the wave's tree 1 <- 2 <- 3 (the wave's parents), with these states.
    fn report(states: Vec<NodeState>, dead: &[NodeId]) -> Report<NodeState> {
        let nodes = states
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                let id = i as NodeId + 1;
                (id, ((id > 1).then_some(id - 1), s))
            })
            .collect();
        Report { nodes, dead: dead.iter().copied().collect(), messages: 4 }
    }

    const WAVE: WaveId = WaveId { number: 5, initiator: 1 };

    #[test]
    fn a_whole_tree_is_kept() {
        let r = report(
            vec![
                state(3, None, &[("a", false, false, 0)]),
                state(3, Some(1), &[("a", true, true, 9)]),
                state(3, Some(1), &[]),
            ],
            &[],
        );
        assert!(whole(&r));
        assert_eq!(decide(WAVE, &r), Decision { rebuild: None, no_quorum: None });
        // A key nobody holds, that the root has not made: its token is at the root.
        let r = report(
            vec![state(3, None, &[]), state(3, Some(1), &[("b", false, false, 0)]), state(3, Some(1), &[])],
            &[],
        );
        assert_eq!(tokens(&r)[b"b".as_slice()].at_root, Some(1));
        assert!(whole(&r));
    }

    /// A dead node, a node on another tree, a lost token, two tokens: rebuilt on the
    /// wave's tree, numbered above every tree, each token kept where it is (the one in
    /// use of two), a lost one made anew at the initiator above every fence.
    #[test]
    fn a_broken_tree_is_rebuilt_and_tokens_are_placed() {
        let lost = report(
            vec![
                state(3, None, &[("a", false, false, 0)]),
                state(3, Some(1), &[("a", false, false, 0)]),
                state(3, Some(1), &[]),
            ],
            &[4],
        );
        let d = decide(WAVE, &lost).rebuild.expect("rebuilt");
        assert_eq!(d.epoch, 5);
        assert_eq!(d.parents, vec![(1, None), (2, Some(1)), (3, Some(2))]);
        assert_eq!(d.tokens, vec![Placed { key: b"a".to_vec(), at: 1, fence: 5 << 32, anew: true }]);

        let two = report(
            vec![
                state(7, None, &[("a", true, false, 50)]),
                state(7, Some(1), &[("a", true, true, 3)]),
                state(6, None, &[]),
            ],
            &[],
        );
        assert!(!whole(&two));
        let d = decide(WAVE, &two).rebuild.expect("rebuilt");
        assert_eq!(d.epoch, 8, "above every tree answered");
        assert_eq!(d.tokens, vec![Placed { key: b"a".to_vec(), at: 2, fence: 3, anew: false }], "the one in use");
    }

    #[test]
    fn next_hops_on_a_tree() {
        // 1 is the root; 2 and 3 its children; 4 below 2; 5 below 4.
        let p: BTreeMap<NodeId, Option<NodeId>> =
            [(1, None), (2, Some(1)), (3, Some(1)), (4, Some(2)), (5, Some(4))].into_iter().collect();
        assert_eq!(next_hop(&p, 1, 5), Some(2));
        assert_eq!(next_hop(&p, 2, 5), Some(4));
        assert_eq!(next_hop(&p, 3, 5), Some(1));
        assert_eq!(next_hop(&p, 5, 3), Some(4));
        assert_eq!(next_hop(&p, 4, 4), None);
        assert_eq!(next_hop(&p, 4, 9), None);
        assert_eq!(next_hop(&p, 1, 2), Some(2));
    }
}
