"""Load the dashboard with concurrent clients and report latency and server memory.

Starts the real server (``cronledger serve``) as a subprocess on a free
loopback port against ``--database-url``, then loads it with ``--clients``
concurrent closed-loop clients: each sends its next request as soon as the
previous response has arrived, with no pause, which is harsher than people
reading a page. The endpoints:

- ``overview_24h`` and ``overview_all``: the overview page, ``/?window=...``;
- ``api_services_24h`` and ``api_services_all``: ``/api/v1/services``;
- ``api_service``: ``/api/v1/services/NAME`` for a random service;
- ``api_runs``: ``/api/v1/services/NAME/runs?limit=50`` for a random service
  (read from the database per request);
- ``static_baseline``: ``/static/favicon.svg``, a 300-byte file that reads no
  database, so its latency is the floor that the server and the clients
  set on this machine. Each endpoint's p95 is also given as a ratio to it.

Two load generators:

- ``--generator wrk`` (default): Debian's ``wrk`` (``apt-get install wrk``),
  one process per endpoint for ``--seconds``, the clients split evenly over
  the endpoints. wrk is written in C, so the clients take little of the CPU
  that the server needs on a small machine.
- ``--generator httpx``: httpx clients on asyncio in this process; each does
  ``--rounds`` rounds of every endpoint in a shuffled order. Decoding
  megabytes of HTML and JSON in Python takes as much CPU as the server
  spends, so on two cores this measures the clients about as much as the
  server.

Both send ``Accept-Encoding: gzip``, as browsers do. The script reports
requests, errors, p50, p95 and max latency per endpoint (measured by the
client), the first request of each overview window separately (it fills
the overview cache), and the peak RSS of the server process sampled every
20 ms from /proc. The targets are p95 < 200 ms for every endpoint and a
peak RSS < 200 MB; the script exits 1 when one is missed.

The server only reads the database, but its first start runs the
migrations if the schema is behind, as ``cronledger serve`` always does::

    python benchmarks/dashboard_load.py \\
        --database-url postgresql://postgres@127.0.0.1:5432/cronledger_bench_stats
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
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import psycopg

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
                requests = [(label, path.format(service=name)) for label, path in ENDPOINTS]
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


# Each endpoint with its path; {service} is replaced by a random service per request.
ENDPOINTS = (
    ("overview_24h", "/?window=24h"),
    ("overview_all", "/?window=all"),
    ("api_services_24h", "/api/v1/services?window=24h"),
    ("api_services_all", "/api/v1/services?window=all"),
    ("api_service", "/api/v1/services/{service}"),
    ("api_runs", "/api/v1/services/{service}/runs?limit=50"),
    (BASELINE, "/static/favicon.svg"),
)

# A wrk script for one endpoint: a random service per request where the path
# names one, gzip accepted as browsers do, and the figures printed as JSON.
WRK_SCRIPT = """
local services = {%(services)s}
local path = "%(path)s"
math.randomseed(%(seed)d)
wrk.headers["Accept-Encoding"] = "gzip"

request = function()
  local chosen = path:gsub("{service}", services[math.random(#services)])
  return wrk.format("GET", chosen)
end

done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '{"requests": %%d, "errors": %%d, "p50_ms": %%.1f, "p95_ms": %%.1f, "max_ms": %%.1f}\\n',
    summary.requests,
    errors.connect + errors.read + errors.write + errors.status + errors.timeout,
    latency:percentile(50) / 1000, latency:percentile(95) / 1000, latency.max / 1000))
end
"""


def split_clients(clients: int, parts: int) -> list[int]:
    """Split ``clients`` connections over ``parts`` endpoints as evenly as possible."""
    return [clients // parts + (1 if index < clients % parts else 0) for index in range(parts)]


def run_wrk(
    base_url: str, clients: int, seconds: int, services: list[str], seed: int, folder: Path
) -> dict[str, dict[str, Any]]:
    """Load every endpoint at once, one wrk process per endpoint, ``clients`` connections in all.

    wrk reports one latency distribution per process, hence a process per
    endpoint. Each connection is a closed-loop client: it sends its next
    request as soon as the previous response has arrived.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk is not installed: apt-get install wrk, or pass --generator httpx")
    if clients < len(ENDPOINTS):
        raise SystemExit(f"--clients must be at least {len(ENDPOINTS)} with wrk, got {clients}")
    names = ", ".join(json.dumps(name) for name in services)
    processes = []
    for index, ((label, path), connections) in enumerate(
        zip(ENDPOINTS, split_clients(clients, len(ENDPOINTS)), strict=True)
    ):
        script = folder / f"{label}.lua"
        script.write_text(WRK_SCRIPT % {"services": names, "path": path, "seed": seed + index})
        command = [wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "60s"]
        command += ["-s", str(script), base_url]
        processes.append((label, connections, subprocess.Popen(command, stdout=subprocess.PIPE)))

    endpoints: dict[str, dict[str, Any]] = {}
    for label, connections, process in processes:
        output, _ = process.communicate()
        if process.returncode != 0:
            raise SystemExit(f"wrk for {label} exited with {process.returncode}: {output!r}")
        figures = json.loads(output.decode().strip().splitlines()[-1])
        endpoints[label] = {"clients": connections, **figures}
    return endpoints


class Writer:
    """Records finished runs of random services at a steady rate, in a thread, as clients do.

    The server's caches keep figures only while the services' rows stay the
    same, so a load without writes would measure only cache hits. The rows
    stay in the database; their run keys start with "changed-", which the
    statistics benchmark leaves out of its row count.
    """

    def __init__(self, database_url: str, services: list[str], per_second: float, seed: int):
        self.database_url = database_url
        self.services = services
        self.per_second = per_second
        self.random = random.Random(seed)
        self.written = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        interval = 1 / self.per_second
        with psycopg.connect(self.database_url, autocommit=True) as connection:
            while not self._stop.wait(interval):
                duration = self.random.randint(20, 30_000)
                connection.execute(
                    "INSERT INTO cron_executions (service_name, execution_time, status,"
                    " items_processed, duration_ms, finished_at, run_key) VALUES (%s,"
                    " now() - %s * interval '1 millisecond', 'completed', 0, %s, now(), %s)",
                    (
                        self.random.choice(self.services),
                        duration,
                        duration,
                        f"changed-{uuid.uuid4().hex}",
                    ),
                )
                self.written += 1

    def __enter__(self) -> Writer:
        if self.per_second > 0:
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def summarize(
    latencies: dict[str, list[float]], errors: dict[str, int]
) -> dict[str, dict[str, Any]]:
    """Return requests, errors and p50, p95 and max latency per endpoint."""
    return {
        label: {
            "requests": len(values),
            "errors": errors.get(label, 0),
            "p50_ms": round(statistics.median(values), 1),
            "p95_ms": round(percentile(values, 0.95), 1),
            "max_ms": round(max(values), 1),
        }
        for label, values in sorted(latencies.items())
    }


def load(
    args: argparse.Namespace, base_url: str, services: list[str], folder: Path
) -> dict[str, dict[str, Any]]:
    """Run the chosen load generator and return its figures per endpoint."""
    if args.generator == "wrk":
        return run_wrk(base_url, args.clients, args.seconds, services, args.seed, folder)
    latencies, errors = asyncio.run(
        run_load(base_url, args.clients, args.rounds, services, args.seed)
    )
    return summarize(latencies, errors)


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
    parser.add_argument(
        "--generator",
        choices=("wrk", "httpx"),
        default="wrk",
        help="The load generator: wrk (C, one process per endpoint; apt-get install wrk) or"
        " httpx (Python, in this process, which then takes much of the CPU the server needs).",
    )
    parser.add_argument(
        "--seconds", type=int, default=60, help="How long wrk loads the server, in seconds."
    )
    parser.add_argument("--rounds", type=int, default=15, help="Rounds per httpx client.")
    parser.add_argument(
        "--writes-per-second",
        type=float,
        default=2.0,
        help="Finished runs recorded per second during the load (0: none). The default is"
        " the rate of the generated data: 10 million runs in 60 days.",
    )
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
            writer = Writer(args.database_url, services, args.writes_per_second, args.seed)
            with writer:
                endpoints = load(args, base_url, services, log_path.parent)
            results["runs_written"] = writer.written
            results["load_seconds"] = round(time.perf_counter() - started, 1)
        results["peak_rss_mb"] = round(peak.peak, 1)

    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()

    results["generator"] = args.generator
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
        shape = f"{args.rounds} rounds each" if args.generator == "httpx" else "one endpoint each"
        print(
            f"{results['services']} services, {args.clients} clients ({args.generator}, "
            f"{shape}) for {results['load_seconds']} s"
        )
        print(f"first overview request (fills the cache): {cold}")
        print(f"runs recorded during the load: {results['runs_written']}")
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
