"""hubctl: the operator's command line for Central Hub.

``hubctl services list``, ``hubctl services watch``, ``hubctl health``,
``hubctl pick SERVICE``, ``hubctl circuits show SERVICE``, ``hubctl cluster status``,
``hubctl config get TENANT``, ``hubctl tenants list``, ``hubctl usage TENANT``,
``hubctl alerts watch``, ``hubctl audit --since 1h``, ``hubctl errors``,
``hubctl metrics`` and more; ``--output json`` for scripts; ``hubctl --help`` for
the rest.

Commands live in a table (``hubctl.app.command``); a new group is a
``group(...)`` call and one decorated async function per verb.

It talks to the hub through hub_client's public API only, never the server's code
(pyproject.toml's import-linter contracts hold it to that).
"""

from hubctl.app import main, run

__all__ = ["main", "run"]
