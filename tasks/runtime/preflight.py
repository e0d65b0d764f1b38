"""What `datagen run` checks before anything starts — no Prefect server, no Ray, no model: the models
the run names, the data dir it writes to, then its whole input (the generator's `load()`). A problem
is one line and exit code 2, in a second instead of after a cluster start, and the data dir stays
untouched (not even a `failed` row in `runs`).

Example:
    source = preflight(MathPrograms(settings))
    # PreflightError("--model /models/qwne: no such folder (...)")
    # PreflightError("--base-url http://127.0.0.1:8000/v1: no answer from http://127.0.0.1:8000/v1/models (ConnectError)")
    # PreflightError("--data-dir /mnt/ro/datasets: not writable (a read-only folder or file system)")
    # InputError("problems.jsonl: row 7: id 'q7' repeats row 3 (...)")

The input is read again by the flow's load step: reading it twice costs far less than a run that
starts Ray and loads a model only to stop at a typo.
"""
from __future__ import annotations

import os
from pathlib import Path

from tasks.engines.model_files import model_problem

from .generator import Generator
from .inputs import Source


class PreflightError(ValueError):
    """A run that cannot start: the message names the option, its value and the problem."""


def preflight(generator: Generator, load: bool = True) -> Source | None:
    """The models first (a wrong one would otherwise be found after Ray and the engine actor start),
    then the data dir, then (unless not `load`: an input another step of a recipe writes) the input:
    its Source, or PreflightError / InputError."""
    settings = generator.settings
    for option, model in settings.model_options().items():
        problem = model_problem(model)
        if problem is not None:
            raise PreflightError(f"--{option.replace('_', '-')} {model}: {problem}")
    if settings.engine == "openai":  # a served model: the endpoint must answer, take the key, serve it
        from tasks.engines.openai_engine import endpoint_problem

        problem = endpoint_problem(settings.base_url, settings.model, settings.api_key_env)
        if problem is not None:
            raise PreflightError(f"--base-url {settings.base_url}: {problem}")
    problem = data_dir_problem(settings.data_dir)
    if problem is not None:
        raise PreflightError(f"--data-dir {settings.data_dir}: {problem}")
    return generator.load() if load else None


def data_dir_problem(data_dir: str) -> str | None:
    """Why tables cannot be written under a local `data_dir`, or None. It need not exist yet: then the
    nearest folder above it that does must be writable (the run creates the rest). Object stores are
    not checked here: their permissions show only at the first write."""
    from schemas.datadir import DataDir

    where = DataDir(data_dir)
    if not where.local:
        return None
    path = Path(where.root)
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return "is a file, not a folder" if existing == path else f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "not writable (a read-only folder or file system)" if existing == path else \
            f"cannot be created: {existing} is not writable"
    return None
