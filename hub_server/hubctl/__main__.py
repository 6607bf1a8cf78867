"""``python -m hub_server.hubctl``: the same as ``python -m hubctl``."""

import sys

from hubctl import main

sys.exit(main())
