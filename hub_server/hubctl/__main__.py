"""``python -m hub_server.hubctl``: the same as the ``hubctl`` console script."""

import sys

from hub_server.hubctl import main

sys.exit(main())
