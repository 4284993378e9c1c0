//! Placement: rendezvous hashing over the live nodes, and the node tag in
//! conversation ids.

/// Low 48 bits of a conversation id: the creating node's counter.
pub const ID_LOW: u64 = (1 << 48) - 1;

/// A node's id tag: 16 bits of its name's hash, never 0 (single nodes).
pub fn id_tag(name: &str) -> u16 {
    (weight("", name) >> 48) as u16 | 1
}

/// The first conversation id a node hands out: `next` (from storage) in
/// the node's tag space.
pub fn first_id(next: u64, tag: Option<u16>) -> u64 {
    match tag {
        None => next,
        Some(t) if next >> 48 == u64::from(t) => next,
        Some(t) => (u64::from(t) << 48) | (next & ID_LOW).max(1),
    }
}

/// Rendezvous (highest random weight) hashing: the node that owns `key`
/// among `nodes`, then the next ones in order (for replicas). Stable: a
/// key moves only when its owner leaves or a node that outranks the owner
/// joins.
pub fn ranked<'a>(key: &str, nodes: &'a [String]) -> Vec<&'a str> {
    let mut scored: Vec<(u64, &str)> = nodes.iter().map(|n| (weight(key, n), n.as_str())).collect();
    scored.sort_by(|a, b| b.cmp(a));
    scored.into_iter().map(|(_, n)| n).collect()
}

/// A stable 64-bit weight of (key, node): the first 8 bytes of SHA-256.
pub fn weight(key: &str, node: &str) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(node.as_bytes());
    h.update([0u8]);
    h.update(key.as_bytes());
    let d = h.finalize();
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn nodes(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("node{i}")).collect()
    }

    #[test]
    fn conversation_ids_carry_the_creating_nodes_tag() {
        let tag = id_tag("n1");
        assert_ne!(tag, 0, "0 is a single node's");
        assert_ne!(id_tag("n1"), id_tag("n2"));
        assert_eq!(first_id(7, None), 7);
        let first = first_id(7, Some(tag));
        assert_eq!((first >> 48, first & ID_LOW), (u64::from(tag), 7));
        // A node restarted in the cluster goes on from its own next id.
        assert_eq!(first_id(first + 5, Some(tag)), first + 5);
        assert_eq!(first_id(1, Some(tag)) & ID_LOW, 1);
    }

    #[test]
    fn placement_is_stable_and_spread() {
        let three = nodes(3);
        let mut counts = BTreeMap::new();
        for k in 0..3000 {
            let key = format!("acme\0+1555{k:07}");
            let r = ranked(&key, &three);
            assert_eq!(r.len(), 3);
            assert_eq!(r, ranked(&key, &three), "same answer every time");
            *counts.entry(r[0]).or_insert(0) += 1;
        }
        for (n, c) in &counts {
            assert!((800..1200).contains(c), "{n} owns {c} of 3000");
        }
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_keys_to_their_next_node() {
        let three = nodes(3);
        let two: Vec<String> = three.iter().filter(|n| *n != "node1").cloned().collect();
        for k in 0..2000 {
            let key = format!("t\0c{k}");
            let before = ranked(&key, &three);
            let after = ranked(&key, &two);
            if before[0] != "node1" {
                assert_eq!(after[0], before[0], "a key of a surviving node stays");
            } else {
                assert_eq!(after[0], before[1], "the replica takes over");
            }
        }
    }

    #[test]
    fn a_joining_node_takes_about_its_share() {
        let three = nodes(3);
        let four = nodes(4);
        let moved = (0..4000)
            .filter(|k| {
                let key = format!("t\0c{k}");
                ranked(&key, &three)[0] != ranked(&key, &four)[0]
            })
            .count();
        assert!((800..1200).contains(&moved), "{moved} of 4000 moved");
    }
}
