"""The kombu internals shared/transport.py overrides or calls, checked for the shape it was written against: a
kombu release that changes them fails here, with the name of what changed, before recovery silently breaks."""

from __future__ import annotations

import inspect

import pytest
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

# (class, name, parameter names) as in kombu 5.7, which shared/transport.py was written and tested against
FENCED = [
    (kombu_redis.Channel, "_brpop_read", ["self", "options"]),
    (kombu_redis.Channel, "conn_or_acquire", ["self", "client"]),
    (kombu_redis.QoS, "append", ["self", "message", "delivery_tag"]),
    (kombu_redis.QoS, "ack", ["self", "delivery_tag"]),
    (kombu_redis.QoS, "reject", ["self", "delivery_tag", "requeue"]),
    (kombu_redis.QoS, "restore_unacked", ["self", "client"]),
    (kombu_redis.QoS, "restore_by_tag", ["self", "tag", "client", "leftmost"]),
    (virtual.QoS, "ack", ["self", "delivery_tag"]),
]


@pytest.mark.parametrize(("owner", "name", "parameters"), FENCED, ids=[f"{o.__name__}.{n}" for o, n, _ in FENCED])
def test_the_kombu_methods_the_transport_overrides_keep_their_shape(owner: type, name: str, parameters: list[str]) -> None:
    method = getattr(owner, name, None)
    assert method is not None, f"kombu {owner.__module__}.{owner.__name__}.{name} is gone: shared/transport.py needs porting"
    found = list(inspect.signature(method).parameters)
    assert found == parameters, (f"kombu {owner.__name__}.{name} takes {found}, not {parameters}: shared/transport.py "
                                 "was written against the latter; port it, then update this fence and the kombu pin")


@pytest.mark.parametrize("name", ["unacked_index_key", "visibility_timeout"])
def test_the_kombu_attributes_the_heartbeat_reads_still_exist(name: str) -> None:
    assert hasattr(kombu_redis.QoS, name), f"kombu's Redis QoS has no {name}: the heartbeat in shared/transport.py needs porting"


def test_a_qos_still_keeps_its_channel() -> None:
    assert "channel" in inspect.signature(virtual.QoS.__init__).parameters, \
        "kombu's QoS is no longer built with its channel: the heartbeat in shared/transport.py needs porting"
