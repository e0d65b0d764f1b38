"""`datagen serve`: every deployment of deploy/prefect.yaml, with its schedules, served from one
process (Prefect's `serve`, no work pool or worker needed). The same file drives `prefect deploy`
for a server plus workers, so schedules are defined once.

    prefect server start &                       # or point PREFECT_API_URL at a running server
    datagen serve                                # all deployments of deploy/prefect.yaml
    datagen serve --only math-programs/nightly   # some of them

Each deployment entry is read as `prefect deploy` reads it: name, entrypoint (`flows/<file>.py:<flow>`,
relative to the repo root; served as the installed module `flows.<file>`), parameters, schedules (cron/interval/rrule, timezone, active),
concurrency_limit, tags, description. Work pools and pull steps apply to `prefect deploy` only.
YAML aliases under `definitions:` are resolved by the YAML loader.
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "deploy" / "prefect.yaml"


def read_deployments(path: str | Path = DEFAULT_FILE) -> list[dict]:
    spec = yaml.safe_load(Path(path).read_text())
    deployments = spec.get("deployments") or []
    for d in deployments:
        for key in ("name", "entrypoint"):
            if not d.get(key):
                raise ValueError(f"{path}: a deployment has no {key!r}: {d}")
    return deployments


def _schedule(entry: dict):
    from prefect.schedules import Cron, Interval, RRule

    common = {"timezone": entry.get("timezone"), "active": entry.get("active", True),
              "parameters": entry.get("parameters") or None}
    if "cron" in entry:
        return Cron(entry["cron"], **common)
    if "interval" in entry:
        return Interval(timedelta(seconds=float(entry["interval"])), **common)
    if "rrule" in entry:
        return RRule(entry["rrule"], **common)
    raise ValueError(f"schedule needs cron, interval or rrule: {entry}")


def runner_deployments(path: str | Path = DEFAULT_FILE, only: list[str] | None = None) -> list:
    """RunnerDeployments for the entries of `path` (`only`: their `flow-name/deployment` or names)."""
    import importlib

    from prefect.deployments.runner import EntrypointType

    out = []
    for d in read_deployments(path):
        flow_path, _, fn = d["entrypoint"].partition(":")
        # flows/x.py:fn is imported as the installed module flows.x, so runs start from any directory.
        flow = getattr(importlib.import_module(flow_path.removesuffix(".py").replace("/", ".")), fn)
        if only and d["name"] not in only and f"{flow.name}/{d['name']}" not in only:
            continue
        out.append(flow.to_deployment(
            name=d["name"],
            schedules=[_schedule(s) for s in d.get("schedules") or []],
            parameters=d.get("parameters") or {},
            concurrency_limit=d.get("concurrency_limit"),
            tags=d.get("tags"),
            description=d.get("description"),
            entrypoint_type=EntrypointType.MODULE_PATH,
        ))
    if only and not out:
        raise ValueError(f"{path}: no deployment named {only}")
    return out


def serve_all(path: str | Path = DEFAULT_FILE, only: list[str] | None = None, limit: int | None = None) -> None:
    from prefect import serve

    serve(*runner_deployments(path, only), limit=limit)
