"""A disk that fills up mid-run. Run by tests/flows/test_faults.py inside a private mount namespace
(`unshare -m` as root, `unshare -rm` as a user), so the small tmpfs it mounts is seen by nothing else
and vanishes with it; prints one JSON report on its last line.

    unshare -m python tests/flows/disk_full_scenario.py MOUNTPOINT -- datagen-cli-args...

The data dir lives on a 16 MiB tmpfs. Once the run has committed its first part, a filler file takes
every free byte, so the run's next commit meets ENOSPC; the report says how the run ended and what
the data dir then holds. Then the filler goes and the same command runs again to completion.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as fh:
        for size in (1 << 16, 512):  # then the last partial chunk
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass


def main(mountpoint: str, cli_args: list[str]) -> dict:
    import pyarrow.parquet as pq

    mnt = Path(mountpoint)
    mnt.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)], check=True)
    data_dir = mnt / "datasets"
    cmd = [*cli_args, "--data-dir", str(data_dir)]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not list((data_dir / "math_programs").glob("run_id=*/part-*.parquet")):
        if run.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"no part committed: {run.communicate()[1][-3000:]}")
        time.sleep(0.1)
    fill(mnt / "filler")
    out, err = run.communicate(timeout=600)
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    unreadable = []
    for part in (p for p in files if p.name.startswith("part-")):
        try:
            pq.read_table(part)
        except Exception as exc:  # noqa: BLE001 - reported
            unreadable.append(f"{part}: {exc}")
    report = {"full_rc": run.returncode, "full_stderr": err[-4000:],
              "parts_when_full": sum(p.name.startswith("part-") for p in files),
              "hidden_files": [str(p) for p in files if p.name.startswith(".")], "unreadable_parts": unreadable}
    (mnt / "filler").unlink()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    report["rerun_rc"] = rerun.returncode
    report["rerun_stderr"] = rerun.stderr[-2000:] if rerun.returncode else ""
    import duckdb

    rows = duckdb.sql(f"SELECT source_id, attempt FROM read_parquet('{data_dir}/math_programs/run_id=*/*.parquet')").fetchall()
    report["records"], report["distinct_attempts"] = len(rows), len(set(rows))
    return report


if __name__ == "__main__":
    split = sys.argv.index("--")
    print(json.dumps(main(sys.argv[1], sys.argv[split + 1:])))
