"""Small `keras.ops` functions shared by layers, losses and metrics (one implementation each)."""

from keras import ops

# keras.applications' "caffe" preprocessing (VGG16, ResNet50): BGR order, 0-255 scale, ImageNet mean removed.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)


def to_caffe(images, dtype="float32"):
    """RGB in [0, 1] -> the input VGG16 and ResNet50 were trained on (BGR, 0-255, mean-subtracted)."""
    bgr = ops.flip(ops.cast(ops.convert_to_tensor(images), dtype), axis=-1) * 255.0
    return bgr - ops.convert_to_tensor(CAFFE_BGR_MEAN, dtype)


def labels_and_valid(y_true, ignore_class=None):
    """`(labels, valid)` of a segmentation target: integer class ids `(N, H, W)` (a trailing channel of 1
    dropped) and a float mask `(N, H, W)`, 0 where the label is `ignore_class` (e.g. CamVid's void)."""
    labels = ops.convert_to_tensor(y_true)
    if len(labels.shape) == 4:
        labels = labels[..., 0]
    labels = ops.cast(labels, "int32")
    if ignore_class is None:
        return labels, ops.ones_like(labels, dtype="float32")
    return labels, ops.cast(ops.not_equal(labels, ignore_class), "float32")
