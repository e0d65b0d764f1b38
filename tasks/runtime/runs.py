"""The `runs` table: one row per run, written when it starts (status running), refreshed every
`HEARTBEAT_S` while it runs, and replaced atomically when it ends (completed, failed, or interrupted by
SIGTERM / SIGINT), with its counts. A driver killed outright (SIGKILL, a lost node) cannot end its row:
`mark_stale_runs` — called by every run at its start and by `datagen runs` — marks a `running` row
`interrupted` once its driver is known dead (same host: the process is gone) or its heartbeat is older
than `STALE_AFTER_S` (a driver on another host).

Example:
    run = RunState.start("math-programs", parameters={...}, model="SmolLM2-135M-Instruct", engine="transformers")
    write_run(data_dir, run)                        # status running
    run.rows_out += 32; run.dropped["wrong"] += 20
    write_run(data_dir, run.finish("completed"))    # same file, replaced
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

from schemas.store import TableStore
from schemas.tables import RUNS
from tasks.engines.base import Occupancy

from .lifecycle import driver_alive, driver_token, interruption

log = logging.getLogger(__name__)
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0  # 20 missed heartbeats: a driver on another host is taken for dead
_WRITES = threading.Lock()  # a run's row is written by its flow and by its heartbeat thread


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


@dataclass
class RunState:
    run_id: str
    flow: str
    parameters: dict
    model: str
    engine: str
    started_at: datetime
    prefect_flow_run_id: str | None = None
    status: str = "running"
    ended_at: datetime | None = None
    rows_in: int = 0
    rows_skipped: int = 0
    rows_out: int = 0
    dropped: Counter = field(default_factory=Counter)
    counts: Counter = field(default_factory=Counter)
    tokens_generated: int = 0
    error: str | None = None
    engine_choice: str | None = None  # why this engine (`--engine auto` says what it found)
    # pass -> {actor: cumulative Occupancy snapshot}: how full each engine was kept
    occupancy: dict = field(default_factory=dict)
    # --engine openai: per million prompt / completion tokens (None: no price given, no cost)
    price_in: float | None = None
    price_out: float | None = None
    driver: str = field(default_factory=driver_token)
    heartbeat_at: datetime | None = None
    _t0: float = field(default_factory=time.monotonic, repr=False)

    @classmethod
    def start(cls, flow: str, parameters: dict, model: str, engine: str,
              prefect_flow_run_id: str | None = None, engine_choice: str | None = None,
              price_in: float | None = None, price_out: float | None = None) -> "RunState":
        return cls(run_id=new_run_id(), flow=flow, parameters=parameters, model=model, engine=engine,
                   started_at=datetime.now(timezone.utc), prefect_flow_run_id=prefect_flow_run_id,
                   engine_choice=engine_choice, price_in=price_in, price_out=price_out)

    def engine_summary(self) -> dict:
        """requests, mean requests in flight per engine, busy fraction: over every engine of every pass."""
        return Occupancy.combine([s for actors in self.occupancy.values() for s in actors.values()])

    def endpoint_summary(self) -> dict:
        """The endpoint's counts, usage and cost over every engine of every pass (--engine openai);
        every value None for the other engines. A missing price counts as 0 when the other is given."""
        stats = [s["endpoint"] for actors in self.occupancy.values() for s in actors.values() if "endpoint" in s]
        keys = ("http_requests", "retries", "throttled", "server_errors", "timeouts", "failed", "max_in_flight",
                "prompt_tokens", "completion_tokens")
        total = {k: sum(int(s.get(k, 0)) for s in stats) if stats else None for k in keys}
        cost = None
        if stats and (self.price_in is not None or self.price_out is not None):
            cost = (total["prompt_tokens"] * (self.price_in or 0.0)
                    + total["completion_tokens"] * (self.price_out or 0.0)) / 1e6
        kept = self.counts.get("kept", 0)
        return {
            "endpoint_http_requests": total["http_requests"], "endpoint_retries": total["retries"],
            "endpoint_throttled": total["throttled"], "endpoint_server_errors": total["server_errors"],
            "endpoint_timeouts": total["timeouts"], "endpoint_failed_requests": total["failed"],
            "endpoint_max_in_flight": total["max_in_flight"],
            "usage_prompt_tokens": total["prompt_tokens"], "usage_completion_tokens": total["completion_tokens"],
            "price_in": self.price_in, "price_out": self.price_out,
            "cost": cost, "cost_per_kept_record": cost / kept if cost is not None and kept else None,
        }

    def finish(self, status: str, error: str | None = None) -> "RunState":
        self.status, self.error, self.ended_at = status, error, datetime.now(timezone.utc)
        return self

    @property
    def wall_seconds(self) -> float:
        return time.monotonic() - self._t0

    def to_row(self) -> dict:
        return {
            "run_id": self.run_id, "flow": self.flow, "status": self.status,
            "parameters": json.dumps(self.parameters, sort_keys=True, default=str),
            "model": self.model, "engine": self.engine, "prefect_flow_run_id": self.prefect_flow_run_id,
            "started_at": self.started_at, "ended_at": self.ended_at,
            "wall_seconds": round(self.wall_seconds, 3) if self.ended_at else None,
            "rows_in": self.rows_in, "rows_skipped": self.rows_skipped, "rows_out": self.rows_out,
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "counts": dict(sorted(self.counts.items())),
            "tokens_generated": self.tokens_generated, "error": self.error,
            "engine_choice": self.engine_choice,
            **{f"engine_{k}": v for k, v in self.engine_summary().items()},
            "driver": self.driver, "heartbeat_at": self.heartbeat_at,
            **self.endpoint_summary(),
        }


def _why(settings, spec) -> str | None:
    """Why this engine: what `--engine` resolved to and why (None when the settings chose otherwise)."""
    backend, reason = settings.engine_choice()
    return reason if backend == spec.backend else None


def write_run(data_dir: str | Path, run: RunState) -> Path | None:
    """(Re)write the run's row with a fresh heartbeat (from the flow or the heartbeat thread, one at a time)."""
    with _WRITES:
        run.heartbeat_at = datetime.now(timezone.utc)
        return TableStore(data_dir, RUNS).commit([run.to_row()], run.run_id, name="run.parquet")


def mark_stale_runs(data_dir: str | Path, now: datetime | None = None) -> list[str]:
    """Mark `interrupted` every `running` row whose driver is dead: on this host, its process is gone;
    elsewhere, its heartbeat is older than STALE_AFTER_S. Returns their run ids."""
    store = TableStore(data_dir, RUNS)
    if not store.files():
        return []
    import pyarrow.dataset as pads

    now = now or datetime.now(timezone.utc)
    marked = []
    for row in store.read(filter=pads.field("status") == "running").to_pylist():
        alive = driver_alive(row.get("driver"))
        beat = row.get("heartbeat_at") or row["started_at"]
        if alive is False or (alive is None and now - beat > timedelta(seconds=STALE_AFTER_S)):
            why = ("its driver process is gone" if alive is False
                   else f"no heartbeat since {beat:%Y-%m-%d %H:%M:%S} UTC")
            row.update(status="interrupted", ended_at=now, error=f"interrupted: {why} (found {now:%Y-%m-%d %H:%M:%S} UTC)")
            store.commit([row], row["run_id"], name="run.parquet")
            marked.append(row["run_id"])
    return marked


@contextmanager
def recorded_run(flow: str, settings, spec) -> Iterator[RunState]:
    """A generator flow's run: stale `running` rows of dead drivers are marked first; then its own row is
    written (running, with the flow's settings, model, engine and Prefect flow run id) and its heartbeat
    refreshed in a thread. SIGTERM / SIGINT inside the block (lifecycle.interruption) is recorded as
    `interrupted`, any other failure as `failed` with its error, then re-raised. The
    flow finishes the row itself when it succeeds."""
    from prefect import get_run_logger, runtime

    for run_id in mark_stale_runs(settings.data_dir):
        get_run_logger().warning(f"run {run_id}: its driver died; marked interrupted (this run redoes what it left)")
    run = RunState.start(flow, settings.model_dump(), model=spec.model_id, engine=spec.backend,
                         prefect_flow_run_id=str(runtime.flow_run.id) if runtime.flow_run.id else None,
                         engine_choice=_why(settings, spec), price_in=spec.price_in, price_out=spec.price_out)
    stop = threading.Event()

    def beat():  # a write after the run ended rewrites its final row: to_row reads it under the lock
        while not stop.wait(HEARTBEAT_S):
            try:
                write_run(settings.data_dir, run)
            except OSError as exc:  # a full disk or a lost mount: the run's own writes report it
                log.warning("run %s: heartbeat not written: %s", run.run_id, exc)

    write_run(settings.data_dir, run)
    heartbeat = threading.Thread(target=beat, name=f"heartbeat-{run.run_id}", daemon=True)
    heartbeat.start()
    try:
        yield run
    except BaseException as exc:
        if signal_name := interruption(exc):
            run.finish("interrupted", error=f"interrupted by {signal_name}")
        else:
            run.finish("failed", error=f"{type(exc).__name__}: {exc}"[:2000])
        try:
            write_run(settings.data_dir, run)
        except OSError as write_error:  # e.g. the disk that failed the run is full: report the run's own error
            log.warning("run %s: its %s row could not be written: %s", run.run_id, run.status, write_error)
        raise
    finally:
        stop.set()
