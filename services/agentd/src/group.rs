//! Killing a run's process group.
//!
//! Every run's shell leads its own process group, so the run and everything
//! it started (pipelines, background jobs, a fork bomb) die together. A
//! single `kill` can race a forking process, so [`kill_until_gone`] repeats
//! until the kernel reports the group empty. A [`Guard`] kills the group when
//! a run is dropped without cleaning up (agentd shutting down).

use std::time::Duration;

/// How often [`kill_until_gone`] retries before giving up.
const KILL_TRIES: u32 = 100;
/// The pause between two tries.
const KILL_PAUSE: Duration = Duration::from_millis(5);

/// A process group id that is safe to signal: never 0 (our own group) or 1
/// (`kill(-1)` means every process we may signal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pgid(libc::pid_t);

impl Pgid {
    /// The group a freshly spawned child leads (`process_group(0)`).
    pub fn of_leader(pid: Option<u32>) -> Option<Pgid> {
        let pid = libc::pid_t::try_from(pid?).ok()?;
        (pid > 1).then_some(Pgid(pid))
    }
}

/// Sends SIGKILL to every process in `group`. Returns false when the group
/// is gone (or cannot be signalled, which no retry would fix).
pub fn kill(group: Pgid) -> bool {
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid
    // names a process group and `Pgid` is never 0 or 1.
    // Failure is ESRCH (nobody left) or EPERM (a member we may not signal).
    unsafe { libc::kill(-group.0, libc::SIGKILL) == 0 }
}

/// Kills `group` until it is empty, bounded to [`KILL_TRIES`] attempts.
/// Zombies count as members until they are reaped, so call this after
/// reaping the leader; orphans are reaped by the container's init.
/// Returns whether the group is gone.
pub async fn kill_until_gone(group: Pgid) -> bool {
    for _ in 0..KILL_TRIES {
        if !kill(group) {
            return true;
        }
        tokio::time::sleep(KILL_PAUSE).await;
    }
    false
}

/// Kills every process agentd may signal except itself and PID 1 (the
/// container's init), until none is left: what a run started and hid from
/// its process group (`setsid`, a double fork) must not live on into the
/// next task in the same container. Only for agentd inside its container,
/// where its user owns nothing but the runs: it refuses to run as root
/// (where `kill(-1)` would reach every process on a host). Returns how many
/// rounds found someone to kill.
pub async fn sweep() -> Result<u32, &'static str> {
    // SAFETY: geteuid(2) cannot fail and has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Err("agentd does not sweep processes as root");
    }
    for rounds in 0..KILL_TRIES {
        // SAFETY: kill(2) has no memory-safety preconditions; pid -1 is
        // every process we may signal except ourselves and init.
        if unsafe { libc::kill(-1, libc::SIGKILL) } != 0 {
            // ESRCH: nobody left (zombies are reaped by init meanwhile).
            return Ok(rounds);
        }
        tokio::time::sleep(KILL_PAUSE).await;
    }
    Err("processes of the run were still alive after the sweep; the container must not be reused")
}

/// Kills the group once on drop unless disarmed.
#[derive(Debug)]
pub struct Guard(Option<Pgid>);

impl Guard {
    pub fn new(group: Pgid) -> Guard {
        Guard(Some(group))
    }

    /// The group was cleaned up; do not signal it again (its id may be reused).
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            kill(group);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_targets_everyone_or_ourselves() {
        assert_eq!(Pgid::of_leader(None), None);
        assert_eq!(Pgid::of_leader(Some(0)), None);
        assert_eq!(Pgid::of_leader(Some(1)), None);
        assert_eq!(Pgid::of_leader(Some(u32::MAX)), None);
        assert_eq!(Pgid::of_leader(Some(42)), Some(Pgid(42)));
    }
}
