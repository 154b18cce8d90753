"""A real gateway process for the tests: ``$GATEWAY_BIN`` in demo mode
(embedded backend, demo token key) on free loopback ports, with its admin
API. No mocks: every test talks to this binary."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[3]


def gateway_bin() -> str:
    path = os.environ.get("GATEWAY_BIN") or str(REPO / "target" / "debug" / "gateway")
    if not os.path.isabs(path):
        path = str(REPO / path)
    if not os.access(path, os.X_OK):
        raise RuntimeError(
            f"no gateway binary at {path}: build it (cargo build -p gateway --bin gateway) or set GATEWAY_BIN"
        )
    return path


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """``gateway --demo --cores 1`` on free ports; ``stop()`` kills it."""

    def __init__(self, name: str, *extra: str, port: Optional[int] = None, admin_port: Optional[int] = None):
        # Unique per run: --tls-self-signed writes /tmp/gateway-<node_id>-self-signed.pem,
        # and two runs at once must not share that file.
        self.node_id = f"{name}-{os.getpid()}"
        self.extra = list(extra)
        self.port = port or free_port()
        self.admin_port = admin_port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log = tempfile.NamedTemporaryFile(prefix=f"gw-{self.node_id}-", suffix=".log", delete=False)

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def args(self) -> List[str]:
        return [
            gateway_bin(),
            "--demo",
            "--cores",
            "1",
            "--node-id",
            self.node_id,
            "--listen",
            self.addr,
            "--admin-listen",
            f"127.0.0.1:{self.admin_port}",
            *self.extra,
        ]

    def start(self, timeout_s: float = 15.0) -> "Gateway":
        self.proc = subprocess.Popen(
            self.args(),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info")},
        )
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                logs = self.logs()
                self.cleanup()
                raise RuntimeError(f"gateway {self.node_id} exited with {self.proc.returncode}:\n{logs}")
            try:
                if self.http("GET", "/readyz", timeout_s=1.0)[0] == 200:
                    # The admin port answers once the client listener is up, too.
                    with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                logs = self.logs()
                self.cleanup()
                raise RuntimeError(f"gateway {self.node_id} not ready within {timeout_s} s:\n{logs}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGKILL, timeout_s: float = 10.0) -> Optional[int]:
        p = self.proc
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        return p.returncode

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def pause(self, timeout_s: float = 5.0) -> None:
        """SIGSTOP, and wait until every thread has stopped (the signal
        reaches them asynchronously; one still running could answer)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + timeout_s
        tasks = Path(f"/proc/{self.proc.pid}/task")
        while True:
            states = []
            for t in tasks.iterdir():
                try:
                    stat = (t / "stat").read_text()
                except OSError:
                    continue  # a thread that just exited
                states.append(stat.rpartition(")")[2].split()[0])
            if states and all(s in ("T", "t") for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway {self.node_id} did not stop: thread states {states}")
            time.sleep(0.01)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def logs(self) -> str:
        if self.log.closed:
            return ""
        self.log.flush()
        try:
            return Path(self.log.name).read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def http(self, method: str, path: str, timeout_s: float = 5.0):
        req = urllib.request.Request(f"http://127.0.0.1:{self.admin_port}{path}", method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def json(self, method: str, path: str):
        status, body = self.http(method, path)
        assert status == 200, (status, body)
        return json.loads(body)

    def connz(self, user: str) -> list:
        return self.json("GET", f"/connz?user={user}")["connections"]

    def closes(self, reason: str) -> int:
        return int(self.json("GET", "/stats")["closes"][reason])

    def kick(self, user: str, message: str = "") -> int:
        q = f"/kick?user={user}" + (f"&message={urllib.parse.quote(message)}" if message else "")
        return int(self.json("POST", q)["kicked"])

    def self_signed_cert(self) -> Optional[str]:
        m = re.search(r"cert=(\S+self-signed\.pem)", self.logs())
        return m.group(1) if m else None

    def cleanup(self) -> None:
        self.stop()
        if self.log.closed:
            return
        cert = self.self_signed_cert()
        self.log.close()
        for path in (self.log.name, cert):
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
