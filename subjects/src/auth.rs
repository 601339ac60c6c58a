//! Who may publish and subscribe to what on NATS.
//!
//! Every Colony process connects as the user of its kind ([`Kind`]) and
//! every tenant's client as that tenant's user ([`tenant_user`]); the
//! nats-server's configuration (written by `colony nats-config` from
//! [`authorization`]) gives each user only its subjects. So:
//!
//! - a tenant's client may submit to `colony.intake.<tenant>` (tasks) and
//!   `colony.intake.<tenant>.goal` (goals), and read
//!   `colony.results.<tenant>.>`, `colony.events.<tenant>.>` and
//!   `colony.notify.<tenant>.>`, and
//!   nothing else: not another tenant's, not the work queue, not a control
//!   subject, not the JetStream API;
//! - only ingress publishes control commands, only the relay publishes
//!   results, only workers write the container lease bucket;
//! - every user gets its replies on an inbox of its own
//!   (`_INBOX_<user>.>`): a client must set that inbox prefix.
//!
//! Colony's processes also manage streams and consumers through the
//! JetStream API, minus what destroys data (deleting or purging streams and
//! messages), which no process needs.

use std::fmt::Write as _;

use crate::subject;

/// The kinds of Colony process, each a NATS user of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// The operator's own user (tools, tests, the load generator): no
    /// limits. Never given to a Colony process or a tenant.
    Admin,
    Ingress,
    Relay,
    Worker,
    Planner,
    Reviewer,
    Patrol,
    Scheduler,
    Notifier,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Admin,
        Kind::Ingress,
        Kind::Relay,
        Kind::Worker,
        Kind::Planner,
        Kind::Reviewer,
        Kind::Patrol,
        Kind::Scheduler,
        Kind::Notifier,
    ];

    /// The NATS user name.
    pub fn user(self) -> &'static str {
        match self {
            Kind::Admin => "colony-admin",
            Kind::Ingress => "colony-ingress",
            Kind::Relay => "colony-relay",
            Kind::Worker => "colony-worker",
            Kind::Planner => "colony-planner",
            Kind::Reviewer => "colony-reviewer",
            Kind::Patrol => "colony-patrol",
            Kind::Scheduler => "colony-scheduler",
            Kind::Notifier => "colony-notifier",
        }
    }

    pub fn from_user(user: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.user() == user)
    }
}

/// The NATS user of a tenant's client.
pub fn tenant_user(tenant: &str) -> String {
    format!("tenant-{tenant}")
}

/// The tenant a user name belongs to, for a tenant's user.
pub fn tenant_of_user(user: &str) -> Option<&str> {
    user.strip_prefix("tenant-").filter(|t| crate::is_token(t))
}

/// The inbox prefix `user` must connect with (its replies arrive there).
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX_{user}")
}

/// What one user may publish and subscribe to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Permissions {
    pub publish_allow: Vec<String>,
    pub publish_deny: Vec<String>,
    pub subscribe_allow: Vec<String>,
}

/// The JetStream API calls of a stream a process reads through its own
/// consumers (create, look up, pull, and delete its ephemeral ones).
fn consumes(stream: &str) -> Vec<String> {
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.ACK.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// The JetStream API calls that read a key-value bucket, and, with
/// `write`, create and write it.
fn bucket(name: &str, write: bool) -> Vec<String> {
    let stream = format!("KV_{name}");
    let mut out = consumes(&stream);
    out.extend([
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ]);
    if write {
        out.extend([
            format!("$JS.API.STREAM.CREATE.{stream}"),
            format!("$KV.{name}.>"),
        ]);
    }
    out
}

/// The permissions of a Colony process of `kind`. Each may call only the
/// JetStream API of the streams and buckets it uses: its own consumers,
/// never another stream's messages, and only the relay (which every
/// process runs) creates and updates Colony's streams. No process may
/// delete or purge anything.
pub fn permissions(kind: Kind) -> Permissions {
    let user = kind.user();
    if kind == Kind::Admin {
        return Permissions {
            publish_allow: vec![">".into()],
            publish_deny: Vec::new(),
            subscribe_allow: vec![">".into()],
        };
    }
    let mut p = Permissions {
        publish_allow: Vec::new(),
        publish_deny: Vec::new(),
        subscribe_allow: vec![format!("{}.>", inbox_prefix(user))],
    };
    use crate::stream::{EVENTS, INTAKE, LOOP, NOTIFY, WORK};
    match kind {
        Kind::Admin => {}
        Kind::Ingress => {
            p.publish_allow.extend(consumes(INTAKE));
            // Server-sent events of a task: an ordered consumer on EVENTS.
            p.publish_allow.extend(consumes(EVENTS));
            p.publish_allow.extend(bucket(crate::kv::WORKERS, false));
            p.publish_allow
                .extend([subject::ctl_any(), subject::dlq(subject::DLQ_INTAKE)]);
            // The metrics: every stream's figures, its consumers', and the
            // oldest message a consumer has not finished with.
            for s in crate::stream::ALL {
                p.publish_allow.extend([
                    format!("$JS.API.STREAM.INFO.{s}"),
                    format!("$JS.API.CONSUMER.LIST.{s}"),
                ]);
            }
            // The oldest message's time, of the work queues only (no one
            // reads submissions or events by sequence).
            for s in crate::metrics::BACKLOG_BY_MESSAGE {
                p.publish_allow.push(format!("$JS.API.STREAM.MSG.GET.{s}"));
            }
            // The dead-letter browser reads dead letters by sequence.
            p.publish_allow
                .push(format!("$JS.API.STREAM.MSG.GET.{}", crate::stream::DLQ));
            // A result only wakes a waiting GET, which then reads Postgres;
            // a goal's watchers share one subscription to its events.
            p.subscribe_allow
                .extend([subject::results_all(), subject::events_all()]);
            // The NATS API: every tenant's calls, answered on the caller's
            // own inbox ([`api_replies`] adds each tenant's), and the
            // services protocol's discovery (`$SRV.PING`, `INFO`, `STATS`),
            // which only the admin user may ask and which is answered on
            // its inbox (the `nats` tool's default one, or the admin's).
            p.subscribe_allow
                .extend([subject::api_any(">"), "$SRV.>".to_string()]);
            p.publish_allow.extend([
                "_INBOX.>".to_string(),
                format!("{}.>", inbox_prefix(Kind::Admin.user())),
            ]);
        }
        Kind::Relay => {
            for stream in crate::stream::ALL {
                p.publish_allow.extend([
                    format!("$JS.API.STREAM.INFO.{stream}"),
                    format!("$JS.API.STREAM.CREATE.{stream}"),
                    format!("$JS.API.STREAM.UPDATE.{stream}"),
                ]);
            }
            p.publish_allow.extend([
                subject::work_all(),
                subject::events_all(),
                subject::results_all(),
                subject::dlq_all(),
                subject::loop_all(),
                subject::notify_all(),
            ]);
        }
        Kind::Worker => {
            // Creating a bucket reads the account's limits.
            p.publish_allow.push("$JS.API.INFO".into());
            p.publish_allow.extend(consumes(WORK));
            p.publish_allow.extend(bucket(crate::kv::LEASES, true));
            p.publish_allow.extend(bucket(crate::kv::WORKERS, true));
            p.publish_allow
                .extend([subject::events_all(), subject::dlq(subject::DLQ_WORK)]);
            p.subscribe_allow.push(subject::ctl_any());
        }
        Kind::Planner | Kind::Reviewer => {
            p.publish_allow.extend(consumes(LOOP));
            p.publish_allow.push(subject::dlq(subject::DLQ_LOOP));
        }
        Kind::Patrol => {
            // It watches the runs live, tells a run's worker to stop, and
            // reads how deep the dead letters are.
            p.publish_allow.push(subject::ctl_any());
            p.publish_allow
                .push(format!("$JS.API.STREAM.INFO.{}", crate::stream::DLQ));
            p.subscribe_allow.push(subject::events_all());
        }
        Kind::Scheduler => {
            // Its fires go out through the outbox (the relay's user); it
            // only tells a run to stop (overlap cancel_previous).
            p.publish_allow.push(subject::ctl_any());
        }
        Kind::Notifier => {
            p.publish_allow.extend(consumes(NOTIFY));
        }
    }
    p
}

/// What the ingress may publish besides [`permissions`]: the answers of
/// the NATS API, each tenant's on that tenant's inbox and nowhere else (a
/// reply subject a request names is not trusted; no `allow_responses`).
pub fn api_replies(tenants: &[String]) -> Vec<String> {
    tenants
        .iter()
        .map(|t| format!("{}.>", inbox_prefix(&tenant_user(t))))
        .collect()
}

/// The permissions of tenant `tenant`'s clients.
pub fn tenant_permissions(tenant: &str) -> Permissions {
    Permissions {
        publish_allow: vec![
            subject::intake(tenant),
            subject::intake_goal(tenant),
            subject::api_of_tenant(tenant),
        ],
        publish_deny: Vec::new(),
        subscribe_allow: vec![
            subject::results_of_tenant(tenant),
            subject::events_of_tenant(tenant),
            subject::notify_of_tenant(tenant),
            format!("{}.>", inbox_prefix(&tenant_user(tenant))),
        ],
    }
}

/// One user of the server's configuration: its name, its password's bcrypt
/// hash (never the password), and its permissions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub permissions: Permissions,
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The nats-server `authorization` block for `users`.
pub fn authorization(users: &[User]) -> String {
    let mut out = String::from("authorization {\n  users = [\n");
    for u in users {
        let p = &u.permissions;
        let _ = write!(
            out,
            "    {{user: {:?}, password: {:?}, permissions: {{publish: {{allow: [{}]",
            u.name,
            u.password_hash,
            quoted(&p.publish_allow)
        );
        if !p.publish_deny.is_empty() {
            let _ = write!(out, ", deny: [{}]", quoted(&p.publish_deny));
        }
        let _ = write!(
            out,
            "}}, subscribe: {{allow: [{}]}}",
            quoted(&p.subscribe_allow)
        );
        out.push_str("}}\n");
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_reads_only_its_own_subjects() {
        let p = tenant_permissions("acme");
        assert_eq!(
            p.publish_allow,
            vec![
                "colony.intake.acme",
                "colony.intake.acme.goal",
                "colony.api.acme.>"
            ]
        );
        assert_eq!(
            p.subscribe_allow,
            vec![
                "colony.results.acme.>",
                "colony.events.acme.>",
                "colony.notify.acme.>",
                "_INBOX_tenant-acme.>"
            ]
        );
        assert_eq!(tenant_of_user("tenant-acme"), Some("acme"));
        assert_eq!(api_replies(&["acme".into()]), vec!["_INBOX_tenant-acme.>"]);
        assert_eq!(tenant_of_user("colony-worker"), None);
    }

    #[test]
    fn only_the_right_kind_publishes_control_results_and_leases() {
        let publishes = |k: Kind, s: &str| permissions(k).publish_allow.iter().any(|a| a == s);
        assert!(publishes(Kind::Ingress, &subject::ctl_any()));
        assert!(!publishes(Kind::Worker, &subject::ctl_any()));
        assert!(publishes(Kind::Relay, &subject::results_all()));
        assert!(!publishes(Kind::Worker, &subject::results_all()));
        assert!(!publishes(Kind::Ingress, &subject::results_all()));
        assert!(publishes(Kind::Worker, "$KV.colony_leases.>"));
        assert!(!publishes(Kind::Ingress, "$KV.colony_leases.>"));
        for k in Kind::ALL.into_iter().filter(|k| *k != Kind::Admin) {
            let p = permissions(k);
            for allowed in &p.publish_allow {
                for forbidden in [
                    "DELETE.",
                    "PURGE",
                    "MSG.DELETE",
                    "$JS.API.>",
                    "SERVER",
                    "META",
                ] {
                    assert!(
                        !allowed.contains(forbidden)
                            || allowed.starts_with("$JS.API.CONSUMER.DELETE."),
                        "{k:?} may {allowed}"
                    );
                }
            }
            assert!(!publishes(k, "$JS.API.STREAM.MSG.GET.INTAKE"));
            assert_eq!(Kind::from_user(k.user()), Some(k));
        }
        // Only the ingress answers requests (the NATS API) and hears the
        // services protocol's discovery; nobody may answer on any subject.
        for k in Kind::ALL.into_iter().filter(|k| *k != Kind::Admin) {
            let p = permissions(k);
            assert!(
                !authorization(&[User {
                    name: "x".into(),
                    password_hash: "h".into(),
                    permissions: p.clone(),
                }])
                .contains("allow_responses"),
                "{k:?}"
            );
            assert_eq!(
                p.subscribe_allow.iter().any(|s| s.starts_with("$SRV")),
                k == Kind::Ingress,
                "{k:?}"
            );
        }
        // Only the relay makes and changes streams.
        assert!(publishes(Kind::Relay, "$JS.API.STREAM.UPDATE.INTAKE"));
        assert!(!publishes(Kind::Worker, "$JS.API.STREAM.UPDATE.INTAKE"));
        assert!(!publishes(Kind::Ingress, "$JS.API.STREAM.UPDATE.EVENTS"));
    }

    #[test]
    fn the_block_is_nats_configuration() {
        let text = authorization(&[User {
            name: "tenant-acme".into(),
            password_hash: "$2b$04$x".into(),
            permissions: tenant_permissions("acme"),
        }]);
        assert_eq!(
            text,
            "authorization {\n  users = [\n    {user: \"tenant-acme\", password: \"$2b$04$x\", permissions: {publish: {allow: [\"colony.intake.acme\", \"colony.intake.acme.goal\", \"colony.api.acme.>\"]}, subscribe: {allow: [\"colony.results.acme.>\", \"colony.events.acme.>\", \"colony.notify.acme.>\", \"_INBOX_tenant-acme.>\"]}}}\n  ]\n}\n"
        );
    }
}
