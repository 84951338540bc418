"""The scale-out settings and the Ray Serve options they become (no cluster needed)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from qwen3_api.config import Settings


def test_scaled_out_only_when_asked() -> None:
    assert not Settings().scaled_out
    assert Settings(replicas=2).scaled_out
    assert Settings(ray_address="auto").scaled_out
    assert Settings(max_replicas=3).scaled_out


def test_replica_range_is_validated() -> None:
    with pytest.raises(ValidationError, match="min_replicas"):
        Settings(min_replicas=3, max_replicas=2)
    with pytest.raises(ValidationError):
        Settings(replicas=0)


def test_serve_options_fixed_and_autoscaled() -> None:
    pytest.importorskip("ray", reason="Ray Serve is not installed (pip install 'qwen3-api[ray]')")
    from qwen3_api.scaleout.application import replica_options

    fixed = replica_options(Settings(replicas=3, replica_cpus=2, route_overload_slack=7))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 0}
    assert fixed["request_router_config"].request_router_kwargs["overload_slack"] == 7
    assert fixed["max_ongoing_requests"] > Settings().max_queued_requests  # our admission answers 503 first
    scaled = replica_options(Settings(replicas=2, min_replicas=1, max_replicas=4, autoscale_target_ongoing_requests=5))
    assert "num_replicas" not in scaled
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 2,
                                            "target_ongoing_requests": 5}  # fmt: skip
