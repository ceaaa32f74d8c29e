"""Video inputs as random-access clips: clip folders, video files, VSPW videos.

* **clip folder** (the project's labelled-clip format): ``frames/NNNNNN.png|jpg``,
  optional ``labels/NNNNNN.png`` (uint8 class ids, ``ignore_index`` = 255), and
  ``clip.yaml`` with ``fps``, ``label_set``, ``ignore_index``, ``classes``.
  Labels may be missing for some or all frames.
* **video file**: anything OpenCV decodes (mp4, avi, ...); no labels.
* **VSPW video**: ``<video>/origin/*.jpg`` + ``<video>/mask/*.png``; label = raw - 1
  with raw 0 ("others") and 255 ignored (VSPW benchmark semantics), label set ``vspw124``.

Every clip yields frames as ``[H, W, 3]`` uint8 RGB and labels as ``[H, W]`` uint8.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import List, Optional

import numpy as np

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")


class ClipError(ValueError):
    """A clip that cannot be read (missing folder, unreadable frame, odd label)."""


class Clip:
    """Base: ``len(clip)`` frames, ``clip.frame(i)``, ``clip.label(i)``."""

    name: str = ""
    fps: float = 30.0
    label_set: Optional[str] = None
    classes: Optional[List[str]] = None
    ignore_index: int = 255

    def __len__(self) -> int:  # pragma: no cover
        raise NotImplementedError

    def frame(self, i: int) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def label(self, i: int) -> Optional[np.ndarray]:
        return None

    def limit(self, max_frames: Optional[int]) -> "Clip":
        """This clip restricted to its first ``max_frames`` frames (in place)."""
        if max_frames is not None:
            if max_frames < 1:
                raise ValueError("max_frames must be >= 1")
            self._limit = min(int(max_frames), len(self))
        return self


def _read_rgb(path: str) -> np.ndarray:
    import cv2

    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ClipError(f"cannot decode image {path}")
    return np.ascontiguousarray(img[:, :, ::-1])


def _read_label(path: str) -> np.ndarray:
    import cv2

    lab = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if lab is None:
        raise ClipError(f"cannot decode label image {path}")
    if lab.ndim == 3:
        raise ClipError(f"label image {path} has {lab.shape[2]} channels; expected a single-channel class-id PNG")
    if lab.dtype != np.uint8:
        if lab.max() > 255:
            raise ClipError(f"label image {path} has ids > 255")
        lab = lab.astype(np.uint8)
    return lab


class FolderClip(Clip):
    """A clip folder (see module docstring)."""

    def __init__(self, root: str):
        import yaml

        self.root = root
        fdir = os.path.join(root, "frames")
        if not os.path.isdir(fdir):
            raise ClipError(f"{root} is not a clip folder: no frames/ directory")
        self.frames = sorted(f for f in os.listdir(fdir) if f.lower().endswith(IMAGE_EXTS))
        if not self.frames:
            raise ClipError(f"{fdir} holds no images")
        meta = {}
        if os.path.isfile(os.path.join(root, "clip.yaml")):
            with open(os.path.join(root, "clip.yaml")) as f:
                meta = yaml.safe_load(f) or {}
        self.name = str(meta.get("name") or os.path.basename(os.path.normpath(root)))
        self.fps = float(meta.get("fps", 30.0))
        self.label_set = meta.get("label_set")
        self.classes = meta.get("classes")
        self.ignore_index = int(meta.get("ignore_index", 255))
        self._limit = len(self.frames)

    def __len__(self):
        return self._limit

    def _check(self, i):
        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range 0..{len(self) - 1}")

    def frame(self, i):
        self._check(i)
        return _read_rgb(os.path.join(self.root, "frames", self.frames[i]))

    def label_path(self, i) -> Optional[str]:
        stem = os.path.splitext(self.frames[i])[0]
        p = os.path.join(self.root, "labels", stem + ".png")
        return p if os.path.isfile(p) else None

    def label(self, i):
        self._check(i)
        p = self.label_path(i)
        if p is None:
            return None
        return self._convert_label(_read_label(p))

    def _convert_label(self, lab: np.ndarray) -> np.ndarray:
        """Stored label -> class ids with 255 = ignore."""
        if self.ignore_index != 255:
            lab = np.where(lab == self.ignore_index, 255, lab).astype(np.uint8)
        return lab


class VSPWClip(FolderClip):
    """One VSPW video folder (``origin/`` + ``mask/``)."""

    def __init__(self, root: str):
        self.root = root
        self.frames = sorted(f for f in os.listdir(os.path.join(root, "origin")) if f.lower().endswith(IMAGE_EXTS))
        if not self.frames:
            raise ClipError(f"{root}/origin holds no images")
        self.name = os.path.basename(os.path.normpath(root))
        self.fps = 15.0
        self.label_set = "vspw124"
        self.classes = None
        self.ignore_index = 255
        self._limit = len(self.frames)

    def frame(self, i):
        self._check(i)
        return _read_rgb(os.path.join(self.root, "origin", self.frames[i]))

    def label_path(self, i):
        p = os.path.join(self.root, "mask", os.path.splitext(self.frames[i])[0] + ".png")
        return p if os.path.isfile(p) else None

    def _convert_label(self, lab):
        return vspw_label(lab)


def vspw_label(raw: np.ndarray) -> np.ndarray:
    """VSPW mask -> class ids: ``raw - 1``; raw 0 (others) and 255 become 255 (ignore)."""
    raw = raw.astype(np.int16)
    out = raw - 1
    out[(raw == 0) | (raw == 255)] = 255
    return out.astype(np.uint8)


class VideoClip(Clip):
    """A video file decoded with OpenCV; decoded frames are cached (LRU, ``cache`` frames)
    and re-decoded by seeking when evicted."""

    def __init__(self, path: str, cache: int = 64):
        import cv2

        cap = cv2.VideoCapture(path)
        if not cap.isOpened():
            raise ClipError(f"cannot open video {path}")
        self.path = path
        self.name = os.path.splitext(os.path.basename(path))[0]
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 30.0)
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self._cap = cap
        self._next = 0
        self._cache: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._cache_size = cache
        if count <= 0:  # container without a frame count: decode once to count
            count = 0
            while cap.grab():
                count += 1
            cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self._count = count
        self._limit = count

    def __len__(self):
        return self._limit

    def frame(self, i):
        import cv2

        if not 0 <= i < len(self):
            raise IndexError(f"frame {i} out of range 0..{len(self) - 1}")
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        if i != self._next:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            self._next = i
        ok, img = self._cap.read()
        if not ok or img is None:
            raise ClipError(f"{self.path}: cannot decode frame {i}")
        self._next = i + 1
        rgb = np.ascontiguousarray(img[:, :, ::-1])
        self._cache[i] = rgb
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return rgb


class StridedClip(Clip):
    """Every ``stride``-th frame of ``clip`` (its frames 0, stride, 2 stride, ...) with their labels:
    what a node that processes ``clip.fps / stride`` frames a second sees of the stream. ``fps`` is
    ``clip.fps / stride`` (a frame interval of ``stride / clip.fps`` s); the name gets ``_s<stride>``.

    Raises:
        ValueError: ``stride`` < 1.
    """

    def __init__(self, clip: Clip, stride: int):
        if int(stride) < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.base, self.stride = clip, int(stride)
        self.name = f"{clip.name}_s{self.stride}"
        self.fps = clip.fps / self.stride
        self.label_set, self.classes, self.ignore_index = clip.label_set, clip.classes, clip.ignore_index

    def __len__(self):
        return (len(self.base) + self.stride - 1) // self.stride

    def frame(self, i):
        return self.base.frame(i * self.stride)

    def label(self, i):
        return self.base.label(i * self.stride)


def open_clip(path: str, max_frames: Optional[int] = None, stride: int = 1) -> Clip:
    """Open a clip folder, a VSPW video folder or a video file; its first ``max_frames`` frames, then
    every ``stride``-th of them (:class:`StridedClip`; 1: all).

    Raises:
        ClipError: the path does not exist or is none of the supported layouts.
        ValueError: ``max_frames`` or ``stride`` < 1.
    """
    if not os.path.exists(path):
        raise ClipError(f"clip not found: {path}")
    if os.path.isfile(path):
        clip: Clip = VideoClip(path)
    elif os.path.isdir(os.path.join(path, "frames")):
        clip = FolderClip(path)
    elif os.path.isdir(os.path.join(path, "origin")):
        clip = VSPWClip(path)
    else:
        raise ClipError(f"{path} is neither a clip folder (frames/), a VSPW video (origin/) nor a video file")
    clip = clip.limit(max_frames)
    return StridedClip(clip, stride) if int(stride) != 1 else clip
