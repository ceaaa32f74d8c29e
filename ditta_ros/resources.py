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
