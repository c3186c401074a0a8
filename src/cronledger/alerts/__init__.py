"""Alerts: notifications through Apprise when a service's health changes.

``config`` resolves channels from the config file, ``messages`` writes the
text, ``planner`` turns health events into outbox rows once each,
``outbox`` stores and claims them, ``delivery`` sends them, and ``blind``
decides when cronledger itself could not see.
"""

from __future__ import annotations

from cronledger.alerts.config import AlertConfig, Channel, load_alert_config
from cronledger.alerts.outbox import NotificationRecord, recent_notifications

__all__ = [
    "AlertConfig",
    "Channel",
    "NotificationRecord",
    "load_alert_config",
    "recent_notifications",
]
