"""``python -m faithclip ...``: the same command line as the ``faithclip`` script."""

import sys

from faithclip.cli.main import main

sys.exit(main())
