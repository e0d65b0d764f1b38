"""The `runs` table: one row per run, written when it starts (status running) and replaced
atomically when it ends (completed or failed), with its counts.

Example:
    run = RunState.start("math-programs", parameters={...}, model="SmolLM2-135M-Instruct", engine="transformers")
    write_run(data_dir, run)                        # status running
    run.rows_out += 32; run.dropped["wrong"] += 20
    write_run(data_dir, run.finish("completed"))    # same file, replaced
"""
from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from schemas.store import TableStore
from schemas.tables import RUNS
from tasks.engines.base import Occupancy


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
    _t0: float = field(default_factory=time.monotonic, repr=False)

    @classmethod
    def start(cls, flow: str, parameters: dict, model: str, engine: str,
              prefect_flow_run_id: str | None = None, engine_choice: str | None = None) -> "RunState":
        return cls(run_id=new_run_id(), flow=flow, parameters=parameters, model=model, engine=engine,
                   started_at=datetime.now(timezone.utc), prefect_flow_run_id=prefect_flow_run_id,
                   engine_choice=engine_choice)

    def engine_summary(self) -> dict:
        """requests, mean requests in flight per engine, busy fraction: over every engine of every pass."""
        return Occupancy.combine([s for actors in self.occupancy.values() for s in actors.values()])

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
        }


def _why(settings, spec) -> str | None:
    """Why this engine: what `--engine` resolved to and why (None when the settings chose otherwise)."""
    backend, reason = settings.engine_choice()
    return reason if backend == spec.backend else None


def write_run(data_dir: str | Path, run: RunState) -> Path | None:
    return TableStore(data_dir, RUNS).commit([run.to_row()], run.run_id, name="run.parquet")


@contextmanager
def recorded_run(flow: str, settings, spec) -> Iterator[RunState]:
    """A generator flow's run: its `runs` row is written at the start (running, with the flow's settings,
    model, engine and Prefect flow run id); a failure or interruption inside the block is recorded as
    `failed` with its error, then re-raised. The flow finishes the row itself when it succeeds."""
    from prefect import runtime

    run = RunState.start(flow, settings.model_dump(), model=spec.model_id, engine=spec.backend,
                         prefect_flow_run_id=str(runtime.flow_run.id) if runtime.flow_run.id else None,
                         engine_choice=_why(settings, spec))
    write_run(settings.data_dir, run)
    try:
        yield run
    except BaseException as exc:
        write_run(settings.data_dir, run.finish("failed", error=f"{type(exc).__name__}: {exc}"[:2000]))
        raise
