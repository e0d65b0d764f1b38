"""Proves that faults lose and duplicate nothing and leave nothing behind, through the CLI with the real
embedded model, real Ray and a real Prefect API:
- two identical runs at once into one data dir: the second waits for the first's lease, then finds
  everything committed — every record exactly once;
- a truncated committed part: `datagen sql` leaves it out and says so; the next run moves it to
  `_quarantine/` and redoes its rows, exactly once;
- SIGTERM: the run is marked interrupted, exits 143, and its Ray cluster and Prefect server are gone;
  SIGKILL: `datagen runs` stops what the dead driver left and marks its row interrupted; a last run
  completes the table exactly once;
- a disk that fills up mid-run (a small tmpfs in a private mount namespace): the run fails with one
  clear line, no partial file is visible, and after space is freed a rerun completes exactly once."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas.catalog import connect

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "samples" / "math_word_problems.jsonl"
LIMIT, SAMPLES = 4, 2
RUN = [sys.executable, "-m", "flows.cli", "run", "math-programs", "--input", str(SAMPLE), "--limit", str(LIMIT),
       "--samples", str(SAMPLES), "--max-tokens", "96", "--no-dynamic"]
ONE_AT_A_TIME = ["--batch-size", "1", "--rows-in-flight", "1"]  # batches commit one by one: a signal lands between


def _env(prefect_url: str | None) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PREFECT_API_URL", None)
    if prefect_url:
        env["PREFECT_API_URL"] = prefect_url
    return env


def _records(data_dir) -> list[tuple]:
    rel = connect(data_dir).sql("SELECT record_id, source_id, attempt, run_id FROM math_programs")
    return rel.fetchall()


def _exactly_once(data_dir) -> list[tuple]:
    rows = _records(data_dir)
    assert len({r[0] for r in rows}) == len(rows), "a record was written twice"
    assert len({(r[1], r[2]) for r in rows}) == len(rows) == LIMIT * SAMPLES, "an attempt is missing or repeated"
    return rows


def _statuses(data_dir) -> dict:
    return dict(connect(data_dir).sql("SELECT run_id, status FROM runs").fetchall())


def _wait_for_part(proc, data_dir: Path, timeout=240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if list((data_dir / "math_programs").glob("run_id=*/part-*.parquet")):
            return
        time.sleep(0.2)
    raise AssertionError(f"no part committed while the run lived: {proc.communicate()[1][-3000:]}")


def _processes_of(driver_pid: int) -> list[str]:
    """Processes that carry driver `driver_pid`'s token, or hold files in a Ray session folder it started."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if re.search(rb"DATAGEN_DRIVER=[^\0]*:%d:" % driver_pid, environ) or any(
                re.search(rf"/session_[^/]*_{driver_pid}/", link) for link in links):
            found.append(f"{entry.name}: {(entry / 'cmdline').read_bytes()[:120]!r}")
    return found


def test_concurrent_runs_and_a_damaged_part(ray_cluster, prefect_harness, tmp_path):
    data_dir = tmp_path / "datasets"
    cmd = RUN + ["--batch-size", "2", "--data-dir", str(data_dir), "--ray-address", ray_cluster]  # 2 parts at least
    env = _env(prefect_harness)
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=600) for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], [o[1][-2000:] for o in outs]
    written = sorted(int(re.search(r"(\d+) records written", out).group(1)) for out, _ in outs)
    assert written == [0, LIMIT * SAMPLES]  # one run wrote everything, the other found it committed
    for out, err in outs:  # engine and Ray start-up logs stay in Ray's log folder (datagen -v shows them)
        assert len((out + err).splitlines()) <= 25, out + err
        assert ("engine and Ray logs: " in err) == (" 0 records written" not in out)  # Ray starts only for work
        if logs := re.search(r"^engine and Ray logs: (\S+) ", err, flags=re.M):  # under the data dir, a link
            run_id = re.search(r"^run (\S+):", out, flags=re.M).group(1)
            assert logs.group(1) == str(data_dir / "logs" / run_id), err
            assert (data_dir / "logs" / run_id).is_symlink() and (data_dir / "logs" / run_id / "raylet.out").exists()
    assert sum("waiting: run " in err for _, err in outs) == 1
    rows = _exactly_once(data_dir)
    assert len({r[3] for r in rows}) == 1
    writer = next(out for out, _ in outs if " 0 records written" not in out)
    _check_card(re.search(r"^card:\s+(\S+)$", writer, flags=re.M).group(1), data_dir, rows[0][3], tmp_path)

    # Truncate one committed part (what a full disk does to a filesystem without atomic rename).
    part = sorted((data_dir / "math_programs").glob("run_id=*/part-*.parquet"))[0]
    lost = pq_rows(part)
    part.write_bytes(part.read_bytes()[:200])
    sql = subprocess.run([sys.executable, "-m", "flows.cli", "sql", "--data-dir", str(data_dir),
                          "SELECT count(*) AS n FROM math_programs"], env=env, capture_output=True, text=True, timeout=120)
    assert sql.returncode == 0 and f"left out damaged file {part}" in sql.stderr
    assert re.search(rf"│\s+{LIMIT * SAMPLES - lost} │", sql.stdout), sql.stdout
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"damaged file {part}" in rerun.stderr and "/_quarantine/" in rerun.stderr
    assert re.search(rf"{lost} records written", rerun.stdout)
    _exactly_once(data_dir)
    assert (data_dir / "math_programs" / "_quarantine" / part.parent.name / part.name).is_file()


def _check_card(card: str, data_dir: Path, run_id: str, tmp_path: Path) -> None:
    """The run's data card: its numbers equal SQL over the run's records, and a real headless Chromium
    renders it with no console message (a screenshot is left beside it)."""
    import shutil
    from html.parser import HTMLParser

    class Counts(HTMLParser):
        """Every chart's bars, {svg id: {label: count}}, the summary table's cells, and any external URL."""

        def __init__(self):
            super().__init__()
            self.svg, self.label, self.charts, self.external, self.cells, self.th = None, None, {}, [], {}, None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            self.svg = attrs.get("id", self.svg) if tag == "svg" else self.svg
            self.external += [v for k, v in attrs.items() if k in ("src", "href") and v]
            if tag == "text" and self.svg and "data-count" in attrs:
                self.charts.setdefault(self.svg, {})[self.label] = int(attrs["data-count"])
            self.th = "" if tag == "th" else self.th

        def handle_data(self, data):
            if self.svg and data.strip() and not data.strip().isdigit():
                self.label = data.strip()
            if self.th == "":
                self.th = data.strip()
            elif self.th:
                self.cells[self.th], self.th = data.strip(), None

        def handle_endtag(self, tag):
            self.svg = None if tag == "svg" else self.svg

    page = Counts()
    page.feed(Path(card).read_text())
    db = connect(data_dir)
    where = f"FROM math_programs WHERE run_id = '{run_id}'"
    expected = dict(db.sql(f"SELECT CASE WHEN exec_status = 'ok' THEN 'kept' ELSE exec_status END, count(*) {where} "
                           "GROUP BY 1").fetchall())
    assert page.charts["outcomes"] == expected and page.external == []  # self-contained: nothing to fetch
    solved, problems = db.sql(f"SELECT count(DISTINCT source_id) FILTER (exec_status = 'ok'), count(DISTINCT source_id) "
                              f"{where}").fetchall()[0]
    assert page.cells["source rows with a kept record (pass rate)"].startswith(f"{solved} of {problems}")
    [(timed,)] = db.sql(f"SELECT count(exec_seconds) {where}").fetchall()
    assert timed > 0 and sum(page.charts["dist-exec_seconds"].values()) == timed
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "the data card test renders in headless Chromium: apt-get install chromium (make system-deps)"
    shot = tmp_path / "card.png"
    done = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--enable-logging=stderr", "--v=0", "--window-size=1000,1400", f"--screenshot={shot}",
                           f"file://{card}"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.stat().st_size > 10_000, done.stderr[-2000:]
    assert "CONSOLE" not in done.stderr and "Uncaught" not in done.stderr, done.stderr[-2000:]


def pq_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def test_sigterm_and_sigkill_end_cleanly_and_leave_nothing_behind(tmp_path):
    """Each driver starts its own Ray cluster and Prefect server here, as a user's would."""
    data_dir = tmp_path / "datasets"
    cmd = RUN + ONE_AT_A_TIME + ["--data-dir", str(data_dir)]
    env = _env(None)

    term = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_part(term, data_dir)
    term.send_signal(signal.SIGTERM)
    _, err = term.communicate(timeout=120)
    assert term.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "datagen: interrupted by SIGTERM" in err
    assert _processes_of(term.pid) == []  # Ray and Prefect's server stopped with it
    assert list(_statuses(data_dir).values()) == ["interrupted"]

    kill = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = len(list((data_dir / "math_programs").glob("run_id=*/part-*.parquet")))
    deadline = time.monotonic() + 240
    while len(list((data_dir / "math_programs").glob("run_id=*/part-*.parquet"))) == before:
        assert time.monotonic() < deadline and kill.poll() is None, kill.communicate()[1][-3000:]
        time.sleep(0.2)
    kill.send_signal(signal.SIGKILL)
    kill.wait(30)
    runs = subprocess.run([sys.executable, "-m", "flows.cli", "runs", "--data-dir", str(data_dir)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert runs.returncode == 0, runs.stderr[-2000:]
    assert "its driver died; marked interrupted" in runs.stdout
    time.sleep(1)
    assert _processes_of(kill.pid) == []
    assert sorted(_statuses(data_dir).values()) == ["interrupted", "interrupted"]

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert len({r[3] for r in _exactly_once(data_dir)}) == 3  # what each run committed was kept
    assert sorted(_statuses(data_dir).values()) == ["completed", "interrupted", "interrupted"]


def test_a_full_disk_fails_the_run_clearly_and_leaves_nothing_partial(ray_cluster, prefect_harness, tmp_path):
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    scenario = [sys.executable, str(REPO / "tests" / "flows" / "disk_full_scenario.py"), str(tmp_path / "mnt"),
                "--", *RUN, *ONE_AT_A_TIME, "--ray-address", ray_cluster]
    done = subprocess.run(unshare + scenario, env=_env(prefect_harness), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["full_rc"] == 1, report
    [line] = [x for x in report["full_stderr"].splitlines() if x.startswith("datagen:")]
    assert line.startswith("datagen: disk full:") and "rerun the same command" in line
    assert report["hidden_files"] == [] and report["unreadable_parts"] == [], report
    assert report["parts_when_full"] >= 1 and report["rerun_rc"] == 0, report
    assert report["records"] == report["distinct_attempts"] == LIMIT * SAMPLES, report


def test_a_model_that_will_not_load_is_one_line_and_exit_2(ray_cluster, prefect_harness, tmp_path):
    """A folder that passes the pre-flight check (config.json and a weights file) but whose weights are
    garbage fails in the engine actor: the CLI says why in one line, not in 470 lines of tracebacks."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    (model / "model.safetensors").write_bytes(b"not a safetensors file")
    data_dir = tmp_path / "datasets"
    cmd = RUN + ["--model", str(model), "--engine", "transformers", "--data-dir", str(data_dir), "--ray-address", ray_cluster]
    done = subprocess.run(cmd, env=_env(prefect_harness), capture_output=True, text=True, timeout=600)
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 2 and len(lines) <= 8, "\n".join(lines)
    [failure] = [x for x in lines if x.startswith("datagen: run failed: ")]
    assert "Error" in failure and "Traceback" not in done.stderr
    assert list(_statuses(data_dir).values()) == ["failed"]
