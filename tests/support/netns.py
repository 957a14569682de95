"""A fleet of throw-away "hosts" in network namespaces on one bridge, for partition tests.

Jepsen tests a distributed system by partitioning it: packets vanish, every process lives on.  Killing a
worker does not show what a worker that is cut off but still running does (a late write after its lease
moved on, say); this module makes that happen on one machine, as root::

    from tests.support.netns import Network, netns_unavailable

    with Network() as net:
        redis_host, w1 = net.add_host("redis"), net.add_host("w1")
        subprocess.run(w1.command(["redis-cli", "-h", redis_host.ip, "ping"]), timeout=5)
        net.cut(w1)             # w1's cable pulled at the switch
        net.heal(w1)
        net.drop(w1, redis_host)   # only w1 <-> redis lost, both directions
        net.heal_all()

Layout (every name carries the Network's unique ``prefix``, e.g. ``gn3f2a9c``; the /24 is 10.231.X.0/24)::

    root namespace (tests)          switch namespace                     host namespaces
    <prefix>c .1 ----- veth ----- <prefix>cs -+
                                              +- <prefix>br (bridge) -+- <prefix>s0 -- veth -- <prefix>h0 .10 in <prefix>-redis
                                                                      +- <prefix>s1 -- veth -- <prefix>h1 .11 in <prefix>-w1

* The bridge lives in its own namespace, so the root namespace gains one link and the connected route of a
  private /24 that no existing route overlaps, nothing else; the test process reaches every host directly
  through that link (the "control host").
* ``cut(host)`` sets the host's switch port down.  Setting the host's *own* link down would not be silent:
  its kernel drops the connected route and every connect fails at once with ENETUNREACH.  A port down at
  the switch still leaves one loud path: the kernel flushes learned ARP entries on carrier loss, ARP for the
  peer fails after 3 s and connect() gets EHOSTUNREACH ("No route to host", measured 3.06 s).  So every
  namespace gets *permanent* neighbour entries for every other address (the kernel keeps those on carrier
  loss) and a cut host's SYNs vanish: connect() hangs until its own timeout (without one, measured 134 s:
  Linux's default 6 SYN retries), like a pulled cable between two switches.  Heal: reachable again at once
  (measured 31 ms; no STP on the bridge, so no forwarding delay).
* ``drop(a, b)`` adds nftables rules in *input* hooks only, in a's and b's own namespaces (one ``inet``
  table each).  A drop in the output hook would not be silent for UDP senders (measured: sendto() raises
  EPERM); a drop on input is: the packet left the sender and was lost on the way.  ARP is untouched, so it stays silent.
* Teardown on :meth:`Network.close`, at interpreter exit (``atexit``), and, for a run that died without
  either (SIGKILL, SIGTERM), on the next :class:`Network` created on the machine: the switch namespace's
  name carries its creator's pid (``<prefix>_switch_<pid>``) and a network whose creator is gone is removed.

Torch-free and pytest-free like the rest of ``tests.support``.  Every subprocess call has a timeout.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Self

__all__ = ["Host", "Network", "NetnsError", "netns_unavailable", "sweep_stale"]

IP_TIMEOUT = 10.0  # seconds for one `ip` / `nft` call; they take milliseconds, a hang means a wedged kernel
_HOST_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_SWITCH_NS = re.compile(r"^(gn[0-9a-f]{6})_switch_(\d+)$")
_FIRST_HOST_OCTET = 10  # .1 is the control host (the root namespace); hosts get .10, .11, ...
_LOCK_PATH = Path(tempfile.gettempdir()) / "gan-netns.lock"


class NetnsError(RuntimeError):
    """An `ip` or `nft` command failed (the message carries the command and its stderr)."""


def _ip_bin() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def _run(argv: Sequence[str], *, stdin: str | None = None, timeout: float = IP_TIMEOUT) -> str:
    """Run one command, bounded; raise NetnsError with its stderr if it fails."""
    try:
        done = subprocess.run(
            list(argv), input=stdin, capture_output=True, text=True, timeout=timeout,
            stdin=None if stdin is not None else subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"{' '.join(argv)}: {e}") from e
    if done.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def _ip(*args: str, netns: str | None = None) -> str:
    """`ip [-n NETNS] ARGS...`."""
    return _run([_ip_bin(), *(["-n", netns] if netns else []), *args])


def _nft(netns: str, script: str) -> None:
    """Feed an nft script to `nft -f -` inside NETNS (one transaction: all of it applies or none)."""
    _run([_ip_bin(), "netns", "exec", netns, shutil.which("nft") or "/usr/sbin/nft", "-f", "-"], stdin=script)


def _mac(ip: ipaddress.IPv4Address) -> str:
    """A locally administered MAC derived from the address, so neighbour entries need no lookup."""
    return "02:00:" + ":".join(f"{b:02x}" for b in ip.packed)


def _netns_names() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


@functools.cache
def netns_unavailable() -> str | None:
    """Why this machine cannot run the test bed, or None when it can.

    Tests skip with this reason.  It really creates a namespace, a veth pair and an nftables table (and
    removes them), because being root is not enough: a container may lack CAP_SYS_ADMIN or nf_tables.
    """
    if os.geteuid() != 0:
        return "network namespaces need root (run the tests as root)"
    if not shutil.which("ip"):
        return "`ip` (iproute2) not found: apt-get install -y iproute2"
    if not shutil.which("nft"):
        return "`nft` not found: apt-get install -y nftables"
    probe = f"gnprobe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", probe)
    except NetnsError as e:
        return f"cannot create a network namespace: {e}"
    try:
        _ip("link", "add", "gnprobe0", "type", "veth", "peer", "name", "gnprobe1", netns=probe)
        _nft(probe, "table inet gnprobe {}\n")
    except NetnsError as e:
        return f"network namespace created, but: {e}"
    finally:
        with contextlib.suppress(NetnsError):
            _ip("netns", "delete", probe)
    return None


@dataclass(frozen=True)
class Host:
    """One machine of the fleet: a network namespace with one link into the switch.

    ``command(argv)`` is how anything runs "on" it; `ip netns exec` execs the command, so a Popen's pid
    (and process group) is the command's own.
    """

    name: str
    ip: str
    netns: str
    link: str  # its interface, inside `netns`
    port: str  # the other end, on the bridge in the switch namespace

    def command(self, argv: Sequence[str]) -> list[str]:
        """ARGV prefixed so that it runs in this host's namespace."""
        return [_ip_bin(), "netns", "exec", self.netns, *argv]

    def run(self, argv: Sequence[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ARGV on this host and wait, bounded (never raises on a non-zero exit; check .returncode)."""
        return subprocess.run(self.command(argv), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


_live: set[Network] = set()


@atexit.register
def _close_leftovers() -> None:
    for net in list(_live):
        with contextlib.suppress(Exception):
            net.close()


@contextlib.contextmanager
def _machine_lock() -> Iterator[None]:
    """Serialise subnet choice between processes: the check for a free /24 and its use must be one step."""
    with open(_LOCK_PATH, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _used_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 route and address of the root namespace (the default route excepted)."""
    found = []
    for entry in json.loads(_ip("-j", "-4", "route", "show", "table", "all") or "[]"):
        dst = entry.get("dst", "default")
        if dst != "default":
            with contextlib.suppress(ValueError):
                found.append(ipaddress.IPv4Network(dst, strict=False))
    for link in json.loads(_ip("-j", "-4", "addr", "show") or "[]"):
        for addr in link.get("addr_info", []):
            with contextlib.suppress(ValueError, KeyError):
                found.append(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return found


def _pick_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for third in sorted(range(256), key=lambda _: secrets.randbits(16)):
        candidate = ipaddress.IPv4Network(f"10.231.{third}.0/24")
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise NetnsError("no free /24 in 10.231.0.0/16 on this machine")


def _kill_namespace_processes(netns: str) -> None:
    """SIGKILL what still runs in NETNS: a process there keeps the namespace, and its links, alive."""
    with contextlib.suppress(NetnsError):
        for pid in _ip("netns", "pids", netns).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)


def _remove(prefix: str, namespaces: Sequence[str]) -> list[str]:
    """Tear down a network by name (best effort); return what failed."""
    errors = []
    existing = set(_netns_names())
    namespaces = [ns for ns in namespaces if ns in existing]
    for ns in namespaces:
        _kill_namespace_processes(ns)
    # The root end first and explicitly: a namespace is freed asynchronously after `ip netns delete`.
    if _link_exists(f"{prefix}c"):
        try:
            _ip("link", "delete", f"{prefix}c")
        except NetnsError as e:
            errors.append(str(e))
    for ns in namespaces:
        try:
            _ip("netns", "delete", ns)
        except NetnsError as e:
            errors.append(str(e))
    return errors


def _link_exists(name: str) -> bool:
    try:
        _ip("link", "show", "dev", name)
    except NetnsError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale() -> list[str]:
    """Remove the networks of processes that died without closing them; return their prefixes.

    :class:`Network` calls this when it is created, so a SIGKILLed test run is cleaned up by the next one.
    """
    names = _netns_names()
    swept = []
    for ns in names:
        match = _SWITCH_NS.match(ns)
        if match and not _pid_alive(int(match.group(2))):
            prefix = match.group(1)
            hosts = [n for n in names if n.startswith(f"{prefix}-")]
            _remove(prefix, [*hosts, ns])
            swept.append(prefix)
    return swept


class Network:
    """A bridge in a "switch" namespace, the root namespace on it as control host, and hosts added to it.

    Created in the constructor (a context manager only for the closing): all names start with
    ``self.prefix``.  :meth:`close` kills whatever still runs in the hosts' namespaces, then removes them.
    """

    def __init__(self) -> None:
        sweep_stale()
        self.prefix = "gn" + secrets.token_hex(3)
        self.switch_netns = f"{self.prefix}_switch_{os.getpid()}"
        self.bridge = f"{self.prefix}br"
        self.control_link = f"{self.prefix}c"
        self.hosts: dict[str, Host] = {}
        self._cut: set[str] = set()
        self._dropped: set[frozenset[str]] = set()
        self._closed = False
        _live.add(self)
        try:
            _ip("netns", "add", self.switch_netns)
            _ip("link", "add", self.bridge, "type", "bridge", netns=self.switch_netns)
            _ip("link", "set", self.bridge, "up", netns=self.switch_netns)
            with _machine_lock():
                self.subnet = _pick_subnet()
                self.control_ip = str(self.subnet.network_address + 1)
                control_mac = _mac(ipaddress.IPv4Address(self.control_ip))
                _ip("link", "add", self.control_link, "address", control_mac, "type", "veth",
                    "peer", "name", f"{self.prefix}cs", "netns", self.switch_netns)
                _ip("addr", "add", f"{self.control_ip}/{self.subnet.prefixlen}", "dev", self.control_link)
            _ip("link", "set", f"{self.prefix}cs", "master", self.bridge, "up", netns=self.switch_netns)
            _ip("link", "set", self.control_link, "up")
        except BaseException:
            with contextlib.suppress(NetnsError):
                self.close()  # the first error is the one to see
            raise

    # -- hosts -------------------------------------------------------------
    def add_host(self, name: str) -> Host:
        """A new namespace ``<prefix>-<name>`` on the bridge, loopback up, with the next free address."""
        if not _HOST_NAME.match(name):
            raise ValueError(f"host name {name!r}: use 1-32 of a-z, 0-9 and '-'")
        if name in self.hosts:
            raise ValueError(f"host {name!r} already exists")
        index = len(self.hosts)
        address = self.subnet.network_address + _FIRST_HOST_OCTET + index
        if address >= self.subnet.broadcast_address:
            raise NetnsError(f"no address left in {self.subnet}")
        host = Host(name, str(address), f"{self.prefix}-{name}", f"{self.prefix}h{index}", f"{self.prefix}s{index}")
        _ip("netns", "add", host.netns)
        self.hosts[name] = host  # from here on close() removes it
        _ip("link", "add", host.link, "address", _mac(address), "netns", host.netns, "type", "veth",
            "peer", "name", host.port, "netns", self.switch_netns)
        _ip("link", "set", host.port, "master", self.bridge, "up", netns=self.switch_netns)
        _ip("addr", "add", f"{host.ip}/{self.subnet.prefixlen}", "dev", host.link, netns=host.netns)
        _ip("link", "set", host.link, "up", netns=host.netns)
        _ip("link", "set", "lo", "up", netns=host.netns)
        # Permanent neighbours both ways, so a cut stays silent (see the module docstring).
        peers = [(self.control_ip, None)] + [(h.ip, h) for h in self.hosts.values() if h is not host]
        batch = "".join(f"neigh replace {ip} lladdr {_mac(ipaddress.IPv4Address(ip))} nud permanent dev {host.link}\n"
                        for ip, _ in peers)
        _run([_ip_bin(), "-n", host.netns, "-batch", "-"], stdin=batch)
        for _, peer in peers:
            _ip("neigh", "replace", host.ip, "lladdr", _mac(address), "nud", "permanent",
                "dev", peer.link if peer else self.control_link, netns=peer.netns if peer else None)
        _nft(host.netns, f"table inet {self.prefix} {{\n"
                         "  set blocked { type ipv4_addr; }\n"
                         "  chain input { type filter hook input priority filter; policy accept; ip saddr @blocked drop; }\n"
                         "}\n")
        return host

    # -- partitions --------------------------------------------------------
    def cut(self, host: Host) -> None:
        """Pull HOST's cable at the switch: its packets vanish both ways, its processes run on."""
        _ip("link", "set", self._own(host).port, "down", netns=self.switch_netns)
        self._cut.add(host.name)

    def heal(self, host: Host) -> None:
        """Plug HOST back in (connections that were not given up carry on)."""
        _ip("link", "set", self._own(host).port, "up", netns=self.switch_netns)
        self._cut.discard(host.name)

    def drop(self, a: Host, b: Host) -> None:
        """Lose every packet between A and B, both directions; both still reach everyone else."""
        if self._own(a) == self._own(b):
            raise ValueError("drop() needs two different hosts")
        _nft(a.netns, f"add element inet {self.prefix} blocked {{ {b.ip} }}\n")
        _nft(b.netns, f"add element inet {self.prefix} blocked {{ {a.ip} }}\n")
        self._dropped.add(frozenset((a.name, b.name)))

    def undrop(self, a: Host, b: Host) -> None:
        """Undo :meth:`drop` for A and B (a no-op if they were not dropped)."""
        if frozenset((self._own(a).name, self._own(b).name)) not in self._dropped:
            return
        _nft(a.netns, f"delete element inet {self.prefix} blocked {{ {b.ip} }}\n")
        _nft(b.netns, f"delete element inet {self.prefix} blocked {{ {a.ip} }}\n")
        self._dropped.discard(frozenset((a.name, b.name)))

    def heal_all(self) -> None:
        """Every cut host plugged back in, every drop undone."""
        for name in list(self._cut):
            self.heal(self.hosts[name])
        for pair in list(self._dropped):
            a, b = (self.hosts[name] for name in sorted(pair))
            self.undrop(a, b)

    def _own(self, host: Host) -> Host:
        if self.hosts.get(host.name) != host:
            raise ValueError(f"{host.name!r} is not a host of this network ({self.prefix})")
        return host

    # -- lifetime ----------------------------------------------------------
    def close(self) -> None:
        """Kill what still runs on the hosts and remove every namespace and link (idempotent)."""
        if self._closed:
            return
        self._closed = True
        _live.discard(self)
        errors = _remove(self.prefix, [*(h.netns for h in self.hosts.values()), self.switch_netns])
        if errors:
            raise NetnsError(f"teardown of {self.prefix} incomplete: " + "; ".join(errors))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        subnet = getattr(self, "subnet", "?")
        return f"<Network {self.prefix} {subnet} hosts={sorted(self.hosts)}{' closed' if self._closed else ''}>"
