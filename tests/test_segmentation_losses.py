import keras
import numpy as np
import pytest
from keras import ops
from testing import run_loss_test

from kx_vision.losses import SegmentationLoss, segmentation_cross_entropy, soft_dice_loss
from kx_vision.metrics import Dice, PixelAccuracy, scores_from_confusion, segmentation_metrics

VOID = 4


@pytest.fixture
def batch(rng):
    labels = rng.integers(0, 5, (2, 6, 7, 1))  # 0..3 classes, 4 = void
    logits = rng.normal(size=(2, 6, 7, 4))
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    return labels, probs.astype("float32")


def numpy_ce(labels, probs, ignore):
    out = []
    for lab, p in zip(labels[..., 0], probs):
        valid = lab != ignore
        picked = p[valid, lab[valid]]
        out.append(-np.log(np.clip(picked, 1e-7, 1)).mean())
    return np.array(out)


def numpy_dice(labels, probs, ignore, smooth=1.0):
    out = []
    for lab, p in zip(labels[..., 0], probs):
        valid = (lab != ignore)[..., None]
        onehot = np.eye(p.shape[-1])[np.where(lab == ignore, 0, lab)]
        inter = (p * onehot * valid).sum((0, 1))
        total = ((p + onehot) * valid).sum((0, 1))
        out.append(1 - ((2 * inter + smooth) / (total + smooth)).mean())
    return np.array(out)


def test_cross_entropy_ignores_void_and_matches_numpy_and_keras(batch):
    labels, probs = batch
    got = ops.convert_to_numpy(segmentation_cross_entropy(labels, probs, 4, ignore_class=VOID))
    np.testing.assert_allclose(got, numpy_ce(labels, probs, VOID), rtol=1e-5)
    keras_ce = keras.losses.SparseCategoricalCrossentropy(ignore_class=VOID)
    for i in range(2):
        assert float(keras_ce(labels[i : i + 1], probs[i : i + 1])) == pytest.approx(got[i], rel=1e-4)
    # Changing the prediction on void pixels changes nothing.
    shuffled = probs.copy()
    shuffled[labels[..., 0] == VOID] = probs[labels[..., 0] == VOID][:, ::-1]
    np.testing.assert_allclose(ops.convert_to_numpy(segmentation_cross_entropy(labels, shuffled, 4, VOID)), got, rtol=1e-6)


def test_dice_loss_matches_numpy(batch, rng):
    labels, probs = batch
    np.testing.assert_allclose(
        ops.convert_to_numpy(soft_dice_loss(labels, probs, 4, VOID)), numpy_dice(labels, probs, VOID), rtol=1e-5)
    # Binary: sigmoid probabilities, foreground dice only.
    lab = rng.integers(0, 2, (1, 5, 5, 1))
    p = rng.random((1, 5, 5, 1)).astype("float32")
    want = 1 - (2 * (p * lab).sum() + 1) / (p.sum() + lab.sum() + 1)
    assert float(ops.convert_to_numpy(soft_dice_loss(lab, p, 1))[0]) == pytest.approx(want, rel=1e-5)


def test_combined_loss_and_serialization(batch):
    labels, probs = batch
    loss = SegmentationLoss(4, VOID, ce_weight=1.0, dice_weight=0.5)
    want = np.mean(numpy_ce(labels, probs, VOID) + 0.5 * numpy_dice(labels, probs, VOID))
    assert float(loss(labels, probs)) == pytest.approx(want, rel=1e-5)
    assert run_loss_test(loss, labels, probs) == pytest.approx(want, rel=1e-5)  # also round-trips its config


def numpy_confusion(labels, pred, classes, ignore):
    valid = labels != ignore
    return np.bincount(labels[valid] * classes + pred[valid], minlength=classes * classes).reshape(classes, classes)


def test_miou_and_pixel_accuracy_ignore_void(batch):
    labels, probs = batch
    pred = probs.argmax(-1)
    cm = numpy_confusion(labels[..., 0], pred, 4, VOID)
    iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
    metrics = {m.name: m for m in segmentation_metrics(4, VOID)}
    for m in metrics.values():
        m.update_state(labels, probs)
    assert float(metrics["miou"].result()) == pytest.approx(np.nanmean(iou), abs=1e-6)
    valid = labels[..., 0] != VOID
    assert float(metrics["pixel_accuracy"].result()) == pytest.approx((pred == labels[..., 0])[valid].mean(), abs=1e-6)
    scores = scores_from_confusion(cm, ["a", "b", "c", "d"])
    assert scores["per_class_iou"]["c"] == pytest.approx(iou[2])
    assert scores["miou"] == pytest.approx(np.nanmean(iou))


def test_binary_dice_metric(rng):
    lab = rng.integers(0, 2, (2, 8, 8, 1))
    p = rng.random((2, 8, 8, 1)).astype("float32")
    m = Dice()
    m.update_state(lab, p)
    hard = p >= 0.5
    want = 2 * (hard & (lab == 1)).sum() / (hard.sum() + (lab == 1).sum())
    assert float(m.result()) == pytest.approx(want, abs=1e-6)
    acc = PixelAccuracy(num_classes=1)
    acc.update_state(lab, p)
    assert float(acc.result()) == pytest.approx((hard == (lab == 1)).mean(), abs=1e-6)
