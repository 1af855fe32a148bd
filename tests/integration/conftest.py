"""Shared fixtures: the real quiver binary, run in a fresh data directory."""
import json
import os
import subprocess

import pytest

QUIVER = os.environ.get("QUIVER_BIN", os.path.join(os.path.dirname(__file__), "../../build/quiver"))
CRASH_WRITER = os.environ.get(
    "QUIVER_CRASH_WRITER", os.path.join(os.path.dirname(__file__), "../../build/qv_crash_writer")
)


class Quiver:
    def __init__(self, data_dir):
        self.data_dir = str(data_dir)

    def run(self, *args, check=True, input=None):
        """Runs quiver with --data-dir; returns the CompletedProcess."""
        cmd = [QUIVER, *map(str, args)]
        if args and args[0] not in ("version", "--help"):
            cmd += ["--data-dir", self.data_dir]
        p = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=300)
        if check and p.returncode != 0:
            raise AssertionError(f"{cmd} failed ({p.returncode}): {p.stderr}")
        return p

    def json(self, *args):
        return json.loads(self.run(*args).stdout)

    def lines(self, *args):
        return [json.loads(l) for l in self.run(*args).stdout.splitlines() if l.strip()]

    def fail(self, *args):
        """Runs a command that must fail; returns its one-line stderr."""
        p = self.run(*args, check=False)
        assert p.returncode != 0, f"expected failure: {args}\n{p.stdout}"
        err = p.stderr.strip()
        assert err.startswith("quiver: "), err
        assert len(err.splitlines()) == 1, err
        return err


@pytest.fixture
def qv(tmp_path):
    return Quiver(tmp_path / "data")


# ---- quiver serve --------------------------------------------------------------------------

import re
import signal
import time
import urllib.error
import urllib.request


class QuiverServer:
    """A `quiver serve` subprocess on a free port (--port 0; the port is read from its
    start-up line). stderr goes to a log file, so a chatty server never blocks on a pipe."""

    def __init__(self, data_dir, log_path, args=(), env=None, model=True):
        self.data_dir = str(data_dir)
        self.log_path = str(log_path)
        cmd = [QUIVER, "serve", "--host", "127.0.0.1", "--port", "0", "--data-dir", self.data_dir, *map(str, args)]
        if not model and "--model" not in args and "--no-model" not in args:
            cmd.append("--no-model")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=full_env)
        self.url = None
        self.url = self._wait_ready()

    def _read_log(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def _wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        url = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"quiver serve exited {self.proc.returncode}: {self._read_log()}")
            if url is None:
                m = re.search(r"serving on http://[^:]+:(\d+)", self._read_log())
                if m:
                    url = f"http://127.0.0.1:{m.group(1)}"
            if url:
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=5) as r:
                        if r.status == 200:
                            return url
                except (urllib.error.URLError, ConnectionError):
                    pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"quiver serve did not become ready: {self._read_log()}")

    @property
    def output(self):
        return self._read_log()

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Stops the server; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def start_quiver_server(tmp_path):
    """A factory: start_quiver_server(args=[...], env={...}, model=True, data_dir=None)
    starts a server and returns its QuiverServer; every one started is stopped after the test
    and must have exited 0 (a crash or a sanitizer report fails the test)."""
    started = []

    def start(args=(), env=None, model=True, data_dir=None):
        n = len(started)
        srv = QuiverServer(data_dir or tmp_path / f"server-data{n}", tmp_path / f"server{n}.log", args, env, model)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        rc = srv.stop()
        assert rc == 0, f"quiver serve exited {rc}: {srv.output[-4000:]}"


@pytest.fixture
def quiver_server(start_quiver_server, request):
    """The base URL of a running server with the default model. Parametrize indirectly with
    {"args": [...], "env": {...}, "model": bool} to change how it starts."""
    opts = getattr(request, "param", None) or {}
    srv = start_quiver_server(args=opts.get("args", ()), env=opts.get("env"), model=opts.get("model", True))
    yield srv.url
