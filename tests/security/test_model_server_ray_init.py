"""``model serve --engine ray`` / ``scan --engine ray`` with a Ray cluster already running on
the machine and no ``ray.address`` (issue 19, item 7d): join it, never pass
``object_store_memory`` to it (Ray's raw ``ValueError``), and turn Ray's refusals into a
ConfigurationError that says what to set. The decision is tested without starting a Ray head
(~30 s); RAY_ADDRESS stands for the running cluster, as Ray itself reads it."""

from __future__ import annotations

import pytest

from alknet_firewall.config import RaySettings
from alknet_firewall.errors import ConfigurationError
from alknet_firewall.modelserver.ray_init import (
    DEFAULT_OBJECT_STORE_BYTES,
    init_ray,
    ray_init_kwargs,
    running_cluster,
)


def test_no_cluster_starts_one_with_a_bounded_object_store() -> None:
    assert ray_init_kwargs(RaySettings(), None) == {
        "include_dashboard": False,
        "object_store_memory": DEFAULT_OBJECT_STORE_BYTES,
    }
    got = ray_init_kwargs(RaySettings(object_store_memory=100 * 2**20), None)
    assert got["object_store_memory"] == 100 * 2**20 and "address" not in got


def test_a_running_cluster_is_joined_without_an_object_store_size() -> None:
    got = ray_init_kwargs(RaySettings(object_store_memory=100 * 2**20), "10.0.0.5:6379")
    assert got == {"include_dashboard": False, "address": "10.0.0.5:6379"}


def test_a_configured_address_wins() -> None:
    got = ray_init_kwargs(RaySettings(address="ray://head:10001"), "10.0.0.5:6379")
    assert got == {"include_dashboard": False, "address": "ray://head:10001"}


@pytest.mark.slow
def test_the_running_cluster_is_found_as_ray_finds_it(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    assert running_cluster() == "127.0.0.1:1"


@pytest.mark.slow
def test_ray_refusing_becomes_a_clear_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ray = pytest.importorskip("ray")
    seen: dict[str, object] = {}

    def refuse(**kwargs: object) -> None:  # what ray.init says with an existing cluster
        seen.update(kwargs)
        raise ValueError(
            "When connecting to an existing cluster, object_store_memory must not be provided."
        )

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(ConfigurationError, match=r"ray\.address"):
        init_ray(RaySettings(object_store_memory=100 * 2**20))
    assert seen["address"] == "127.0.0.1:1" and "object_store_memory" not in seen
