"""Describe what a config reload changed, one line per service, for the log."""

from __future__ import annotations

from dataclasses import fields

from cronledger.settings import Config, JobSettings


def describe_changes(old: Config, new: Config) -> list[str]:
    """Return one sentence per added, removed or changed service and scheduler setting."""
    changes: list[str] = []
    for name in new.services:
        if name not in old.services:
            kind = "job" if name in new.jobs else "service"
            changes.append(f"{kind} {name} added")
    for name in old.services:
        if name not in new.services:
            changes.append(f"service {name} removed; a run in progress finishes")

    for name, settings in new.services.items():
        if name not in old.services:
            continue
        changed = _changed_fields(old.services[name], settings)
        changed += _changed_job_fields(old.jobs.get(name), new.jobs.get(name))
        if changed:
            changes.append(f"service {name} changed: {', '.join(changed)}")

    if old.scheduler != new.scheduler:
        changed = _changed_fields(old.scheduler, new.scheduler)
        changes.append(f"[scheduler] changed: {', '.join(changed)}")
    if not changes:
        changes.append("no changes")
    return changes


def _changed_fields(old: object, new: object) -> list[str]:
    return [
        item.name
        for item in fields(old)  # type: ignore[arg-type]
        if getattr(old, item.name) != getattr(new, item.name)
    ]


def _changed_job_fields(old: JobSettings | None, new: JobSettings | None) -> list[str]:
    if old is None and new is None:
        return []
    if old is None:
        return ["now runs a job"]
    if new is None:
        return ["no longer runs a job"]
    return [name for name in _changed_fields(old, new) if name != "service_name"]
