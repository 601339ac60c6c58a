//! The nats-server's users: one password file per user under a credentials
//! directory, and the server configuration that gives each user only its
//! subjects (`subjects::auth`), with bcrypt hashes, never the passwords.
//!
//! `colony nats-config` writes it: `ops/up`, `ops/test` (per test, through
//! the harness) and `ops/bench` run nats-server from it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use subjects::auth::{self, Kind, User};

/// The file holding `user`'s password in `dir`.
pub fn password_file(dir: &Path, user: &str) -> PathBuf {
    dir.join(format!("{user}.password"))
}

/// `user`'s password from `dir`.
pub fn read_password(dir: &Path, user: &str) -> anyhow::Result<String> {
    let path = password_file(dir, user);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the NATS password of {user} from {} (COLONY_NATS_CREDENTIALS; colony nats-config writes it)",
            path.display()
        )
    })?;
    Ok(text.trim().to_string())
}

/// `user`'s password, made (32 random bytes, hex, mode 0600) if `dir` has
/// none yet.
fn ensure_password(dir: &Path, user: &str) -> anyhow::Result<String> {
    let path = password_file(dir, user);
    match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => return Ok(p.trim().to_string()),
        _ => {}
    }
    let mut raw = [0u8; 32];
    getrandom::fill(&mut raw).map_err(|e| anyhow::anyhow!("no randomness for a password: {e}"))?;
    let password: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    crate::write_secret_file(&path, &password)?;
    Ok(password)
}

/// The tenants that have a password file in `dir`.
fn tenants_in(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(t) = name
            .strip_suffix(".password")
            .and_then(auth::tenant_of_user)
        {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

/// Makes missing passwords (every process kind, and `tenants`), then
/// writes `out` (mode 0600): `server_config`'s text followed by the
/// authorization of every process kind and of every tenant with a password
/// in `dir`. Returns the tenants it holds.
pub fn write_config(
    dir: &Path,
    server_config: Option<&Path>,
    tenants: &[String],
    out: &Path,
) -> anyhow::Result<Vec<String>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for t in tenants {
        anyhow::ensure!(
            subjects::is_token(t),
            "tenant {t:?} is not valid; use 1-64 letters, digits, '-' or '_'"
        );
        ensure_password(dir, &auth::tenant_user(t))?;
    }
    let mut all_tenants = tenants_in(dir)?;
    all_tenants.sort();
    all_tenants.dedup();
    // The passwords are random: bcrypt's cost adds nothing to them, and a
    // low one keeps every connect cheap.
    let hash = |p: &str| bcrypt::hash(p, 4).context("cannot hash a NATS password");
    let mut users = Vec::new();
    for kind in Kind::ALL {
        let password = ensure_password(dir, kind.user())?;
        let mut permissions = auth::permissions(kind);
        if kind == Kind::Ingress {
            permissions
                .publish_allow
                .extend(auth::api_replies(&all_tenants));
        }
        users.push(User {
            name: kind.user().to_string(),
            password_hash: hash(&password)?,
            permissions,
        });
    }
    for t in &all_tenants {
        let user = auth::tenant_user(t);
        let password = ensure_password(dir, &user)?;
        users.push(User {
            name: user,
            password_hash: hash(&password)?,
            permissions: auth::tenant_permissions(t),
        });
    }
    let mut text = String::new();
    if let Some(base) = server_config {
        text.push_str(
            &std::fs::read_to_string(base)
                .with_context(|| format!("cannot read {}", base.display()))?,
        );
        text.push('\n');
    }
    text.push_str("# Written by colony nats-config: do not edit.\n");
    text.push_str(&auth::authorization(&users));
    crate::write_secret_file(out, text.trim_end())?;
    Ok(all_tenants)
}
