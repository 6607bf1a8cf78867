"""The operators' dashboard: served by the hub itself (``--ui-listen``)."""

from hub_server.ui.server import Dashboard

__all__ = ["Dashboard"]
