"""Fixtures of the Python client's tests: a private llepd per test module and clients of it.

The environment comes from meson (tests/meson.build, test "python"): LLEPD and LLEPCTL are the
built programs, LLEP_CLIENT_LIB the built libllep-client, LLEP_CLIENT_CDEF its declarations as
the build preprocessed them, PYTHONPATH libclient/python. Run by hand from the top of the tree:

    LLEPD=build/daemon/llepd LLEPCTL=build/tools/llepctl \
    LLEP_CLIENT_LIB=build/libclient/libllep-client.so.0 PYTHONPATH=libclient/python \
    .venv/bin/python3 -m pytest tests/python -q
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Iterator, List, Optional

import pytest

import llep


class Daemon:
    """A llepd on the CPU backend on a socket of its own; stop() or kill() it."""

    def __init__(self, devices: int = 2, args: Optional[List[str]] = None):
        exe = os.environ.get("LLEPD")
        if not exe:
            pytest.skip("LLEPD is not set: no llepd to test against")
        self.dir = tempfile.mkdtemp(prefix="llep-pytest-")
        self.sock = os.path.join(self.dir, "llepd.sock")
        self.log_path = os.path.join(self.dir, "llepd.log")
        self._log = open(self.log_path, "w")
        self._cmd = [exe, "--socket", self.sock, "--backend", "cpu", "--devices", str(devices),
                     "--log-level", "warning"] + (args or [])
        self.start()

    def start(self) -> None:
        """Starts llepd (again, after stop() or kill(): on the same socket, as a service
        restarts) and returns once it accepts connections."""
        self.proc = subprocess.Popen(self._cmd, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llepd exited with {self.proc.returncode}: {self.log()}")
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                try:
                    s.connect(self.sock)
                    return
                except OSError:
                    time.sleep(0.02)
        raise RuntimeError(f"llepd did not listen on {self.sock}: {self.log()}")

    def log(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def stop(self) -> int:
        """SIGTERM, and its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        self._log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def llepctl(self, *args: str) -> str:
        exe = os.environ.get("LLEPCTL")
        if not exe:
            pytest.skip("LLEPCTL is not set")
        done = subprocess.run([exe, "--socket", self.sock, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, timeout=30)
        assert done.returncode == 0, f"llepctl {' '.join(args)}: {done.stderr}"
        return done.stdout


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    """One llepd for the test module."""
    d = Daemon()
    yield d
    d.close()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[llep.Client]:
    with llep.connect(daemon.sock) as c:
        yield c


@pytest.fixture
def own_daemon() -> Iterator[Daemon]:
    """A llepd for one test, which it may stop or kill."""
    d = Daemon()
    yield d
    d.close()
