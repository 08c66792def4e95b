"""Run the ``pathlength`` command line as ``python -m pathlength``."""

from pathlength.cli import main

raise SystemExit(main())
