"""Rollup figures of the statistics kept between calls, each checked against its service's version.

The statistics of 1,000 services over a week read some 30,000 rollup rows
and 300,000 duration-bin rows, yet between two calls a few seconds apart
only the services that ran since have different figures. On PostgreSQL the
trigger adds every change to all granularities at once, so it updates a
service's all-time rollup row whenever any of its rollups or bins changes.
Each update gives that row a new ``xmin``, the id of the transaction that
wrote it.
That id, with the all-time figures beside it, is the service's version. A
cached entry is used only while its version is still the row's, so the
figures stay exactly what the rollups say; only services whose version
moved are read again.

Entries hold the part of a window that the rollups cover (whole days and
hours). The raw rows at the window's edges change as the window slides and
are read on every call.

NOTE: SQLite has no ``xmin``; its statistics are read without this cache.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, literal_column, select

from cronledger.store.tables import cron_rollups

# Windows kept per engine. The dashboard uses four; a sliding window gets a
# new key each hour, and the least recently used key goes first.
MAX_WINDOWS = 8

Version = tuple[object, ...]
# Runs started (in progress), completed, failed, timed out; items; duration
# count, sum and maximum (None without a duration), as the statistics add them.
Figures = tuple[int, int, int, int, int, int, int, int | None]


@dataclass(frozen=True, slots=True)
class BucketFigures:
    """One service's figures within the rollup part of one window.

    ``figures`` is None when no rollup row of the service falls in the
    window. ``bins`` and ``counts`` are its duration bins in
    ascending order with their runs (None when percentiles were not read).
    """

    figures: Figures | None
    bins: tuple[int, ...] | None
    counts: tuple[int, ...] | None


class BucketCache:
    """Cached ``BucketFigures`` per window key and service, for one engine."""

    def __init__(self, max_windows: int = MAX_WINDOWS) -> None:
        self.max_windows = max_windows
        self._windows: OrderedDict[Hashable, dict[str, tuple[Version, BucketFigures]]]
        self._windows = OrderedDict()
        self._lock = threading.Lock()

    def lookup(
        self, key: Hashable, versions: dict[str, Version], need_bins: bool
    ) -> tuple[dict[str, BucketFigures], list[str]]:
        """Split services into those with a current entry and those to read again."""
        with self._lock:
            entries = self._windows.get(key)
            if entries is not None:
                self._windows.move_to_end(key)
        found: dict[str, BucketFigures] = {}
        stale: list[str] = []
        for name, version in versions.items():
            entry = entries.get(name) if entries is not None else None
            if entry is None or entry[0] != version or (need_bins and entry[1].bins is None):
                stale.append(name)
            else:
                found[name] = entry[1]
        return found, stale

    def store(
        self, key: Hashable, versions: dict[str, Version], read: dict[str, BucketFigures]
    ) -> None:
        """Keep ``read``, each under the version that was current before it was read."""
        with self._lock:
            entries = self._windows.setdefault(key, {})
            self._windows.move_to_end(key)
            for name, figures in read.items():
                entries[name] = (versions[name], figures)
            # A service missing from versions has no rollups any more.
            for name in [name for name in entries if name not in versions]:
                del entries[name]
            while len(self._windows) > self.max_windows:
                self._windows.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._windows.clear()


_caches: weakref.WeakKeyDictionary[Engine, BucketCache] = weakref.WeakKeyDictionary()
_caches_lock = threading.Lock()


def cache_for(engine: Engine) -> BucketCache:
    """Return the cache of ``engine``, made on first use and dropped with the engine."""
    with _caches_lock:
        cache = _caches.get(engine)
        if cache is None:
            cache = _caches[engine] = BucketCache()
        return cache


def forget(engine: Engine | None = None) -> None:
    """Drop the cached figures of ``engine``, or of every engine."""
    with _caches_lock:
        if engine is None:
            caches = list(_caches.values())
        else:
            found = _caches.get(engine)
            caches = [found] if found is not None else []
    for cache in caches:
        cache.clear()


def read_versions(connection: Connection, names: Iterable[str] | None) -> dict[str, Version]:
    """Return each service's version: its all-time rollup row's xmin and figures.

    Read this before the figures it guards: a change between the two reads
    then leaves an entry whose version is already old, which is read again
    next time, never the reverse.
    """
    rollups = cron_rollups.c
    query = select(
        rollups.service_name,
        literal_column("xmin::text"),
        rollups.started_count,
        rollups.completed_count,
        rollups.failed_count,
        rollups.timed_out_count,
        rollups.items_sum,
        rollups.duration_count,
        rollups.duration_sum_ms,
        rollups.duration_max_ms,
    ).where(rollups.granularity == "all")
    if names is not None:
        query = query.where(rollups.service_name.in_(list(names)))
    return {row[0]: tuple(row[1:]) for row in connection.execute(query).all()}
