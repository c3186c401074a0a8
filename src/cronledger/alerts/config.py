"""Alert channels resolved from the config file and the environment.

A channel is an Apprise URL (``mailto://``, ``slack://``, ``json://`` ...).
The URL is kept as written, with ``${VAR}`` references unexpanded, so a
secret taken from the environment is never stored in the outbox. It is
expanded when the config is loaded, to check it, and again at each send.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import timedelta
from urllib.parse import urlsplit, urlunsplit

from cronledger.durations import format_duration
from cronledger.settings import DEFAULT_BLIND_AFTER, ENV_REFERENCE, Config, ConfigError

log = logging.getLogger(__name__)

# blind_after must span this many monitor intervals, or every ordinary wait
# between two passes would look like a monitor that was down.
MIN_INTERVALS_PER_BLIND_AFTER = 3


class MissingVariableError(LookupError):
    """An alert URL refers to an environment variable that is not set."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(
            f"environment variable {name} is not set; export it where cronledger runs, "
            "or write the value into the URL"
        )


def expand_url(url: str, environ: Mapping[str, str]) -> str:
    """Replace each ``${VAR}`` in ``url`` from ``environ``; raise MissingVariableError."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            raise MissingVariableError(name)
        return environ[name]

    return ENV_REFERENCE.sub(value, url)


def mask_url(url: str) -> str:
    """Return an Apprise URL with its secrets hidden, for logs and pages.

    Apprise's privacy form masks passwords and tokens. The query string is
    left out because Apprise adds its own defaults there. A URL that Apprise
    cannot parse keeps only its scheme.
    """
    # Imported here because it takes about 0.2 s, which `cronledger run` need not pay.
    import apprise

    service = apprise.Apprise.instantiate(url)
    if service is None:
        return url.split("://", 1)[0] + "://***"
    private: str = service.url(privacy=True)  # type: ignore[no-untyped-call]
    parts = urlsplit(private)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


@dataclass(frozen=True)
class Channel:
    """One Apprise URL as configured (``url``) and its masked form (``masked``)."""

    url: str
    masked: str

    @property
    def key(self) -> str:
        """A short digest of the URL, part of each outbox row's dedupe key."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class AlertConfig:
    """Resolved alert settings: default channels, per-service overrides and timings."""

    default_channels: tuple[Channel, ...] = ()
    service_channels: Mapping[str, tuple[Channel, ...]] = field(default_factory=dict)
    remind_every: timedelta | None = None
    dashboard_url: str | None = None
    blind_after: timedelta = DEFAULT_BLIND_AFTER

    def channels_for(self, service_name: str | None) -> tuple[Channel, ...]:
        """Return the channels of a service, or the default ones for None."""
        if service_name is not None and service_name in self.service_channels:
            return self.service_channels[service_name]
        return self.default_channels

    @property
    def enabled(self) -> bool:
        """True when at least one channel is configured anywhere."""
        return bool(self.default_channels) or any(self.service_channels.values())


def load_alert_config(config: Config, environ: Mapping[str, str] | None = None) -> AlertConfig:
    """Resolve the [alerts] table and the services' ``alerts`` keys into channels.

    Raises ConfigError, naming the file, the key and the problem, for a
    ``${VAR}`` that is not set or a URL that Apprise does not support.
    """
    # Imported here because it takes about 0.2 s, which `cronledger run` need not pay.
    import apprise

    environ = os.environ if environ is None else environ
    problems: list[str] = []

    def resolve(key: str, urls: tuple[str, ...]) -> tuple[Channel, ...]:
        channels = []
        for index, url in enumerate(urls):
            where = f"{config.path}: {key}[{index}]"
            try:
                expanded = expand_url(url, environ)
            except MissingVariableError as error:
                problems.append(f"{where}: {error}")
                continue
            if apprise.Apprise.instantiate(expanded) is None:
                problems.append(
                    f"{where}: {mask_url(expanded)} is not a URL that Apprise supports; "
                    "see the Apprise documentation for the URL of each service"
                )
                continue
            channels.append(Channel(url, mask_url(expanded)))
        return tuple(channels)

    settings = config.alerts
    default_channels = resolve("alerts.channels", settings.channels)
    service_channels = {
        name: resolve(f"services.{name}.alerts", urls)
        for name, urls in config.service_alerts.items()
    }
    if problems:
        raise ConfigError(config.path, problems)

    return AlertConfig(
        default_channels=default_channels,
        service_channels=service_channels,
        remind_every=settings.remind_every,
        dashboard_url=settings.dashboard_url,
        blind_after=settings.blind_after,
    )


def fit_blind_after(config: AlertConfig, interval: timedelta) -> AlertConfig:
    """Return ``config`` with blind_after raised to at least three monitor intervals."""
    floor = interval * MIN_INTERVALS_PER_BLIND_AFTER
    if config.blind_after >= floor:
        return config
    log.warning(
        "blind_after %s is shorter than %d monitor intervals of %s; using %s",
        format_duration(config.blind_after),
        MIN_INTERVALS_PER_BLIND_AFTER,
        format_duration(interval),
        format_duration(floor),
    )
    return replace(config, blind_after=floor)
