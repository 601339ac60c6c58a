//! The task state machine: which transitions are legal, and nothing else.
//!
//! The SQL that performs a transition lives in [`crate::tasks`]; every
//! function there asks [`check`] first, so this table is the one place that
//! says what may happen to a task.

use subjects::TaskState::{self, *};

/// A transition the state machine forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a task cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: TaskState,
    pub to: TaskState,
}

/// Every legal transition, with why it happens.
pub const LEGAL: &[(TaskState, TaskState, &str)] = &[
    (Pending, Queued, "dependencies done"),
    (Pending, Blocked, "a dependency failed for good"),
    (Pending, Cancelled, "cancel"),
    (Queued, Running, "a worker claimed it"),
    (
        Queued,
        Pending,
        "held: its goal is paused or over its budget",
    ),
    (Queued, Failed, "its message was dead-lettered"),
    (Queued, Cancelled, "cancel"),
    (Running, Done, "finished; its role needs no review"),
    (Running, Review, "finished; awaiting review"),
    (
        Running,
        Queued,
        "attempt failed with retries left, or handed back on shutdown",
    ),
    (
        Running,
        Running,
        "taken over from a worker whose heartbeat stopped",
    ),
    (Running, Blocked, "heartbeat lost or timed out"),
    (Running, Failed, "attempts exhausted or not retryable"),
    (Running, Cancelled, "cancel"),
    (Review, Done, "approved"),
    (Review, Rework, "rejected"),
    (Review, Failed, "reworks exhausted"),
    (
        Review,
        Blocked,
        "reworks exhausted or no review could be had: a person decides",
    ),
    (Review, Cancelled, "cancel"),
    (Rework, Queued, "sent back to work"),
    (Rework, Failed, "reworks exhausted"),
    (Rework, Cancelled, "cancel"),
    (
        Blocked,
        Queued,
        "recovered by patrol, or retried by a person",
    ),
    (
        Blocked,
        Pending,
        "its failed dependency recovered; others are not done",
    ),
    (Blocked, Done, "a person approved its work as it is"),
    (Blocked, Failed, "given up by patrol"),
    (Blocked, Cancelled, "cancel"),
];

/// Ok when `from → to` is legal.
pub fn check(from: TaskState, to: TaskState) -> Result<(), IllegalTransition> {
    if LEGAL.iter().any(|&(f, t, _)| f == from && t == to) {
        Ok(())
    } else {
        Err(IllegalTransition { from, to })
    }
}

/// The states from which `to` can be reached.
pub fn sources(to: TaskState) -> Vec<TaskState> {
    LEGAL
        .iter()
        .filter(|&&(_, t, _)| t == to)
        .map(|&(f, _, _)| f)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every pair of states, legal or not, spelled out: a change to the
    /// machine must change this table too.
    #[test]
    fn every_transition_is_listed() {
        #[rustfmt::skip]
        let table: &[(TaskState, &[TaskState])] = &[
            (Pending,   &[Queued, Blocked, Cancelled]),
            (Queued,    &[Running, Pending, Failed, Cancelled]),
            (Running,   &[Done, Review, Queued, Running, Blocked, Failed, Cancelled]),
            (Review,    &[Done, Rework, Blocked, Failed, Cancelled]),
            (Rework,    &[Queued, Failed, Cancelled]),
            (Blocked,   &[Queued, Pending, Done, Failed, Cancelled]),
            (Done,      &[]),
            (Failed,    &[]),
            (Cancelled, &[]),
        ];
        assert_eq!(table.len(), TaskState::ALL.len());
        let mut legal = 0;
        for &(from, allowed) in table {
            for to in TaskState::ALL {
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
    fn final_states_have_no_way_out() {
        for from in TaskState::ALL.into_iter().filter(|s| s.is_final()) {
            for to in TaskState::ALL {
                let err = check(from, to).unwrap_err();
                assert_eq!(
                    err.to_string(),
                    format!("a task cannot go from {from} to {to}")
                );
            }
        }
    }

    #[test]
    fn cancel_reaches_every_non_final_state() {
        let mut from = sources(Cancelled);
        from.sort_by_key(|s| s.as_str());
        let mut expected: Vec<_> = TaskState::ALL
            .into_iter()
            .filter(|s| !s.is_final())
            .collect();
        expected.sort_by_key(|s| s.as_str());
        assert_eq!(from, expected);
    }
}
