"""The daemon in parts: scheduling, evaluation, rule management, datasource health, wiring.

Each module holds one job of `watchdog run` and receives its collaborators as arguments or
narrow protocols; `watchdog.daemon.Daemon` composes them and owns only the process's lifetime.
"""
