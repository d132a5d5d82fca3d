"""`python -m watchdog` runs the command line; nothing else lives here."""

from watchdog.cli import main

raise SystemExit(main())
