"""Segmentation metrics with VSPW / official DiTTA semantics (``ditta/metrics.py``).

* :class:`ConfusionMatrix` -- accumulated over every evaluated frame; ``miou``
  averages the IoU over the classes that occur in the ground truth seen so far
  (not over all classes); ``wiou`` is the frequency-weighted IoU.
* :func:`video_consistency` -- mVC_n for one clip: for every window of ``n``
  consecutive evaluated frames, the fraction of pixels whose prediction stays
  constant among the pixels whose ground truth stays constant; NaN for a window
  with no constant ground truth; ``nanmean`` over windows. As in the VSPW
  benchmark code and the official DiTTA code, windows start at ``i = 0 ..
  N - n - 1`` (``range(N - n)``: the last possible window is not used) and the
  ground-truth constancy includes ignore pixels (255 == 255 counts as constant).

All public figures are fractions in [0, 1]; the CLI reports percentages.
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Sequence

import numpy as np

IGNORE_INDEX = 255


class ConfusionMatrix:
    """Running ``C x C`` confusion matrix (rows: ground truth, columns: prediction).

    Args:
        num_classes: number of evaluated classes ``C``; ground-truth values outside
            ``0..C-1`` (e.g. 255) are ignored.

    A prediction outside ``0..C-1`` (a source class the label mapping leaves
    unmapped) counts as a miss for its ground-truth class and as a hit for none:
    it is kept in ``unmapped`` ``[C]`` and enlarges that class's union.
    """

    def __init__(self, num_classes: int):
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = int(num_classes)
        self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)
        self.unmapped = np.zeros(self.num_classes, dtype=np.int64)

    def add(self, pred: np.ndarray, label: np.ndarray) -> None:
        """Accumulate one frame.

        Args:
            pred: ``[H, W]`` integer class ids.
            label: ``[H, W]`` integer ground truth, ignore outside ``0..C-1``.

        Raises:
            ValueError: shapes differ.
        """
        pred = np.asarray(pred)
        label = np.asarray(label)
        if pred.shape != label.shape:
            raise ValueError(f"prediction {pred.shape} and label {label.shape} differ in shape")
        c = self.num_classes
        lab = label.astype(np.int64, copy=False).ravel()
        prd = pred.astype(np.int64, copy=False).ravel()
        valid = (lab >= 0) & (lab < c)
        lab, prd = lab[valid], prd[valid]
        prd = np.where((prd >= 0) & (prd < c), prd, c)  # column c = unmapped
        frame = np.bincount(lab * (c + 1) + prd, minlength=c * (c + 1)).reshape(c, c + 1)
        self.matrix += frame[:, :c]
        self.unmapped += frame[:, c]

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add another matrix of the same size (e.g. one clip into a data-set total)."""
        self.matrix += other.matrix
        self.unmapped += other.unmapped

    def iou(self) -> np.ndarray:
        """Per-class IoU, float ``[C]``; NaN for a class absent from both ground
        truth and prediction."""
        return iou_from_confusion(self.matrix, self.unmapped)

    def gt_pixels(self) -> np.ndarray:
        """int ``[C]``: ground-truth pixels per class."""
        return self.matrix.sum(1) + self.unmapped

    def miou(self) -> float:
        """Mean IoU over the classes present in the ground truth (official semantics)."""
        present = self.gt_pixels() > 0
        if not present.any():
            return float("nan")
        return float(np.nan_to_num(self.iou()[present]).mean())

    def wiou(self) -> float:
        """Frequency-weighted IoU: ``sum_c freq_c IoU_c`` with ``freq_c`` the share of
        ground-truth pixels of class ``c``."""
        gt = self.gt_pixels()
        total = gt.sum()
        if total == 0:
            return float("nan")
        return float((gt / total * np.nan_to_num(self.iou())).sum())

    def pixel_accuracy(self) -> float:
        """Fraction of valid ground-truth pixels predicted correctly."""
        total = self.gt_pixels().sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def iou_from_confusion(matrix: np.ndarray, extra_misses=None) -> np.ndarray:
    """IoU per class from a ``C x C`` confusion matrix (rows = ground truth).

    ``extra_misses`` (``[C]``, optional) counts ground-truth pixels whose prediction
    lay outside the label set: they enlarge the union of their row's class only.
    """
    inter = np.diag(matrix).astype(np.float64)
    gt = matrix.sum(1).astype(np.float64)
    if extra_misses is not None:
        gt = gt + extra_misses
    union = gt + matrix.sum(0) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def frame_miou(pred: np.ndarray, label: np.ndarray, num_classes: int) -> float:
    """mIoU of a single frame (classes present in that frame's ground truth)."""
    cm = ConfusionMatrix(num_classes)
    cm.add(pred, label)
    return cm.miou()


def video_consistency(preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], n: int) -> float:
    """mVC_n of one clip (see module docstring for the exact window semantics).

    Args:
        preds: ``N`` prediction maps ``[H, W]`` in temporal order.
        labels: ``N`` ground-truth maps ``[H, W]`` (same frames).
        n: window length (8 or 16 in the paper).

    Returns:
        fraction in [0, 1], or NaN when the clip has no window (``N <= n``) or no
        window has a constant ground-truth pixel.
    """
    if len(preds) != len(labels):
        raise ValueError(f"{len(preds)} predictions for {len(labels)} labels")
    scores = consistency_windows(preds, labels, n)
    if not scores or np.all(np.isnan(scores)):
        return float("nan")
    return float(np.nanmean(scores))


def consistency_windows(preds: Sequence[np.ndarray], labels: Sequence[np.ndarray], n: int) -> List[float]:
    """Per-window consistency scores behind :func:`video_consistency` (NaN where the
    window has no constant ground-truth pixel)."""
    if n < 2:
        raise ValueError("window length n must be >= 2")
    count = len(labels)
    # same-as-next masks, computed once and reused by every window
    gt_same = [labels[i] == labels[i + 1] for i in range(count - 1)]
    pr_same = [preds[i] == preds[i + 1] for i in range(count - 1)]
    scores: List[float] = []
    for i in range(count - n):
        gt_const = np.logical_and.reduce(gt_same[i:i + n - 1])
        pr_const = np.logical_and.reduce(pr_same[i:i + n - 1])
        denom = int(gt_const.sum())
        scores.append(float((gt_const & pr_const).sum() / denom) if denom else float("nan"))
    return scores


def summarize(cm: ConfusionMatrix, preds: Sequence[np.ndarray], labels: Sequence[np.ndarray],
              windows: Iterable[int] = (8, 16)) -> Dict[str, float]:
    """The paper's table row, in percent: ``mIoU``, ``wIoU``, ``mVC{n}`` for each ``n``."""
    out = {"mIoU": 100 * cm.miou(), "wIoU": 100 * cm.wiou()}
    for n in windows:
        out[f"mVC{n}"] = 100 * video_consistency(preds, labels, n)
    return out


def label_flips(labels: Sequence[np.ndarray]) -> np.ndarray:
    """Per-frame label flips of a prediction sequence (no ground truth needed).

    ``flips[i]`` is the fraction of pixels whose predicted class differs between
    frames ``i-1`` and ``i`` (float64 in [0, 1]); ``flips[0]`` is NaN. This is the
    temporal-consistency figure of the demo; unlike mVC it also counts real motion
    (moving objects, camera ego-motion), so only the comparison of two methods on
    the same frames is meaningful, not its absolute value.

    Args:
        labels: ``N`` label images ``[H, W]`` of one size (any integer dtype).

    Raises:
        ValueError: frames of different sizes.
    """
    out = np.full(len(labels), np.nan)
    for i in range(1, len(labels)):
        a, b = labels[i - 1], labels[i]
        if a.shape != b.shape:
            raise ValueError(f"frame {i} is {b.shape}, frame {i - 1} is {a.shape}")
        out[i] = float(np.count_nonzero(a != b)) / a.size
    return out
