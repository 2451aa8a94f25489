//! `tgb doctor`: checks, live and with the services' own `TGB_*` settings and configuration,
//! that everything tg-bridge needs is there, one pass/fail line with a hint each: the
//! Dataverse token and application user (WhoAmI), every alternate key Active, the webhook
//! endpoint and steps `tgb setup dataverse` registers, the Graph token and every configured
//! plan, bucket and label (planner-adapter's own start-up checks) and every assignee (a user of
//! the directory, member of the group that owns the plan), the TG token, the feed and one write
//! that changes nothing, NATS with its streams, the durable consumers of the running services
//! and the permissions each service needs (probed without effect).
//!
//! A check that cannot run because one it depends on failed (no Entra token, no NATS) is listed
//! as skipped, so the failing line is the cause, not its consequences.

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
    /// Not run: a check it depends on failed (`ok` is false too: nothing was verified).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

impl Check {
    /// Failed (not merely skipped).
    pub fn failed(&self) -> bool {
        !self.ok && !self.skipped
    }
}

/// What `tgb doctor` checks beyond the configuration.
#[derive(Clone, Debug, Default)]
pub struct DoctorOptions {
    /// The services whose NATS permissions are probed (empty: all six). A deployment with one
    /// NATS user per service runs `tgb doctor --service <name>` with that service's settings.
    pub services: Vec<String>,
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
            skipped: false,
        });
    }

    fn skip(&mut self, name: impl Into<String>, because: &str) {
        self.0.push(Check {
            name: name.into(),
            ok: false,
            detail: format!("not checked: {because} failed"),
            hint: String::new(),
            skipped: true,
        });
    }
}

const SETUP_HINT: &str = "run `tgb setup dataverse --webhook-url <adapter>/webhooks/dataverse`";

const ENTRA: &str = "entra: token";

/// One client-credentials token for each resource tg-bridge calls (Dataverse, Graph), with the
/// configured credential (secret, certificate or federated token file).
async fn entra(config: &Config, out: &mut Checks) -> bool {
    let s = &config.settings;
    let hint = "check TGB_AZURE_TENANT_ID, TGB_AZURE_CLIENT_ID and its credential (TGB_AZURE_CLIENT_SECRET, the certificate or the federated token file), and that it has not expired";
    let prepared = (|| -> anyhow::Result<_> {
        let tenant = s
            .azure_tenant_id
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("TGB_AZURE_TENANT_ID is not set"))?;
        let client_id = s
            .azure_client_id
            .clone()
            .ok_or_else(|| anyhow::anyhow!("TGB_AZURE_CLIENT_ID is not set"))?;
        let credential = tgb_service::entra::credential(config, "tgb doctor")?;
        let token_url = tgb_clients::dataverse::entra_token_url(&s.azure_authority, tenant)
            .map_err(|e| anyhow::anyhow!("TGB_AZURE_AUTHORITY: {e}"))?;
        let mut scopes = Vec::new();
        if let Some(org) = &s.dataverse_url {
            scopes.push(("Dataverse", tgb_clients::dataverse::dataverse_scope(org)));
        }
        scopes.push(("Graph", tgb_clients::graph::graph_scope(&s.graph_url)));
        Ok((token_url, client_id, credential, scopes))
    })();
    let (token_url, client_id, credential, scopes) = match prepared {
        Ok(p) => p,
        Err(e) => {
            out.push(ENTRA, Err(format!("{e:#}")), hint);
            return false;
        }
    };
    let kind = credential.kind();
    let http = tgb_clients::graph::GraphClient::http_client(std::time::Duration::from_secs(30));
    let mut got = Vec::new();
    for (resource, scope) in scopes {
        let mut c = tgb_clients::oauth::ClientCredentials::new(
            token_url.clone(),
            client_id.clone(),
            credential.clone(),
        );
        c.scope = Some(scope);
        let tokens = tgb_clients::oauth::TokenCache::new(http.clone(), c);
        if let Err(e) = tokens.token().await {
            out.push(ENTRA, Err(format!("{resource}: {e}")), hint);
            return false;
        }
        got.push(resource);
    }
    out.push(
        ENTRA,
        Ok(format!("issued for {} ({kind})", got.join(" and "))),
        "",
    );
    true
}

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
    assignees(config, &routing, out).await;
}

/// Every user the routing assigns tasks to, with where it is configured and the plan aliases
/// its tasks go to.
fn configured_assignees(
    r: &planner_adapter::routing::Routing,
) -> std::collections::BTreeMap<String, (Vec<String>, std::collections::BTreeSet<String>)> {
    let mut out: std::collections::BTreeMap<
        String,
        (Vec<String>, std::collections::BTreeSet<String>),
    > = Default::default();
    let mut add = |user: &str, place: String, plan: &str| {
        let e = out.entry(user.to_owned()).or_default();
        if !e.0.contains(&place) {
            e.0.push(place);
        }
        e.1.insert(plan.to_owned());
    };
    for (i, rule) in r.rules.iter().enumerate() {
        for u in &rule.assignees {
            add(u, format!("routing.rules[{i}]"), &rule.plan);
        }
    }
    for (name, t) in &r.departments {
        for u in &t.assignees {
            add(u, format!("routing.departments.{name}"), &t.plan);
        }
    }
    for (name, t) in [
        ("escalation", &r.escalation),
        ("review", &r.review),
        ("onboarding", &r.onboarding),
        ("action_items", &r.action_items),
    ] {
        for u in &t.assignees {
            add(u, format!("routing.{name}"), &t.plan);
        }
    }
    for (hint, u) in &r.owners {
        add(u, format!("routing.owners.{hint}"), &r.action_items.plan);
    }
    out
}

const ASSIGNEE_HINT: &str = "use the user's object id (GET /users/{upn}) and add the user to the Microsoft 365 group that owns the plan (Planner assigns tasks to the group's members); the app needs the Graph application permissions User.Read.All and GroupMember.Read.All to check this";

/// Each assignee is a user of the directory (`GET /users/{id}`), enabled, and a member of the
/// group of every plan its tasks go to (`POST /users/{id}/checkMemberGroups`).
async fn assignees(config: &Config, routing: &planner_adapter::routing::Routing, out: &mut Checks) {
    let wanted = configured_assignees(routing);
    if wanted.is_empty() {
        return;
    }
    let graph = match GraphHttp::new(config, routing) {
        Ok(g) => g,
        Err(e) => {
            out.push("graph: assignees", Err(format!("{e:#}")), ASSIGNEE_HINT);
            return;
        }
    };
    // The group that owns each plan (a plan's container).
    let mut groups: std::collections::BTreeMap<String, Result<String, String>> = Default::default();
    for (alias, plan) in &routing.plans {
        let group = graph
            .call(
                reqwest::Method::GET,
                &format!("planner/plans/{}", plan.plan_id),
                None,
            )
            .await
            .and_then(|v| {
                v["container"]["containerId"]
                    .as_str()
                    .or_else(|| v["owner"].as_str())
                    .map(str::to_owned)
                    .ok_or_else(|| "the plan names no group".to_owned())
            });
        groups.insert(alias.clone(), group);
    }
    for (user, (places, plans)) in wanted {
        let name = format!("graph: assignee {user}");
        let at = places.join(", ");
        let found = match graph
            .call(reqwest::Method::GET, &format!("users/{user}"), None)
            .await
        {
            Ok(u) => u,
            Err(e) => {
                out.push(
                    name,
                    Err(format!("user {user} ({at}) cannot be read: {e}")),
                    ASSIGNEE_HINT,
                );
                continue;
            }
        };
        let display = found["displayName"].as_str().unwrap_or("?").to_owned();
        if found["accountEnabled"].as_bool() == Some(false) {
            out.push(
                name,
                Err(format!("user {user} ({display}, {at}) is disabled")),
                ASSIGNEE_HINT,
            );
            continue;
        }
        let mut ids = Vec::new();
        let mut problems = Vec::new();
        // A plan that cannot be read fails its own check: membership of its group is not
        // checked here, so that line stays the only failure.
        let mut unread = Vec::new();
        for alias in &plans {
            match groups.get(alias) {
                Some(Ok(g)) => ids.push((alias.clone(), g.clone())),
                Some(Err(_)) => unread.push(alias.clone()),
                None => problems.push(format!("no plan {alias} in [routing.plans]")),
            }
        }
        if ids.is_empty() && problems.is_empty() {
            let because: Vec<String> = unread.iter().map(|a| format!("graph: plan {a}")).collect();
            out.skip(name, &because.join(", "));
            continue;
        }
        let body = serde_json::json!({
            "groupIds": ids.iter().map(|(_, g)| g.clone()).collect::<std::collections::BTreeSet<_>>(),
        });
        match graph
            .call(
                reqwest::Method::POST,
                &format!("users/{user}/checkMemberGroups"),
                Some(&body),
            )
            .await
        {
            Ok(v) => {
                let member: Vec<&str> = v["value"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|x| x.as_str()).collect())
                    .unwrap_or_default();
                for (alias, g) in &ids {
                    if !member.contains(&g.as_str()) {
                        problems.push(format!(
                            "user {user} ({display}, {at}) is not a member of group {g}, which owns plan {alias}"
                        ));
                    }
                }
            }
            Err(e) => problems.push(format!("group membership of {user} cannot be read: {e}")),
        }
        let checked: Vec<&str> = ids.iter().map(|(a, _)| a.as_str()).collect();
        let not_checked = if unread.is_empty() {
            String::new()
        } else {
            format!(
                " (plan {} not checked: it cannot be read)",
                unread.join(", ")
            )
        };
        out.push(
            name,
            if problems.is_empty() {
                Ok(format!(
                    "{display}, member of the group of plan {}{not_checked}",
                    checked.join(", ")
                ))
            } else {
                Err(problems.join("; "))
            },
            ASSIGNEE_HINT,
        );
    }
}

/// Graph calls beyond the Planner client's: the directory (users, group membership) and a
/// plan's container.
struct GraphHttp {
    http: reqwest::Client,
    base: String,
    tokens: tgb_clients::oauth::TokenCache,
}

impl GraphHttp {
    fn new(config: &Config, routing: &planner_adapter::routing::Routing) -> anyhow::Result<Self> {
        let s = &config.settings;
        let tenant = s
            .azure_tenant_id
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("TGB_AZURE_TENANT_ID is not set"))?;
        let client_id = s
            .azure_client_id
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("TGB_AZURE_CLIENT_ID is not set"))?;
        let credential = tgb_service::entra::credential(config, "tgb doctor")?;
        let http = tgb_clients::graph::GraphClient::http_client(std::time::Duration::from_secs(
            routing.graph.timeout_secs.max(1),
        ));
        let credentials = tgb_clients::graph::GraphClient::entra_credentials(
            &s.azure_authority,
            &s.graph_url,
            tenant,
            client_id,
            credential,
        )?;
        Ok(GraphHttp {
            tokens: tgb_clients::oauth::TokenCache::new(http.clone(), credentials),
            http,
            base: format!("{}/v1.0", s.graph_url.as_str().trim_end_matches('/')),
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, String> {
        use secrecy::ExposeSecret as _;
        let token = self.tokens.token().await.map_err(|e| e.to_string())?;
        let mut req = self
            .http
            .request(method, format!("{}/{path}", self.base))
            .bearer_auth(token.expose_secret());
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let v: serde_json::Value = resp.json().await.unwrap_or_default();
        if status.is_success() {
            Ok(v)
        } else {
            Err(format!(
                "{status} {}: {}",
                v["error"]["code"].as_str().unwrap_or(""),
                v["error"]["message"].as_str().unwrap_or("")
            ))
        }
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
            out.skip("tg: event feed", "tg: token");
            out.skip(TG_NO_OP, "tg: token");
            return;
        }
    }
    let client = tgb_clients::tg::TgClient::new(http.clone(), api.clone(), tokens.clone());
    out.push(
        "tg: event feed",
        client
            .events(None, 1)
            .await
            .map(|_| "one page read".to_owned())
            .map_err(|e| e.to_string()),
        "check TGB_TG_API_URL and the client's scopes",
    );
    out.push(
        TG_NO_OP,
        tg_no_op(&http, &api, &tokens).await,
        "the TG shim must authorise tg-bridge's client to write and answer as the contract says (proto/tg-community-api.openapi.yaml)",
    );
}

const TG_NO_OP: &str = "tg: write without effect";

/// The case id of the no-op write: no portal issues it.
pub const NO_SUCH_CASE: &str = "tgb-doctor-no-such-case";

/// `PATCH /v1/cases/{a case that does not exist}` with an `Idempotency-Key` and an empty
/// change: the contract answers `404 not_found` and changes nothing (only 2xx answers are kept
/// for replay). It proves the client may write through the shim, which a feed read does not.
async fn tg_no_op(
    http: &reqwest::Client,
    api: &url::Url,
    tokens: &tgb_clients::oauth::TokenCache,
) -> Result<String, String> {
    use secrecy::ExposeSecret as _;
    let token = tokens.token().await.map_err(|e| e.to_string())?;
    let url = format!(
        "{}/v1/cases/{NO_SUCH_CASE}",
        api.as_str().trim_end_matches('/')
    );
    let resp = http
        .patch(&url)
        .bearer_auth(token.expose_secret())
        .header(
            "Idempotency-Key",
            format!("tgb-doctor-{}", uuid::Uuid::new_v4()),
        )
        .json(&serde_json::json!({}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let code = body["error"]["code"].as_str().unwrap_or_default();
    if status == reqwest::StatusCode::NOT_FOUND && code == "not_found" {
        Ok(format!(
            "PATCH /v1/cases/{NO_SUCH_CASE} answered 404 not_found: writes are authorised, nothing changed"
        ))
    } else {
        Err(format!(
            "PATCH /v1/cases/{NO_SUCH_CASE} answered {status} {code}: {}",
            body["error"]["message"]
                .as_str()
                .unwrap_or("(no error body)")
        ))
    }
}

type Refusals = Arc<std::sync::Mutex<Vec<String>>>;

/// A connection with the services' NATS settings (URL, credentials, TLS) that records the
/// permission violations the server reports (a refused request otherwise only times out).
async fn nats_connect(config: &Config) -> anyhow::Result<(async_nats::Client, Refusals)> {
    let s = &config.settings;
    let url = &s.nats_url;
    let auth = tgb_bus::NatsAuth {
        creds: s.nats_creds.clone(),
        tls_ca: s.nats_tls_ca.clone(),
        tls_cert: s.nats_tls_cert.clone(),
        tls_key: s.nats_tls_key.clone(),
    };
    let shown = tgb_bus::redact_url(url);
    let refusals = Refusals::default();
    let options = auth
        .connect_options("tgb doctor", url)
        .await
        .map_err(|e| anyhow::anyhow!("NATS at {shown}: {e}"))?
        .event_callback({
            let refusals = refusals.clone();
            move |event| {
                if let async_nats::Event::ServerError(async_nats::ServerError::Other(text)) = &event
                    && text.to_lowercase().contains("permissions violation")
                {
                    refusals
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(text.clone());
                }
                async {}
            }
        });
    let bare = tgb_bus::auth::without_userinfo(url);
    let client = options.connect(bare.as_str()).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to NATS at {shown}: {}",
            tgb_bus::auth::explain_connect_error(&e, url, &auth)
        )
    })?;
    Ok((client, refusals))
}

async fn nats(config: &Config, opts: &DoctorOptions, out: &mut Checks) {
    let url = tgb_bus::redact_url(&config.settings.nats_url);
    let services: Vec<crate::permissions::ServiceUser> = crate::permissions::users()
        .into_iter()
        .filter(|u| opts.services.is_empty() || opts.services.iter().any(|s| s == u.user))
        .collect();
    let (client, refusals) = match nats_connect(config).await {
        Ok(c) => c,
        Err(e) => {
            out.push(
                "nats: reachable",
                Err(format!("{e:#}")),
                "check TGB_NATS_URL (and TGB_NATS_CREDS, TGB_NATS_TLS_*) and that NATS runs with JetStream",
            );
            out.skip(
                "nats: streams, consumers and permissions",
                "nats: reachable",
            );
            return;
        }
    };
    let js = async_nats::jetstream::new(client.clone());
    out.push("nats: reachable", Ok(url), "");
    for stream in [
        tgb_bus::names::EVENTS_STREAM,
        tgb_bus::names::DLQ_STREAM,
        tgb_bus::names::LEDGER_STREAM,
    ] {
        let result = match js.get_stream(stream).await {
            Ok(_) => Ok("present".to_owned()),
            Err(e) => Err(refused_or(&refusals, stream, &e.to_string())),
        };
        out.push(
            format!("nats: stream {stream}"),
            result,
            "start a service once: each creates the streams it uses",
        );
    }
    // The durable consumers of the services in scope that `tgb up` and the deployments run.
    let in_scope =
        |service: &str| opts.services.is_empty() || opts.services.iter().any(|s| s == service);
    for (service, consumer) in [
        (tg_egress::NAME, tg_egress::CONSUMER),
        (planner_adapter::NAME, planner_adapter::handler::CONSUMER),
        (sla_monitor::NAME, sla_monitor::CONSUMER),
        (document_review::NAME, document_review::CONSUMER),
    ] {
        if !in_scope(service) {
            continue;
        }
        let result = match js.get_stream(tgb_bus::names::EVENTS_STREAM).await {
            Ok(s) => s
                .consumer_info(consumer)
                .await
                .map(|_| "present".to_owned())
                .map_err(|e| refused_or(&refusals, consumer, &e.to_string())),
            Err(e) => Err(refused_or(&refusals, consumer, &e.to_string())),
        };
        out.push(
            format!("nats: consumer {consumer}"),
            result,
            "start the service that owns it",
        );
    }
    for service in &services {
        out.push(
            format!("nats: permissions of {}", service.user),
            permissions(&client, &refusals, service).await,
            "give the NATS user these subjects: `tgb nats permissions` prints each service's",
        );
    }
}

/// `error`, or the permission violations the server reported (a refused JetStream request
/// only times out on the client side).
fn refused_or(refusals: &Refusals, name: &str, error: &str) -> String {
    let reported: Vec<String> = refusals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|r| r.contains(&format!(".{name}\"")))
        .map(|r| r.trim().to_owned())
        .collect();
    if reported.is_empty() {
        error.to_owned()
    } else {
        format!("{error}: {}", reported.join("; "))
    }
}

/// How long a probe waits for its answer; a refused one never gets one.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// The name the probes give where a consumer or key name goes: no service uses it.
const PROBE_NAME: &str = "tgb-doctor-probe";

/// A request that exercises a permission of `service` without effect, for each subject of
/// its publish permissions that can be probed so:
/// - `$JS.API.INFO`, `$JS.API.STREAM.INFO.*`, `$JS.API.CONSUMER.INFO.*`: read-only;
/// - `$JS.API.CONSUMER.CREATE.<stream>.<consumer>[.<filter>]`: a body naming another
///   consumer, which JetStream refuses (name mismatch) after the permission check;
/// - its events, dead letters, ledger entries and KV keys: a publish with
///   `Nats-Expected-Last-Sequence` set to a sequence no stream reaches, which JetStream refuses
///   (wrong last sequence) without storing it.
///
/// Subjects that cannot be probed without effect (pulls, acks, stream updates, purges) are not.
fn probes(service: &crate::permissions::ServiceUser) -> Vec<(String, Probe)> {
    let concrete = |s: &str| s.replace(['>', '*'], PROBE_NAME);
    let mut out = Vec::new();
    for subject in &service.publish {
        let probe = if subject == "$JS.API.INFO"
            || subject.starts_with("$JS.API.STREAM.INFO.")
            || subject.starts_with("$JS.API.CONSUMER.INFO.")
        {
            Probe::Read
        } else if let Some(rest) = subject.strip_prefix("$JS.API.CONSUMER.CREATE.")
            && rest.starts_with(tgb_bus::names::EVENTS_STREAM)
        {
            Probe::MismatchedCreate
        } else if subject.starts_with("tgb.") || subject.starts_with("$KV.") {
            Probe::RefusedPublish
        } else {
            continue;
        };
        out.push((concrete(subject), probe));
    }
    out
}

#[derive(Clone, Copy, Debug)]
enum Probe {
    Read,
    MismatchedCreate,
    RefusedPublish,
}

async fn probe(
    client: &async_nats::Client,
    subject: &str,
    kind: Probe,
) -> Result<(), async_nats::RequestErrorKind> {
    let mut request = async_nats::Request::new().timeout(Some(PROBE_TIMEOUT));
    match kind {
        Probe::Read => {}
        Probe::MismatchedCreate => {
            let body = serde_json::json!({
                "stream_name": tgb_bus::names::EVENTS_STREAM,
                "config": {
                    "name": PROBE_NAME,
                    "durable_name": PROBE_NAME,
                    "ack_policy": "explicit",
                },
                "action": "create",
            });
            request = request.payload(body.to_string().into());
        }
        Probe::RefusedPublish => {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Expected-Last-Sequence", u64::MAX.to_string().as_str());
            request = request.headers(headers);
        }
    }
    client
        .send_request(subject.to_owned(), request)
        .await
        .map(|_| ())
        .map_err(|e| e.kind())
}

/// Runs the probes of one service; a refusal names the subject, as the server reported it.
async fn permissions(
    client: &async_nats::Client,
    refusals: &Refusals,
    service: &crate::permissions::ServiceUser,
) -> Result<String, String> {
    let probes = probes(service);
    let results = futures::future::join_all(
        probes
            .iter()
            .map(|(subject, kind)| probe(client, subject, *kind)),
    )
    .await;
    let _ = client.flush().await;
    let reported = refusals.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut problems = Vec::new();
    for ((subject, _), result) in probes.iter().zip(results) {
        match result {
            Ok(()) => {}
            Err(async_nats::RequestErrorKind::NoResponders) => {
                problems.push(format!(
                    "nothing answers on {subject:?} (no stream stores it?)"
                ));
            }
            Err(kind) => {
                let quoted = format!("\"{subject}\"");
                match reported.iter().find(|r| r.contains(&quoted)) {
                    Some(r) => problems.push(r.trim().to_owned()),
                    None => problems.push(format!("no answer on {subject:?}: {kind:?}")),
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{} subjects probed without effect: inspects and creates its consumers, publishes its events, dead letters, ledger entries and keys",
            probes.len()
        ))
    } else {
        Err(problems.join("; "))
    }
}

/// Runs every check, the NATS permissions of every service.
pub async fn run(config: &Config, file: &SolutionFile) -> DoctorReport {
    run_with(config, file, &DoctorOptions::default()).await
}

/// Runs every check.
pub async fn run_with(config: &Config, file: &SolutionFile, opts: &DoctorOptions) -> DoctorReport {
    let mut out = Checks(Vec::new());
    if entra(config, &mut out).await {
        dataverse(config, file, &mut out).await;
        graph(config, &mut out).await;
    } else {
        out.skip("dataverse", ENTRA);
        out.skip("graph", ENTRA);
    }
    tg(config, &mut out).await;
    nats(config, opts, &mut out).await;
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
            match (c.ok, c.skipped) {
                (true, _) => "pass",
                (false, true) => "skip",
                (false, false) => "FAIL",
            },
            c.name,
            c.detail
        ));
        if !c.ok && !c.hint.is_empty() {
            s.push_str(&format!("     hint: {}\n", c.hint));
        }
    }
    let failed = r.checks.iter().filter(|c| c.failed()).count();
    let skipped = r.checks.iter().filter(|c| c.skipped).count();
    s.push_str(&if failed == 0 && skipped == 0 {
        format!("\nAll {} checks pass.\n", r.checks.len())
    } else {
        format!(
            "\n{failed} of {} checks fail, {skipped} not run.\n",
            r.checks.len()
        )
    });
    s
}
