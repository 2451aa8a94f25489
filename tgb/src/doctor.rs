//! `tgb doctor`: checks, live and with the services' own `TGB_*` settings and configuration,
//! that everything tg-bridge needs is there, one pass/fail line with a hint each: the
//! Dataverse token and application user (WhoAmI), every alternate key Active, the webhook
//! endpoint and steps `tgb setup dataverse` registers, the Graph token and every configured
//! plan, bucket and label (planner-adapter's own start-up checks), the TG token and feed, NATS
//! with its streams and the durable consumers of the running services.

use std::sync::Arc;

use serde::Serialize;
use tgb_runtime::Config;
use tgb_sandbox_dataverse::SolutionFile;

use crate::setup;

/// One check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// What is checked.
    pub name: String,
    /// Whether it holds.
    pub ok: bool,
    /// What was found.
    pub detail: String,
    /// What to do when it fails.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

/// Every check.
#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    /// In order.
    pub checks: Vec<Check>,
    /// Whether every check passed.
    pub passed: bool,
}

struct Checks(Vec<Check>);

impl Checks {
    fn push(&mut self, name: impl Into<String>, result: Result<String, String>, hint: &str) {
        let (ok, detail) = match result {
            Ok(d) => (true, d),
            Err(d) => (false, d),
        };
        self.0.push(Check {
            name: name.into(),
            ok,
            detail,
            hint: if ok { String::new() } else { hint.to_owned() },
        });
    }
}

const SETUP_HINT: &str = "run `tgb setup dataverse --webhook-url <adapter>/webhooks/dataverse`";

async fn dataverse(config: &Config, file: &SolutionFile, out: &mut Checks) {
    let dv = match setup::client_from_config(config) {
        Ok(dv) => dv,
        Err(e) => {
            out.push(
                "dataverse: configuration",
                Err(format!("{e:#}")),
                "set TGB_DATAVERSE_URL and TGB_AZURE_*",
            );
            return;
        }
    };
    let user = match dv.who_am_i().await {
        Ok(user) => {
            out.push(
                "dataverse: Entra token and WhoAmI",
                Ok(format!("application user {user}")),
                "",
            );
            user
        }
        Err(e) => {
            out.push(
                "dataverse: Entra token and WhoAmI",
                Err(e.to_string()),
                "check TGB_AZURE_TENANT_ID, TGB_AZURE_CLIENT_ID and its secret, and that the org has an application user for this app",
            );
            return;
        }
    };
    out.push(
        "dataverse: privileges of the application user",
        privileges(&dv, &user).await,
        "give the application user a role with these privileges (`tgb setup dataverse --create-role <name>` creates one)",
    );
    for t in file.tables.iter().filter(|t| !t.keys.is_empty()) {
        let keys = dv
            .get(&format!(
                "EntityDefinitions(LogicalName='{}')/Keys",
                t.logicalname
            ))
            .await;
        for k in &t.keys {
            let status = match &keys {
                Ok(v) => v["value"]
                    .as_array()
                    .and_then(|a| {
                        a.iter().find(|x| {
                            x["SchemaName"]
                                .as_str()
                                .is_some_and(|s| s.eq_ignore_ascii_case(&k.schemaname))
                        })
                    })
                    .and_then(|x| x["EntityKeyIndexStatus"].as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| "missing".to_owned()),
                Err(e) => Err(e.to_string()),
            };
            let result = match status {
                Ok(s) if s == "Active" => Ok("Active".to_owned()),
                Ok(s) => Err(format!("EntityKeyIndexStatus {s}")),
                Err(e) => Err(e),
            };
            out.push(
                format!("dataverse: key {}.{}", t.logicalname, k.schemaname),
                result,
                SETUP_HINT,
            );
        }
    }
    let endpoint = dv
        .get(&format!(
            "serviceendpoints?$filter=name eq {}",
            tgb_clients::dataverse::quote(setup::ENDPOINT_NAME)
        ))
        .await
        .map_err(|e| e.to_string())
        .and_then(|v| {
            v["value"][0]["serviceendpointid"]
                .as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("no service endpoint named {:?}", setup::ENDPOINT_NAME))
        });
    let ep = match endpoint {
        Ok(ep) => {
            out.push("dataverse: webhook endpoint", Ok(ep.clone()), "");
            ep
        }
        Err(e) => {
            out.push("dataverse: webhook endpoint", Err(e), SETUP_HINT);
            return;
        }
    };
    let mut missing = Vec::new();
    for (message, table) in setup::webhook_steps() {
        let name = format!("tg-bridge: {message} of {table}");
        let found = dv
            .get(&format!(
                "sdkmessageprocessingsteps?$filter=name eq {} and _eventhandler_value eq {ep}",
                tgb_clients::dataverse::quote(&name)
            ))
            .await
            .map(|v| v["value"].as_array().is_some_and(|a| !a.is_empty()));
        match found {
            Ok(true) => {}
            Ok(false) => missing.push(format!("{message} of {table}")),
            Err(e) => missing.push(format!("{message} of {table} ({e})")),
        }
    }
    let result = if missing.is_empty() {
        Ok(format!("{} steps", setup::webhook_steps().len()))
    } else {
        Err(format!("missing: {}", missing.join(", ")))
    };
    out.push("dataverse: webhook steps", result, SETUP_HINT);
}

/// The privileges the flows need that the user lacks (`RetrieveUserPrivileges`, matched by
/// privilege id).
async fn privileges(
    dv: &tgb_clients::dataverse::DataverseClient,
    user: &str,
) -> Result<String, String> {
    let held = dv
        .get(&format!(
            "systemusers({user})/Microsoft.Dynamics.CRM.RetrieveUserPrivileges()"
        ))
        .await
        .map_err(|e| e.to_string())?;
    let held: std::collections::BTreeSet<String> = held["RolePrivileges"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| p["PrivilegeId"].as_str().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    let mut missing = Vec::new();
    let mut count = 0;
    for name in setup::role_privileges()
        .iter()
        .flat_map(|t| t.privileges.clone())
    {
        count += 1;
        let id = dv
            .get(&format!(
                "privileges?$filter=name eq '{name}'&$select=privilegeid"
            ))
            .await
            .map_err(|e| e.to_string())?;
        let id = id["value"][0]["privilegeid"]
            .as_str()
            .map(str::to_ascii_lowercase);
        if !id.is_some_and(|id| held.contains(&id)) {
            missing.push(name);
        }
    }
    if missing.is_empty() {
        Ok(format!("all {count} privileges the flows need"))
    } else {
        Err(format!("lacks {}", missing.join(", ")))
    }
}

async fn graph(config: &Config, out: &mut Checks) {
    let routing = match planner_adapter::load_routing(config) {
        Ok((r, _)) => r,
        Err(e) => {
            out.push(
                "graph: routing configuration",
                Err(format!("{e:#}")),
                "fix [routing] in the configuration",
            );
            return;
        }
    };
    let graph = match planner_adapter::graph_client(config, &routing) {
        Ok(g) => g,
        Err(e) => {
            out.push(
                "graph: configuration",
                Err(format!("{e:#}")),
                "set TGB_AZURE_* and TGB_GRAPH_URL",
            );
            return;
        }
    };
    for f in planner_adapter::preflight::check(&graph, &routing).await {
        out.push(
            format!("graph: {}", f.check),
            if f.ok { Ok(f.detail) } else { Err(f.detail) },
            "fix the id in [routing.plans] (GET /groups/{group-id}/planner/plans and /planner/plans/{id}/buckets list the ids; labels are the plan's categoryDescriptions), or grant the app the Graph application permission Tasks.ReadWrite.All with admin consent",
        );
    }
}

async fn tg(config: &Config, out: &mut Checks) {
    let s = &config.settings;
    let (Some(api), Some(token_url), Some(id), Some(secret)) = (
        s.tg_api_url.clone(),
        s.tg_token_url.clone(),
        s.tg_client_id.clone(),
        s.tg_client_secret.clone(),
    ) else {
        out.push(
            "tg: configuration",
            Err("TGB_TG_API_URL, TGB_TG_TOKEN_URL, TGB_TG_CLIENT_ID or TGB_TG_CLIENT_SECRET is not set".into()),
            "set the TG client's settings",
        );
        return;
    };
    let http = tgb_clients::tg::TgClient::http_client(std::time::Duration::from_secs(30));
    let tokens = Arc::new(tgb_clients::oauth::TokenCache::new(
        http.clone(),
        tgb_clients::oauth::ClientCredentials::new(token_url, id, secret),
    ));
    match tokens.token().await {
        Ok(_) => out.push("tg: token", Ok("issued".into()), ""),
        Err(e) => {
            out.push(
                "tg: token",
                Err(e.to_string()),
                "check TGB_TG_CLIENT_ID and its secret with the TG shim's owner",
            );
            return;
        }
    }
    let client = tgb_clients::tg::TgClient::new(http, api, tokens);
    out.push(
        "tg: event feed",
        client
            .events(None, 1)
            .await
            .map(|_| "one page read".to_owned())
            .map_err(|e| e.to_string()),
        "check TGB_TG_API_URL and the client's scopes",
    );
}

async fn nats(config: &Config, out: &mut Checks) {
    let url = config.settings.nats_url.clone();
    let (_client, js) = match crate::ops::jetstream(&url).await {
        Ok(c) => c,
        Err(e) => {
            out.push(
                "nats: reachable",
                Err(format!("{e:#}")),
                "check TGB_NATS_URL (and TGB_NATS_CREDS) and that NATS runs with JetStream",
            );
            return;
        }
    };
    out.push("nats: reachable", Ok(url), "");
    for stream in [
        tgb_bus::names::EVENTS_STREAM,
        tgb_bus::names::DLQ_STREAM,
        tgb_bus::names::LEDGER_STREAM,
    ] {
        let result = match js.get_stream(stream).await {
            Ok(_) => Ok("present".to_owned()),
            Err(e) => Err(e.to_string()),
        };
        out.push(
            format!("nats: stream {stream}"),
            result,
            "start a service once: each creates the streams it uses",
        );
    }
    for consumer in [
        tg_egress::CONSUMER,
        planner_adapter::handler::CONSUMER,
        sla_monitor::CONSUMER,
        document_review::CONSUMER,
    ] {
        let result = match js.get_stream(tgb_bus::names::EVENTS_STREAM).await {
            Ok(s) => s
                .consumer_info(consumer)
                .await
                .map(|_| "present".to_owned())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        out.push(
            format!("nats: consumer {consumer}"),
            result,
            "start the service that owns it",
        );
    }
}

/// Runs every check.
pub async fn run(config: &Config, file: &SolutionFile) -> DoctorReport {
    let mut out = Checks(Vec::new());
    dataverse(config, file, &mut out).await;
    graph(config, &mut out).await;
    tg(config, &mut out).await;
    nats(config, &mut out).await;
    let passed = out.0.iter().all(|c| c.ok);
    DoctorReport {
        checks: out.0,
        passed,
    }
}

/// One line per check, the hint under a failure.
pub fn render(r: &DoctorReport) -> String {
    let mut s = String::new();
    for c in &r.checks {
        s.push_str(&format!(
            "{} {}: {}\n",
            if c.ok { "pass" } else { "FAIL" },
            c.name,
            c.detail
        ));
        if !c.ok && !c.hint.is_empty() {
            s.push_str(&format!("     hint: {}\n", c.hint));
        }
    }
    let failed = r.checks.iter().filter(|c| !c.ok).count();
    s.push_str(&if failed == 0 {
        format!("\nAll {} checks pass.\n", r.checks.len())
    } else {
        format!("\n{failed} of {} checks fail.\n", r.checks.len())
    });
    s
}
