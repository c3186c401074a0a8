"""Statistics kept between calls, each entry checked against its service's version.

The statistics of 1,000 services over a week read some 30,000 rollup rows
and 300,000 duration-bin rows, yet between two calls a few seconds apart
only the services that ran since have different figures. On PostgreSQL the
trigger adds every change to all granularities at once, so it updates a
service's all-time rollup row whenever any of its rollups or bins changes.
Each update gives that row a new ``xmin``, the id of the transaction that
wrote it. That id is the service's version (``read_versions`` adds the
row's figures). A cached entry is used only while its version is still the
row's, so the figures stay exactly what the rollups say. Only services
whose version moved are read again. A ``cron_services`` row has its own
``xmin`` as version, which settings changes move too.

A window's entries hold the part the rollups cover (whole days and hours),
the raw rows of each partial hour at its edges, the service rows, and each
service's last result with the inputs it was built from. The trigger also bumps
the version on every insert and on every update that changes a run's
service, start, status, items or duration. So the raw rows of an hour stay
current under the same check, and each call slices them at the window's
bounds.

Deleting a run does not change the rollups, so ``cronledger prune`` gives
each service it deleted runs of a new version itself. NOTE: runs deleted by
hand do not change the version. They still count in cached edge rows until
their service changes, as they still count in the rollups.

NOTE: SQLite has no ``xmin``; its statistics are read without this cache.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import Connection, Engine, Select, literal_column, select

from cronledger.store.tables import cron_rollups, cron_services

# Windows kept per engine. The dashboard uses four; a sliding window gets a
# new key each hour, and the least recently used key goes first.
MAX_WINDOWS = 8

# A row's xmin, alone or with the figures beside it: compared, never ordered.
Version = Hashable
T = TypeVar("T")
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


@dataclass(slots=True)
class _Window:
    """The entries of one window key: versioned entries per part, and the last results built."""

    # Per part of the window (its rollup buckets, or one hour of raw rows at
    # an edge): each service's entry under the version it was read at.
    parts: dict[Hashable, dict[str, tuple[Version, Any]]] = field(default_factory=dict)
    # Per percentiles flag: each service's result with the inputs it was built from.
    results: dict[bool, dict[str, tuple[Hashable, object]]] = field(default_factory=dict)


class BucketCache:
    """Cached figures per window key, part and service, for one engine."""

    def __init__(self, max_windows: int = MAX_WINDOWS) -> None:
        self.max_windows = max_windows
        self._windows: OrderedDict[Hashable, _Window] = OrderedDict()
        self._lock = threading.Lock()

    def lookup(
        self, key: Hashable, part: Hashable, versions: dict[str, Version]
    ) -> tuple[dict[str, T], list[str]]:
        """Split services into those with a current entry and those to read again."""
        with self._lock:
            window = self._windows.get(key)
            if window is not None:
                self._windows.move_to_end(key)
        entries = window.parts.get(part) if window is not None else None
        if not entries:
            return {}, list(versions)

        found: dict[str, T] = {}
        stale: list[str] = []
        # Bound once: this loop runs for every service on every call.
        get, keep, defer = entries.get, found.__setitem__, stale.append
        for name, version in versions.items():
            entry = get(name)
            if entry is not None and entry[0] == version:
                keep(name, entry[1])
            else:
                defer(name)
        return found, stale

    def store(
        self, key: Hashable, part: Hashable, versions: dict[str, Version], read: dict[str, T]
    ) -> None:
        """Keep ``read``, each under the version that was current before it was read."""
        with self._lock:
            entries = self._window(key).parts.setdefault(part, {})
            for name, value in read.items():
                entries[name] = (versions[name], value)
            # A service missing from versions has no rollups any more.
            for name in [name for name in entries if name not in versions]:
                del entries[name]

    def fetch(
        self,
        key: Hashable,
        part: Hashable,
        versions: dict[str, Version],
        read: Callable[[str | Sequence[str] | None], dict[str, T]],
        *,
        service_name: str | None = None,
        missing: T | None = None,
    ) -> dict[str, T]:
        """Return every service's current entry, reading the stale ones with ``read``.

        ``read`` gets the names to read (``service_name`` when only that one
        is requested, or None for all services) and returns the entries it
        found. A stale service it did not find gets ``missing``, if given.
        """
        found: dict[str, T]
        found, stale = self.lookup(key, part, versions)
        if not stale:
            return found
        # Past half of the services, one pass over all of them beats a filter.
        names: str | Sequence[str] | None = service_name
        if service_name is None and len(stale) * 2 <= len(versions):
            names = stale
        fresh = read(names)
        if missing is not None:
            for name in stale:
                fresh.setdefault(name, missing)
        # Services that appeared after the versions were read count in this
        # call but wait for the next one to be kept.
        self.store(key, part, versions, {name: fresh[name] for name in fresh if name in versions})
        found.update(fresh)
        return found

    def results(self, key: Hashable, percentiles: bool) -> dict[str, tuple[Hashable, object]]:
        """Return the results kept by ``keep_results``, each with its inputs."""
        with self._lock:
            window = self._windows.get(key)
            return window.results.get(percentiles, {}) if window is not None else {}

    def keep_results(
        self, key: Hashable, percentiles: bool, results: dict[str, tuple[Hashable, object]]
    ) -> None:
        """Keep each service's result with the inputs it was built from, for the next call.

        A result is reused only while all its inputs compare equal, so it
        needs no version of its own.
        """
        with self._lock:
            self._window(key).results[percentiles] = results

    def _window(self, key: Hashable) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        self._windows.move_to_end(key)
        while len(self._windows) > self.max_windows:
            self._windows.popitem(last=False)
        return window

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
    return {row[0]: tuple(row[1:]) for row in connection.execute(_versions_query(names)).all()}


class States(NamedTuple):
    """The versions and all-time figures of every service, read before the figures they guard."""

    # The xmin of each service's all-time rollup row: its version.
    versions: dict[str, Version]
    # That row's figures: runs started, completed, failed and timed out,
    # items, and duration count, sum and maximum.
    all_time: dict[str, tuple[Any, ...]]
    # The xmin of each service's cron_services row.
    row_versions: dict[str, Version]


def read_states(connection: Connection, names: Iterable[str] | None) -> States:
    """Return each service's version, all-time figures and cron_services row version.

    The versions here are the xmin alone, a short string that compares fast:
    any update of a row gives it a new xmin, and the same id returns only
    after some four billion transactions. The trigger updates the
    cron_services row on a run's change, and settings (a new display name,
    say) update it too.
    """
    query = _states_query() if names is None else _build_states_query(list(names))
    states = States({}, {}, {})
    for row in connection.execute(query).all():
        name = row[0]
        if name is not None:
            states.versions[name] = row[1]
            states.all_time[name] = tuple(row[2:10])
        if row[10] is not None:
            states.row_versions[row[10]] = row[11]
    return states


@functools.cache
def _states_query() -> Select[Any]:
    # Built once: constructing the joined subqueries took about 0.5 ms of a
    # call that otherwise takes 6 ms when nothing changed.
    return _build_states_query(None)


def _build_states_query(names: list[str] | None) -> Select[Any]:
    versions = _versions_query(names).subquery("all_time")
    services = cron_services.c
    rows = select(services.name, literal_column("xmin::text").label("row_version"))
    if names is not None:
        rows = rows.where(services.name.in_(names))
    service_rows = rows.subquery("service_rows")
    return select(*versions.c, service_rows.c.name, service_rows.c.row_version).select_from(
        versions.join(service_rows, service_rows.c.name == versions.c.service_name, full=True)
    )


def _versions_query(names: Iterable[str] | None) -> Select[Any]:
    rollups = cron_rollups.c
    query = select(
        rollups.service_name,
        literal_column("xmin::text").label("version"),
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
    return query
