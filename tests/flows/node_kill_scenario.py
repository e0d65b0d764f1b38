"""A multi-node Ray cluster on this machine, a flow run on it through the CLI, one worker node killed
mid-run. Run by tests/flows/test_cluster.py in its own process (a process holds one Ray connection,
and the test session's is the shared single-node cluster); prints one JSON report on its last line.

    python tests/flows/node_kill_scenario.py REPORT.json -- datagen-cli-args...

The cluster: a head node with no CPUs for work (the flow's driver connects there, as on a real
cluster's head) and three worker nodes with 2 logical CPUs each, so the engine actors (one CPU each,
spread by Ray Data) land on different workers and a replacement fits on the spare one. The node
killed is one hosting an engine actor, after the first batch was committed; its raylet and every
worker process on it die at once (no graceful drain).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

ACTOR = "ProgramActor"  # Ray Data names the pool's actors after the class: MapWorker(...ProgramActor)


def engine_actors(ray_state) -> list[dict]:
    return [{"node_id": a["Address"]["NodeID"], "state": a["State"], "restarts": a.get("NumRestarts", 0)}
            for a in ray_state.actors().values() if ACTOR in a.get("ActorClassName", "")]


def committed_parts(data_dir: str) -> int:
    from schemas.datadir import DataDir

    d = DataDir(data_dir)
    return sum(1 for f in d.list_files(d.join("math_programs")) if "/part-" in f)


def main(report_path: str, cli_args: list[str]) -> None:
    import ray
    from ray._private import state as ray_state
    from ray.cluster_utils import Cluster

    data_dir = cli_args[cli_args.index("--data-dir") + 1]
    t0 = time.monotonic()
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 200 * 2**20, "include_dashboard": False})
    workers = [cluster.add_node(num_cpus=2, object_store_memory=200 * 2**20, resources={"datagen_worker": 1})
               for _ in range(3)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")  # an observer: reads actor placement
    report = {"nodes": len(cluster.list_all_nodes()), "cluster_start_s": round(time.monotonic() - t0, 1)}
    by_id = {n.node_id: n for n in workers}

    cmd = [sys.executable, "-m", "flows.cli", "run", "math-programs", *cli_args, "--ray-address", cluster.address]
    try:
        t1 = time.monotonic()
        driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        victim, placement = None, []
        deadline = time.monotonic() + 420
        while time.monotonic() < deadline and driver.poll() is None:
            placement = [a for a in engine_actors(ray_state) if a["state"] == "ALIVE"]
            hosts = {a["node_id"] for a in placement}
            if committed_parts(data_dir) >= 1 and len(placement) >= 2:
                victim = next(n for n in hosts if n in by_id)
                break
            time.sleep(0.25)
        report["engine_actor_nodes_before"] = sorted({a["node_id"][:8] for a in placement})
        report["parts_before_kill"] = committed_parts(data_dir)
        if victim is None:
            driver.kill()
            report["error"] = f"no kill: driver rc={driver.poll()}, output: {driver.stdout.read()[-3000:]}"
            return
        cluster.remove_node(by_id[victim], allow_graceful=False)
        report["killed_node"] = victim[:8]
        report["killed_at_s"] = round(time.monotonic() - t1, 1)
        output, _ = driver.communicate(timeout=600)
        report["rc"] = driver.returncode
        report["wall_s"] = round(time.monotonic() - t1, 1)
        report["output_tail"] = output[-4000:]
        report["engine_actors_after"] = [{**a, "node_id": a["node_id"][:8]} for a in engine_actors(ray_state)]
        if driver.returncode != 0:  # the run failed with the node: a rerun must finish the rest
            rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            report["rerun_rc"], report["rerun_tail"] = rerun.returncode, (rerun.stdout + rerun.stderr)[-3000:]
    finally:
        with open(report_path, "w") as fh:
            json.dump(report, fh, indent=1)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    split = sys.argv.index("--")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    main(sys.argv[1], sys.argv[split + 1:])
