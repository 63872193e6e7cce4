"""The read-through cache: Redis when configured, this process otherwise, and a Redis outage
costs only speed (counted as errors, the value computed)."""

from __future__ import annotations

import uuid

import pytest
from flask import Flask

from portal import create_app
from portal.web.cache import _LocalStore, cached


def counts(app: Flask) -> dict[str, float]:
    registry = app.extensions["portal.metrics"].registry
    return {
        result: registry.get_sample_value(
            "portal_cache_requests_total", {"cache": "test", "result": result}
        )
        or 0.0
        for result in ("hit", "miss", "error")
    }


def lookups(app: Flask, key: str, computed: list[int]) -> list[int]:
    def compute() -> int:
        computed.append(1)
        return 41 + len(computed)

    with app.test_request_context():
        return [cached("test", key, compute, dump=str, load=int) for _ in range(3)]


@pytest.fixture(params=["redis", "in-process"])
def store_url(request: pytest.FixtureRequest) -> str | None:
    return request.getfixturevalue("redis_url") if request.param == "redis" else None


def test_a_value_is_computed_once_then_read(app: Flask, store_url: str | None) -> None:
    own = create_app({**app.config, "REDIS_URL": store_url})
    computed: list[int] = []
    assert lookups(own, uuid.uuid4().hex, computed) == [42, 42, 42]
    assert computed == [1]
    assert counts(own) == {"hit": 2, "miss": 1, "error": 0}


def test_redis_down_means_computing_every_time(app: Flask) -> None:
    own = create_app({**app.config, "REDIS_URL": "redis://127.0.0.1:1/0"})  # nothing listens
    computed: list[int] = []
    assert lookups(own, "k", computed) == [42, 43, 44]
    assert counts(own) == {"hit": 0, "miss": 0, "error": 3}


def test_the_local_store_is_bounded_and_expires() -> None:
    store = _LocalStore(size=2)
    store.set("a", "1", ttl=60)
    store.set("b", "2", ttl=60)
    assert store.get("a") == "1"  # now the most recently used
    store.set("c", "3", ttl=60)
    assert (store.get("a"), store.get("b"), store.get("c")) == ("1", None, "3")
    store.set("d", "4", ttl=-1)
    assert store.get("d") is None
