"""cronledger: record every execution of every periodic job."""

from cronledger.errors import (
    CronledgerError,
    InvalidDatabaseURLError,
    InvalidValueError,
)
from cronledger.schedule import CronSchedule, IntervalSchedule
from cronledger.settings import ServiceSettings
from cronledger.signals import RunTerminated
from cronledger.tracking import CronExecutionLogger, Run, track, tracked

__version__ = "0.1.0"

__all__ = [
    "CronExecutionLogger",
    "CronSchedule",
    "CronledgerError",
    "IntervalSchedule",
    "InvalidDatabaseURLError",
    "InvalidValueError",
    "Run",
    "RunTerminated",
    "ServiceSettings",
    "__version__",
    "track",
    "tracked",
]
