"""Container logs on the appliance: stdout and stderr per VM as timestamped lines.

See ``vspc.containerlogs.store`` (the store and its API), ``vspc.core.linelog``
(the framer and the record format) and ``vspc.containerlogs.files`` (reading).
"""

from vspc.containerlogs.follow import Follower, FollowLagged
from vspc.containerlogs.store import ContainerLogs, ContainerLogSettings, TooManyFollowers
from vspc.core.linelog import LogLine, Stream

__all__ = [
    "ContainerLogSettings",
    "ContainerLogs",
    "FollowLagged",
    "Follower",
    "LogLine",
    "Stream",
    "TooManyFollowers",
]
