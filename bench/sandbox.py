"""Benchmark: programs per second through the sandbox vs a naive `subprocess.run([python, ...])` per program.

(a) sandbox: `tasks.sandbox.run_programs` — the bwrap fork server, every isolation layer on;
(b) naive: one `python -c <runner>` process per program (no isolation at all), as many at once as there
    are cores: the `subprocess.run([python, ...])` a pipeline would write first;
(c) bare: the same with `python -I -S` (no site-packages scan): the cheapest interpreter start there is,
    still without any isolation;
(e) fork floor: what a fork server costs with no isolation at all — one warm `python -I -S` per core
    forks a child per program, which compiles it, calls it and writes repr() to a pipe (no namespaces,
    no mounts, no rlimits, no seccomp, no result channel of its own): the most any fork-per-program
    design can do on this machine, for reading how much of the sandbox's cost is isolation;
(d) v1: the sandbox this one replaced (one `unshare` + `python -I -S` runner process per program, on a
    thread pool), loaded from git (--v1 REF, default 6888d6d; --v1 '' leaves it out).
All sides run the same --programs short PAL-style programs (a few assignments and arithmetic, like a
GSM8K solution) and must return the same, known values. Rounds alternate a, b, c, e, d, a, b, c, e, d; each round
is printed and appended as a JSON line to --out with a run id; the last line is the summary: programs/s
per side per round and the medians over rounds of the ratios a / b, a / c and a / d. The sandbox server's start (bwrap,
the interpreter, sympy and numpy imports) is measured once, before the rounds, and reported apart.

    python bench/sandbox.py                          # 1,000 programs, 3 rounds (about 3 minutes here)
    python bench/sandbox.py --programs 2000 --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tasks.sandbox import isolation_report, run_programs  # noqa: E402

NAIVE_RUNNER = "import sys\nns = {}\nexec(sys.stdin.read(), ns)\nprint(repr(ns['solution']()))"


def make_programs(count: int) -> list[tuple[str, float]]:
    """(source, expected value): a family of GSM8K-like programs with different numbers."""
    programs = []
    for i in range(count):
        eggs, eaten, baked, price = 16 + i % 7, 3 + i % 3, 4 + i % 5, 2 + i % 4
        source = (
            "def solution():\n"
            f"    eggs_per_day = {eggs}\n"
            f"    eaten = {eaten}\n"
            f"    baked = {baked}\n"
            "    remaining = eggs_per_day - eaten - baked\n"
            f"    price = {price}\n"
            "    total = remaining * price\n"
            "    return total\n"
        )
        programs.append((source, float((eggs - eaten - baked) * price)))
    return programs


def run_sandbox(programs) -> list[float | None]:
    return [r.value for r in run_programs([source for source, _ in programs])]


def run_processes(programs, flags: tuple[str, ...]) -> list[float | None]:
    def one(source: str) -> float | None:
        done = subprocess.run([sys.executable, *flags, "-c", NAIVE_RUNNER], input=source, capture_output=True,
                              text=True, timeout=30)
        return float(done.stdout) if done.returncode == 0 else None

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(one, [source for source, _ in programs]))


FORK_WORKER = r"""
import os, struct, sys
def read(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            sys.exit(0)
        data += chunk
    return data
while True:
    (size,) = struct.unpack(">I", read(4))
    source = read(size).decode()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            ns = {}
            exec(compile(source, "<program>", "exec"), ns)
            os.write(w, repr(ns["solution"]()).encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 4096):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    os.write(1, struct.pack(">I", len(out)) + out)
"""


def run_fork_floor(programs) -> list[float | None]:
    """Side (e): one forking worker per core, programs dealt round-robin, each worker's replies in order."""
    import struct

    cores = os.cpu_count() or 1
    workers = [subprocess.Popen([sys.executable, "-I", "-S", "-c", FORK_WORKER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE) for _ in range(cores)]
    try:
        def feed(worker, sources):
            for source in sources:
                data = source.encode()
                worker.stdin.write(struct.pack(">I", len(data)) + data)
            worker.stdin.close()

        def drain(worker, count):
            values = []
            for _ in range(count):
                (size,) = struct.unpack(">I", worker.stdout.read(4))
                values.append(float(worker.stdout.read(size)))
            return values

        shares = [[source for source, _ in programs[i::cores]] for i in range(cores)]
        with ThreadPoolExecutor(max_workers=2 * cores) as pool:
            for worker, share in zip(workers, shares):
                pool.submit(feed, worker, share)
            results = [pool.submit(drain, worker, len(share)) for worker, share in zip(workers, shares)]
            per_worker = [future.result() for future in results]
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    values: list[float | None] = [None] * len(programs)
    for i, share_values in enumerate(per_worker):
        values[i::cores] = share_values
    return values


def load_v1(ref: str):
    """run_programs of the old sandbox at `ref`, imported from a temporary copy of its two files."""
    import importlib.util
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="sandbox-v1-"))
    for name in ("__init__.py", "runner.py"):
        text = subprocess.run(["git", "show", f"{ref}:tasks/sandbox/{name}"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout
        (folder / name).write_text(text)
    spec = importlib.util.spec_from_file_location("sandbox_v1", folder / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["sandbox_v1"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return lambda programs: [r.value for r in module.run_programs([source for source, _ in programs])]


SIDES = {
    "a": ("sandbox", run_sandbox),
    "b": ("naive", lambda programs: run_processes(programs, ())),
    "c": ("bare", lambda programs: run_processes(programs, ("-I", "-S"))),
    "e": ("fork_floor", run_fork_floor),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--v1", default="6888d6d", help="git ref of the old sandbox to measure too ('' for none)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "sandbox.jsonl")
    args = ap.parse_args()
    run_id = uuid.uuid4().hex[:8]
    sides = dict(SIDES)
    if args.v1:
        sides["d"] = ("v1", load_v1(args.v1))
    programs = make_programs(args.programs)
    expected = [value for _, value in programs]
    started = time.perf_counter()
    report = isolation_report()  # starts the server
    start_s = time.perf_counter() - started
    lines = [{"run_id": run_id, "event": "start", "programs": args.programs, "cores": os.cpu_count(),
              "server_start_s": round(start_s, 2), "seccomp": report["seccomp"], "preloaded": report["preloaded"]}]
    print(json.dumps(lines[0]), flush=True)
    per_round = []
    for round_index in range(args.rounds):
        record = {"run_id": run_id, "event": "round", "round": round_index + 1}
        for key, (name, side) in sides.items():
            begin = time.perf_counter()
            values = side(programs)
            wall = time.perf_counter() - begin
            if values != expected:
                wrong = sum(v != e for v, e in zip(values, expected))
                raise SystemExit(f"{name}: {wrong} of {len(expected)} programs returned the wrong value")
            record[f"{key}_{name}_wall_s"] = round(wall, 3)
            record[f"{key}_{name}_programs_per_s"] = round(len(programs) / wall, 1)
        record["ratio_a_over_b"] = round(record["a_sandbox_programs_per_s"] / record["b_naive_programs_per_s"], 2)
        record["ratio_a_over_c"] = round(record["a_sandbox_programs_per_s"] / record["c_bare_programs_per_s"], 2)
        record["ratio_a_over_e"] = round(record["a_sandbox_programs_per_s"] / record["e_fork_floor_programs_per_s"], 2)
        record["ratio_e_over_b"] = round(record["e_fork_floor_programs_per_s"] / record["b_naive_programs_per_s"], 2)
        if "d" in sides:
            record["ratio_a_over_d"] = round(record["a_sandbox_programs_per_s"] / record["d_v1_programs_per_s"], 2)
        per_round.append(record)
        lines.append(record)
        print(json.dumps(record), flush=True)
    summary = {
        "run_id": run_id, "event": "summary", "rounds": args.rounds, "programs": args.programs,
        "sandbox_programs_per_s": [r["a_sandbox_programs_per_s"] for r in per_round],
        "naive_programs_per_s": [r["b_naive_programs_per_s"] for r in per_round],
        "bare_programs_per_s": [r["c_bare_programs_per_s"] for r in per_round],
        "ratios_a_over_b": [r["ratio_a_over_b"] for r in per_round],
        "ratios_a_over_c": [r["ratio_a_over_c"] for r in per_round],
        "fork_floor_programs_per_s": [r["e_fork_floor_programs_per_s"] for r in per_round],
        "ratios_a_over_e": [r["ratio_a_over_e"] for r in per_round],
        "ratios_e_over_b": [r["ratio_e_over_b"] for r in per_round],
        "median_ratio_a_over_e": statistics.median(r["ratio_a_over_e"] for r in per_round),
        "median_ratio_e_over_b": statistics.median(r["ratio_e_over_b"] for r in per_round),
        "median_sandbox_programs_per_s": statistics.median(r["a_sandbox_programs_per_s"] for r in per_round),
        "median_ratio_a_over_b": statistics.median(r["ratio_a_over_b"] for r in per_round),
        "median_ratio_a_over_c": statistics.median(r["ratio_a_over_c"] for r in per_round),
        "v1_programs_per_s": [r.get("d_v1_programs_per_s") for r in per_round],
        "ratios_a_over_d": [r.get("ratio_a_over_d") for r in per_round],
        "median_ratio_a_over_d": statistics.median(r["ratio_a_over_d"] for r in per_round) if "d" in sides else None,
        "load_average": os.getloadavg(),
    }
    lines.append(summary)
    print(json.dumps(summary), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("a") as handle:
        for line in lines:
            handle.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
