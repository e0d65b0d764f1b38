"""Proves the one-writer lease per (table, config): a second holder waits, told who holds it, and gets
the lease the moment the first lets go — also when the first is killed with SIGKILL (the kernel drops
a dead process's flock). On an fsspec object store the lease is an exclusively created object that a
waiter takes over once its refreshes stop. Other configs never wait."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from schemas.datadir import DataDir
from schemas.lease import acquire_lease

REPO = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
sys.path.insert(0, {repo!r})
from schemas.datadir import DataDir
from schemas.lease import acquire_lease
with acquire_lease(DataDir({data!r}), "math_programs", "abc", {{"run_id": "first"}}):
    print("held", flush=True)
    time.sleep({hold})
    open({data!r} + "/letting-go", "w").close()
"""


def _holder(data_dir, hold: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD.format(repo=str(REPO), data=str(data_dir), hold=hold)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_waits_for_the_first_and_is_told_who_holds_it(tmp_path):
    first = _holder(tmp_path, hold=1.5)
    told = []
    with acquire_lease(DataDir(tmp_path), "math_programs", "abc", {"run_id": "second"}, poll_s=0.05, on_wait=told.append):
        assert (tmp_path / "letting-go").exists()  # it got the lease only once the first let go
    assert len(told) == 1 and "run first (pid" in told[0] and "math_programs under config abc" in told[0]
    first.wait()


def test_a_killed_holder_frees_the_lease_at_once(tmp_path):
    first = _holder(tmp_path, hold=600)
    first.send_signal(signal.SIGKILL)
    first.wait()
    t0 = time.monotonic()
    with acquire_lease(DataDir(tmp_path), "math_programs", "abc", {"run_id": "second"}, poll_s=0.05, on_wait=print):
        assert time.monotonic() - t0 < 5


def test_other_configs_and_tables_do_not_wait(tmp_path):
    d = DataDir(tmp_path)
    with acquire_lease(d, "math_programs", "abc", {}, on_wait=_never):
        with acquire_lease(d, "math_programs", "other", {}, on_wait=_never), acquire_lease(d, "cot_rewrites", "abc", {}, on_wait=_never):
            pass


def _never(text):
    raise AssertionError(f"waited: {text}")


def test_object_store_lease_is_exclusive_and_an_expired_one_is_taken_over():
    import fsspec

    d = DataDir(f"memory://lease-{uuid.uuid4().hex[:8]}/datasets")
    order, told = [], []

    def second():
        with acquire_lease(d, "math_programs", "abc", {"run_id": "second"}, poll_s=0.02, on_wait=told.append):
            order.append("second")

    with acquire_lease(d, "math_programs", "abc", {"run_id": "first"}):
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"] and "run first" in told[0]
    # A holder that died leaves its object behind; once its refresh is older than ttl it is taken over.
    fs = fsspec.filesystem("memory")
    stale = d.join("math_programs", "_leases", "abc.json")
    fs.pipe(stale, b'{"run_id": "dead", "refreshed": 0}')
    with acquire_lease(d, "math_programs", "abc", {"run_id": "third"}, ttl_s=60, on_wait=_never):
        assert b'"third"' in fs.cat(stale)
    assert not fs.exists(stale)


def test_s3_lease_is_a_conditional_put(s3_server):
    """s3:// goes through pyarrow's S3 filesystem, which cannot create-if-absent: the lease is a PUT
    with If-None-Match: * (boto3) against the real S3 API server."""
    d = DataDir(f"s3://datagen-test/{uuid.uuid4().hex[:8]}/datasets")
    assert d.fsspec is None and d.scheme == "s3"
    order, told = [], []

    def second():
        with acquire_lease(d, "math_programs", "abc", {"run_id": "second"}, poll_s=0.05, on_wait=told.append):
            order.append("second")

    with acquire_lease(d, "math_programs", "abc", {"run_id": "first"}):
        assert d.exists(d.join("math_programs", "_leases", "abc.json"))
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(1.0)
        order.append("first done")
    thread.join(10)
    assert order == ["first done", "second"] and "run first" in told[0]
    assert not d.exists(d.join("math_programs", "_leases", "abc.json"))
