"""The upstream: nginx from Debian's packages serving the fixtures as static files.

It must not be the bottleneck: ``sendfile``, an open-file cache, keep-alive with no
request cap, one worker per core, no access log. ``/slow/...`` serves the same files
through ``limit_rate_after`` and ``limit_rate`` (a slow upstream for scenario 3: the first
4 KB at once, then a byte a second, so calls stay in flight). A second listener serves
``/slow/...`` over HTTP/2 without TLS (h2c, prior knowledge), for the sidecar's
``http: http2`` row of scenario 3; it admits more concurrent streams than scenario 3 has calls, so
every call is in flight at nginx, as on the HTTP/1.1 listener. Its CPU is reported
separately from the dispatchers'.
"""

from __future__ import annotations

import http.client
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from .documents import fixture_bytes

#: Each ``/slow/`` response sends its first ``SLOW_PREFIX`` bytes (head and body) at once,
#: then ``SLOW_RATE`` bytes per second: the ~100 KB body would take a day, so every call
#: of scenario 3 is in flight when all have started, and each holds the same ~4 KB
#: whenever its stack's memory peaks. (A steady 2 KB/s made the peak race nginx's rate
#: ticks: a body's second piece landed before the stop in some runs and not in others, up
#: to 30 MiB per 10,000 calls, and a stack slower to start its calls held more.)
SLOW_PREFIX = "4k"
SLOW_RATE = "1"

_CONF = """\
worker_processes {workers};
worker_rlimit_nofile 65536;
daemon off;
master_process on;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{
    worker_connections 32768;
    multi_accept on;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 120s;
    keepalive_requests 100000000;
    open_file_cache max=64 inactive=600s;
    open_file_cache_valid 600s;
    etag off;
    types {{ application/json json; }}
    default_type application/json;
    client_body_temp_path {root}/tmp/body;
    proxy_temp_path {root}/tmp/proxy;
    fastcgi_temp_path {root}/tmp/fastcgi;
    uwsgi_temp_path {root}/tmp/uwsgi;
    scgi_temp_path {root}/tmp/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        root {root}/www;
        location = /nginx_status {{
            stub_status;
        }}
        location /slow/ {{
            alias {root}/www/;
            limit_rate_after {slow_prefix};
            limit_rate {slow_rate};
        }}
    }}
    server {{
        listen 127.0.0.1:{h2_port} http2 backlog=65535;
        http2_max_concurrent_streams 16384;
        root {root}/www;
        location /slow/ {{
            alias {root}/www/;
            limit_rate_after {slow_prefix};
            limit_rate {slow_rate};
        }}
    }}
}}
"""


def nginx_binary() -> str:
    path = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(path).exists():
        raise RuntimeError("nginx is not installed (make bench installs Debian's nginx-light)")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """One nginx master and its workers, on a free loopback port."""

    def __init__(self, *, workers: int = 2, cpus: list[int] | None = None) -> None:
        """``cpus``: run nginx on these CPUs alone (``taskset -c``), a worker per CPU, so
        that it does not share the cores under test (``scale_out.py``); by default it
        shares the machine with everything else, with ``workers`` workers."""
        self.cpus = list(cpus) if cpus else None
        self.workers = len(self.cpus) if self.cpus else workers
        self.root = Path(tempfile.mkdtemp(prefix="tandem-bench-nginx-"))
        self.port = 0
        self.h2_port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def h2_base_url(self) -> str:
        """The HTTP/2-only (h2c) listener: ``/slow/...`` only."""
        return f"http://127.0.0.1:{self.h2_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 15.0) -> Nginx:
        www = self.root / "www"
        www.mkdir()
        (self.root / "tmp").mkdir()
        for name, data in fixture_bytes().items():
            (www / name).write_bytes(data)
        # Workers run as an unprivileged user when started as root: let them read.
        for path in (self.root, www, *www.iterdir()):
            path.chmod(0o755 if path.is_dir() else 0o644)
        deadline = time.monotonic() + timeout
        while True:
            self.port = _free_port()
            self.h2_port = _free_port()
            conf = self.root / "nginx.conf"
            conf.write_text(
                _CONF.format(
                    workers=self.workers,
                    root=self.root,
                    port=self.port,
                    h2_port=self.h2_port,
                    slow_rate=SLOW_RATE,
                    slow_prefix=SLOW_PREFIX,
                )
            )
            with (self.root / "stderr.log").open("wb") as stderr:
                pin = ["taskset", "-c", ",".join(map(str, self.cpus))] if self.cpus else []
                self.proc = subprocess.Popen(
                    [*pin, nginx_binary(), "-p", str(self.root), "-c", str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            if self._wait_serving(deadline):
                return self
            self.stop()
            if time.monotonic() > deadline:
                log = (self.root / "stderr.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"nginx did not start:\n{log}")

    def _wait_serving(self, deadline: float) -> bool:
        assert self.proc is not None
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", "/tiny.json")
                if conn.getresponse().status == 200:
                    conn.close()
                    return True
            except OSError:
                time.sleep(0.05)
        return False

    def requests_in_flight(self) -> int:
        """Requests nginx is answering now, from ``stub_status`` (less this one)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/nginx_status")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        # "Reading: 0 Writing: 10001 Waiting: 3"
        fields = text.split()
        return int(fields[fields.index("Writing:") + 1]) - 1

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful quit, then kill; always reaps."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
