"""The partition test bed itself (tests/support/netns.py): hosts reach each other, a cut or a drop loses packets
silently (a client waits out its own timeout, never gets a refusal), healing restores, and nothing is left behind."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.support.netns import Host, Network, netns_unavailable
from tests.support.servers import RedisServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

# One Redis PING over a raw socket, classified: a silent partition shows as "timeout", never "refused" or an errno.
PROBE = """
import socket, sys
ip, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((ip, port), timeout=timeout) as s:
        s.sendall(b"PING\\r\\n")
        print("pong" if s.recv(64).startswith(b"+PONG") else "other")
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as e:
    print(f"errno {e.errno}")
"""
PROBE_TIMEOUT_S = 1.0  # a connect on a healthy bridge takes well under a millisecond


def ping(server: RedisServer, on: Host | None) -> str:
    """PING SERVER from host ON (None: from this, the root namespace)."""
    argv = [sys.executable, "-c", PROBE, server.host, str(server.port), str(PROBE_TIMEOUT_S)]
    done = subprocess.run(on.command(argv) if on else argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def leftovers(prefix: str) -> list[str]:
    """Namespaces and root-namespace links whose name starts with PREFIX."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10, check=True).stdout.split()
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=10, check=True).stdout
    return [n for n in names if n.startswith(prefix)] + [line for line in links.splitlines() if f": {prefix}" in line]


@dataclass
class Bed:
    net: Network
    redis_host: Host
    w1: Host
    w2: Host
    redis: RedisServer


@pytest.fixture
def bed() -> Iterator[Bed]:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    with Network() as net:
        redis_host, w1, w2 = net.add_host("redis"), net.add_host("w1"), net.add_host("w2")
        with RedisServer(netns_host=redis_host) as redis:
            yield Bed(net, redis_host, w1, w2, redis)
    assert leftovers(net.prefix) == []


def test_hosts_and_the_test_process_reach_a_server_on_a_host(bed: Bed) -> None:
    assert bed.redis.host == bed.redis_host.ip
    assert ping(bed.redis, bed.w1) == "pong"
    assert ping(bed.redis, bed.w2) == "pong"
    assert ping(bed.redis, None) == "pong"


def test_a_cut_host_loses_packets_silently_until_healed(bed: Bed) -> None:
    bed.net.cut(bed.w1)
    assert ping(bed.redis, bed.w1) == "timeout"
    assert ping(bed.redis, None) == "pong"
    assert ping(bed.redis, bed.w2) == "pong"
    bed.net.heal(bed.w1)
    wait_for(lambda: ping(bed.redis, bed.w1) == "pong", 15, "w1 to reach Redis again after heal")

    # The server's own host cut off: the test process's packets vanish too, and the server lives on.
    bed.net.cut(bed.redis_host)
    assert ping(bed.redis, None) == "timeout"
    assert bed.redis.running
    bed.net.heal_all()
    wait_for(lambda: ping(bed.redis, None) == "pong", 15, "Redis to answer again after heal_all")


def test_drop_loses_packets_between_two_hosts_only_both_ways(bed: Bed, tmp_path) -> None:
    with RedisServer(netns_host=bed.w1, base_dir=tmp_path / "w1-redis") as on_w1:
        bed.net.drop(bed.w1, bed.redis_host)
        assert ping(bed.redis, bed.w1) == "timeout"  # w1 -> redis
        assert ping(on_w1, bed.redis_host) == "timeout"  # redis -> w1
        assert ping(bed.redis, bed.w2) == "pong"
        assert ping(on_w1, bed.w2) == "pong"
        assert ping(bed.redis, None) == ping(on_w1, None) == "pong"

        bed.net.undrop(bed.w1, bed.redis_host)
        assert ping(bed.redis, bed.w1) == ping(on_w1, bed.redis_host) == "pong"

        bed.net.drop(bed.redis_host, bed.w1)
        bed.net.heal_all()
        assert ping(bed.redis, bed.w1) == "pong"


def test_close_kills_what_runs_on_the_hosts_and_leaves_nothing(tmp_path) -> None:
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    net = Network()
    server = RedisServer(netns_host=net.add_host("redis"), base_dir=tmp_path / "redis").start()
    try:
        assert leftovers(net.prefix) != []
        net.close()  # the server still runs in its namespace: close() kills it, or the namespace would live on
        assert leftovers(net.prefix) == []
        wait_for(lambda: not server.running, 10, "the server on a closed network to be killed")
    finally:
        server.close()
        net.close()  # idempotent
