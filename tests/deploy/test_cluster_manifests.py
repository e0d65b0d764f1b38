"""The cluster definitions in deploy/ agree with the installed Ray and with each other, checked
statically (no Docker daemon, Kubernetes cluster or cloud account involved):

- deploy/ray/cluster.yaml is valid for `ray up`: the file itself against Ray's ray-schema.json, and
  after Ray's own defaults are merged, through Ray's own `validate_config`; it has a GPU worker type
  with at least one node up, and its image is the KubeRay manifest's image;
- deploy/kuberay/raycluster.yaml is a ray.io/v1 RayCluster at the installed Ray version, with a worker
  group requesting `nvidia.com/gpu`, one image on the head and every worker, and AWS credentials only
  from Secret references (no literal keys anywhere in deploy/);
- deploy/docker/Dockerfile builds from Ray's image at the installed Ray version and COPYs only paths
  that exist in the repo.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "deploy" / "ray" / "cluster.yaml"
RAYCLUSTER_YAML = REPO / "deploy" / "kuberay" / "raycluster.yaml"
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"
RAY_SCHEMA = Path(ray.autoscaler.__file__).parent / "ray-schema.json"


@pytest.fixture(scope="module")
def cluster() -> dict:
    return yaml.safe_load(CLUSTER_YAML.read_text())


@pytest.fixture(scope="module")
def raycluster() -> dict:
    return yaml.safe_load(RAYCLUSTER_YAML.read_text())


def _pod_specs(rc: dict) -> list[tuple[str, dict]]:
    spec = rc["spec"]
    pods = [("head", spec["headGroupSpec"]["template"]["spec"])]
    pods += [(g["groupName"], g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    return pods


def _dockerfile_instructions() -> list[tuple[str, list[str]]]:
    """(INSTRUCTION, args) per instruction, with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), shlex.split(rest)))
    return out


# --- ray up ------------------------------------------------------------------------------------

def test_cluster_yaml_validates_against_rays_schema(cluster):
    jsonschema.validate(cluster, json.loads(RAY_SCHEMA.read_text()))
    # What `ray up` does before it talks to AWS: merge Ray's provider defaults, then validate.
    validate_config(prepare_config(copy.deepcopy(cluster)))


def test_cluster_yaml_has_a_gpu_worker_type_with_a_node_up(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "engine actors must not land on the head"
    gpu_types = {name: t for name, t in types.items()
                 if name != cluster["head_node_type"] and t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_types, "no worker type with a GPU"
    # A flow picks CPU or GPU from the GPUs Ray sees when it starts (tasks/runtime/ray_stage.py engine_gpus).
    assert any(t["min_workers"] >= 1 and t["max_workers"] >= t["min_workers"] for t in gpu_types.values())


def test_cluster_yaml_runs_the_kuberay_image(cluster, raycluster):
    docker = cluster["docker"]
    images = {docker["image"], docker.get("head_image", docker["image"]), docker.get("worker_image", docker["image"])}
    kuberay_images = {c["image"] for _, pod in _pod_specs(raycluster) for c in pod["containers"]}
    assert images == kuberay_images and len(images) == 1


# --- KubeRay -----------------------------------------------------------------------------------

def test_raycluster_is_a_ray_v1_raycluster_at_the_installed_ray(raycluster):
    assert raycluster["apiVersion"] == "ray.io/v1"
    assert raycluster["kind"] == "RayCluster"
    assert raycluster["spec"]["rayVersion"] == ray.__version__


def test_raycluster_has_a_gpu_worker_group(raycluster):
    head = raycluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"].get("limits", {})
    gpu_groups = [g for g in raycluster["spec"]["workerGroupSpecs"]
                  if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    for g in gpu_groups:
        assert 1 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert any(t["key"] == "nvidia.com/gpu" for t in g["template"]["spec"].get("tolerations", []))


def test_raycluster_head_and_workers_share_one_image(raycluster):
    ray_containers = [pod["containers"][0] for _, pod in _pod_specs(raycluster)]
    assert len({c["image"] for c in ray_containers}) == 1


def test_raycluster_takes_aws_credentials_only_from_secrets(raycluster):
    aws_env = [(group, e) for group, pod in _pod_specs(raycluster)
               for c in pod["containers"] for e in c.get("env", []) if e["name"].startswith("AWS_")]
    for group, e in aws_env:
        assert "value" not in e, f"{group}: literal {e['name']}"
        assert "secretKeyRef" in e.get("valueFrom", {}), f"{group}: {e['name']} not from a Secret"


def test_no_literal_aws_keys_in_deploy():
    key_pattern = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    for path in (REPO / "deploy").rglob("*"):
        if path.is_file():
            assert not key_pattern.search(path.read_text(errors="replace")), path


# --- the image ---------------------------------------------------------------------------------

def test_dockerfile_builds_from_rays_image_at_the_installed_ray():
    bases = [args[-1] for word, args in _dockerfile_instructions() if word == "FROM"]
    assert len(bases) == 1
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py\d+-gpu", bases[0])
    assert match, bases[0]
    assert match.group(1) == ray.__version__


def test_dockerfile_copies_only_paths_that_exist():
    copies = [args for word, args in _dockerfile_instructions() if word in ("COPY", "ADD")]
    assert copies
    for args in copies:
        sources = [a for a in args if not a.startswith("--")][:-1]
        assert sources
        for src in sources:
            assert (REPO / src).exists(), f"COPY {src}: not in the repo"


def test_every_node_can_run_the_sandbox(cluster, raycluster):
    """The image installs bubblewrap and stays the `ray` user after; the containers may make namespaces."""
    runs = [" ".join(args) for word, args in _dockerfile_instructions() if word == "RUN"]
    assert any("apt-get install" in run and "bubblewrap" in run for run in runs)
    users = [args[0] for word, args in _dockerfile_instructions() if word == "USER"]
    assert users and users[-1] == "ray"
    for group, pod in _pod_specs(raycluster):
        profile = pod["containers"][0].get("securityContext", {}).get("seccompProfile", {})
        assert profile.get("type") == "Unconfined", group
    assert "--security-opt seccomp=unconfined" in cluster["docker"]["run_options"]
