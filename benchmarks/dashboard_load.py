"""Load the dashboard with concurrent clients and report latency and server memory.

Starts the real server (``cronledger serve``) as a subprocess on a free
loopback port against ``--database-url``, then runs ``--clients`` concurrent
HTTP clients (httpx, asyncio). Each client sends a fixed number of rounds;
one round requests every endpoint once, in a shuffled order:

- ``overview_24h`` and ``overview_all``: the overview page, ``/?window=...``;
- ``api_services_24h`` and ``api_services_all``: ``/api/v1/services``;
- ``api_service``: ``/api/v1/services/NAME`` for a random service (computed
  per request, not cached);
- ``api_runs``: ``/api/v1/services/NAME/runs`` for a random service;
- ``static_baseline``: ``/static/favicon.svg``, a 300-byte file that reads no
  database, so its latency is the floor that the server and the clients
  set on this machine. Each endpoint's p95 is also given as a ratio to it.

It reports p50, p95 and max latency per endpoint (measured by the client,
so it includes the client's own share of the CPU), the first request of
each overview window separately (it fills the overview cache), and the
peak RSS of the server process sampled every 20 ms from /proc. The
targets are p95 < 200 ms for every endpoint and a peak RSS < 200 MB; the
script exits 1 when one is missed.

The server only reads the database, but its first start runs the
migrations if the schema is behind, as ``cronledger serve`` always does::

    python benchmarks/dashboard_load.py \\
        --database-url postgresql://postgres@127.0.0.1:5432/cronledger_bench_dash
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

P95_TARGET_MS = 200.0
# A 300-byte static file in the same rounds: the latency of the server and
# the clients alone on this machine, against which the endpoints compare.
BASELINE = "static_baseline"
RSS_TARGET_MB = 200.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class PeakRSS:
    """Samples the RSS of a process in a thread and keeps the maximum."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def cronledger_command() -> list[str]:
    beside = Path(sys.executable).with_name("cronledger")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("cronledger")
    if found is None:
        raise SystemExit("the cronledger command is not installed: pip install -e .")
    return [found]


def start_server(
    database_url: str, port: int, log_path: Path, overview_cache: float = 5.0
) -> subprocess.Popen[bytes]:
    log_file = log_path.open("wb")
    command = [*cronledger_command(), "--database-url", database_url, "serve"]
    command += ["--port", str(port), "--overview-cache", str(overview_cache)]
    process = subprocess.Popen(
        command,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    log_file.close()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited: {log_path.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise SystemExit(f"the server did not start within 120 s: {log_path.read_text()}")


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    rank = max(1, int(-(-fraction * len(ordered) // 1)))
    return ordered[rank - 1]


async def run_load(
    base_url: str, clients: int, rounds: int, services: list[str], seed: int
) -> tuple[dict[str, list[float]], dict[str, int]]:
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as client:

        async def one_client(index: int) -> None:
            chooser = random.Random(seed + index)
            for _ in range(rounds):
                name = chooser.choice(services)
                requests = [
                    ("overview_24h", "/?window=24h"),
                    ("overview_all", "/?window=all"),
                    ("api_services_24h", "/api/v1/services?window=24h"),
                    ("api_services_all", "/api/v1/services?window=all"),
                    ("api_service", f"/api/v1/services/{name}"),
                    ("api_runs", f"/api/v1/services/{name}/runs?limit=50"),
                    (BASELINE, "/static/favicon.svg"),
                ]
                chooser.shuffle(requests)
                for label, path in requests:
                    started = time.perf_counter()
                    try:
                        response = await client.get(path)
                        await response.aread()
                        failed = response.status_code != 200
                    except httpx.TransportError:
                        failed = True
                    elapsed = (time.perf_counter() - started) * 1000
                    if failed:
                        errors[label] += 1
                    latencies[label].append(elapsed)

        await asyncio.gather(*(one_client(index) for index in range(clients)))
    return latencies, errors


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True, help="The database to serve.")
    parser.add_argument("--clients", type=int, default=20, help="Concurrent clients.")
    parser.add_argument("--rounds", type=int, default=15, help="Rounds per client.")
    parser.add_argument("--seed", type=int, default=1, help="Seed of the random service choice.")
    parser.add_argument(
        "--overview-cache",
        type=float,
        default=5.0,
        help="The server's --overview-cache, in seconds.",
    )
    parser.add_argument("--json", action="store_true", help="Print the results as JSON.")
    args = parser.parse_args()

    port = free_port()
    log_path = Path(tempfile.mkdtemp(prefix="cronledger-bench-")) / "serve.log"
    process = start_server(args.database_url, port, log_path, args.overview_cache)
    base_url = f"http://127.0.0.1:{port}"
    results: dict[str, Any] = {
        "machine": machine(),
        "clients": args.clients,
        "overview_cache_seconds": args.overview_cache,
    }
    try:
        with PeakRSS(process.pid) as peak:
            services = [
                item["name"]
                for item in httpx.get(base_url + "/api/v1/services?window=24h", timeout=120).json()[
                    "services"
                ]
            ]
            results["services"] = len(services)
            cold = {}
            for window in ("24h", "all"):
                started = time.perf_counter()
                httpx.get(f"{base_url}/?window={window}", timeout=120).raise_for_status()
                cold[f"overview_{window}"] = round((time.perf_counter() - started) * 1000, 1)
            results["first_request_ms"] = cold
            results["rss_before_load_mb"] = round(rss_mb(process.pid), 1)

            started = time.perf_counter()
            latencies, errors = asyncio.run(
                run_load(base_url, args.clients, args.rounds, services, args.seed)
            )
            results["load_seconds"] = round(time.perf_counter() - started, 1)
        results["peak_rss_mb"] = round(peak.peak, 1)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

    endpoints = {}
    for label, values in sorted(latencies.items()):
        endpoints[label] = {
            "requests": len(values),
            "errors": errors.get(label, 0),
            "p50_ms": round(statistics.median(values), 1),
            "p95_ms": round(percentile(values, 0.95), 1),
            "max_ms": round(max(values), 1),
        }
    results["endpoints"] = endpoints

    baseline_p95 = endpoints[BASELINE]["p95_ms"]
    for figures in endpoints.values():
        figures["p95_vs_baseline"] = round(figures["p95_ms"] / baseline_p95, 2)
    missed = [
        f"{label} p95 {figures['p95_ms']} ms"
        for label, figures in endpoints.items()
        if figures["p95_ms"] >= P95_TARGET_MS and label != BASELINE
    ]
    missed += [
        f"{label}: {figures['errors']} errors"
        for label, figures in endpoints.items()
        if figures["errors"]
    ]
    if results["peak_rss_mb"] >= RSS_TARGET_MB:
        missed.append(f"peak RSS {results['peak_rss_mb']} MB")
    results["targets_missed"] = missed

    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"machine: {results['machine']}")
        print(
            f"{results['services']} services, {args.clients} clients x {args.rounds} rounds "
            f"in {results['load_seconds']} s"
        )
        print(f"first overview request (fills the cache): {cold}")
        print(
            f"{'endpoint':<18} {'requests':>8} {'errors':>6} {'p50 ms':>8} {'p95 ms':>8} "
            f"{'max ms':>8} {'p95/baseline':>12}"
        )
        for label, figures in endpoints.items():
            print(
                f"{label:<18} {figures['requests']:>8} {figures['errors']:>6} "
                f"{figures['p50_ms']:>8} {figures['p95_ms']:>8} {figures['max_ms']:>8} "
                f"{figures['p95_vs_baseline']:>12}"
            )
        print(
            f"server RSS: {results['rss_before_load_mb']} MB before the load, "
            f"peak {results['peak_rss_mb']} MB"
        )
        print("targets met" if not missed else "targets missed: " + "; ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
