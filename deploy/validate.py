#!/usr/bin/env python3
"""The checks behind scripts/validate-deploy that need Python (run it through that script,
which installs the packages this imports into .tools/venv).

    validate.py helm OUT_DIR             lint + render the chart (default and ci/*-values.yaml)
    validate.py kube-validate FILE...    kubernetes-validate --strict, WARN is a failure
    validate.py compose                  health checks and wiring of docker-compose.yml
    validate.py metrics                  dashboard and rule metric names are in deploy/metrics.md
    validate.py alerts                   every alert has a runbook section and a firing test
    validate.py promql RULES_OUT         dashboard queries as a rule file, for promtool to parse
    validate.py nats-conf NATS_SERVER    the permissions example parses in nats-server -t
    validate.py dockerfile               deploy/Dockerfile parses (BuildKit's parser) and keeps
                                         its promises: stages, binaries, non-root, no shell

Each prints nothing on success and the problems on failure (exit 1).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy/helm/tg-bridge"
DASHBOARDS = ROOT / "deploy/grafana/dashboards"
RULES = ROOT / "deploy/prometheus/rules"
METRICS_MD = ROOT / "deploy/metrics.md"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy/Dockerfile"
PROMETHEUS_YML = ROOT / "deploy/prometheus/prometheus.yml"
KUBE_VERSION = "1.30.0"
SERVICES = {
    "tg-ingress": 8081, "tg-egress": 8082, "dynamics-adapter": 8083,
    "planner-adapter": 8084, "sla-monitor": 8085, "document-review": 8086,
}
# Kinds kubernetes-validate has no schema for and that the chart may render.
CRD_KINDS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
}
REPO_CONFIG = ROOT / "config/tg-bridge.toml"
# Each service's durable consumer on TGB_EVENTS (docs/architecture.md, "As built").
CONSUMERS = {
    "tg-egress": "tg-egress", "dynamics-adapter": "dynamics-adapter-in",
    "planner-adapter": "planner-adapter", "sla-monitor": "sla-monitor",
    "document-review": "document-review",
}

problems: list[str] = []


def problem(message: str) -> None:
    problems.append(message)


# ---------------------------------------------------------------- helm


def helm_check(out_dir: Path) -> None:
    import helm_python as helm

    helm.disable_logging() if hasattr(helm, "disable_logging") else None
    out_dir.mkdir(parents=True, exist_ok=True)
    values_files = [None] + sorted((CHART / "ci").glob("*-values.yaml"))

    # The chart has no dependencies, so it installs as it is: lint and render a copy of it
    # without a charts/ directory (as `helm install` from the repository sees it, with no
    # `helm dependency update`). The copy also resolves files/, which links to the rules and
    # dashboards, as `helm package` does.
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    if meta.get("dependencies"):
        problem("Chart.yaml: dependencies make `helm install` need `helm dependency update`"
                " (Helm wants them in charts/ even when their condition is off)")
    config_check()
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / CHART.name
        shutil.copytree(CHART, copy, ignore=shutil.ignore_patterns("charts"))
        for values_file in values_files:
            label = values_file.name if values_file else "default values"
            values = yaml.safe_load(values_file.read_text()) if values_file else None
            report = helm.lint(str(copy), values, strict=True, kube_version=f"v{KUBE_VERSION}")
            for m in report.get("messages", []):
                if m.get("severity", 0) >= 2:
                    problem(f"helm lint ({label}): {m.get('path')}: {m.get('error')}")
            for e in report.get("errors", []):
                problem(f"helm lint ({label}): {e}")
            chart = helm.Chart.load(str(copy))
            try:
                rendered = chart.render(values, name="tgb", namespace="tg-bridge", is_install=True)
            except helm.HelmError as e:
                problem(f"helm template ({label}): {e}")
                continue
            docs = [text for name, text in sorted(rendered.items())
                    if not name.endswith("NOTES.txt") and text.strip()]
            notes = "".join(t for n, t in rendered.items() if n.endswith("NOTES.txt"))
            if "/healthz" not in notes or "/metrics" not in notes:
                problem(f"NOTES.txt ({label}) does not say how to reach /healthz and /metrics")
            manifest = "\n---\n".join(docs)
            target = out_dir / (values_file.stem if values_file else "default") 
            target = target.with_suffix(".yaml")
            target.write_text(manifest)
            objects = [d for d in yaml.safe_load_all(manifest) if d]
            policy_check(label, objects, values or {})
            # The rendered PrometheusRule's groups as a rule file, for promtool to check.
            for o in objects:
                if o["kind"] == "PrometheusRule":
                    rules = target.with_suffix(".rules.yml")
                    rules.write_text(yaml.safe_dump({"groups": o["spec"]["groups"]}))
        # Values that cannot work are refused with a message naming them.
        keda = {"enabled": True, "natsServerMonitoringEndpoint": "nats:8222"}
        refused = [
            ({"services": {"tg-egress": {"keda": keda, "autoscaling": {"enabled": True}}}},
             "keda and autoscaling are both enabled"),
            ({"services": {"tg-egress": {"keda": {"enabled": True}}}},
             "natsServerMonitoringEndpoint is required"),
            ({"services": {"tg-ingress": {"keda": keda}}}, "has no durable consumer"),
            ({"nats": {"enabled": True}}, "nats"),
            ({"config": {"overrides": {"BUS_REPLICAS": "3"}}}, "BUS_REPLICAS"),
        ]
        chart = helm.Chart.load(str(copy))
        for bad, expected in refused:
            try:
                chart.render(bad, name="tgb", namespace="tg-bridge", is_install=True)
                problem(f"helm template with {bad} rendered; expected a failure naming {expected!r}")
            except helm.HelmError as e:
                if expected not in str(e):
                    problem(f"helm template with {bad}: {e} does not name {expected!r}")


# The sections of tg-bridge.toml each service reads (`config.section(...)` in its lib.rs;
# [bus] and [http] every service).
CONFIG_SECTIONS = {
    "tg-ingress": ["tg_ingress"], "tg-egress": ["tg_egress"],
    "dynamics-adapter": ["dynamics", "routing", "partners"],
    "planner-adapter": ["routing", "partners"], "sla-monitor": ["sla", "partners"],
    "document-review": ["documents", "onboarding"],
}


def config_check() -> None:
    """The chart's default config.toml is the repository's config/tg-bridge.toml, and has every
    section a service reads."""
    import tomllib

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    text = values.get("config", {}).get("toml", "")
    if text.strip() != REPO_CONFIG.read_text().strip():
        problem("values.yaml config.toml differs from config/tg-bridge.toml: copy it over"
                " (the chart ships the repository's documented configuration)")
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problem(f"values.yaml config.toml is not TOML: {e}")
        return
    for service, sections in CONFIG_SECTIONS.items():
        for section in ["bus", "http", *sections]:
            if section not in doc:
                problem(f"values.yaml config.toml has no [{section}], which {service} reads")


def policy_check(label: str, objects: list[dict], values: dict) -> None:
    """What the issue asks of every workload, checked on the rendered objects."""
    kinds: dict[str, list[dict]] = {}
    for o in objects:
        kinds.setdefault(o["kind"], []).append(o)
    deployments = {d["spec"]["template"]["spec"]["containers"][0]["name"]: d
                   for d in kinds.get("Deployment", [])}
    if set(deployments) != set(SERVICES):
        problem(f"{label}: Deployments {sorted(deployments)} != services {sorted(SERVICES)}")
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        where = f"{label}: Deployment of {name}"
        if c.get("command") != [name]:
            problem(f"{where}: command must name the binary, got {c.get('command')}")
        if c.get("livenessProbe", {}).get("httpGet", {}).get("path") != "/healthz":
            problem(f"{where}: liveness probe is not /healthz")
        if c.get("readinessProbe", {}).get("httpGet", {}).get("path") != "/readyz":
            problem(f"{where}: readiness probe is not /readyz")
        sc = c.get("securityContext", {})
        psc = pod.get("securityContext", {})
        if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
            problem(f"{where}: not runAsNonRoot")
        if sc.get("readOnlyRootFilesystem") is not True:
            problem(f"{where}: root filesystem is writable")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(f"{where}: privilege escalation allowed")
        if "ALL" not in sc.get("capabilities", {}).get("drop", []):
            problem(f"{where}: capabilities not dropped")
        if not c.get("resources", {}).get("requests"):
            problem(f"{where}: no resource requests")
        env = {e["name"]: e for e in c.get("env", [])}
        for var in ("TGB_NATS_URL", "TGB_HTTP_ADDR", "TGB_CONFIG"):
            if var not in env:
                problem(f"{where}: {var} is not set")
        for var, e in env.items():
            if re.search(r"SECRET|_KEY$|CREDS_DATA|PASSWORD", var) and "value" in e:
                problem(f"{where}: {var} is a literal value; secrets must come from a Secret")
        if str(SERVICES[name]) not in env["TGB_HTTP_ADDR"]["value"]:
            problem(f"{where}: TGB_HTTP_ADDR {env['TGB_HTTP_ADDR']['value']} is not its port")
    for kind in ("Service", "PodDisruptionBudget"):
        if len(kinds.get(kind, [])) != len(SERVICES):
            problem(f"{label}: expected one {kind} per service, got {len(kinds.get(kind, []))}")
    if kinds.get("Secret"):
        problem(f"{label}: the chart renders a Secret; secrets are referenced only (existingSecret)")
    for hpa in kinds.get("HorizontalPodAutoscaler", []):
        types = {m["type"] for m in hpa["spec"]["metrics"]}
        if not types:
            problem(f"{label}: HPA {hpa['metadata']['name']} has no metric")
    component = lambda o: o["metadata"]["labels"].get("app.kubernetes.io/component")  # noqa: E731
    for d in deployments.values():
        ann = d["spec"]["template"]["metadata"].get("annotations", {})
        if "checksum/config" not in ann:
            problem(f"{label}: Deployment {d['metadata']['name']} has no checksum/config")
        if values.get("checksumReferences", {}).get("enabled", True) and "checksum/references" not in ann:
            problem(f"{label}: Deployment {d['metadata']['name']} has no checksum/references")
        if values.get("rolloutToken") and ann.get("tg-bridge/rollout-token") != values["rolloutToken"]:
            problem(f"{label}: Deployment {d['metadata']['name']} does not carry rolloutToken")
    # KEDA: each ScaledObject scales its service's Deployment on that service's durable
    # consumer, and no HPA of the chart competes with KEDA's.
    hpa_of = {component(h) for h in kinds.get("HorizontalPodAutoscaler", [])}
    for so in kinds.get("ScaledObject", []):
        name = component(so)
        trigger = so["spec"]["triggers"][0]
        meta = trigger["metadata"]
        if trigger["type"] != "nats-jetstream" or meta.get("consumer") != CONSUMERS.get(name):
            problem(f"{label}: ScaledObject of {name} does not read consumer {CONSUMERS.get(name)}")
        if meta.get("stream") != "TGB_EVENTS" or not meta.get("natsServerMonitoringEndpoint"):
            problem(f"{label}: ScaledObject of {name}: stream or monitoring endpoint missing")
        if so["spec"]["scaleTargetRef"]["name"] != deployments.get(name, {}).get("metadata", {}).get("name"):
            problem(f"{label}: ScaledObject of {name} does not target its Deployment")
        if name in hpa_of:
            problem(f"{label}: {name} has both an HPA and a ScaledObject")
        if "replicas" in deployments.get(name, {}).get("spec", {}):
            problem(f"{label}: Deployment of {name} sets replicas while KEDA scales it")
    # NetworkPolicy: one per service, default deny (both directions), webhooks only where an
    # Ingress exists, APIs only for services with credentials.
    policies = {component(n): n for n in kinds.get("NetworkPolicy", [])}
    if values.get("networkPolicy", {}).get("enabled"):
        if set(policies) != set(SERVICES):
            problem(f"{label}: NetworkPolicies {sorted(policies)} != services {sorted(SERVICES)}")
        ingress_of = {component(i) for i in kinds.get("Ingress", [])}
        for name, pol in policies.items():
            spec = pol["spec"]
            if sorted(spec.get("policyTypes", [])) != ["Egress", "Ingress"]:
                problem(f"{label}: NetworkPolicy of {name} is not default-deny both ways")
            if len(spec.get("ingress", [])) != 1 + (name in ingress_of) + len(
                    values["networkPolicy"].get("extraIngress", [])):
                problem(f"{label}: NetworkPolicy of {name}: webhook ingress must exist exactly when it has an Ingress")
            ports = {p["port"] for r in spec.get("egress", []) for p in r.get("ports", [])}
            if 443 in ports and name == "sla-monitor":
                problem(f"{label}: sla-monitor calls no API but may reach port 443")
            if 4222 not in ports or 53 not in ports:
                problem(f"{label}: NetworkPolicy of {name} blocks NATS or DNS")
    elif policies:
        problem(f"{label}: NetworkPolicies rendered while networkPolicy.enabled is off")
    # PrometheusRule: the alerts of deploy/prometheus/rules, no more, no fewer.
    for rule in kinds.get("PrometheusRule", []):
        rendered = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r}
        source = {r["alert"] for _, r in alert_rules()}
        if rendered != source:
            problem(f"{label}: PrometheusRule alerts {sorted(rendered ^ source)} differ from deploy/prometheus/rules")
    # Dashboards: one ConfigMap per dashboard file, the same JSON.
    boards = {k: v for c in kinds.get("ConfigMap", []) for k, v in (c.get("data") or {}).items()
              if k.endswith(".json")}
    if values.get("dashboards", {}).get("enabled"):
        files = {p.name: json.loads(p.read_text()) for p in DASHBOARDS.glob("*.json")}
        if set(boards) != set(files) or any(json.loads(boards[k]) != files[k] for k in boards):
            problem(f"{label}: dashboard ConfigMaps {sorted(boards)} differ from deploy/grafana/dashboards")


def kube_validate(files: list[str]) -> None:
    exe = Path(sys.executable).parent / "kubernetes-validate"
    run = subprocess.run([str(exe), "-k", KUBE_VERSION, "--strict", *files],
                         capture_output=True, text=True)
    allowed = [re.compile(rf"Couldn't find schema for kind {k} with api version {re.escape(a)}\b")
               for a, k in CRD_KINDS]
    for line in (run.stdout + run.stderr).splitlines():
        if line.startswith("INFO") or not line.strip():
            continue
        if line.startswith("WARN") and any(p.search(line) for p in allowed):
            continue
        problem(f"kubernetes-validate: {line}")
    if run.returncode != 0 and not problems:
        problem(f"kubernetes-validate exited {run.returncode}")


# ---------------------------------------------------------------- compose


def dockerfile_bins() -> set[str]:
    text = DOCKERFILE.read_text()
    bins: set[str] = {"tgb-healthcheck"}
    for arg in ("BINS", "OPTIONAL_BINS"):
        m = re.search(rf'^ARG {arg}="([^"]*)"', text, re.M)
        if not m:
            problem(f"deploy/Dockerfile: no ARG {arg}")
            continue
        bins.update(m.group(1).split())
    return bins


def compose_check() -> None:
    doc = yaml.safe_load(COMPOSE.read_text())
    services: dict = doc.get("services", {})

    def healthcheck(svc: dict) -> bool:
        hc = svc.get("healthcheck")
        return bool(hc) and not hc.get("disable") and hc.get("test") not in (None, ["NONE"], "NONE")

    def healthy_deps(svc: dict) -> list[str]:
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            return []
        return [n for n, d in deps.items() if (d or {}).get("condition") == "service_healthy"]

    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        for dep in (deps if isinstance(deps, list) else deps.keys()):
            if dep not in services:
                problem(f"compose: {name} depends on unknown service {dep}")
        for dep in healthy_deps(svc):
            if dep in services and not healthcheck(services[dep]):
                problem(f"compose: {name} waits for {dep} to be healthy, but {dep} has no healthcheck")
        if not healthcheck(svc) and not any(healthcheck(services.get(d, {})) for d in healthy_deps(svc)):
            problem(f"compose: {name} has no healthcheck and depends on no service that has one")

    bins = dockerfile_bins()
    image = None
    for name, port in SERVICES.items():
        svc = services.get(name)
        if not svc:
            problem(f"compose: service {name} is missing")
            continue
        image = image or svc.get("image")
        if svc.get("command", [None])[0] != name:
            problem(f"compose: {name} must run the binary {name}, runs {svc.get('command')}")
        for infra in ("nats", "sandbox"):
            if infra not in healthy_deps(svc):
                problem(f"compose: {name} must depend on {infra} with condition service_healthy")
        env = svc.get("environment", {})
        if env.get("TGB_NATS_URL") != "nats://nats:4222":
            problem(f"compose: {name}: TGB_NATS_URL is not nats://nats:4222")
        if not str(env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")).startswith("http://jaeger:"):
            problem(f"compose: {name}: OTEL_EXPORTER_OTLP_ENDPOINT does not point at jaeger")
        for var in ("TGB_TG_API_URL", "TGB_DATAVERSE_URL", "TGB_GRAPH_URL", "TGB_AZURE_AUTHORITY"):
            if not str(env.get(var, "")).startswith("http://sandbox:8600/"):
                problem(f"compose: {name}: {var} does not point at the sandbox")
        if env.get("TGB_HTTP_ADDR") != f"0.0.0.0:{port}":
            problem(f"compose: {name}: TGB_HTTP_ADDR is not 0.0.0.0:{port}")
        test = (svc.get("healthcheck") or {}).get("test", [])
        if test[:2] != ["CMD", "tgb-healthcheck"] or f":{port}/readyz" not in " ".join(test):
            problem(f"compose: {name}: healthcheck must run tgb-healthcheck on :{port}/readyz (no shell in the image)")
    for name, svc in services.items():
        if svc.get("image") == image and svc.get("command"):
            if svc["command"][0] not in bins:
                problem(f"compose: {name} runs {svc['command'][0]}, which deploy/Dockerfile does not build")
    for infra in ("nats", "jaeger", "prometheus", "grafana", "sandbox"):
        if infra not in services:
            problem(f"compose: service {infra} is missing")
    if "-js" not in (services.get("nats", {}).get("command") or []):
        problem("compose: nats must run with -js (JetStream)")
    if "8222/healthz" not in json.dumps(services.get("nats", {}).get("healthcheck", {})):
        problem("compose: nats healthcheck must use the monitoring port's /healthz")

    # Prometheus scrapes every service on its port.
    prom = yaml.safe_load(PROMETHEUS_YML.read_text())
    jobs = {j["job_name"]: [t for sc in j.get("static_configs", []) for t in sc.get("targets", [])]
            for j in prom.get("scrape_configs", [])}
    for name, port in SERVICES.items():
        if jobs.get(name) != [f"{name}:{port}"]:
            problem(f"prometheus.yml: job {name} must scrape {name}:{port}, has {jobs.get(name)}")


# ---------------------------------------------------------------- metrics


def contract() -> tuple[set[str], set[str]]:
    """Names in deploy/metrics.md tables, and those declared as histograms."""
    names, histograms = set(), set()
    for line in METRICS_MD.read_text().splitlines():
        m = re.match(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|\s*(\w+)\s*\|", line)
        if m:
            names.add(m.group(1))
            if m.group(2) == "histogram":
                histograms.add(m.group(1))
    return names, histograms


def foreign_metrics() -> set[str]:
    """Names in the tables of deploy/metrics.md sections "Added by ..." (Prometheus, the NATS
    exporter): not tg-bridge's, so not bound to its naming rules."""
    names, foreign = set(), False
    for line in METRICS_MD.read_text().splitlines():
        if line.startswith("## "):
            foreign = line.startswith("## Added by")
        m = re.match(r"^\|\s*`([a-zA-Z_:][a-zA-Z0-9_:]*)`\s*\|", line)
        if m and foreign:
            names.add(m.group(1))
    return names


def dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text())
        stack = list(board.get("panels", []))
        while stack:
            p = stack.pop()
            stack.extend(p.get("panels", []))
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"{path.name}: {p.get('title')}", t["expr"]))
        for var in board.get("templating", {}).get("list", []):
            q = var.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            if var.get("type") == "query" and q:
                m = re.match(r"label_values\((.+),\s*\w+\)$", q)
                out.append((f"{path.name}: variable {var['name']}", m.group(1) if m else q))
    return out


def rule_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group.get("rules", []):
                out.append((f"{path.name}: {rule.get('alert') or rule.get('record')}", str(rule["expr"])))
    return out


PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left",
    "group_right", "and", "or", "unless", "offset", "bool", "rate", "increase", "delta",
    "histogram_quantile", "vector", "topk", "bottomk", "label_values",
}


def metric_names(expr: str) -> set[str]:
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values are not names
    expr = re.sub(r"\{[^}]*\}", "{}", expr)           # nor label names inside selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    found = set(re.findall(r"\b(?:tgb|jetstream|gnatsd)_[a-z0-9_]+", expr))
    found |= {m for m in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr) if m not in PROMQL_WORDS}
    found |= {m for m in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\[", expr) if m not in PROMQL_WORDS}
    return found


def metrics_check() -> None:
    names, histograms = contract()
    if not names:
        problem("deploy/metrics.md: no metric tables found")
    foreign = foreign_metrics()
    for name in names - foreign:
        if not re.fullmatch(r"tgb_[a-z0-9]+(_[a-z0-9]+)*", name):
            problem(f"deploy/metrics.md: {name} is not snake_case with the tgb_ prefix")
    used = dashboard_exprs() + rule_exprs()
    if not used:
        problem("no dashboard or rule expressions found")
    for where, expr in used:
        for name in sorted(metric_names(expr)):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name in names or (base in histograms and base != name):
                continue
            problem(f"{where}: metric {name} is not in deploy/metrics.md")


def promql_rules(out: Path) -> None:
    """Every dashboard query as a recording rule, so that promtool parses its PromQL."""
    rules = []
    for i, (where, expr) in enumerate(dashboard_exprs()):
        e = (expr.replace("$__rate_interval", "5m").replace("$__range", "6h")
             .replace("${datasource}", "x"))
        e = re.sub(r"\$\{?\w+\}?", ".*", e)
        rules.append({"record": f"tgb_dashboard_query_{i}", "expr": e})
    out.write_text(yaml.safe_dump({"groups": [{"name": "dashboard-queries", "rules": rules}]}))


# ---------------------------------------------------------------- alerts

RUNBOOKS = ROOT / "docs/runbooks.md"
RULE_TESTS = ROOT / "deploy/prometheus/tests"


def alert_rules() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group.get("rules", []):
                if "alert" in rule:
                    out.append((path.name, rule))
    return out


def slug(heading: str) -> str:
    """The anchor GitHub and most Markdown renderers give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def alerts_check() -> None:
    """Every alert has a runbook_url to an existing section of docs/runbooks.md and fires in at
    least one promtool test case; every alert section of the runbooks names an alert."""
    md = RUNBOOKS.read_text() if RUNBOOKS.exists() else ""
    headings = re.findall(r"^#{1,6} (.+)$", md, re.M)
    anchors = {slug(h) for h in headings}
    alerts = alert_rules()
    if not alerts:
        problem("no alert rules found")
    fired: set[str] = set()
    for path in sorted(RULE_TESTS.glob("*.yml")):
        for test in yaml.safe_load(path.read_text()).get("tests", []):
            for case in test.get("alert_rule_test", []):
                if case.get("exp_alerts"):
                    fired.add(case["alertname"])
    names = set()
    for where, rule in alerts:
        name = rule["alert"]
        names.add(name)
        url = (rule.get("annotations") or {}).get("runbook_url", "")
        m = re.fullmatch(r"docs/runbooks\.md#([\w-]+)", url)
        if not m:
            problem(f"{where}: {name}: runbook_url {url!r} is not docs/runbooks.md#<section>")
        elif m.group(1) not in anchors:
            problem(f"{where}: {name}: docs/runbooks.md has no section #{m.group(1)}")
        if name not in fired:
            problem(f"{where}: {name} fires in no test of deploy/prometheus/tests/")
    for h in headings:
        if re.fullmatch(r"Tgb\w+", h.strip()) and h.strip() not in names:
            problem(f"docs/runbooks.md: section {h.strip()} is about no alert of the rule files")


# ---------------------------------------------------------------- nats


def nats_conf(nats_server: str) -> None:
    md = (CHART / "NATS-PERMISSIONS.md").read_text()
    # The block `tgb nats permissions` generated (a tgb test keeps it equal to that output).
    blocks = re.findall(r"^<!-- BEGIN generated by `tgb nats permissions` -->\n```\n(.*?)^```\n"
                        r"<!-- END generated -->", md, re.S | re.M)
    if len(blocks) != 1:
        problem("NATS-PERMISSIONS.md: expected exactly one generated configuration block")
        return
    env = dict(os.environ)
    for var in set(re.findall(r"\$([A-Z][A-Z0-9_]*)", blocks[0])):
        env[var] = "placeholder"
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "permissions.conf").write_text(blocks[0])
        (Path(tmp) / "server.conf").write_text('jetstream: enabled\ninclude "permissions.conf"\n')
        run = subprocess.run([nats_server, "-t", "-c", str(Path(tmp) / "server.conf")],
                             capture_output=True, text=True, env=env)
        if run.returncode != 0:
            problem(f"NATS-PERMISSIONS.md: nats-server -t: {run.stdout}{run.stderr}".strip())
    for name in SERVICES:
        if f'user: "{name}",' not in blocks[0]:
            problem(f"NATS-PERMISSIONS.md: no user for {name}")


# ---------------------------------------------------------------- dockerfile


def dockerfile_check() -> None:
    import dockerfile

    try:
        commands = dockerfile.parse_file(str(DOCKERFILE))
    except dockerfile.GoParseError as e:
        problem(f"deploy/Dockerfile does not parse: {e}")
        return
    stages: list[list] = []
    for c in commands:
        if c.cmd == "FROM":
            stages.append([c])
        elif stages:
            stages[-1].append(c)
    if len(stages) < 3:
        problem("deploy/Dockerfile: expected chef, planner/builder and runtime stages")
        return
    text = DOCKERFILE.read_text()
    if "cargo chef prepare" not in text or "cargo chef cook" not in text:
        problem("deploy/Dockerfile: the dependency layer (cargo chef prepare + cook) is missing")
    final = stages[-1]
    base = final[0].value[0]
    if not re.match(r"(gcr\.io/distroless/cc|debian:[a-z]+-slim)", base):
        problem(f"deploy/Dockerfile: runtime base {base} is neither distroless/cc nor debian-slim")
    users = [c.value[0] for c in final if c.cmd == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problem("deploy/Dockerfile: the runtime stage must end with a non-root USER")
    if any(c.cmd == "RUN" for c in final):
        problem("deploy/Dockerfile: the runtime stage must not RUN anything (no shell in the image)")
    for c in final:
        if c.cmd in ("ENTRYPOINT", "CMD") and c.value and not c.json:
            problem(f"deploy/Dockerfile: {c.cmd} must be in exec form (no shell)")
    # Every binary the image promises is a binary target of the workspace.
    meta = json.loads(subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps", "--offline"],
        cwd=ROOT, capture_output=True, text=True, check=True).stdout)
    targets = {t["name"] for p in meta["packages"] for t in p["targets"] if "bin" in t["kind"]}
    m = re.search(r'^ARG BINS="([^"]*)"', text, re.M)
    bins = set(m.group(1).split()) if m else set()
    for b in sorted(bins - targets):
        problem(f"deploy/Dockerfile: BINS names {b}, which is not a binary of the workspace")
    for b in sorted(set(SERVICES) | {"tgb-sandbox"}):
        if b not in bins:
            problem(f"deploy/Dockerfile: BINS does not include {b}")
    if "tgb" in targets and "tgb" not in bins:
        problem("deploy/Dockerfile: the workspace now has `tgb`: move it from OPTIONAL_BINS to BINS")


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "helm":
        helm_check(Path(args[0]))
    elif cmd == "kube-validate":
        kube_validate(args)
    elif cmd == "compose":
        compose_check()
    elif cmd == "metrics":
        metrics_check()
    elif cmd == "alerts":
        alerts_check()
    elif cmd == "promql":
        promql_rules(Path(args[0]))
    elif cmd == "nats-conf":
        nats_conf(args[0])
    elif cmd == "dockerfile":
        dockerfile_check()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    for p in problems:
        print(f"  {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
