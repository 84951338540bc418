"""The KubeRay RayService: its pod templates validate against the Kubernetes schemas (the RayService kind itself
is a custom resource they do not know), its probes are the server's, and its Serve config builds our app."""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from qwen3_api.config import Settings
from tests.conftest import REPO_ROOT

MANIFEST = REPO_ROOT / "deploy" / "ray" / "rayservice.yaml"


def rayservice() -> dict:
    (document,) = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    assert document["apiVersion"] == "ray.io/v1" and document["kind"] == "RayService"
    return document


def pod_templates() -> list[dict]:
    cluster = rayservice()["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"]["template"], *(group["template"] for group in cluster["workerGroupSpecs"])]


@pytest.mark.parametrize("index", range(len(pod_templates())))
def test_pod_templates_validate_against_the_kubernetes_schemas(index: int) -> None:
    template = {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": {"name": "t"},
        "template": pod_templates()[index],
    }
    kubernetes_validate.validate(template, kubernetes_validate.latest_version(), strict=True)


def test_probes_are_the_servers_on_the_serve_port() -> None:
    serve_config = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])
    port = serve_config["http_options"]["port"]
    for template in pod_templates():
        (container,) = template["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["serve"] == port
        assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "serve"}
        assert container["livenessProbe"]["httpGet"] == {"path": "/live", "port": "serve"}


def test_serve_config_names_our_builder_with_valid_settings() -> None:
    (app,) = yaml.safe_load(rayservice()["spec"]["serveConfigV2"])["applications"]
    assert app["route_prefix"] == "/"
    module, _, name = app["import_path"].partition(":")
    settings = Settings(**app["args"])
    assert settings.scaled_out and settings.min_replicas <= settings.replicas <= settings.max_replicas
    workers = rayservice()["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert all(float(g["rayStartParams"]["num-cpus"]) >= settings.replica_cpus for g in workers)
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'qwen3-api[ray]')")
    import importlib

    builder = getattr(importlib.import_module(module), name)
    assert type(builder(app["args"])).__name__ == "Application"
