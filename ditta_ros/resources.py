"""Where the package's data folders (``config/``, ``models/``, ``launch/``) live.

In a source checkout they sit beside the ``ditta_ros`` package; after
``pip install .`` (or ``colcon build``) they are installed under
``<prefix>/share/ditta_ros/``. Neither lookup needs ROS.
"""

from __future__ import annotations

import os
import sys

PACKAGE = "ditta_ros"


def share_dir(sub: str) -> str:
    """Absolute path of the data folder ``sub`` (e.g. ``"config"``).

    Order: ``$DITTA_SHARE_DIR/<sub>``, the source checkout, ``<sys.prefix>/share/ditta_ros``,
    then each ``$AMENT_PREFIX_PATH`` entry's ``share/ditta_ros``.

    Raises:
        FileNotFoundError: none of them has ``sub`` (the message lists where it looked).
    """
    candidates = []
    if os.environ.get("DITTA_SHARE_DIR"):
        candidates.append(os.path.join(os.environ["DITTA_SHARE_DIR"], sub))
    candidates.append(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), sub))
    candidates.append(os.path.join(sys.prefix, "share", PACKAGE, sub))
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidates.append(os.path.join(prefix, "share", PACKAGE, sub))
    for c in candidates:
        if os.path.isdir(c):
            return c
    raise FileNotFoundError(f"ditta_ros data folder {sub!r} not found; looked in: " + ", ".join(candidates))


def local_ros_env(log_dir: str, domain_id: int = None, base=None, pythonpath: str = None) -> dict:
    """Environment for ROS 2 processes on one machine (tests, benchmarks, demos).

    Starts from ``base`` (default ``os.environ``) and sets what the PyPI ROS 2 wheels
    need (``../shared/docs/ros2-on-pypi.md``): ``AMENT_PREFIX_PATH`` = this
    interpreter's prefix when unset, discovery limited to localhost, ``ROS_DOMAIN_ID``
    (random in 1..100 unless given, so parallel runs do not see each other),
    ``ROS_LOG_DIR`` = ``log_dir``, and the package's Fast DDS profile
    (``config/fastdds_shm.xml``, 16 MiB shared memory for camera-sized images).
    ``pythonpath`` is prepended to ``PYTHONPATH`` (e.g. a source checkout).

    Raises:
        FileNotFoundError: the package's ``config`` folder is not found.
    """
    import random

    env = dict(os.environ if base is None else base)
    profile = os.path.join(share_dir("config"), "fastdds_shm.xml")
    env.setdefault("AMENT_PREFIX_PATH", sys.prefix)
    env.update(ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", ROS_LOG_DIR=str(log_dir),
               ROS_DOMAIN_ID=str(domain_id if domain_id is not None else random.randint(1, 100)),
               FASTDDS_DEFAULT_PROFILES_FILE=profile)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return env
