"""A three-node RabbitMQ cluster on this machine, behind one address, for the tests that lose a
node: each node with its own name, ports and folders (research.md, "RabbitMQ clusters"), and a
TCP front (`tests/tcp_front.py`) that hands each new connection to the first node that accepts,
as a Kubernetes Service would. Also, with `RabbitCluster(1, max_message_size=...)`, a broker of a
test's own configured as the machine's is not (the machine's broker is everyone's).

Debian's `rabbitmq-server` runs a node as the `rabbitmq` user (with that user's Erlang cookie,
which `rabbitmqctl` run as root uses too), so the folders live in a directory that user owns.
Every process is stopped at the end: the nodes by `rabbitmqctl stop` (by their OS pid if that
fails), the front by its PID.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path

from tests.support import free_port

BOOT_TIMEOUT = 120


def _ctl(node: str, *args: str, timeout: float = 60) -> str:
    done = subprocess.run(
        ["rabbitmqctl", "-q", "-n", node, *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return done.stdout


def _free_node_port() -> int:
    """A port whose Erlang distribution port (port + 20 000) is free too."""
    while True:
        port = free_port()
        if port + 20_000 < 65536 and _is_free(port + 20_000):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class RabbitNode:
    def __init__(self, name: str, root: Path, config: Mapping[str, object] | None = None) -> None:
        """`config`: further `rabbitmq.conf` settings (`max_message_size`, ...)."""
        self.name = name
        self.port = _free_node_port()
        self.directory = root / name.partition("@")[0]
        self.directory.mkdir(parents=True)
        (self.directory / "enabled_plugins").write_text("[].\n")
        lines = [f"listeners.tcp.local = 127.0.0.1:{self.port}"]
        lines += [f"{key} = {value}" for key, value in (config or {}).items()]
        (self.directory / "rabbitmq.conf").write_text("\n".join(lines) + "\n")
        self.pid: int | None = None

    @property
    def environment(self) -> dict[str, str]:
        base = self.directory
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.port + 20_000),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_PID_FILE": str(base / "node.pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        }

    def start(self) -> None:
        subprocess.run(
            ["rabbitmq-server", "-detached"],
            env=self.environment,
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.await_startup()

    def await_startup(self) -> None:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            try:
                _ctl(self.name, "await_startup", "--timeout", "10", timeout=30)
                break
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{self.name} did not start: {self.log()}") from None
                time.sleep(0.5)
        self.pid = int(re.sub(r"\D", "", _ctl(self.name, "eval", "os:getpid().")))

    def log(self) -> str:
        logs = sorted((self.directory / "log").glob("*.log"))
        return "\n".join(path.read_text(errors="replace")[-3000:] for path in logs)

    def kill(self) -> None:
        """SIGKILL: the node vanishes as a crashed pod's would, connections and all."""
        if self.pid is not None:
            os.kill(self.pid, signal.SIGKILL)
            _wait_gone(self.pid)
            self.pid = None

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            _ctl(self.name, "stop", timeout=60)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            os.kill(self.pid, signal.SIGKILL)
        _wait_gone(self.pid)
        self.pid = None

    def join(self, leader: str) -> None:
        _ctl(self.name, "stop_app")
        _ctl(self.name, "join_cluster", leader)
        _ctl(self.name, "start_app")
        self.await_startup()


def _wait_gone(pid: int, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


class RabbitCluster:
    """Three nodes joined into one cluster, and the front at `port`; `config` goes to every
    node's `rabbitmq.conf`."""

    def __init__(self, size: int = 3, **config: object) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="itwin-rabbit-"))
        shutil.chown(self.root, "rabbitmq", "rabbitmq")
        run = uuid.uuid4().hex[:6]
        self.nodes = [
            RabbitNode(f"itw{run}n{i + 1}@localhost", self.root, config) for i in range(size)
        ]
        self.port = free_port()
        self._front: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.root)], check=True)
        for node in self.nodes:
            node.start()
        leader = self.nodes[0].name
        for node in self.nodes[1:]:
            node.join(leader)
        self._front = subprocess.Popen(
            [sys.executable, "-m", "tests.tcp_front", str(self.port),
             *(str(node.port) for node in self.nodes)],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        assert self._front.stdout is not None
        self._front.stdout.readline()  # "listening"

    def url(self, vhost: str = "/") -> str:
        path = "%2F" if vhost == "/" else vhost
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{path}"

    def ctl(self, *args: str) -> str:
        """`rabbitmqctl` on the first node that answers."""
        for node in self.nodes:
            if node.pid is not None:
                return _ctl(node.name, *args)
        raise RuntimeError("no node is running")

    def connection_node(self) -> RabbitNode:
        """The node that holds the client connections (the front prefers the first that
        accepts, so it is the first running node)."""
        return next(node for node in self.nodes if node.pid is not None)

    def stop(self) -> None:
        if self._front is not None:
            self._front.terminate()
            self._front.wait(10)
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.root, ignore_errors=True)
