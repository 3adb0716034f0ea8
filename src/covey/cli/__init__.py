"""The ``covey`` command line: operate a cluster's storage from a shell.

Every command reads the same ``COVEY_*`` settings as the runtime
(``COVEY_DATABASE_URL`` first), so it points at the same database as the pods.
"""

from covey.cli._main import info_table, main

__all__ = ["info_table", "main"]
