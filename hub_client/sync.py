"""The blocking Python client of Central Hub, for code that is not async: threaded
servers (Flask, Django), prefork workers (Gunicorn, Celery), scripts.

``hub_client.sync.HubClient`` has every method of the async ``hub_client.HubClient``
with the same names, arguments and models (watches are iterators, handles are
plain context managers); errors, models and option enums are the ones in
``hub_client``. It runs the async client in an event loop on a background thread
of its own, so it is safe to share between threads, and a forked worker gets
its own channel and thread (hub_client/_private/sync_runtime.py says how).
"""

from hub_client._private.sync_client import HubClient
from hub_client._private.sync_runtime import Allocation, CircuitGuard, Registration, WatchIterator

__all__ = ["Allocation", "CircuitGuard", "HubClient", "Registration", "WatchIterator"]
