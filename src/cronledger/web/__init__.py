"""The ``cronledger serve`` dashboard: HTML pages, a JSON API and Prometheus metrics."""

from cronledger.web.app import DashboardOptions, create_app
from cronledger.web.server import DashboardServer, is_loopback_host

__all__ = ["DashboardOptions", "DashboardServer", "create_app", "is_loopback_host"]
