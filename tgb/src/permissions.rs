//! `tgb nats permissions`: the NATS users of tg-bridge, one per service, with exactly the
//! subjects each needs, generated from the code's tables (each service's consumer name and
//! routes, the subject table of `tgb-proto`, the stream and bucket names of `tgb-bus`), so the
//! permission example cannot drift from what the services do.
//!
//! What a service does on NATS, and the subjects it needs for it:
//! - start: look up and provision tg-bridge's streams and buckets (`$JS.API.INFO`,
//!   `$JS.API.STREAM.INFO|CREATE|UPDATE.<ours>`; never DELETE or PURGE);
//! - publish its own events (`tgb.v1.<its origins>.…`), its consumers' ledger entries
//!   (`tgb.ledger.>`) and dead letters (`tgb.dlq.<its consumer>.>` only);
//! - create, pull from and ack its durable consumers on `TGB_EVENTS`
//!   (`$JS.API.CONSUMER.CREATE|INFO|MSG.NEXT`, `$JS.ACK`), hear their max-deliveries advisory
//!   and read the message it names (`$JS.API.STREAM.MSG.GET.TGB_EVENTS`);
//! - read and write its KV buckets (`$KV.<bucket>.>`, direct get, watchers) and, for
//!   document-review, the object store;
//! - receive replies on `_INBOX.>`.

use serde::Serialize;
use tgb_bus::names;

/// One service's NATS user.
#[derive(Clone, Debug, Serialize)]
pub struct ServiceUser {
    /// The user name (the service's name).
    pub user: &'static str,
    /// Subjects it may publish to.
    pub publish: Vec<String>,
    /// Subjects it may subscribe to.
    pub subscribe: Vec<String>,
}

/// What one service does on NATS, from the code.
struct Service {
    name: &'static str,
    /// Origins of the events it publishes (`tgb.v1.<origin>.…`).
    origins: &'static [&'static str],
    /// Its durable consumers on `TGB_EVENTS`: name and filter subjects.
    consumers: Vec<(&'static str, &'static [&'static str])>,
    /// The KV buckets it opens.
    buckets: &'static [&'static str],
    /// Whether it writes documents to the object store.
    documents: bool,
}

fn services() -> Vec<Service> {
    vec![
        Service {
            name: tg_ingress::NAME,
            origins: &["tg"],
            consumers: vec![],
            buckets: &[names::KV_CURSORS],
            documents: false,
        },
        Service {
            name: tg_egress::NAME,
            origins: &[],
            consumers: vec![(tg_egress::CONSUMER, tg_egress::SUBJECTS)],
            buckets: &[names::KV_LINKS],
            documents: false,
        },
        Service {
            name: dynamics_adapter::NAME,
            origins: &["dyn"],
            consumers: vec![(
                dynamics_adapter::CONSUMER,
                dynamics_adapter::inbound::SUBJECTS,
            )],
            buckets: &[names::KV_LINKS, names::KV_SYNC, names::KV_CURSORS],
            documents: false,
        },
        Service {
            name: planner_adapter::NAME,
            origins: &["planner"],
            consumers: vec![(
                planner_adapter::handler::CONSUMER,
                planner_adapter::handler::SUBJECTS,
            )],
            buckets: &[names::KV_LINKS, names::KV_SYNC],
            documents: false,
        },
        Service {
            name: sla_monitor::NAME,
            origins: &["sla"],
            consumers: vec![(sla_monitor::CONSUMER, sla_monitor::handler::SUBJECTS)],
            buckets: &[names::KV_LINKS, names::KV_SLA],
            documents: false,
        },
        Service {
            name: document_review::NAME,
            origins: &["review", "onboarding"],
            consumers: vec![(document_review::CONSUMER, document_review::SUBJECTS)],
            buckets: &[names::KV_SYNC],
            documents: true,
        },
    ]
}

/// Every stream tg-bridge provisions, KV and object store streams included.
fn our_streams() -> Vec<String> {
    let mut streams = vec![
        names::EVENTS_STREAM.to_owned(),
        names::DLQ_STREAM.to_owned(),
        names::LEDGER_STREAM.to_owned(),
    ];
    streams.extend(names::KV_BUCKETS.iter().map(|(b, _)| format!("KV_{b}")));
    streams.push(format!("OBJ_{}", names::OBJECT_DOCUMENTS));
    streams
}

/// The users of every service, in a stable order.
pub fn users() -> Vec<ServiceUser> {
    services().iter().map(user_of).collect()
}

fn user_of(s: &Service) -> ServiceUser {
    let mut publish: Vec<String> = vec!["$JS.API.INFO".into()];
    for stream in our_streams() {
        for op in ["INFO", "CREATE", "UPDATE"] {
            publish.push(format!("$JS.API.STREAM.{op}.{stream}"));
        }
    }
    // Its events: each subject of the table whose origin it owns.
    for (subject, _) in tgb_proto::SUBJECTS {
        if s.origins
            .iter()
            .any(|o| subject.split('.').nth(2) == Some(o))
        {
            publish.push((*subject).to_owned());
        }
    }
    let mut subscribe: Vec<String> = vec!["_INBOX.>".into()];
    let events = names::EVENTS_STREAM;
    for (consumer, subjects) in &s.consumers {
        publish.push(format!("$JS.API.CONSUMER.CREATE.{events}.{consumer}"));
        for filter in *subjects {
            publish.push(format!(
                "$JS.API.CONSUMER.CREATE.{events}.{consumer}.{filter}"
            ));
        }
        publish.push(format!("$JS.API.CONSUMER.INFO.{events}.{consumer}"));
        publish.push(format!("$JS.API.CONSUMER.MSG.NEXT.{events}.{consumer}"));
        publish.push(format!("$JS.ACK.{events}.{consumer}.>"));
        publish.push(format!("tgb.dlq.{consumer}.>"));
        subscribe.push(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{events}.{consumer}"
        ));
    }
    if !s.consumers.is_empty() {
        publish.push(format!("$JS.API.STREAM.MSG.GET.{events}"));
        publish.push("tgb.ledger.>".into());
    }
    for bucket in s.buckets {
        let stream = format!("KV_{bucket}");
        publish.push(format!("$KV.{bucket}.>"));
        publish.push(format!("$JS.API.DIRECT.GET.{stream}"));
        publish.push(format!("$JS.API.DIRECT.GET.{stream}.>"));
        publish.push(format!("$JS.API.STREAM.MSG.GET.{stream}"));
        // Watchers: ordered push consumers, with and without a name, and their flow control.
        publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}"));
        publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}.>"));
        publish.push(format!("$JS.API.CONSUMER.DELETE.{stream}.>"));
        publish.push(format!("$JS.FC.{stream}.>"));
    }
    if s.documents {
        let bucket = names::OBJECT_DOCUMENTS;
        let stream = format!("OBJ_{bucket}");
        publish.push(format!("$O.{bucket}.>"));
        publish.push(format!("$JS.API.DIRECT.GET.{stream}"));
        publish.push(format!("$JS.API.DIRECT.GET.{stream}.>"));
        publish.push(format!("$JS.API.STREAM.MSG.GET.{stream}"));
        publish.push(format!("$JS.API.STREAM.PURGE.{stream}"));
        // Watchers: ordered push consumers, with and without a name, and their flow control.
        publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}"));
        publish.push(format!("$JS.API.CONSUMER.CREATE.{stream}.>"));
        publish.push(format!("$JS.API.CONSUMER.DELETE.{stream}.>"));
        publish.push(format!("$JS.FC.{stream}.>"));
    }
    ServiceUser {
        user: s.name,
        publish,
        subscribe,
    }
}

/// The environment variable holding a service's NATS password in the configuration printed by
/// `tgb nats permissions`: `tg-ingress` → `TGB_NATS_PASSWORD_TG_INGRESS`.
pub fn password_variable(user: &str) -> String {
    format!(
        "TGB_NATS_PASSWORD_{}",
        user.to_uppercase().replace('-', "_")
    )
}

/// A nats-server configuration: account `TGB` with JetStream, one user per service and an
/// `admin` user for `tgb` (all subjects of the account). `password` gives each user's password
/// as it appears in the file: `$VARIABLE` (resolved by nats-server from its environment) or a
/// quoted literal (tests).
pub fn render_conf(password: &dyn Fn(&str) -> String) -> String {
    let list = |subjects: &[String]| {
        subjects
            .iter()
            .map(|s| format!("            {s:?}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut out = String::from(
        "# NATS users of tg-bridge, one per service: generated by `tgb nats permissions`, do not\n\
         # edit by hand. Passwords come from nats-server's environment (TGB_NATS_PASSWORD_*).\n\
         accounts {\n  TGB: {\n    jetstream: enabled\n    users: [\n",
    );
    out.push_str(&format!(
        "      # tgb (operator commands) and whoever provisions by hand.\n      \
         {{ user: \"admin\", password: {} }}\n",
        password("admin")
    ));
    for u in users() {
        out.push_str(&format!(
            "      {{ user: {:?}, password: {}, permissions: {{\n          publish: {{ allow: [\n{}\n          ] }}\n          subscribe: {{ allow: [\n{}\n          ] }}\n      }} }}\n",
            u.user,
            password(u.user),
            list(&u.publish),
            list(&u.subscribe),
        ));
    }
    out.push_str("    ]\n  }\n}\n");
    out
}

/// [`render_conf`] with `$TGB_NATS_PASSWORD_*` references, as `tgb nats permissions` prints it.
pub fn conf() -> String {
    render_conf(&|user| format!("${}", password_variable(user)))
}

/// The users as JSON (for nsc or a chart's values).
pub fn json() -> String {
    serde_json::to_string_pretty(&users()).unwrap_or_default() + "\n"
}

#[cfg(test)]
mod tests {
    use super::users;

    #[test]
    fn each_service_publishes_only_its_own_events_and_dead_letters() {
        let users = users();
        let egress = users.iter().find(|u| u.user == "tg-egress").unwrap();
        assert!(!egress.publish.iter().any(|s| s.starts_with("tgb.v1.")));
        assert!(egress.publish.contains(&"tgb.dlq.tg-egress.>".to_owned()));
        assert!(!egress.publish.iter().any(|s| s == "tgb.dlq.>"));
        let dynamics = users.iter().find(|u| u.user == "dynamics-adapter").unwrap();
        assert!(
            dynamics
                .publish
                .contains(&"$JS.API.CONSUMER.MSG.NEXT.TGB_EVENTS.dynamics-adapter-in".to_owned())
        );
        assert!(
            dynamics
                .publish
                .iter()
                .filter(|s| s.starts_with("tgb.v1."))
                .all(|s| s.starts_with("tgb.v1.dyn."))
        );
        for u in &users {
            assert!(
                u.publish
                    .contains(&"$JS.API.STREAM.INFO.TGB_LEDGER".to_owned()),
                "{}",
                u.user
            );
        }
    }
}
