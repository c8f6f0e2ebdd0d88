"""Real parts for cross-language tests: the sidecar binary and loopback HTTP upstreams.

* :class:`Upstream` is an aiohttp server on 127.0.0.1 running in its own thread and event
  loop, so a test's client load never stalls it. It counts requests per path and records
  client disconnects (handler cancellation is on, as it is for a real server noticing a
  dropped connection).
* :class:`SidecarProcess` starts ``sidecar`` with a tools file written to a temp dir,
  listening on a unix socket and an ephemeral TCP port, JSON logs captured, and waits for
  its ``sidecar ready`` line.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import ssl
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from loop_server import LoopServer

REPO = Path(__file__).resolve().parents[1]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def sidecar_binary() -> Path:
    """The sidecar built by ``make`` (debug profile unless SIDECAR_BIN says otherwise)."""
    configured = os.environ.get("SIDECAR_BIN")
    path = Path(configured) if configured else REPO / "sidecar-rs/target/debug/sidecar"
    if not path.exists():
        subprocess.run(
            ["cargo", "build", "--quiet", "--bin", "sidecar"],
            cwd=REPO / "sidecar-rs",
            check=True,
        )
    return path


class Upstream(LoopServer):
    """A loopback HTTP server whose routes a test defines (HTTP/1.1; over TLS with
    ``tls``, a server-side ``ssl.SSLContext``)."""

    def __init__(self, *, tls: ssl.SSLContext | None = None) -> None:
        super().__init__(tls=tls)
        self.requests: collections.Counter[str] = collections.Counter()
        self.disconnects: collections.Counter[str] = collections.Counter()
        self.headers: list[dict[str, str]] = []
        self._routes: dict[tuple[str, str], Handler] = {}
        self._runner: web.AppRunner | None = None

    def route(self, method: str, path: str, handler: Handler) -> None:
        self._routes[(method, path)] = handler

    def json(self, method: str, path: str, body: Any, status: int = 200) -> None:
        """Serve a fixed JSON body."""

        async def handler(_: web.Request) -> web.StreamResponse:
            return web.json_response(body, status=status)

        self.route(method, path, handler)

    def gate(self) -> asyncio.Event:
        """An event handlers can wait on; open it from the test with :meth:`open`."""
        return asyncio.run_coroutine_threadsafe(_new_event(), self._loop).result(5)

    def open(self, gate: asyncio.Event) -> None:
        self._loop.call_soon_threadsafe(gate.set)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # Stopping aborts every connection before this runner's cleanup (LoopServer), but
        # a connection still in the accept queue can be accepted after that, and cleanup
        # waited its default minute for such a one to send a request (seen once in `make
        # test`: the stop timed out at 30 s). Two seconds bound that wait; the final
        # abort closes what is left.
        self._runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        key = request.path
        self.requests[key] += 1
        self.headers.append({k.lower(): v for k, v in request.headers.items()})
        handler = self._routes.get((request.method, key)) or self._routes.get(("*", key))
        if handler is None:
            return web.json_response({"error": f"no route {request.method} {key}"}, status=404)
        try:
            return await handler(request)
        except asyncio.CancelledError:
            self.disconnects[key] += 1
            raise

    async def _shutdown(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll ``predicate`` (reading counters updated on the server thread)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


class SidecarProcess:
    """The real sidecar binary, configured by a YAML string."""

    def __init__(
        self,
        workdir: Path,
        config: str,
        *extra_args: str,
        env: dict[str, str] | None = None,
        binary: Path | None = None,
    ) -> None:
        self.extra_env = env or {}
        #: None: :func:`sidecar_binary` (SIDECAR_BIN, else the debug build).
        self.binary = binary
        self.workdir = workdir
        self.config_path = workdir / "tools.yaml"
        self.config_path.write_text(config)
        self.socket = workdir / "sidecar.sock"
        #: The framed Dispatch socket (``--listen frames:``), beside the gRPC one.
        self.frames_socket = workdir / "frames.sock"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[str] | None = None
        self.logs: list[dict[str, Any]] = []
        self.raw_logs: list[str] = []
        self.tcp_port = 0
        self.metrics_port = 0
        self.health_port = 0
        #: The bearer token TCP clients must send.
        self.auth_token = "test-token-" + os.urandom(12).hex()
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def unix_target(self) -> str:
        return f"unix:{self.socket}"

    @property
    def tcp_target(self) -> str:
        return f"127.0.0.1:{self.tcp_port}"

    @property
    def auth_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.auth_token}"),)

    def start(self, timeout: float = 30.0) -> SidecarProcess:
        self._ready.clear()
        env = {
            **os.environ,
            "RUST_LOG": os.environ.get("RUST_LOG", "info"),
            "SIDECAR_AUTH_TOKEN": self.auth_token,
            **self.extra_env,
        }
        self.proc = subprocess.Popen(
            [
                str(self.binary or sidecar_binary()),
                "--config",
                str(self.config_path),
                "--listen",
                f"unix:{self.socket}",
                "--listen",
                "127.0.0.1:0",
                "--listen",
                f"frames:{self.frames_socket}",
                "--metrics-listen",
                "127.0.0.1:0",
                "--health-listen",
                "127.0.0.1:0",
                "--reload-interval",
                "200ms",
                "--log-format",
                "json",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read_logs, args=(self.proc,), daemon=True)
        self._reader.start()
        # The log reader also wakes this when the process exits (a refused config).
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.kill()
            raise RuntimeError("sidecar did not become ready:\n" + "\n".join(self.raw_logs))
        return self

    def _read_logs(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stderr is not None
        with proc.stderr:
            for line in proc.stderr:
                self._on_log_line(line)
        proc.wait()
        self._ready.set()

    def _on_log_line(self, line: str) -> None:
        self.raw_logs.append(line.rstrip())
        try:
            entry = json.loads(line)
        except ValueError:
            return
        self.logs.append(entry)
        message = entry.get("message")
        if message == "listening" and not str(entry.get("addr", "")).startswith(
            ("unix:", "frames:")
        ):
            self.tcp_port = int(str(entry["addr"]).rsplit(":", 1)[1])
        elif message == "metrics listening":
            self.metrics_port = int(str(entry["addr"]).rsplit(":", 1)[1])
        elif message == "health listening":
            self.health_port = int(str(entry["addr"]).rsplit(":", 1)[1])
        elif message == "sidecar ready":
            self._ready.set()

    def rss_bytes(self) -> int:
        """Resident set size of the process, from /proc."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self._reader is not None:
                self._reader.join(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self._reader is not None:
            self._reader.join(5)

    def log_text(self) -> str:
        return "\n".join(self.raw_logs)


def tool(
    name: str,
    url: str,
    *,
    method: str = "GET",
    input_schema: dict[str, Any] | None = None,
    request: dict[str, Any] | None = None,
    loopback: bool = True,
    **fields: Any,
) -> dict[str, Any]:
    """One tool entry for a tools file (YAML is a superset of JSON)."""
    entry: dict[str, Any] = {
        "name": name,
        "description": f"Test tool {name}.",
        "input_schema": input_schema or {"type": "object"},
        "request": {"method": method, "url": url, **(request or {})},
        **fields,
    }
    if loopback:
        # Test upstreams live on 127.0.0.1, which the egress guard refuses by default.
        entry["egress"] = {"allow": ["127.0.0.0/8"]}
    return entry


def replace_file(path: Path, text: str) -> None:
    """Swaps in a new file whole, as config management (and a ConfigMap) does. An
    in-place write can be polled half-written: a (correctly) rejected reload of its
    own, which a test waiting for reloads would count as the one it waits for."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text)
    os.replace(staged, path)


def tools_file(*tools: dict[str, Any], **top: Any) -> str:
    """A tools file with these tools and top-level sections."""
    return json.dumps({"tools": list(tools), **top}, indent=2)


def scrape(port: int) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric samples by name and sorted labels, via the Prometheus text parser."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = tuple(sorted(sample.labels.items()))
            out.setdefault(sample.name, {})[key] = sample.value
    return out


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """A real redis-server on loopback, no persistence; can be killed and restarted.

    As production runs it, optionally: `password` for the default user (what `url` and
    `cli` log in with; more users by `--user` in `extra_args`), and TLS only (`tls_ca`, a
    `trustme.CA` that issues the server's certificate for 127.0.0.1; no plain port)."""

    def __init__(
        self,
        workdir: Path,
        *extra_args: str,
        password: str | None = None,
        tls_ca: Any = None,
    ) -> None:
        """`extra_args` go to redis-server's command line, e.g. to rename a command
        away as an older server would lack it."""
        self.workdir = workdir
        self.extra_args = extra_args
        self.password = password
        self.tls_ca = tls_ca
        self.ca_file = workdir / "redis-ca.pem"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url_for(self, user: str = "", password: str | None = None) -> str:
        """The URL a client logs in with as `user` (the default user when empty)."""
        scheme = "rediss" if self.tls_ca is not None else "redis"
        login = f"{user}:{password}@" if password is not None else ""
        return f"{scheme}://{login}127.0.0.1:{self.port}/0"

    @property
    def url(self) -> str:
        return self.url_for(password=self.password)

    def _args(self) -> list[str]:
        args = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self.workdir)]
        if self.password is not None:
            args += ["--requirepass", self.password]
        if self.tls_ca is None:
            return [*args, "--port", str(self.port)]
        cert = self.tls_ca.issue_cert("127.0.0.1")
        cert_file, key_file = self.workdir / "redis-cert.pem", self.workdir / "redis-key.pem"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        self.tls_ca.cert_pem.write_to_path(str(self.ca_file))
        return [
            *args,
            "--port",
            "0",
            "--tls-port",
            str(self.port),
            "--tls-cert-file",
            str(cert_file),
            "--tls-key-file",
            str(key_file),
            "--tls-ca-cert-file",
            str(self.ca_file),
            "--tls-auth-clients",
            "no",
        ]

    def _answers(self) -> bool:
        import socket

        with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as raw:
            if self.tls_ca is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(16).startswith((b"+PONG", b"-NOAUTH"))
            context = ssl.create_default_context(cafile=str(self.ca_file))
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))

    def start(self) -> RedisServer:
        import shutil

        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.proc = subprocess.Popen(
            [binary, *self._args(), *self.extra_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 10
        while time.monotonic() < end:
            try:
                if self._answers():
                    return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def freeze(self) -> None:
        """Stop the process (SIGSTOP): its connections stay open and the kernel still
        accepts new ones, but nothing is answered, as in a partition without resets."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def cli(self, *args: str, commands: str | None = None) -> str:
        """One command through redis-cli (installed with redis-server), or `commands`
        (one a line) with no args; the reply as text."""
        import shutil

        binary = shutil.which("redis-cli")
        assert binary is not None, "redis-cli is installed with redis-server"
        login = ["-a", self.password, "--no-auth-warning"] if self.password else []
        tls = ["--tls", "--cacert", str(self.ca_file)] if self.tls_ca is not None else []
        out = subprocess.run(
            [binary, "-p", str(self.port), *login, *tls, *args],
            input=commands,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return out.stdout.strip()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
