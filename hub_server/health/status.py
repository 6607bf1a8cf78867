"""The health status of an instance, as the pure domain sees it."""

from __future__ import annotations

from enum import IntEnum


class HealthStatus(IntEnum):
    """Health of one instance.

    The values equal the ``aitrading.hub.v1.HealthStatus`` proto numbers, so the
    API layer converts with ``HealthStatus(number)`` and ``int(status)``.
    """

    UNKNOWN = 0  # no status at all (HEALTH_STATUS_UNSPECIFIED)
    HEALTHY = 1
    DEGRADED = 2
    UNHEALTHY = 3
    STARTING = 4  # has a check, not yet proven either way
