//! The writer's ownership fence: which writes of a conversation the
//! persistence writer still takes while the conversation's ownership
//! moves between nodes. Pure; the writer thread owns one `Fences`.
//!
//! Why it exists: an actor that loaded a conversation before it moved
//! (a delivery that raced the move, or the actor's own snapshot on stop)
//! could otherwise still write after the move committed. Its events would
//! land as log records of a conversation this node no longer holds (a log
//! tail with no snapshot: the node could not open its data again), and its
//! snapshot would overwrite the copy just installed (acknowledged messages
//! lost). Because every write and every move goes through the one writer
//! thread, deciding here, in the order the writer takes them, makes the
//! move and the writes of one conversation totally ordered.
//!
//! The rules, per conversation:
//! - no entry (never moved while this node runs): every write is taken;
//! - `Epoch(e)` (installed here at epoch `e`): only writes of actors that
//!   loaded it at epoch `e`;
//! - `Sealed` (a move is under way): none; `unseal` restores what was
//!   before (the move was abandoned);
//! - `Gone` (handed over): none, until it is installed here again.
//!
//! Writes of a conversation that moves in the same batch are refused
//! wherever they stand in it: before the move they belong to the copy the
//! move replaces, after it they cannot be legitimate (the mover holds the
//! conversation's lock until its move completes).
//!
//! Memory: one entry per conversation moved while the node runs.

use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fence {
    Epoch(u64),
    Sealed { before: Option<u64> },
    Gone,
}

/// What one operation of a batch means to the fence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Events or a snapshot of `conv` from an actor that loaded it at `epoch`.
    Write {
        conv: u64,
        epoch: u64,
    },
    Seal {
        conv: u64,
    },
    Unseal {
        conv: u64,
    },
    /// `conv` is installed here at `epoch`.
    Install {
        conv: u64,
        epoch: u64,
    },
    /// `conv` is handed over: this node no longer holds it.
    Demote {
        conv: u64,
    },
    /// A write refused whatever the fence says (a hand-over that would
    /// drop committed events).
    Refused,
    /// Anything else.
    Other,
}

/// What a batch changed, to put back if its commit fails.
#[derive(Debug, Default)]
pub struct Undo(Vec<(u64, Option<Fence>)>);

#[derive(Debug, Default)]
pub struct Fences {
    by_conv: HashMap<u64, Fence>,
}

impl Fences {
    fn set(&mut self, conv: u64, f: Option<Fence>, undo: &mut Undo) {
        let before = match f {
            Some(f) => self.by_conv.insert(conv, f),
            None => self.by_conv.remove(&conv),
        };
        undo.0.push((conv, before));
    }

    fn takes(&self, conv: u64, epoch: u64) -> bool {
        match self.by_conv.get(&conv) {
            None => true,
            Some(Fence::Epoch(e)) => *e == epoch,
            Some(Fence::Sealed { .. } | Fence::Gone) => false,
        }
    }

    /// Decides a batch in order: `true` for each step whose write is
    /// refused. The fence changes of the batch take effect at once; `undo`
    /// them if the batch's commit fails.
    pub fn admit(&mut self, steps: &[Step]) -> (Vec<bool>, Undo) {
        let mut undo = Undo::default();
        let moved: HashSet<u64> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Install { conv, .. } | Step::Demote { conv } => Some(*conv),
                _ => None,
            })
            .collect();
        let mut refused = Vec::with_capacity(steps.len());
        for s in steps {
            let refuse = match *s {
                Step::Write { conv, epoch } => moved.contains(&conv) || !self.takes(conv, epoch),
                Step::Seal { conv } => {
                    let before = match self.by_conv.get(&conv) {
                        Some(Fence::Epoch(e)) => Some(*e),
                        Some(Fence::Sealed { before }) => *before,
                        Some(Fence::Gone) | None => None,
                    };
                    let f = match self.by_conv.get(&conv) {
                        Some(Fence::Gone) => Fence::Gone,
                        _ => Fence::Sealed { before },
                    };
                    self.set(conv, Some(f), &mut undo);
                    false
                }
                Step::Unseal { conv } => {
                    if let Some(Fence::Sealed { before }) = self.by_conv.get(&conv).copied() {
                        self.set(conv, before.map(Fence::Epoch), &mut undo);
                    }
                    false
                }
                Step::Install { conv, epoch } => {
                    self.set(conv, Some(Fence::Epoch(epoch)), &mut undo);
                    false
                }
                Step::Demote { conv } => {
                    self.set(conv, Some(Fence::Gone), &mut undo);
                    false
                }
                Step::Refused => true,
                Step::Other => false,
            };
            refused.push(refuse);
        }
        (refused, undo)
    }

    /// Whether no conversation is fenced (none moved while the node runs).
    pub fn is_empty(&self) -> bool {
        self.by_conv.is_empty()
    }

    /// The batch's commit failed: its fence changes are taken back.
    pub fn undo(&mut self, undo: Undo) {
        for (conv, before) in undo.0.into_iter().rev() {
            match before {
                Some(f) => self.by_conv.insert(conv, f),
                None => self.by_conv.remove(&conv),
            };
        }
    }

    #[cfg(test)]
    fn get(&self, conv: u64) -> Option<Fence> {
        self.by_conv.get(&conv).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(conv: u64, epoch: u64) -> Step {
        Step::Write { conv, epoch }
    }

    #[test]
    fn a_conversation_never_moved_takes_every_write() {
        let mut f = Fences::default();
        let (r, _) = f.admit(&[w(1, 0), w(1, 7), Step::Other]);
        assert_eq!(r, [false, false, false]);
    }

    #[test]
    fn after_a_hand_over_no_write_of_the_old_copy_is_taken() {
        let mut f = Fences::default();
        let (r, _) = f.admit(&[Step::Seal { conv: 1 }, w(1, 0), w(2, 0)]);
        assert_eq!(r, [false, true, false]);
        let (r, _) = f.admit(&[Step::Demote { conv: 1 }]);
        assert_eq!(r, [false]);
        // The actor's snapshot on stop, events of a raced delivery.
        let (r, _) = f.admit(&[w(1, 0), w(1, 1)]);
        assert_eq!(r, [true, true]);
        // Sealing a conversation already gone keeps it gone.
        f.admit(&[Step::Seal { conv: 1 }, Step::Unseal { conv: 1 }]);
        assert_eq!(f.get(1), Some(Fence::Gone));
    }

    #[test]
    fn after_an_install_only_writes_at_the_new_epoch_are_taken() {
        let mut f = Fences::default();
        f.admit(&[Step::Seal { conv: 3 }]);
        let (r, _) = f.admit(&[Step::Install { conv: 3, epoch: 4 }]);
        assert_eq!(r, [false]);
        let (r, _) = f.admit(&[w(3, 2), w(3, 4)]);
        assert_eq!(r, [true, false]);
    }

    #[test]
    fn writes_in_the_batch_of_a_move_are_refused_before_and_after_it() {
        let mut f = Fences::default();
        let (r, _) = f.admit(&[
            w(5, 0),
            Step::Install { conv: 5, epoch: 1 },
            w(5, 1),
            w(6, 0),
        ]);
        assert_eq!(r, [true, false, true, false]);
        let (r, _) = f.admit(&[w(5, 1), w(7, 0), Step::Demote { conv: 7 }]);
        assert_eq!(r, [false, true, false]);
    }

    #[test]
    fn an_abandoned_move_restores_what_was_taken_before() {
        let mut f = Fences::default();
        f.admit(&[Step::Install { conv: 1, epoch: 2 }]);
        f.admit(&[Step::Seal { conv: 1 }, Step::Seal { conv: 9 }]);
        assert_eq!(f.admit(&[w(1, 2), w(9, 0)]).0, [true, true]);
        f.admit(&[Step::Unseal { conv: 1 }, Step::Unseal { conv: 9 }]);
        assert_eq!(
            f.admit(&[w(1, 2), w(1, 1), w(9, 0)]).0,
            [false, true, false]
        );
        assert_eq!(f.get(9), None);
    }

    #[test]
    fn a_failed_commit_takes_the_batchs_fence_changes_back() {
        let mut f = Fences::default();
        f.admit(&[Step::Install { conv: 1, epoch: 2 }]);
        let (_, undo) = f.admit(&[
            Step::Seal { conv: 1 },
            Step::Demote { conv: 1 },
            Step::Install { conv: 2, epoch: 1 },
        ]);
        f.undo(undo);
        assert_eq!(f.get(1), Some(Fence::Epoch(2)));
        assert_eq!(f.get(2), None);
    }
}
