#!/usr/bin/env python3
"""Writes the Grafana dashboards of deploy/grafana/dashboards/ (edit this file, not the JSON).

    python3 deploy/grafana/generate.py          # rewrite the JSON files
    python3 deploy/grafana/generate.py --check  # exit 1 when a JSON file differs from its source

Standard library only. Metric names: deploy/metrics.md (scripts/validate-deploy checks that
every name used here is listed there).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards"
DS = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
SERVICES = "tg-ingress|tg-egress|dynamics-adapter|planner-adapter|sla-monitor|document-review"


class Board:
    """A dashboard laid out on Grafana's 24-column grid, panels filled left to right."""

    def __init__(self, uid: str, title: str, description: str, variables: list[dict]):
        self.uid, self.title, self.description = uid, title, description
        self.variables = variables
        self.panels: list[dict] = []
        self.x = self.y = 0
        self.row_h = 0
        self.next_id = 1

    def _place(self, w: int, h: int) -> dict:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def row(self, title: str) -> None:
        if self.x:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        self.panels.append({
            "id": self._id(), "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": self.y, "w": 24, "h": 1}, "panels": [],
        })
        self.y += 1

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def panel(self, kind: str, title: str, description: str, targets: list[tuple[str, str]],
              unit: str = "short", w: int = 12, h: int = 8, **options) -> None:
        panel = {
            "id": self._id(),
            "type": kind,
            "title": title,
            "description": description,
            "datasource": DS,
            "gridPos": self._place(w, h),
            "targets": [
                {"refId": chr(ord("A") + i), "datasource": DS, "expr": expr,
                 "legendFormat": legend, "range": True}
                for i, (expr, legend) in enumerate(targets)
            ],
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {},
        }
        if kind == "timeseries":
            panel["fieldConfig"]["defaults"]["custom"] = {
                "drawStyle": "line", "lineWidth": 1, "fillOpacity": 10,
                "stacking": {"mode": options.get("stack", "none"), "group": "A"},
            }
            panel["options"] = {"legend": {"displayMode": "table", "placement": "bottom",
                                           "calcs": ["lastNotNull", "max"]},
                                "tooltip": {"mode": "multi", "sort": "desc"}}
        elif kind == "stat":
            panel["fieldConfig"]["defaults"]["thresholds"] = {
                "mode": "absolute",
                "steps": [{"color": "green", "value": None},
                          {"color": "red", "value": options.get("red", 1)}],
            }
            panel["options"] = {"reduceOptions": {"calcs": ["lastNotNull"]}, "colorMode": "background"}
        elif kind in ("table", "bargauge"):
            for t in panel["targets"]:
                t.update({"instant": True, "range": False, "format": "table"})
            if kind == "bargauge":
                panel["options"] = {"orientation": "horizontal", "displayMode": "gradient",
                                    "reduceOptions": {"calcs": ["lastNotNull"]}}
        self.panels.append(panel)

    def json(self) -> dict:
        return {
            "uid": self.uid,
            "title": self.title,
            "description": self.description,
            "tags": ["tg-bridge"],
            "editable": False,
            "graphTooltip": 1,
            "refresh": "30s",
            "schemaVersion": 39,
            "version": 1,
            "time": {"from": "now-6h", "to": "now"},
            "timezone": "browser",
            "links": [{"type": "dashboards", "tags": ["tg-bridge"], "asDropdown": True,
                       "title": "tg-bridge", "includeVars": True, "keepTime": True}],
            "templating": {"list": [datasource_var()] + self.variables},
            "annotations": {"list": []},
            "panels": self.panels,
        }


def datasource_var() -> dict:
    return {"name": "datasource", "label": "Prometheus", "type": "datasource",
            "query": "prometheus", "current": {}, "hide": 0, "refresh": 1}


def label_var(name: str, label: str, metric: str) -> dict:
    return {
        "name": name, "label": label, "type": "query", "datasource": DS,
        "query": {"query": f"label_values({metric}, {name})", "refId": f"{name}-values"},
        "definition": f"label_values({metric}, {name})",
        "multi": True, "includeAll": True, "allValue": ".*", "current": {},
        "refresh": 2, "sort": 1, "hide": 0,
    }


def p95(metric: str, by: str, selector: str = "") -> str:
    return (f"histogram_quantile(0.95, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))")


def p50(metric: str, by: str, selector: str = "") -> str:
    return (f"histogram_quantile(0.5, sum by ({by}, le) "
            f"(rate({metric}_bucket{{{selector}}}[{RATE}])))")


def flows() -> Board:
    b = Board("tgb-flows", "tg-bridge / Flows",
              "Per-flow throughput and end-to-end latency (D1–D8, P1–P7), echoes suppressed, webhooks.",
              [label_var("flow", "Flow", "tgb_flow_events_total")])
    sel = 'flow=~"$flow"'
    b.row("Throughput")
    b.panel("timeseries", "Applied events per flow",
            "Source events whose effect is durable, per second, by flow.",
            [(f'sum by (flow) (rate(tgb_flow_events_total{{{sel},outcome="applied"}}[{RATE}]))', "{{flow}}")],
            unit="ops")
    b.panel("timeseries", "Outcomes",
            "applied: effect durable; skipped: stale or unchanged; echo: our own write came back; failed: dead-lettered.",
            [(f'sum by (outcome) (rate(tgb_flow_events_total{{{sel}}}[{RATE}]))', "{{outcome}}")],
            unit="ops", stack="normal")
    b.panel("timeseries", "Failed events per flow",
            "Events of each flow that ended in the DLQ.",
            [(f'sum by (flow) (increase(tgb_flow_events_total{{{sel},outcome="failed"}}[{RATE}]))', "{{flow}}")],
            unit="short")
    b.panel("bargauge", "Events per flow (time range)",
            "All outcomes over the selected time range.",
            [(f'sum by (flow) (increase(tgb_flow_events_total{{{sel}}}[$__range]))', "{{flow}}")])
    b.row("Latency")
    b.panel("timeseries", "End-to-end latency p95 per flow",
            "From the source event's occurred_at to the effect being durable.",
            [(p95("tgb_flow_latency_seconds", "flow", sel), "{{flow}} p95")], unit="s")
    b.panel("timeseries", "End-to-end latency p50 per flow", "Median of the same.",
            [(p50("tgb_flow_latency_seconds", "flow", sel), "{{flow}} p50")], unit="s")
    b.panel("timeseries", "Handler latency p95 per consumer",
            "Time one handler call takes (decode, effect, ack), by durable consumer.",
            [(p95("tgb_handler_duration_seconds", "consumer"), "{{consumer}}")], unit="s", w=24)
    b.row("Echoes and webhooks")
    b.panel("timeseries", "Echoes suppressed",
            "Detected changes dropped because they were our own writes (fingerprint in tgb_sync, or made by our application user).",
            [(f"sum by (target, reason) (rate(tgb_echoes_suppressed_total[{RATE}]))", "{{target}} {{reason}}")],
            unit="ops")
    b.panel("timeseries", "Webhooks received",
            "TG and Dataverse webhook calls by outcome (published = answered 2xx after the PubAck).",
            [(f"sum by (source, outcome) (rate(tgb_webhooks_received_total[{RATE}]))", "{{source}} {{outcome}}")],
            unit="reqps")
    return b


def external() -> Board:
    b = Board("tgb-external", "tg-bridge / External APIs",
              "Calls to TG, Dataverse, Graph and Entra by target and identity; 429s, latency, the rate governor, tokens.",
              [label_var("target", "Target", "tgb_external_calls_total")])
    sel = 'target=~"$target"'
    b.row("Calls")
    b.panel("timeseries", "Calls per target and identity", "Requests sent, per second.",
            [(f"sum by (target, identity) (rate(tgb_external_calls_total{{{sel}}}[{RATE}]))",
              "{{target}} / {{identity}}")], unit="reqps")
    b.panel("timeseries", "429 Too Many Requests per target and identity",
            "Service-protection throttling; each 429 pauses the identity's lane for Retry-After.",
            [(f'sum by (target, identity) (rate(tgb_external_calls_total{{{sel},status="429"}}[{RATE}]))',
              "{{target}} / {{identity}}")], unit="reqps")
    b.panel("timeseries", "Answers by status", "Status codes per target; error = no answer, token_error = no token.",
            [(f"sum by (target, status) (rate(tgb_external_calls_total{{{sel}}}[{RATE}]))",
              "{{target}} {{status}}")], unit="reqps", stack="normal")
    b.panel("timeseries", "Error ratio per target", "5xx, 429 and no-answer calls as a share of all calls.",
            [(f'sum by (target) (rate(tgb_external_calls_total{{{sel},status=~"5..|429|error|token_error"}}[{RATE}]))'
              f" / sum by (target) (rate(tgb_external_calls_total{{{sel}}}[{RATE}]))", "{{target}}")],
            unit="percentunit")
    b.panel("timeseries", "Call latency p95 per target and route",
            "Time from sending to the last byte of the answer (governor wait excluded).",
            [(p95("tgb_external_call_duration_seconds", "target, route", sel), "{{target}} {{route}}")],
            unit="s", w=24)
    b.row("Rate governor")
    b.panel("timeseries", "Governor wait p95 per lane",
            "Time a request waited for its lane (token bucket, concurrency cap, 429 pause).",
            [(p95("tgb_governor_wait_seconds", "lane"), "{{lane}}")], unit="s", w=8)
    b.panel("timeseries", "In flight per lane", "Requests of each lane in flight now.",
            [("sum by (lane) (tgb_governor_in_flight)", "{{lane}}")], unit="short", w=8)
    b.panel("timeseries", "Lane pauses (429s reported)", "429s reported to each lane's governor.",
            [(f"sum by (lane) (increase(tgb_governor_throttled_total[{RATE}]))", "{{lane}}")], unit="short", w=8)
    b.row("Tokens")
    b.panel("timeseries", "Token refresh failures", "refused: the client secret or id is wrong; unavailable: 5xx, 429, network.",
            [(f"sum by (target, identity, reason) (increase(tgb_token_refresh_failures_total[{RATE}]))",
              "{{target}} / {{identity}} {{reason}}")], unit="short")
    b.panel("timeseries", "Token requests by issuer and status", "Calls to the OAuth2 token endpoints.",
            [(f"sum by (issuer, status) (rate(tgb_oauth_token_requests_total[{RATE}]))", "{{issuer}} {{status}}"),
             (f"sum by (issuer) (rate(tgb_oauth_retries_total[{RATE}]))", "{{issuer}} retried after 401")],
            unit="reqps")
    return b


def bus() -> Board:
    b = Board("tgb-bus", "tg-bridge / Bus",
              "JetStream consumers: pending, outcomes, redeliveries, dead letters; publishes; service health.",
              [label_var("consumer", "Consumer", "tgb_consumer_pending")])
    sel = 'consumer=~"$consumer"'
    b.row("Dead letters")
    b.panel("stat", "DLQ depth", "Messages in TGB_DLQ now.",
            [("max(tgb_dlq_depth) or vector(0)", "TGB_DLQ")], w=6, h=6)
    b.panel("timeseries", "DLQ depth", "Messages in TGB_DLQ over time.",
            [("max(tgb_dlq_depth)", "TGB_DLQ")], w=9, h=6)
    b.panel("timeseries", "Dead-lettered per consumer", "Messages given up by each consumer.",
            [(f'sum by (consumer) (increase(tgb_consumer_messages_total{{{sel},outcome="dead_lettered"}}[{RATE}]))',
              "{{consumer}}")], w=9, h=6)
    b.row("Consumers")
    b.panel("timeseries", "Pending per consumer", "Messages not yet delivered to the durable consumer.",
            [(f"max by (consumer) (tgb_consumer_pending{{{sel}}})", "{{consumer}}")])
    b.panel("timeseries", "Outcomes per consumer", "consumed, acked, nakked, dead_lettered per second.",
            [(f"sum by (consumer, outcome) (rate(tgb_consumer_messages_total{{{sel}}}[{RATE}]))",
              "{{consumer}} {{outcome}}")], unit="ops")
    b.panel("timeseries", "Redeliveries per consumer",
            "Deliveries after the first (after a nak or an expired ack wait), and naks.",
            [(f"sum by (consumer) (rate(tgb_consumer_redeliveries_total{{{sel}}}[{RATE}]))", "{{consumer}} redelivered"),
             (f'sum by (consumer) (rate(tgb_consumer_messages_total{{{sel},outcome="nakked"}}[{RATE}]))', "{{consumer}} nakked")],
            unit="ops")
    b.panel("timeseries", "Handler latency p95", "Per consumer.",
            [(p95("tgb_handler_duration_seconds", "consumer", sel), "{{consumer}}")], unit="s")
    b.row("Publishing and services")
    b.panel("timeseries", "Published per subject", "Acked publishes; duplicates were de-duplicated by Nats-Msg-Id.",
            [(f'sum by (subject) (rate(tgb_bus_published_total{{duplicate="false"}}[{RATE}]))', "{{subject}}"),
             (f'sum(rate(tgb_bus_published_total{{duplicate="true"}}[{RATE}]))', "duplicates")], unit="ops")
    b.panel("timeseries", "HTTP requests by service and status", "Webhooks, probes and scrapes.",
            [(f"sum by (job, status) (rate(tgb_http_requests_total[{RATE}]))", "{{job}} {{status}}")], unit="reqps")
    b.panel("stat", "Services up", "1 when Prometheus can scrape the service.",
            [(f'up{{job=~"{SERVICES}"}}', "{{job}} {{instance}}")], w=24, h=4, red=0)
    # Services up: red below 1.
    b.panels[-1]["fieldConfig"]["defaults"]["thresholds"]["steps"] = [
        {"color": "red", "value": None}, {"color": "green", "value": 1}]
    return b


def sla() -> Board:
    b = Board("tgb-sla", "tg-bridge / SLA",
              "SLA warnings and breaches per trading partner and escalation level; running clocks.",
              [label_var("partner", "Partner", "tgb_sla_open_clocks")])
    sel = 'partner=~"$partner"'
    b.row("Per partner")
    b.panel("table", "Warnings and breaches (time range)", "Per partner and escalation level.",
            [(f"sum by (partner, level) (increase(tgb_sla_warnings_total{{{sel}}}[$__range]))", "warnings"),
             (f"sum by (partner, level) (increase(tgb_sla_breaches_total{{{sel}}}[$__range]))", "breaches")],
            w=12, h=10)
    b.panel("bargauge", "Running SLA clocks", "Open cases with a running clock, per partner.",
            [(f"sum by (partner) (tgb_sla_open_clocks{{{sel}}})", "{{partner}}")], w=12, h=10)
    b.row("Over time")
    b.panel("timeseries", "SLA warnings", "Per partner and level.",
            [(f"sum by (partner, level) (increase(tgb_sla_warnings_total{{{sel}}}[{RATE}]))",
              "{{partner}} level {{level}}")])
    b.panel("timeseries", "SLA breaches", "Per partner and level; each one opens an escalation task (P3).",
            [(f"sum by (partner, level) (increase(tgb_sla_breaches_total{{{sel}}}[{RATE}]))",
              "{{partner}} level {{level}}")])
    return b


def main() -> int:
    check = "--check" in sys.argv[1:]
    stale = []
    for board in (flows(), external(), bus(), sla()):
        path = OUT / f"{board.uid}.json"
        text = json.dumps(board.json(), indent=2, ensure_ascii=False) + "\n"
        if check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path.name)
        else:
            path.write_text(text, encoding="utf-8")
    if stale:
        print("dashboards out of date (run python3 deploy/grafana/generate.py): " + ", ".join(stale),
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
