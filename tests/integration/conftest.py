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
