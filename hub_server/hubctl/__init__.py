"""The old home of hubctl, kept so ``python -m hub_server.hubctl`` and
``from hub_server.hubctl import main`` still work: hubctl is the top-level package
``hubctl`` now."""

from hubctl import main, run

__all__ = ["main", "run"]
