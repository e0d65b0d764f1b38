"""Proves a driver's life cycle: its token names one process (a reused pid does not pass for it);
processes of a dead driver — found by the token in their environment, or by files held open in a
Ray session folder the driver noted — are stopped, those of a live one are left alone; SIGTERM becomes
Interrupted in the main thread; and `running` rows of dead drivers are marked interrupted (same host:
the process is gone; another host: the heartbeat is stale), live ones left as they are."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import pytest

from schemas.store import TableStore
from schemas.tables import RUNS
from tasks.runtime import lifecycle
from tasks.runtime.lifecycle import (DRIVER_ENV, Interrupted, driver_alive, driver_token, interruption,
                                     noted_ray_session, reap_orphans, stop_on_signals)
from tasks.runtime.runs import RunState, mark_stale_runs, write_run


@pytest.fixture
def dead_token():
    """The token of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    token = driver_token(proc.pid)
    proc.kill()
    proc.wait()
    return token


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DATAGEN_CACHE_DIR", str(tmp_path / "cache"))


def _sleeper(env_token=None, open_file=None) -> subprocess.Popen:
    env = {**os.environ}
    env.pop(DRIVER_ENV, None)
    if env_token:
        env[DRIVER_ENV] = env_token
    code = "import sys, time\n"
    if open_file:
        code += f"fh = open({str(open_file)!r}, 'a')\n"
    code += "print('up', flush=True)\ntime.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "up"
    return proc


def test_a_token_names_one_living_process(dead_token):
    assert driver_alive(driver_token()) is True
    assert driver_alive(dead_token) is False
    host, pid, ticks = driver_token().rsplit(":", 2)
    assert driver_alive(f"{host}:{pid}:{int(ticks) + 1}") is False  # the same pid, started later: another process
    assert driver_alive(f"elsewhere:{pid}:{ticks}") is None and driver_alive(None) is None


def test_processes_of_dead_drivers_are_stopped_and_others_left_alone(tmp_path, dead_token):
    orphan = _sleeper(env_token=dead_token)
    living = _sleeper(env_token=driver_token())  # this test process is its driver, alive
    session = tmp_path / "ray" / "session_x"
    (session / "logs").mkdir(parents=True)
    agent = _sleeper(open_file=session / "logs" / "agent.out")  # setproctitle wiped its environment
    note = lifecycle._drivers_dir() / "dead.json"
    note.parent.mkdir(parents=True)
    note.write_text(f'{{"driver": "{dead_token}", "ray_session_dir": "{session}"}}')
    try:
        assert sorted(reap_orphans(grace_s=2)) == sorted([orphan.pid, agent.pid])
        assert orphan.wait(5) is not None and agent.wait(5) is not None
        assert living.poll() is None and not note.exists()
        assert reap_orphans() == []
    finally:
        for proc in (orphan, living, agent):
            proc.kill()
            proc.wait()


def test_a_noted_ray_session_lasts_as_long_as_the_block(tmp_path):
    with noted_ray_session(str(tmp_path / "session_y")):
        [note] = lifecycle._drivers_dir().glob("*.json")
        assert str(tmp_path / "session_y") in note.read_text()
    assert not list(lifecycle._drivers_dir().glob("*.json"))


def test_sigterm_becomes_interrupted_in_the_main_thread():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught:
        with stop_on_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert caught.value.signal_name == "SIGTERM" and interruption(caught.value) == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    assert interruption(KeyboardInterrupt()) == "SIGINT" and interruption(ValueError()) is None
    from prefect.exceptions import TerminationSignal

    assert interruption(TerminationSignal(signal.SIGTERM)) == "SIGTERM"


def test_stale_running_rows_are_marked_interrupted(tmp_path, dead_token):
    now = datetime.now(timezone.utc)

    def run(driver, status="running", beat_age=0.0):
        state = RunState.start("math-programs", {}, model="m", engine="fake")
        state.driver, state.status = driver, status
        write_run(tmp_path, state)
        row = state.to_row() | {"heartbeat_at": now - timedelta(seconds=beat_age)}
        TableStore(tmp_path, RUNS).commit([row], state.run_id, name="run.parquet")
        return state.run_id

    dead = run(dead_token)
    alive = run(driver_token())
    far_stale = run("other-host:1:1", beat_age=3600)
    far_fresh = run("other-host:2:2", beat_age=10)
    finished = run(dead_token, status="completed")
    assert sorted(mark_stale_runs(tmp_path, now=now)) == sorted([dead, far_stale])
    rows = {r["run_id"]: r for r in TableStore(tmp_path, RUNS).read().to_pylist()}
    assert rows[dead]["status"] == "interrupted" and "driver process is gone" in rows[dead]["error"]
    assert rows[far_stale]["status"] == "interrupted" and "no heartbeat since" in rows[far_stale]["error"]
    assert {rows[r]["status"] for r in (alive, far_fresh)} == {"running"} and rows[finished]["status"] == "completed"
    assert mark_stale_runs(tmp_path, now=now) == []
