"""Metrics on hand-computed toy cases (official ditta/metrics.py semantics)."""

import math

import numpy as np
import pytest

from ditta_ros.metrics import ConfusionMatrix, consistency_windows, frame_miou, summarize, video_consistency

GT = np.array([[0, 0, 1], [1, 2, 255]])
PRED = np.array([[0, 1, 1], [1, 0, 2]])


def test_confusion_iou_miou_wiou_by_hand():
    cm = ConfusionMatrix(3)
    cm.add(PRED, GT)
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert np.allclose(cm.iou(), [1 / 3, 2 / 3, 0.0])
    assert math.isclose(cm.miou(), 1 / 3)
    assert math.isclose(cm.wiou(), 0.4)
    assert math.isclose(cm.pixel_accuracy(), 3 / 5)


def test_miou_only_over_classes_present_in_ground_truth():
    cm = ConfusionMatrix(5)
    pred = PRED.copy()
    pred[0, 0] = 4  # class 4 predicted but absent from the ground truth
    cm.add(pred, GT)
    iou = cm.iou()
    assert math.isnan(iou[3]) and iou[4] == 0.0
    assert math.isclose(cm.miou(), (0 / 2 + 2 / 3 + 0) / 3)  # IoU0: inter 0, union 2+1-0


def test_unmapped_predictions_count_as_wrong_and_accumulation_adds():
    cm = ConfusionMatrix(3)
    pred = PRED.copy()
    pred[0, 0] = 254  # an unmapped source class on a class-0 pixel
    cm.add(pred, GT)
    assert cm.unmapped.tolist() == [1, 0, 0]
    assert cm.iou()[0] == 0.0  # inter 0, union = gt 2 + pred 1 - 0 = 3
    assert math.isclose(cm.pixel_accuracy(), 2 / 5)
    cm.add(PRED, GT)
    assert cm.matrix.sum() + cm.unmapped.sum() == 10
    assert math.isclose(frame_miou(PRED, GT, 3), 1 / 3)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        ConfusionMatrix(3).add(PRED, GT[:, :2])


LABELS = [np.array([[0, 1, 2]]), np.array([[0, 1, 1]]), np.array([[0, 1, 1]]), np.array([[0, 0, 1]])]
PREDS = [np.array([[0, 1, 2]]), np.array([[0, 2, 1]]), np.array([[1, 2, 1]]), np.array([[1, 2, 1]])]


def test_video_consistency_windows_by_hand():
    assert np.allclose(consistency_windows(PREDS, LABELS, 2), [1 / 2, 2 / 3])  # range(N - n): 2 windows
    assert math.isclose(video_consistency(PREDS, LABELS, 2), (1 / 2 + 2 / 3) / 2)
    assert video_consistency(PREDS, LABELS, 3) == 0.0
    assert math.isnan(video_consistency(PREDS, LABELS, 4))  # no window


def test_video_consistency_nan_windows_are_skipped():
    labels = [np.array([[0]]), np.array([[1]]), np.array([[1]]), np.array([[1]])]
    preds = [np.array([[0]])] * 4
    assert np.isnan(consistency_windows(preds, labels, 2)[0])
    assert video_consistency(preds, labels, 2) == 1.0


def test_summary_in_percent():
    cm = ConfusionMatrix(3)
    for p, g in zip(PREDS, LABELS):
        cm.add(p, g)
    s = summarize(cm, PREDS, LABELS, windows=(2,))
    assert math.isclose(s["mVC2"], 100 * (1 / 2 + 2 / 3) / 2)
    assert 0 <= s["mIoU"] <= 100 and 0 <= s["wIoU"] <= 100
