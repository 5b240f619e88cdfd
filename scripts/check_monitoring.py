"""The monitoring profile, checked against the real Prometheus of the compose stack.

    python scripts/check_monitoring.py http://127.0.0.1:9090 3 deploy/grafana/fastworker.json

Duties:
1. Prometheus finds every worker replica (compose's DNS) and the sidecar, and scrapes them.
2. Every query of the Grafana dashboard evaluates on that Prometheus, with the dashboard's
   variables as Grafana fills them for "All", and every metric it names is one Prometheus
   scraped. Grafana itself cannot run here (no image of it can be built from Debian's packages),
   so this is what stands for "the dashboard shows data": a renamed metric or a broken query
   fails here instead of drawing an empty panel.
Prints one line per duty to stderr; exits 1 when either fails within the deadline.
"""

from __future__ import annotations

import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

DEADLINE = 120.0  # seconds: DNS discovery and two scrapes at the 15 s interval fit well inside
# what Grafana puts in place of its variables when "All" is chosen (allValue ".*")
VARIABLES = {"$__rate_interval": "1m", "$queue": ".*", "$worker": ".*"}
# PromQL words that look like metric names in the pattern below
_NOT_METRICS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_NAME = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")  # not a function call
_LABELS = re.compile(r"\{[^}]*\}|\bby\s*\([^)]*\)|\bwithout\s*\([^)]*\)|\[[^\]]*\]|\"[^\"]*\"")


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expression with Grafana's variables filled in) for every target, rows included."""
    out: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                expr = target.get("expr")
                if expr:
                    for name, value in VARIABLES.items():
                        expr = expr.replace(name, value)
                    out.append((panel.get("title", "?"), expr))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    return out


def metric_names(expr: str) -> set[str]:
    """The metric names an expression reads (label matchers, groupings, ranges and strings cut out)."""
    bare = _LABELS.sub(" ", expr)
    return {n for n in _NAME.findall(bare) if n not in _NOT_METRICS and not re.fullmatch(r"\d.*", n)}


def _get(base: str, path: str, **params: str) -> Any:
    url = base + path + ("?" + urllib.parse.urlencode(params) if params else "")
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)


def targets_up(base: str, want: int) -> tuple[bool, str]:
    targets = _get(base, "/api/v1/targets")["data"]["activeTargets"]
    up = sorted(t["labels"]["instance"] for t in targets
                if t["labels"]["job"] == "fastworker-worker" and t["health"] == "up")
    side = [t for t in targets if t["labels"]["job"] == "fastworker-sidecar" and t["health"] == "up"]
    return len(up) == want and bool(side), f"{len(up)}/{want} worker replicas{' and the sidecar' if side else ''}"


def dashboard_problems(base: str, queries: list[tuple[str, str]]) -> tuple[list[str], int]:
    """What is wrong with the dashboard's queries on this Prometheus, and how many returned data."""
    scraped = set(_get(base, "/api/v1/label/__name__/values")["data"])
    problems, with_data = [], 0
    for title, expr in queries:
        missing = sorted(metric_names(expr) - scraped)
        if missing:
            problems.append(f"{title!r} reads {', '.join(missing)}, which no target exports")
            continue
        try:
            answer = _get(base, "/api/v1/query", query=expr)
        except urllib.error.HTTPError as exc:  # 400: PromQL Prometheus cannot parse
            answer = json.loads(exc.read() or b"{}")
        if answer.get("status") != "success":
            problems.append(f"{title!r}: {answer.get('error', 'query failed')}: {expr}")
        elif answer["data"]["result"]:
            with_data += 1
    return problems, with_data


def main() -> int:
    base, want, path = sys.argv[1].rstrip("/"), int(sys.argv[2]), Path(sys.argv[3])
    queries = dashboard_queries(json.loads(path.read_text()))
    deadline = time.monotonic() + DEADLINE
    scraping, problems, with_data, said = False, ["not checked yet"], 0, "no answer"
    while time.monotonic() < deadline and problems:
        try:
            if not scraping:
                scraping, said = targets_up(base, want)
            if scraping:
                problems, with_data = dashboard_problems(base, queries)
        except OSError as exc:
            said = f"no answer ({exc})"
        if problems:
            time.sleep(3)
    print(f"monitoring: Prometheus scrapes {said}", file=sys.stderr)
    if not scraping:
        print("monitoring: FAILED, not every target is scraped", file=sys.stderr)
        return 1
    if problems:
        print("monitoring: FAILED, the dashboard:\n  " + "\n  ".join(problems), file=sys.stderr)
        return 1
    print(f"monitoring: the dashboard's {len(queries)} queries evaluate on it, {with_data} with data",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
