"""Where ditta_ros keeps its files: one home, every cache folder derived from it.

``HOME`` (``~/.cache/ditta``, or ``$DITTA_HOME`` at run time for the model weights of
:mod:`ditta_ros.registry`) holds

* ``models/<name>/`` -- fetched weights (:func:`ditta_ros.registry.fetch`);
* ``export/<model>_<H>x<W>/`` -- exported ONNX graphs (:mod:`ditta_ros.runtime.export_cache`);
* ``engines/<model>_<H>x<W>/`` -- TensorRT engines and timing caches, OpenVINO's compiled
  models under ``engines/openvino`` (:mod:`ditta_ros.runtime`);
* ``adapted/`` -- adaptations saved by the node (:mod:`ditta_ros.checkpoint`).

The defaults are written unexpanded (``~``) so that they read the same in a parameter
table; callers expand them with :func:`os.path.expanduser`.
"""

from __future__ import annotations

import os

#: the cache root when ``$DITTA_HOME`` is not set
HOME = "~/.cache/ditta"
#: exported graphs (the node's ``export_dir`` default)
EXPORT_DIR = HOME + "/export"
#: TensorRT engines and OpenVINO compiled models (the node's ``engine_cache`` default)
ENGINE_CACHE = HOME + "/engines"
#: adaptations saved by the node (its ``checkpoint_dir`` default)
CHECKPOINT_DIR = HOME + "/adapted"


def ditta_home() -> str:
    """The cache root, expanded: ``$DITTA_HOME``, default :data:`HOME`."""
    return os.path.expanduser(os.environ.get("DITTA_HOME", HOME))
