"""Ray plumbing shared by every generator: the session, the LLM actor stage and CPU stages.

The LLM stage is a Ray Data `map_batches` over `ProgramActor`, which loads its engine once in
`__init__` and runs the generator's per-row program on every row it holds, many batches at once, so
the engine is never short of requests. Resources (pool size, GPUs, batch size, rows in flight) are
chosen by the caller. Rows travel between stages as {"source_id", "payload"} where payload is the
row's JSON: generators pass nested, evolving dicts, and a fixed two-column block schema keeps Ray
Data from inferring (and mis-unifying) types batch by batch. Table schemas are applied at write time.

Example:
    with ray_session():
        ds = rows_dataset(problems)
        ds = llm_stage(ds, EngineSpec(), partial(write_programs, config=cfg), batch_size=8)
        ds = cpu_stage(ds, partial(execute_attempts, config=cfg), batch_size=8)
        for rows in iter_row_batches(ds): ...
"""
from __future__ import annotations

import asyncio
import atexit
import weakref
import functools
import hashlib
import json
import os
import threading
from contextlib import contextmanager, nullcontext
from typing import Awaitable, Callable, Iterator

import numpy as np

from tasks.engines import EngineSpec, TrackedEngine, make_engine

from .lifecycle import noted_ray_session

Step = Callable[[list[dict]], list[dict]]
Program = Callable[..., Awaitable[dict | None]]  # async program(row, engine) -> row | None


def encode(rows: list[dict]) -> dict[str, np.ndarray]:
    return {
        "source_id": np.array([r["source_id"] for r in rows], dtype=object),
        "payload": np.array([json.dumps(r) for r in rows], dtype=object),
    }


def decode(batch: dict[str, np.ndarray]) -> list[dict]:
    return [json.loads(p) for p in batch["payload"]]


@contextmanager
def ray_session(address: str | None = None):
    """Use the running Ray session if there is one (tests, notebooks); else start or join one."""
    import ray

    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # no token file for a local cluster
    handlers = _signal_handlers()
    # The engines' start-up logs (vLLM's, transformers' weight-loading bars) stay in Ray's session log
    # folder, whose path the run prints; DATAGEN_VERBOSE=1 (`datagen -v`) streams them here too.
    ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=verbose())
    _signal_handlers(handlers)  # ray.init turns SIGTERM into sys.exit; the driver's own handling stays
    configure_data_context()
    if not verbose():
        _errors_to_log_folder()
    node = ray._private.worker._global_node  # its head is True when this driver started the cluster
    try:
        with noted_ray_session(node.get_session_dir_path()) if getattr(node, "head", False) else nullcontext():
            yield
    finally:
        ray.shutdown()


def _signal_handlers(restore: dict | None = None) -> dict:
    """SIGTERM / SIGINT handlers of the main thread: read them, or put `restore` back."""
    import signal

    if threading.current_thread() is not threading.main_thread():
        return {}
    if restore is not None:
        for sig, handler in restore.items():
            if handler is not None:  # None: a handler set outside Python, which Python cannot put back
                signal.signal(sig, handler)
    return {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}


def verbose() -> bool:
    return os.environ.get("DATAGEN_VERBOSE", "") not in ("", "0")


def log_folder() -> str | None:
    """Where this driver's Ray session keeps every process's logs (None without a Ray session)."""
    import ray

    node = ray._private.worker._global_node
    return f"{node.get_session_dir_path()}/logs" if node is not None else None


def _errors_to_log_folder() -> None:
    """Ray's driver prints every task error the cluster reports (a whole remote traceback per retry) to
    the terminal; they go to <log folder>/datagen-task-errors.log instead. The run's failure, if it
    fails, is reported in one line by the CLI."""
    import ray._private.worker as ray_worker

    folder, original = log_folder(), getattr(ray_worker, "print_to_stdstream", None)
    if folder is None or original is None or getattr(original, "_datagen", False):
        return

    def to_file(data, ignore_prefix):
        if data.get("pid") != "raylet":
            return original(data, ignore_prefix)
        with open(f"{folder}/datagen-task-errors.log", "a") as fh:
            fh.write("\n".join(data.get("lines", [])) + "\n")

    to_file._datagen = True
    ray_worker.print_to_stdstream = to_file


def configure_data_context() -> None:
    import logging

    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the run draws its own progress (tasks/runtime/progress.py)
    if not verbose():  # Ray Data's plans, its INFO and its copies of a failure's traceback go to the
        # session's ray-data.log only (its file handler is left alone); the run reports a failure itself
        for handler in logging.getLogger("ray.data").handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                handler.addFilter(lambda record: record.levelno >= logging.CRITICAL)
    # Blocks are tiny JSON rows; keep the stream moving batch by batch, never all in one block.
    ctx.execution_options.preserve_order = False


def rows_dataset(rows: list[dict], rows_per_block: int = 1):
    """A Ray dataset of generator rows; many small blocks so results stream back as they finish."""
    import ray.data

    return ray.data.from_items(
        [{"source_id": r["source_id"], "payload": json.dumps(r)} for r in rows],
        override_num_blocks=max(1, len(rows) // max(1, rows_per_block)),
    )


def plan_dataset(plan, rows_per_block: int = 1, cluster: bool = False):
    """A pass's rows as a Ray dataset: a staged plan is read with `ray.data.read_parquet` (streamed, in
    blocks of `rows_per_block` rows: Ray Data's streaming repartition), never brought into the driver;
    a plan of a list (a generator's own) goes through `rows_dataset`. `plan.extra` fields are added to
    each row as it enters. `cluster`: the staged files are on the driver's disk only, so they are read
    there (Ray 2.60's `local://`, which Ray deprecates for 2027: stage on shared storage then)."""
    import ray.data

    if plan.staged is None:
        ds = rows_dataset(plan.rows, rows_per_block=rows_per_block)
        return ds
    if cluster:
        # local:// reads run on the driver's node, which on a cluster often lends no CPU to tasks (a head
        # started with num_cpus=0, as Ray advises): a read asking for 1 CPU could never be placed there.
        ds = ray.data.read_parquet([f"local://{f}" for f in plan.staged.files], num_cpus=0)
    else:
        ds = ray.data.read_parquet(plan.staged.files)
    ds = ds.select_columns(["source_id", "payload"])
    ds = ds.repartition(target_num_rows_per_block=max(1, rows_per_block))
    if plan.extra:
        ds = ds.map_batches(functools.partial(add_fields, extra=json.dumps(plan.extra)), batch_format="numpy",
                            batch_size=None, zero_copy_batch=False)
    return ds


def add_fields(batch: dict[str, np.ndarray], extra: str) -> dict[str, np.ndarray]:
    fields = json.loads(extra)
    return encode([{**row, **fields} for row in decode(batch)])


def _close_quietly(engine) -> None:
    try:
        engine.close()
    except Exception:  # noqa: BLE001 - the actor is going away either way
        pass


class ProgramActor:
    """Loads the engine once and runs the stage's per-row program over every row it is given: each row
    is its own coroutine, and up to `rows_in_flight` of them run at once, whichever batches they came
    in. Ray Data hands the actor several times that many rows in batches, so a batch that waits on its
    one slow row holds a single slot, not a batch's worth: the engine keeps `rows_in_flight` rows'
    requests in flight until the input runs out.

    `program(row, engine) -> row | None` (None: the row produces nothing further). With
    `shared_engine` (an EngineServer actor handle) it loads nothing and forwards the engine requests
    to that actor instead (see `shared_engine_server`). Each output row carries, under `_engine`, the
    occupancy of this actor's engine so far (cumulative; the driver keeps the latest per actor)."""

    def __init__(self, engine_spec: EngineSpec, program: Program, shared_engine=None, stage: int | str = 0,
                 rows_in_flight: int = 256, endpoint_key: "Secret | None" = None):
        import ray

        if endpoint_key is not None:  # the driver's key, where the engine reads it (this process only)
            os.environ[engine_spec.api_key_env] = endpoint_key.value

        engine = RemoteEngine(shared_engine, engine_spec) if shared_engine is not None else make_engine(engine_spec)
        self.engine = TrackedEngine(engine)
        self.program = program
        self.rows_in_flight = rows_in_flight
        self._slots: asyncio.Semaphore | None = None  # made in the event loop that runs the programs
        self.key = f"{stage}:{ray.get_runtime_context().get_actor_id()}"
        if shared_engine is None:
            # Registered after the engine is built, so that it runs before the exit hooks the engine's
            # library registered (atexit runs them last-in, first-out): the engine is closed in order
            # (vLLM's engine core process stopped, then its output handler) rather than torn down under
            # a running handler, which logged a spurious EngineDeadError traceback at every run's end.
            # A shared engine is its server's to close.
            atexit.register(_close_quietly, self.engine)
        self.owns_engine, self._closes_with_pool = shared_engine is None, False

    def _close_with_the_pool(self) -> None:
        """Close the engine when Ray Data ends this actor gracefully (`__ray_shutdown__` drops its
        `_map_actor_context`), while the engine core still runs. The exit hook comes too late there: Ray
        kills a worker's child processes before its exit hooks run, so vLLM's engine core died under a
        running output handler, which logged `AsyncLLM output_handler failed ... EngineDeadError`."""
        import ray.data

        context = getattr(ray.data, "_map_actor_context", None)
        if context is not None and not self._closes_with_pool and self.owns_engine:
            try:
                weakref.finalize(context, _close_quietly, self.engine)
                self._closes_with_pool = True
            except TypeError:  # not weak-referenceable in this Ray version: the exit hook closes it
                self._closes_with_pool = True

    async def _run(self, row: dict) -> dict | None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.rows_in_flight)
        async with self._slots:
            return await self.program(row, self.engine)

    async def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._close_with_the_pool()
        rows = await asyncio.gather(*(self._run(row) for row in decode(batch)))
        occupancy = self.engine.snapshot()
        rows = [row for row in rows if row is not None]
        for row in rows:
            row.setdefault(ENGINE_KEY, {})[self.key] = occupancy
        return encode(rows)


ENGINE_KEY = "_engine"  # where rows carry their engines' occupancy snapshots back to the driver


def pop_occupancy(rows: list[dict], latest: dict[str, dict]) -> None:
    """Take the engine snapshots off finished rows, keeping the latest (most requests) per actor."""
    for row in rows:
        for key, snapshot in row.pop(ENGINE_KEY, {}).items():
            if key not in latest or snapshot["requests"] >= latest[key]["requests"]:
                latest[key] = snapshot


class EngineServer:
    """One engine (one model copy) serving every generator stage that names it.

    Several generators in one run that use the same model would otherwise each load it in their own
    actor pool, and on one GPU each pool asks Ray for the GPU. Instead the stages' actors become thin
    forwarders (no GPU, no model) and this async actor, created once per engine spec and named, takes
    all their requests at once (the engine batches them). Its lifetime is its creator's (the flow's
    driver); `release_shared_engines()` ends it earlier."""

    def __init__(self, engine_spec: EngineSpec):
        self.engine = make_engine(engine_spec)

    async def generate(self, conversation, params):
        return await self.engine.generate(conversation, params)

    async def score(self, conversation, continuations):
        return await self.engine.score(conversation, continuations)


class RemoteEngine:
    """The engine interface over an EngineServer handle: every request awaits the server's answer."""

    def __init__(self, actor, spec: EngineSpec):
        self._actor = actor
        self.spec = spec

    @functools.cached_property
    def tokenizer(self):
        """The model's own tokenizer, loaded here from its folder (a program that counts prompt tokens
        asks for it; tokenizers do not all travel between processes)."""
        if self.spec.backend not in ("transformers", "vllm"):
            return None
        from transformers import AutoTokenizer

        from tasks.engines.model_files import resolve_model_dir

        return AutoTokenizer.from_pretrained(resolve_model_dir(self.spec.model))

    async def generate(self, conversation, params):
        return await self._actor.generate.remote(conversation, params)

    async def score(self, conversation, continuations):
        return await self._actor.score.remote(conversation, continuations)

    def close(self) -> None:  # the server's owner ends it
        pass


SHARED_NAMESPACE = "datagen"
_SERVERS: dict[str, object] = {}  # name -> handle: an actor nobody references is ended by Ray
_SERVERS_LOCK = threading.Lock()


def shared_engine_name(spec: EngineSpec) -> str:
    digest = hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
    return f"engine-{spec.backend}-{digest}"


def shared_engine_server(spec: EngineSpec, num_gpus: float | None = None):
    """Get or create the EngineServer for `spec` (one per spec and Ray cluster, named, so stages in
    other threads of the driver find it too); returns its handle once its engine has loaded."""
    import ray

    name = shared_engine_name(spec)
    with _SERVERS_LOCK:
        if name not in _SERVERS:
            gpus = engine_gpus(spec) if num_gpus is None else num_gpus
            _SERVERS[name] = ray.remote(EngineServer).options(
                name=name, namespace=SHARED_NAMESPACE, get_if_exists=True, max_concurrency=MAX_CONCURRENCY,
                num_cpus=1, num_gpus=gpus, max_restarts=1, runtime_env={"env_vars": _engine_env(spec, gpus)},
            ).remote(spec)
            ray.get(_SERVERS[name].__ray_ready__.remote())  # a model that fails to load fails here
        return _SERVERS[name]


_SHARE_BY_DEFAULT = False


@contextmanager
def sharing_engines(enabled: bool = True):
    """Within this block, LLM stages that do not say otherwise share one EngineServer per engine spec
    (a DAG run: flows/build.py). Process-wide, since the generators run in the run's task threads."""
    global _SHARE_BY_DEFAULT
    previous, _SHARE_BY_DEFAULT = _SHARE_BY_DEFAULT, enabled
    try:
        yield
    finally:
        _SHARE_BY_DEFAULT = previous


def release_shared_engines() -> int:
    """End the EngineServers this driver created (the end of a DAG run). Returns how many."""
    import ray

    with _SERVERS_LOCK:
        handles = list(_SERVERS.values())
        _SERVERS.clear()
    for handle in handles:
        ray.kill(handle)
    return len(handles)


def engine_gpus(spec: EngineSpec) -> float:
    """GPUs the engine actor asks Ray for: one when the engine is meant for CUDA and Ray has one."""
    import ray

    if spec.device == "cpu" or spec.backend in ("fake", "sim", "openai"):
        return 0.0
    has_gpu = ray.cluster_resources().get("GPU", 0) >= 1
    if spec.device == "cuda" and not has_gpu:
        # Asking Ray for a GPU it does not have waits forever: fail fast instead.
        raise RuntimeError("engine device 'cuda' was asked for, but the Ray cluster has no GPU")
    return 1.0 if has_gpu else 0.0


def _engine_env(spec: EngineSpec, gpus: float) -> dict[str, str]:
    # The engine computes with every core of the node while the sandbox tasks and the driver share
    # them. For transformers, OpenMP's default spin-waiting then collapses throughput (measured: 12
    # tokens in 23 s vs 0.7 s); passive waiting costs ~10% on an idle box and avoids the collapse.
    # vLLM's CPU engine kept OpenMP's default: passive waiting made the whole math-programs flow
    # 1.263-1.346x the engine alone, the default 1.207x (bench/whole_flow.py, 256 problems, 2 cores).
    # DATAGEN_OMP_WAIT_POLICY overrides both (ACTIVE, PASSIVE; empty: OpenMP's own default).
    default = "" if spec.backend == "vllm" else "PASSIVE"
    policy = os.environ.get("DATAGEN_OMP_WAIT_POLICY", default)
    env = {"OMP_WAIT_POLICY": policy} if policy else {}
    if not gpus:
        # Ray gives a num_cpus=1 actor OMP_NUM_THREADS=1, which every thread the actor starts inherits;
        # vLLM's CPU attention checks that its threads agree with torch's, so set it for the process.
        env["OMP_NUM_THREADS"] = str(spec.threads or os.cpu_count() or 1)
    return env


MAX_CONCURRENCY = 1000  # requests an async engine actor accepts at once (far above any batch in flight)


def llm_stage(ds, engine_spec: EngineSpec, program: Program, *, batch_size: int, pool_size: int = 1,
              rows_in_flight: int = 256, num_gpus: float | None = None, num_cpus: float = 1.0,
              share_engine: bool | None = None, stage: int | str = 0):
    """map_batches over a pool of ProgramActors (one engine each), or, with `share_engine` (default:
    inside `sharing_engines()`), over forwarders to the one EngineServer of this spec.

    Each actor runs up to `rows_in_flight` rows at once. It accepts four times that many rows in
    batches (the actors' max_concurrency), with as many again queued so a finished batch is replaced
    at once (the pattern of ray.data.llm's vLLM stage): batches whose last rows are slow still leave
    `rows_in_flight` rows running."""
    import ray.data

    gpus = engine_gpus(engine_spec) if num_gpus is None else num_gpus
    if engine_spec.backend == "openai":
        # The model is the endpoint's: the actor only sends requests and waits (no GPU, no CPU held), and
        # the server batches them, so an EngineServer in front of it would add nothing.
        gpus, num_cpus, share_engine = 0, 0, False
    share_engine = _SHARE_BY_DEFAULT if share_engine is None else share_engine
    shared = shared_engine_server(engine_spec, gpus) if share_engine else None
    batches = 4 * max(1, -(-rows_in_flight // batch_size))
    return ds.map_batches(
        ProgramActor,
        fn_constructor_kwargs={"engine_spec": engine_spec, "program": program, "shared_engine": shared,
                               "stage": stage, "rows_in_flight": rows_in_flight, "endpoint_key": endpoint_key(engine_spec)},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=pool_size, max_concurrent_calls_per_actor=batches,
                                           max_tasks_in_flight_per_actor=batches + batches // 4),
        num_gpus=0 if shared is not None else gpus,
        # A forwarder only waits on the server: it holds no CPU. Not even a fraction: Ray Data's read and
        # repartition tasks ask for a whole CPU, and concurrent recipe steps whose forwarders held 0.05
        # each left 0.85 of the last CPU free, so every step's reads waited forever (a 2-CPU node).
        num_cpus=0 if shared is not None else num_cpus,
        runtime_env={"env_vars": _engine_env(engine_spec, gpus)},
    )


class Secret:
    """A value that does not show itself: repr and str are masked, so no log line or error prints it."""

    def __init__(self, value: str):
        self.value = value

    def __repr__(self) -> str:
        return "Secret(***)"

    __str__ = __repr__


def endpoint_key(spec: EngineSpec) -> Secret | None:
    """The endpoint's API key, read from the driver's environment, for the engine actors (a Ray worker
    inherits its node's environment, not the driver's). It travels as an actor constructor argument:
    Ray's runtime env would do, but its agent logs every env var it sets (measured: the key appeared
    in runtime_env_agent.log)."""
    if spec.backend != "openai" or not spec.api_key_env or spec.api_key_env not in os.environ:
        return None
    return Secret(os.environ[spec.api_key_env])


def _apply(batch: dict[str, np.ndarray], step: Step) -> dict[str, np.ndarray]:
    return encode(step(decode(batch)))


def cpu_stage(ds, step: Step, *, batch_size: int, num_cpus: float = 0.5):
    """map_batches of a plain function in Ray tasks (sandbox runs, filters)."""
    return ds.map_batches(_apply, fn_kwargs={"step": step}, batch_size=batch_size, batch_format="numpy",
                          num_cpus=num_cpus)


def iter_row_batches(ds) -> Iterator[list[dict]]:
    """Stream the output back as lists of rows, one list per finished block."""
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows = decode(batch)
        if rows:
            yield rows
