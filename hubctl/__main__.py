"""``python -m hubctl``: the same as the ``hubctl`` console script."""

import sys

from hubctl import main

sys.exit(main())
