"""What covey's backends and runners build with; not for applications.

:class:`GroupCommit` batches concurrent writes of one backend into one
transaction (each caller still gets its own result); :func:`overwrite` writes a
state key whatever its version (the runners' periodic reports). Everything an
application or a new backend writes against is in :mod:`covey.storage`.
"""

from covey.storage._group_commit import GroupCommit
from covey.storage._overwrite import overwrite

__all__ = ["GroupCommit", "overwrite"]
