//! The goal state machine: which transitions are legal, and nothing else.
//!
//! The SQL that performs a transition lives in [`crate::goals`] and its
//! neighbours; every one asks [`check`] first, so this table is the one
//! place that says what may happen to a goal.

use subjects::goals::GoalState::{self, *};

/// A transition the goal state machine forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a goal cannot go from {from} to {to}")]
pub struct IllegalGoalTransition {
    pub from: GoalState,
    pub to: GoalState,
}

/// Every legal transition, with why it happens.
pub const LEGAL: &[(GoalState, GoalState, &str)] = &[
    (
        Planning,
        AwaitingApproval,
        "plan accepted; a person approves it",
    ),
    (Planning, Running, "plan accepted"),
    (Planning, Blocked, "no valid plan in the planner's tries"),
    (Planning, Failed, "a person gave it up"),
    (Planning, Cancelled, "cancel"),
    (AwaitingApproval, Running, "a person approved the plan"),
    (AwaitingApproval, Planning, "replan"),
    (AwaitingApproval, Cancelled, "cancel"),
    (Running, Delivering, "every sub-task is done"),
    (Running, Blocked, "a person is needed"),
    (Running, Paused, "pause"),
    (Running, Planning, "replan"),
    (Running, Cancelled, "cancel"),
    (Paused, Running, "resume"),
    (Paused, Blocked, "a person is needed"),
    (Paused, Planning, "replan"),
    (Paused, Cancelled, "cancel"),
    (Blocked, Running, "a person decided: retry or approve"),
    (Blocked, Planning, "a person decided: replan"),
    (Blocked, Delivering, "a person decided: deliver again"),
    (Blocked, Failed, "a person gave it up"),
    (Blocked, Cancelled, "cancel"),
    (Delivering, Done, "the deliverable is written"),
    (Delivering, Blocked, "the deliverable could not be written"),
    (Delivering, Cancelled, "cancel"),
];

/// Ok when `from → to` is legal.
pub fn check(from: GoalState, to: GoalState) -> Result<(), IllegalGoalTransition> {
    if LEGAL.iter().any(|&(f, t, _)| f == from && t == to) {
        Ok(())
    } else {
        Err(IllegalGoalTransition { from, to })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of states, legal or not, spelled out: a change to the
    /// machine must change this table too.
    #[test]
    fn every_transition_is_listed() {
        #[rustfmt::skip]
        let table: &[(GoalState, &[GoalState])] = &[
            (Planning,         &[AwaitingApproval, Running, Blocked, Failed, Cancelled]),
            (AwaitingApproval, &[Running, Planning, Cancelled]),
            (Running,          &[Delivering, Blocked, Paused, Planning, Cancelled]),
            (Paused,           &[Running, Blocked, Planning, Cancelled]),
            (Blocked,          &[Running, Planning, Delivering, Failed, Cancelled]),
            (Delivering,       &[Done, Blocked, Cancelled]),
            (Done,             &[]),
            (Failed,           &[]),
            (Cancelled,        &[]),
        ];
        assert_eq!(table.len(), GoalState::ALL.len());
        let mut legal = 0;
        for &(from, allowed) in table {
            for to in GoalState::ALL {
                let expected = allowed.contains(&to);
                assert_eq!(
                    check(from, to).is_ok(),
                    expected,
                    "{from} → {to} should be {}",
                    if expected { "legal" } else { "illegal" }
                );
                legal += usize::from(expected);
            }
        }
        assert_eq!(legal, LEGAL.len(), "LEGAL lists a pair twice");
    }

    #[test]
    fn every_open_state_can_be_cancelled_and_finals_are_final() {
        for s in GoalState::ALL {
            assert_eq!(check(s, Cancelled).is_ok(), !s.is_final(), "{s}");
            if s.is_final() {
                for to in GoalState::ALL {
                    assert_eq!(
                        check(s, to).unwrap_err().to_string(),
                        format!("a goal cannot go from {s} to {to}")
                    );
                }
            }
        }
    }
}
