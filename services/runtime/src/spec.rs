//! The hardened container spec.
//!
//! Every container Colony starts runs as 65534:65534 with every capability
//! dropped, `no-new-privileges`, a read-only root, tmpfs `/tmp` and
//! `/workspace` (the only writable places), pids/memory/CPU limits, no
//! network at all (`network_mode: none`) and docker's init as PID 1 so that
//! orphans are reaped. Its only way out is the bind-mounted socket
//! directory. Nothing here has a switch to turn any of that off.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{ContainerCreateBody, HostConfig, ResourcesUlimits};
use sha2::{Digest, Sha256};
use subjects::agent::{SOCKET_DIR, WORKSPACE};

/// The user every container runs as (nobody:nogroup).
pub const USER: &str = "65534:65534";
const UID: u32 = 65534;

/// Resource limits of one container.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Limits {
    pub memory_bytes: i64,
    /// CPU in billionths of a core.
    pub nano_cpus: i64,
    pub pids: i64,
    pub tmp_mb: u32,
    pub workspace_mb: u32,
    pub nofile: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            memory_bytes: 256 << 20,
            nano_cpus: 1_000_000_000,
            pids: 128,
            tmp_mb: 64,
            workspace_mb: 256,
            nofile: 1024,
        }
    }
}

/// Reuse a container only when all of this is the same.
pub fn config_hash(
    image_id: &str,
    role: &str,
    employee: Option<uuid::Uuid>,
    tenant: Option<&str>,
    goal: Option<&GoalMount>,
    limits: &Limits,
) -> String {
    let employee = employee.map(|e| e.to_string()).unwrap_or_default();
    let tenant = tenant.unwrap_or_default();
    let goal = goal
        .map(|g| format!("{}:{}", g.goal, if g.read_only { "ro" } else { "rw" }))
        .unwrap_or_default();
    let text = format!("{image_id}\n{role}\n{employee}\n{tenant}\n{goal}\n{limits:?}\n{USER}\n");
    Sha256::digest(text.as_bytes())[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The docker volume holding an employee's workspace across containers.
pub fn workspace_volume(employee: uuid::Uuid) -> String {
    format!("colony-ws-{}", employee.simple())
}

/// A goal's shared workspace, mounted at `/workspace` by every run of the
/// goal: read-write for the runs that do its work, read-only for the runs
/// that review it, plan it or write its deliverable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GoalMount {
    pub goal: uuid::Uuid,
    pub read_only: bool,
}

/// The docker volume holding a goal's workspace.
pub fn goal_volume(goal: uuid::Uuid) -> String {
    format!("colony-goal-{}", goal.simple())
}

/// The container spec. `workspace_volume` (an employee's or a goal's, with
/// whether it is read-only) is mounted at `/workspace` and outlives the
/// container; without it `/workspace` is a tmpfs of `workspace_mb`. A new
/// volume takes the image's `/workspace` ownership (65534, mode 0700) when
/// first mounted.
pub fn container_body(
    image: &str,
    socket_dir: &Path,
    labels: HashMap<String, String>,
    l: &Limits,
    workspace_volume: Option<(&str, bool)>,
) -> ContainerCreateBody {
    let mut tmpfs = HashMap::from([(
        "/tmp".to_string(),
        format!("rw,nosuid,nodev,noexec,size={}m", l.tmp_mb),
    )]);
    let mut binds = vec![format!("{}:{SOCKET_DIR}", socket_dir.display())];
    match workspace_volume {
        Some((v, read_only)) => binds.push(format!(
            "{v}:{WORKSPACE}:{}",
            if read_only { "ro" } else { "rw" }
        )),
        None => {
            tmpfs.insert(
                WORKSPACE.to_string(),
                format!(
                    "rw,nosuid,nodev,exec,size={}m,uid={UID},gid={UID},mode=0700",
                    l.workspace_mb
                ),
            );
        }
    }
    ContainerCreateBody {
        image: Some(image.to_string()),
        user: Some(USER.to_string()),
        // agentd kills what a run leaves behind, whatever the image's
        // entrypoint says.
        env: Some(vec!["AGENTD_SWEEP=1".to_string()]),
        working_dir: Some(WORKSPACE.to_string()),
        labels: Some(labels),
        stop_timeout: Some(5),
        host_config: Some(HostConfig {
            binds: Some(binds),
            cap_drop: Some(vec!["ALL".to_string()]),
            security_opt: Some(vec!["no-new-privileges".to_string()]),
            readonly_rootfs: Some(true),
            tmpfs: Some(tmpfs),
            pids_limit: Some(l.pids),
            memory: Some(l.memory_bytes),
            memory_swap: Some(l.memory_bytes),
            nano_cpus: Some(l.nano_cpus),
            network_mode: Some("none".to_string()),
            init: Some(true),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".to_string()),
                soft: Some(l.nofile),
                hard: Some(l.nofile),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_changes_with_anything_that_matters() {
        let l = Limits::default();
        let base = config_hash("img1", "shell", None, None, None, &l);
        assert_eq!(base, config_hash("img1", "shell", None, None, None, &l));
        assert_ne!(base, config_hash("img2", "shell", None, None, None, &l));
        assert_ne!(base, config_hash("img1", "other", None, None, None, &l));
        let e = uuid::Uuid::from_u128(7);
        assert_ne!(base, config_hash("img1", "shell", Some(e), None, None, &l));
        assert_ne!(
            base,
            config_hash("img1", "shell", None, Some("acme"), None, &l)
        );
        let rw = GoalMount {
            goal: uuid::Uuid::from_u128(9),
            read_only: false,
        };
        let ro = GoalMount {
            read_only: true,
            ..rw
        };
        let with_rw = config_hash("img1", "shell", None, None, Some(&rw), &l);
        assert_ne!(base, with_rw);
        assert_ne!(
            with_rw,
            config_hash("img1", "shell", None, None, Some(&ro), &l)
        );
        let more = Limits { pids: 256, ..l };
        assert_ne!(base, config_hash("img1", "shell", None, None, None, &more));
    }

    #[test]
    fn spec_is_hardened() {
        let body = container_body(
            "img",
            Path::new("/s/c1"),
            HashMap::new(),
            &Limits::default(),
            None,
        );
        let h = body.host_config.expect("host config");
        assert_eq!(body.user.as_deref(), Some(USER));
        assert_eq!(h.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(h.security_opt, Some(vec!["no-new-privileges".to_string()]));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.network_mode.as_deref(), Some("none"));
        assert_eq!(h.binds, Some(vec![format!("/s/c1:{SOCKET_DIR}")]));
        assert!(h.privileged.is_none());
        assert!(h.cap_add.is_none());
        assert!(h.tmpfs.expect("tmpfs").contains_key(WORKSPACE));
    }

    #[test]
    fn an_employee_workspace_is_a_volume_and_the_rest_stays_hardened() {
        let v = workspace_volume(uuid::Uuid::from_u128(1));
        let body = container_body(
            "img",
            Path::new("/s/c1"),
            HashMap::new(),
            &Limits::default(),
            Some((&v, false)),
        );
        let h = body.host_config.expect("host config");
        assert_eq!(
            h.binds,
            Some(vec![
                format!("/s/c1:{SOCKET_DIR}"),
                format!("{v}:{WORKSPACE}:rw")
            ])
        );
        let tmpfs = h.tmpfs.expect("tmpfs");
        assert!(
            !tmpfs.contains_key(WORKSPACE),
            "the volume replaces the tmpfs"
        );
        assert!(tmpfs.contains_key("/tmp"));
        assert_eq!(h.readonly_rootfs, Some(true));
        assert_eq!(h.network_mode.as_deref(), Some("none"));
    }

    #[test]
    fn a_reviewer_mounts_the_goal_workspace_read_only() {
        let v = goal_volume(uuid::Uuid::from_u128(3));
        let body = container_body(
            "img",
            Path::new("/s/c1"),
            HashMap::new(),
            &Limits::default(),
            Some((&v, true)),
        );
        let binds = body.host_config.expect("host config").binds.expect("binds");
        assert_eq!(binds[1], format!("{v}:{WORKSPACE}:ro"));
    }
}
