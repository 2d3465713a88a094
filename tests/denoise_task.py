import dataclasses

import numpy as np

from kx_vision.config import option
from kx_vision.data import SAMPLE_DIR
from kx_vision.tasks.base import DataBundle, Task, TrainConfig


@dataclasses.dataclass
class DataConfig:
    train: list[str] = option([f"{SAMPLE_DIR}/train"], "training image folder(s)")
    val: list[str] = option([f"{SAMPLE_DIR}/val"], "validation image folder(s)")
    crop_size: int = option(48, "side of the random crops", min=8)
    batch_size: int = option(8, "crops per batch", min=1)
    noise: float = option(0.1, "standard deviation of the Gaussian noise", above=0)


@dataclasses.dataclass
class DenoiseConfig(TrainConfig):
    steps_per_epoch: int = option(100, "steps per epoch", min=1)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)


def noisy_crops(images, config, steps, seed):
    """A keras.utils.PyDataset of (noisy, clean) crops, drawn afresh for each batch index."""
    import keras

    class NoisyCrops(keras.utils.PyDataset):
        def __len__(self):
            return steps

        def __getitem__(self, index):
            rng, size = np.random.default_rng((seed, index)), config.data.crop_size
            crops = []
            for image in (images[i] for i in rng.integers(len(images), size=config.data.batch_size)):
                y, x = (rng.integers(s - size + 1) for s in image.shape[:2])
                crops.append(image[y:y + size, x:x + size])
            clean = np.stack(crops).astype("float32") / 255.0
            return (clean + rng.normal(0, config.data.noise, clean.shape)).astype("float32"), clean

    return NoisyCrops()


class DenoiseTask(Task):
    """Denoising: residual blocks learn to remove Gaussian noise."""

    name = "denoise"
    Config = DenoiseConfig
    monitor = ("val_psnr", "max")

    def build_model(self):
        import keras

        from kx_vision.layers import ResidualBlock

        inputs = keras.Input((None, None, 3))
        x = keras.layers.Conv2D(16, 3, padding="same", name="head")(inputs)
        for i in range(2):
            x = ResidualBlock(16, residual_scale=0.1, name=f"block_{i}")(x)
        correction = keras.layers.Conv2D(3, 3, padding="same", name="tail")(x)
        return keras.Model(inputs, keras.layers.Add()([inputs, correction]))

    def build_loss(self):
        import keras

        return keras.losses.MeanAbsoluteError()

    def build_metrics(self):
        from kx_vision.metrics import PSNR

        return [PSNR(shave=0)]

    def build_data(self):
        from kx_vision.data.superres import load_folders  # decodes, skipping unreadable files

        size, config = self.config.data.crop_size, self.config
        train = load_folders(config.data.train, min_size=size, what="training image")
        val = load_folders(config.data.val, min_size=size, what="validation image")
        return DataBundle(noisy_crops(train, config, config.steps_per_epoch, config.seed),
                          noisy_crops(val, config, 2, config.seed + 1), config.steps_per_epoch, endless=False)


Task = DenoiseTask
