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


#: distros whose Fast DDS (2.x) reads ``FASTRTPS_DEFAULT_PROFILES_FILE``; Kilted and later (Fast DDS 3) read
#: ``FASTDDS_DEFAULT_PROFILES_FILE`` and warn that the old name is deprecated when it is set
FAST_DDS_2_DISTROS = ("humble", "iron", "jazzy")


def profile_variables(env=None) -> tuple:
    """The environment variables that point Fast DDS at a profile file on this ROS 2 install: always
    ``FASTDDS_DEFAULT_PROFILES_FILE``, plus ``FASTRTPS_DEFAULT_PROFILES_FILE`` for Fast DDS 2 (Jazzy,
    Humble). Fast DDS's own PyPI wheel in this environment decides (``ros-fastrtps``: Fast DDS 2;
    ``ros-fastdds``: Fast DDS 3); without either (a system ROS), ``$ROS_DISTRO``. The one place that tells the
    distros apart."""
    from importlib import metadata

    env = os.environ if env is None else env
    old = None
    for wheel, is_old in (("ros-fastrtps", True), ("ros-fastdds", False)):
        try:
            metadata.version(wheel)
            old = is_old
            break
        except metadata.PackageNotFoundError:
            pass
    if old is None:
        old = env.get("ROS_DISTRO", "").lower() in FAST_DDS_2_DISTROS
    return ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE") if old else \
        ("FASTDDS_DEFAULT_PROFILES_FILE",)


def local_ros_env(log_dir: str, domain_id: int = None, base=None, pythonpath: str = None) -> dict:
    """Environment for ROS 2 processes on one machine (tests, benchmarks, demos).

    Starts from ``base`` (default ``os.environ``) and sets what the PyPI ROS 2 wheels
    need (``../shared/docs/ros2-on-pypi.md``): ``AMENT_PREFIX_PATH`` = this
    interpreter's prefix when unset, discovery limited to localhost, ``ROS_DOMAIN_ID``
    (random in 1..100 unless given, so parallel runs do not see each other),
    ``ROS_LOG_DIR`` = ``log_dir``, and the package's Fast DDS profile
    (``config/fastdds_shm.xml``, 16 MiB shared memory for camera-sized images) under the names this
    distro's Fast DDS reads (:func:`profile_variables`).
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
               **{name: profile for name in profile_variables(env)})
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    return env
