"""metrics-watchdog: evaluates Prometheus-compatible rules, rolls back bad deploys, tells people.

This package root only carries the version; it must not import submodules (keeps `watchdog check`
and the core importable without the shell's dependencies being initialised).
"""

__version__ = "0.1.0"
