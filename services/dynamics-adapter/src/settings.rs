//! `[dynamics]`: the adapter's own settings (`TGB_DYNAMICS__*` overrides).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tgb_governor::GovernorConfig;

use crate::schema::{CaseType, IncidentPriority};

/// Who wins when both sides changed the same field since the last sync (D8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldPolicy {
    /// Trading Grid's value is written to Dynamics.
    TgWins,
    /// Dynamics keeps its value (and TG hears of it through `dyn.account.updated`).
    DynamicsWins,
}

/// The adapter's settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicsSettings {
    /// Timeout of one Dataverse call, milliseconds.
    pub request_timeout_ms: u64,
    /// 429s waited out (lane paused for `Retry-After`) and re-sent before the event is nakked.
    pub throttle_retries: u32,
    /// Refresh the Entra token this many seconds before it expires.
    pub token_refresh_margin_secs: u64,
    /// The rate lane of the application user (Dataverse: 6000 requests / 300 s, 52 at once).
    /// With `fleet`, these limits are the whole fleet's: each replica takes 1 / replicas.
    pub governor: GovernorConfig,
    /// Share the lane's limits with the other replicas of this identity (`fleet.<lane>` in
    /// `tgb_sync`); off, each replica spends the whole `governor` budget by itself.
    pub fleet: bool,
    /// A replica that stops renewing its fleet membership drops out after this long,
    /// milliseconds (at least twice the renewal period).
    pub fleet_ttl_ms: u64,
    /// How often a replica renews its fleet membership and re-reads the members,
    /// milliseconds; a starting replica waits one and a half of it before its first request.
    pub fleet_renew_ms: u64,
    /// Writes coalesced into one `$batch` at most (Microsoft advises about 10). Writes gather
    /// only while a batch is in flight; one made when the lane is idle leaves at once.
    pub batch_max_requests: usize,
    /// Retired: batches no longer wait on a timer. Still accepted so that a configuration
    /// written for an older release starts; a warning at start says it is ignored.
    pub batch_linger_ms: Option<u64>,
    /// Time between two change-tracking polls, milliseconds (a poll also runs at start).
    pub poll_interval_ms: u64,
    /// Tables polled with change tracking (the reconciling path behind the webhooks).
    pub poll_tables: Vec<String>,
    /// How long the change-tracking poller's lease (`dataverse-poller.leader` in `tgb_sync`)
    /// lasts unless renewed, milliseconds (at least twice the renewal period).
    pub poller_lease_ttl_ms: u64,
    /// How often the lease holder renews it and the other replicas try to take it over,
    /// milliseconds.
    pub poller_lease_renew_ms: u64,
    /// TG priority (`urgent`, `high`, `normal`, `low`) → incident `prioritycode`.
    pub priority_map: BTreeMap<String, i64>,
    /// TG category (`shipment_discrepancy`, …) → incident `casetypecode`.
    pub case_type_map: BTreeMap<String, i64>,
    /// Account columns compared with the TG partner id on a first sync when no account has
    /// the partner key yet (e.g. `accountnumber`).
    pub account_match_fields: Vec<String>,
    /// Per-field policy of D8 conflicts (`legal_name`, `address`, `contacts`).
    pub field_policies: BTreeMap<String, FieldPolicy>,
    /// Policy of fields not listed in `field_policies`.
    pub default_field_policy: FieldPolicy,
    /// Internal notes whose subject starts with this are posted to TG as partner-visible.
    pub partner_note_prefix: String,
    /// D7: publish a KPI snapshot whenever a KPI row changes.
    pub kpi_publish_on_change: bool,
    /// D7: publish a KPI snapshot when a period is closed (`tgb_periodclosed`).
    pub kpi_publish_at_period_close: bool,
    /// Header that carries the webhook key (`HttpHeader` authentication).
    pub webhook_key_header: String,
    /// Also accept the key as the query parameter `code` (`WebhookKey` authentication). Off by
    /// default: a query string ends up in access logs and proxies' logs.
    pub webhook_key_in_query: bool,
}

impl Default for DynamicsSettings {
    fn default() -> Self {
        let map = |pairs: &[(&str, i64)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect::<BTreeMap<_, _>>()
        };
        DynamicsSettings {
            request_timeout_ms: 10_000,
            throttle_retries: 5,
            token_refresh_margin_secs: 300,
            governor: GovernorConfig::default(),
            fleet: true,
            fleet_ttl_ms: 15_000,
            fleet_renew_ms: 3_000,
            batch_max_requests: 10,
            batch_linger_ms: None,
            poll_interval_ms: 60_000,
            poll_tables: [
                "incident",
                "annotation",
                "account",
                "salesorder",
                "invoice",
                "tgb_exception",
                "tgb_partnerkpi",
            ]
            .map(str::to_owned)
            .to_vec(),
            poller_lease_ttl_ms: 15_000,
            poller_lease_renew_ms: 3_000,
            priority_map: map(&[
                ("urgent", IncidentPriority::High.code()),
                ("high", IncidentPriority::High.code()),
                ("normal", IncidentPriority::Normal.code()),
                ("low", IncidentPriority::Low.code()),
            ]),
            case_type_map: map(&[
                ("shipment_discrepancy", CaseType::Problem.code()),
                ("invoice_mismatch", CaseType::Problem.code()),
                ("compliance_exception", CaseType::Problem.code()),
                ("pricing", CaseType::Question.code()),
                ("order", CaseType::Request.code()),
                ("other", CaseType::Question.code()),
            ]),
            account_match_fields: vec!["accountnumber".into()],
            field_policies: [
                ("legal_name", FieldPolicy::DynamicsWins),
                ("address", FieldPolicy::TgWins),
                ("contacts", FieldPolicy::TgWins),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect(),
            default_field_policy: FieldPolicy::TgWins,
            partner_note_prefix: "[partner]".into(),
            kpi_publish_on_change: true,
            kpi_publish_at_period_close: true,
            webhook_key_header: "x-api-key".into(),
            webhook_key_in_query: false,
        }
    }
}

impl DynamicsSettings {
    /// [`Self::request_timeout_ms`].
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }
    /// [`Self::poll_interval_ms`].
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.max(10))
    }
    /// [`Self::fleet_ttl_ms`].
    pub fn fleet_ttl(&self) -> Duration {
        Duration::from_millis(self.fleet_ttl_ms)
    }
    /// [`Self::fleet_renew_ms`].
    pub fn fleet_renew(&self) -> Duration {
        Duration::from_millis(self.fleet_renew_ms)
    }
    /// [`Self::poller_lease_ttl_ms`].
    pub fn poller_lease_ttl(&self) -> Duration {
        Duration::from_millis(self.poller_lease_ttl_ms)
    }
    /// [`Self::poller_lease_renew_ms`].
    pub fn poller_lease_renew(&self) -> Duration {
        Duration::from_millis(self.poller_lease_renew_ms)
    }
    /// The policy of `field`.
    pub fn policy(&self, field: &str) -> FieldPolicy {
        self.field_policies
            .get(field)
            .copied()
            .unwrap_or(self.default_field_policy)
    }
    /// Checks what deserialisation cannot.
    pub fn validate(&self) -> Result<(), String> {
        if self.batch_max_requests == 0 || self.batch_max_requests > 1000 {
            return Err("dynamics.batch_max_requests must be between 1 and 1000".into());
        }
        if self.poller_lease_renew_ms == 0
            || self.poller_lease_ttl_ms < self.poller_lease_renew_ms.saturating_mul(2)
        {
            return Err(format!(
                "dynamics.poller_lease_ttl_ms ({}) must be at least twice \
                 dynamics.poller_lease_renew_ms ({}), which must be above 0",
                self.poller_lease_ttl_ms, self.poller_lease_renew_ms
            ));
        }
        if self.fleet
            && (self.fleet_renew_ms == 0
                || self.fleet_ttl_ms < self.fleet_renew_ms.saturating_mul(2))
        {
            return Err(format!(
                "dynamics.fleet_ttl_ms ({}) must be at least twice dynamics.fleet_renew_ms ({}), \
                 which must be above 0",
                self.fleet_ttl_ms, self.fleet_renew_ms
            ));
        }
        for t in &self.poll_tables {
            if crate::schema::table(t).is_none() {
                return Err(format!(
                    "dynamics.poll_tables: {t:?} is not a table of the tg-bridge solution"
                ));
            }
        }
        for (k, v) in &self.priority_map {
            if !(1..=3).contains(v) {
                return Err(format!(
                    "dynamics.priority_map.{k}: {v} is not a prioritycode (1..=3)"
                ));
            }
        }
        for (k, v) in &self.case_type_map {
            if !(1..=3).contains(v) {
                return Err(format!(
                    "dynamics.case_type_map.{k}: {v} is not a casetypecode (1..=3)"
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tgb_runtime::config::Config;

    fn load(toml: &str) -> Result<DynamicsSettings, String> {
        let dir = std::env::temp_dir().join(format!("tgb-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join(format!("{:x}.toml", toml.len()));
        std::fs::write(&path, toml).map_err(|e| e.to_string())?;
        let config = Config::load_from(Some(&path), Vec::new()).map_err(|e| e.to_string())?;
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_dir(&dir);
        config.section("dynamics").map_err(|e| e.to_string())
    }

    #[test]
    fn a_configuration_with_the_retired_linger_still_loads_and_an_unknown_key_does_not() {
        let old = load("[dynamics]\nbatch_max_requests = 8\nbatch_linger_ms = 20\n")
            .expect("an older configuration starts");
        assert_eq!((old.batch_max_requests, old.batch_linger_ms), (8, Some(20)));
        let err = load("[dynamics]\nbatch_lingr_ms = 20\n").expect_err("a typo is refused");
        assert!(err.contains("batch_lingr_ms"), "{err}");
    }
}
