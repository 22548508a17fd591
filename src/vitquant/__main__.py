"""``python -m vitquant`` is the ``vitquant`` command."""

import sys

from vitquant.cli import main

sys.exit(main())
