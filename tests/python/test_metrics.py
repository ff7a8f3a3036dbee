"""llepd's metrics endpoint (--metrics-listen, daemon/server/metrics.c): scraped with curl and
read with the Python prometheus_client parser while clients run forwards, its counters checked
against llepctl stats --json and devices --json; 404 and 405; off by default; a bad address
refused at start with exit 2, a port in use with exit 1 naming it; per-expert loads only with
--metrics-expert-loads."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import llep
from conftest import Daemon
from reference import Weights

N, K, D, H = 8, 2, 32, 32

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def curl(url: str, *args: str) -> subprocess.CompletedProcess:
    # curl is not built with the sanitizers: keep the build's preloaded runtimes off it.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "ASAN_OPTIONS")}
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args, url], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=20)


def scrape(url: str) -> dict:
    """The samples of one scrape as {(name, ((label, value), ...)): value}."""
    done = curl(url, "--fail")
    assert done.returncode == 0, done.stderr
    samples = {}
    for fam in text_string_to_metric_families(done.stdout):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def names_of(samples: dict) -> set:
    return {k[0] for k in samples}


@pytest.fixture(scope="module")
def metered():
    port = free_port()
    d = Daemon(args=["--metrics-listen", f"127.0.0.1:{port}"])
    d.url = f"http://127.0.0.1:{port}/metrics"
    yield d
    d.close()


def run_forwards(sock: str, layer_name: str, seed: int, stop: threading.Event,
                 errors: list) -> None:
    try:
        rng = np.random.default_rng(seed)
        with llep.connect(sock) as c:
            layer = c.attach(layer_name)
            while not stop.is_set():
                t = int(rng.integers(1, 48))
                x = rng.standard_normal((t, D)).astype(np.float32)
                idx = rng.integers(0, N, (t, K)).astype(np.int64)
                idx[rng.random((t, K)) < 0.5] = 0        # skewed: some steps take LLEP plans
                w = rng.random((t, K), dtype=np.float32)
                layer.forward(x, idx, w)
            layer.close()
    except Exception as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


def test_scrape_while_clients_run(metered):
    """Counters only grow while four clients run; once they stop, every figure equals what
    llepctl stats and devices report."""
    rng = np.random.default_rng(16)
    wts = Weights(rng, N, D, H)
    with llep.connect(metered.sock) as owner:
        layer = owner.create_layer("metrics-a", top_k=K, **wts.layout("separate", "hd"))
        stop, errors = threading.Event(), []
        threads = [threading.Thread(target=run_forwards,
                                    args=(metered.sock, "metrics-a", i, stop, errors))
                   for i in range(4)]
        for t in threads:
            t.start()
        try:
            last = 0.0
            seen_clients = 0.0
            for _ in range(8):
                s = scrape(metered.url)
                steps = (value(s, "llep_node_steps_total", mode="ep")
                         + value(s, "llep_node_steps_total", mode="llep"))
                assert steps >= last
                last = steps
                seen_clients = max(seen_clients, value(s, "llep_clients_connected"))
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        assert not errors, errors
        assert last > 0
        assert seen_clients >= 2        # the owner and at least one running client

        s = scrape(metered.url)
        stats = json.loads(metered.llepctl("--json", "stats"))
        devs = json.loads(metered.llepctl("--json", "devices"))["devices"]
        layer.close()

    assert value(s, "llep_node_steps_total", mode="ep") == stats["ep_steps"]
    assert value(s, "llep_node_steps_total", mode="llep") == stats["llep_steps"]
    assert value(s, "llep_step_duration_seconds_count") == stats["steps"]
    assert value(s, "llep_step_duration_seconds_bucket", le="+Inf") == stats["steps"]
    assert value(s, "llep_step_duration_seconds_sum") > 0
    assert value(s, "llep_weight_bytes_moved_total") == stats["weight_bytes_moved"]
    assert value(s, "llep_token_bytes_moved_total") == stats["token_bytes_moved"]
    (ls,) = [x for x in stats["layers"] if x["name"] == "metrics-a"]
    assert value(s, "llep_layer_steps_total", layer="metrics-a", mode="ep") == ls["ep_steps"]
    assert value(s, "llep_layer_steps_total", layer="metrics-a", mode="llep") == ls["llep_steps"]
    assert value(s, "llep_layer_tokens_total", layer="metrics-a") == ls["tokens"]
    assert value(s, "llep_layer_imbalance", layer="metrics-a") == pytest.approx(
        ls["imbalance_last"], rel=1e-5)
    assert value(s, "llep_layer_imbalance_max", layer="metrics-a") == pytest.approx(
        ls["imbalance_max"], rel=1e-5)
    assert value(s, "llep_layer_weight_bytes_moved_total", layer="metrics-a") == \
        ls["weight_bytes_moved"]
    assert len(devs) == 2
    busy = 0.0
    for dv in devs:
        name = dv["name"]
        assert value(s, "llep_device_memory_used_bytes", device=name) == dv["memory_used"]
        assert value(s, "llep_device_memory_peak_bytes", device=name) == dv["memory_peak"]
        assert value(s, "llep_device_memory_budget_bytes", device=name) == dv["memory_budget"]
        assert value(s, "llep_device_cache_hits_total", device=name) == dv["cache_hits"]
        busy += value(s, "llep_device_busy_seconds_total", device=name)
    assert busy > 0
    for kind in ("refused_submission", "failed_step", "failed_submission", "refused_connection"):
        assert value(s, "llep_errors_total", kind=kind) == 0
    assert "llep_expert_load_tokens" not in names_of(s)
    assert "llep_peer_up" not in names_of(s)      # not clustered


def test_paths_and_methods(metered):
    """Other paths are 404, methods other than GET and HEAD 405; HEAD answers no body."""
    base = metered.url.rsplit("/", 1)[0]
    for url, args, code in ((base + "/", (), "404"), (base + "/metricsx", (), "404"),
                            (metered.url, ("-X", "POST", "-d", "x"), "405"),
                            (metered.url, ("-X", "DELETE"), "405"),
                            (metered.url, ("-I",), "200")):
        done = curl(url, "-o", "/dev/null", "-w", "%{http_code}", *args)
        assert done.stdout == code, (url, args, done.stdout, done.stderr)
    head = curl(metered.url, "-I")
    assert "text/plain; version=0.0.4" in head.stdout


def listening_sockets(pid: int) -> int:
    """TCP sockets in state LISTEN that process pid holds."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                n += fields[3] == "0A" and fields[9] in inodes
    return n


def test_off_by_default(own_daemon):
    """Without --metrics-listen llepd listens on no TCP port."""
    assert listening_sockets(own_daemon.proc.pid) == 0


def start_failing(*args: str) -> subprocess.CompletedProcess:
    """llepd with args, which must refuse to start."""
    sock = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"llep-metrics-{os.getpid()}.sock")
    return subprocess.run([os.environ["LLEPD"], "--socket", sock, "--backend", "cpu",
                           "--devices", "2", *args], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=30)


def test_bad_address_exit_2():
    if not os.environ.get("LLEPD"):
        pytest.skip("LLEPD is not set")
    for bad in ("localhost:9464", "127.0.0.1", "127.0.0.1:0", "[::1]9464"):
        done = start_failing("--metrics-listen", bad)
        assert done.returncode == 2, (bad, done.stderr)
        assert "'--metrics-listen'" in done.stderr and "HOST:PORT" in done.stderr


def test_port_in_use_exit_1():
    if not os.environ.get("LLEPD"):
        pytest.skip("LLEPD is not set")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        done = start_failing("--metrics-listen", f"127.0.0.1:{port}")
    assert done.returncode == 1, done.stderr
    assert f"metrics-listen 127.0.0.1:{port}: Address already in use" in done.stderr


def test_expert_loads_option():
    """Per-expert series only with --metrics-expert-loads yes: one per expert of each layer
    that has run a step, equal to llepctl experts' last loads."""
    port = free_port()
    d = Daemon(args=["--metrics-listen", f"127.0.0.1:{port}", "--metrics-expert-loads", "yes"])
    try:
        rng = np.random.default_rng(3)
        wts = Weights(rng, N, D, H)
        with llep.connect(d.sock) as c:
            layer = c.create_layer("loads", top_k=K, **wts.layout("separate", "hd"))
            x = rng.standard_normal((20, D)).astype(np.float32)
            idx = rng.integers(0, N, (20, K)).astype(np.int64)
            layer.forward(x, idx, rng.random((20, K), dtype=np.float32))
            s = scrape(f"http://127.0.0.1:{port}/metrics")
            want = np.bincount(idx.ravel(), minlength=N)
            for e in range(N):
                assert value(s, "llep_expert_load_tokens", layer="loads", expert=str(e)) == \
                    want[e]
            layer.close()
    finally:
        d.close()


def test_peer_series():
    """Two llepd linked as a cluster: each exports its peer's link as up, with a round trip
    and bytes, as llepctl peers reports them."""
    ports = [free_port() for _ in range(4)]
    peers = f"0=127.0.0.1:{ports[0]},1=127.0.0.1:{ports[1]}"
    nodes = []
    try:
        for i in range(2):
            nodes.append(Daemon(args=["--node-id", str(i), "--peers", peers,
                                      "--peer-heartbeat-ms", "20",
                                      "--metrics-listen", f"127.0.0.1:{ports[2 + i]}"]))
        for i, d in enumerate(nodes):
            url = f"http://127.0.0.1:{ports[2 + i]}/metrics"
            other = str(1 - i)
            deadline = time.monotonic() + 15
            while True:
                s = scrape(url)
                if (value(s, "llep_peer_up", peer=other) == 1
                        and value(s, "llep_peer_rtt_seconds", peer=other) > 0):
                    break
                assert time.monotonic() < deadline, f"node {i}: link to {other} not up"
                time.sleep(0.05)
            assert value(s, "llep_peer_links_up_total", peer=other) >= 1
            assert value(s, "llep_peer_sent_bytes_total", peer=other) > 0
            assert value(s, "llep_peer_received_bytes_total", peer=other) > 0
            assert ("llep_peer_up", (("peer", str(i)),)) not in s     # not itself
    finally:
        for d in nodes:
            d.close()
