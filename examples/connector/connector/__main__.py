"""``python -m connector``: run the services and feed them work.

Run it from ``examples/connector`` (or put that folder on PYTHONPATH). The
database is ``$CRONLEDGER_DATABASE_URL``, else ``examples/connector/cronledger.db``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError

from connector import kodosumi
from connector.database import connect, database_url, utc_now
from connector.demo import DEMO_CONFIG, FeedSettings, run_demo
from connector.services import SERVICES, list_jobs, pay_jobs, submit_jobs
from connector.worker import DEFAULT_CONFIG, load_intervals, run_worker

# Set by `cronledger run` and the scheduler: the file where a command
# reports how many items it processed.
ENV_ITEMS_FILE = "CRONLEDGER_ITEMS_FILE"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run one command and return the exit status."""
    parser = _parser()
    arguments = parser.parse_args(argv)
    # The connector's own messages at INFO; cronledger's and Alembic's only
    # when they warn.
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("connector").setLevel(logging.INFO)
    try:
        return int(arguments.handler(arguments))
    except (ValueError, SQLAlchemyError) as error:
        print(f"connector: error: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m connector", description=__doc__)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="Run one service's work once and print its items.")
    run.add_argument("service", choices=sorted(SERVICES))
    run.set_defaults(handler=_run)

    worker = commands.add_parser(
        "worker", help="Run payment-checker and kodosumi-status in a loop, recorded from Python."
    )
    worker.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG,
        help="cronledger config file to read the intervals from (default: %(default)s).",
    )
    worker.add_argument("--once", action="store_true", help="Run each service once and exit.")
    worker.set_defaults(handler=_worker)

    demo = commands.add_parser(
        "demo",
        help="Start cronledger up, the worker and a feeder of paid jobs; Ctrl-C stops all.",
    )
    demo.add_argument(
        "--config",
        type=Path,
        default=DEMO_CONFIG,
        help="cronledger config file for up and the worker (default: %(default)s).",
    )
    demo.add_argument(
        "--port",
        type=int,
        help="Dashboard port; 0 takes a free port (default: 8080, or a free port when 8080 "
        "is taken).",
    )
    demo.add_argument(
        "--jobs", type=int, default=2, help="Jobs submitted and paid each time (default: 2)."
    )
    demo.add_argument(
        "--every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="Seconds between two submissions (default: 10).",
    )
    demo.set_defaults(handler=_demo)

    submit = commands.add_parser("submit", help="Submit jobs that wait for their payment.")
    submit.add_argument("--jobs", type=int, default=1, help="Number of jobs (default: 1).")
    submit.add_argument("--flow", help="Flow id from flows.json (default: the first flow).")
    submit.set_defaults(handler=_submit)

    pay = commands.add_parser("pay", help="Mark the payment of jobs as received.")
    target = pay.add_mutually_exclusive_group(required=True)
    target.add_argument("job_ids", nargs="*", type=int, default=[], metavar="JOB_ID")
    target.add_argument("--all", action="store_true", help="Pay every pending job.")
    pay.set_defaults(handler=_pay)

    jobs = commands.add_parser("jobs", help="List the jobs with their state and payment.")
    jobs.set_defaults(handler=_jobs)

    outage = commands.add_parser("outage", help="Switch the simulated Kodosumi outage on or off.")
    outage.add_argument("switch", choices=("on", "off", "status"))
    outage.set_defaults(handler=_outage)
    return parser


def _run(arguments: argparse.Namespace) -> int:
    service = SERVICES[arguments.service]
    engine = connect()
    try:
        items = service.work(engine, utc_now())
    except (ConnectionError, ValueError) as error:
        # One line on stderr: cronledger stores the last lines of stderr as
        # the failed run's error message.
        print(f"{service.name}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()

    items_file = os.environ.get(ENV_ITEMS_FILE)
    if items_file:
        Path(items_file).write_text(f"{items}\n", encoding="ascii")
    print(f"{service.name}: handled {items} items")
    return 0


def _worker(arguments: argparse.Namespace) -> int:
    intervals = load_intervals(arguments.config)
    url = database_url()
    engine = connect(url)
    try:
        asyncio.run(run_worker(engine, url, intervals, once=arguments.once))
    finally:
        engine.dispose()
    return 0


def _demo(arguments: argparse.Namespace) -> int:
    if arguments.jobs < 1:
        raise ValueError(f"invalid --jobs {arguments.jobs}: submit at least 1 job each time")
    if not math.isfinite(arguments.every) or arguments.every <= 0:
        raise ValueError(f"invalid --every {arguments.every:g}: use a number of seconds above 0")
    if arguments.port is not None and not 0 <= arguments.port <= 65535:
        raise ValueError(f"invalid --port {arguments.port}: use 0 to 65535")
    if not arguments.config.is_file():
        raise ValueError(
            f"config file {arguments.config} not found; pass --config with a cronledger.toml file"
        )
    feed = FeedSettings(jobs=arguments.jobs, interval=arguments.every)
    return run_demo(arguments.config.resolve(), arguments.port, feed)


def _submit(arguments: argparse.Namespace) -> int:
    engine = connect()
    job_ids = submit_jobs(engine, arguments.jobs, utc_now(), arguments.flow)
    print(f"submitted jobs {', '.join(map(str, job_ids))}; they await payment")
    return 0


def _pay(arguments: argparse.Namespace) -> int:
    engine = connect()
    paid = pay_jobs(engine, None if arguments.all else arguments.job_ids, utc_now())
    print(f"paid {paid} jobs")
    return 0


def _jobs(arguments: argparse.Namespace) -> int:
    rows = list_jobs(connect())
    if not rows:
        print("no jobs; submit some with: python -m connector submit --jobs 3")
    for row in rows:
        print(f"job {row.id:>4}  flow {row.flow_id:<16} {row.state:<17} payment {row.payment}")
    return 0


def _outage(arguments: argparse.Namespace) -> int:
    if arguments.switch == "on":
        kodosumi.OUTAGE_FILE.touch()
    elif arguments.switch == "off":
        kodosumi.OUTAGE_FILE.unlink(missing_ok=True)
    state = "on" if kodosumi.outage_active() else "off"
    print(f"kodosumi outage is {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
