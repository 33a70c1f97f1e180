"""The image family (``task.family=image``): offline image sets, the job's setup, the device part.

Data, offline only:

- ``digits``: scikit-learn's 1,797 handwritten digits, 8x8, 17 grey levels, shipped
  inside the package;
- ``mnist`` / ``cifar10``: torchvision's loaders over a copy the user already has under
  ``image.data-root`` (``download=False``: a missing copy is one clear error).

Images become :class:`~flower_app.data.files.Encoded` rows of pixel levels (one integer per
pixel), so partitions, batch plans, uploads and the wire treat them like token ids. The
pool/test split and the partitions follow the text task's seeded rules
(:func:`flower_app.data.files.partition`).

The network (:mod:`flower_app.tasks.image.model`, torch) is imported where a part is built,
so that a node looks this family up without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from flower_app.config.schema import Config
from flower_app.data import files as data_mod
from flower_app.data.device_cache import DataSource
from flower_app.model.device_part import DevicePart
from flower_app.tasks.family import ServerHalf, Setup, TaskFamily
from strategies.fleet.profile import DeviceProfile
from strategies.settings import SplitSettings
from strategies.wire import names as wire

if TYPE_CHECKING:
    from flower_app.tasks.image.model import ImageSpec

DIGIT_NAMES = tuple(str(i) for i in range(10))
CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
# Per-channel mean and std of pixels in [0, 1] (digits: measured on the whole set).
_STATS = {
    "digits": ((0.3053,), (0.3760,)),
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


@dataclass(frozen=True)
class ImageSet:
    """Pixel levels ``(N, C, H, W)`` and labels; ``levels`` bounds the values."""

    images: npt.NDArray[np.int64]
    labels: npt.NDArray[np.int64]
    label_names: tuple[str, ...]
    levels: int

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Any) -> ImageSet:
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(self.images[indices], self.labels[indices], self.label_names, self.levels)


def load_images(dataset: str, data_root: str = "") -> ImageSet:
    """The whole image set (train and test files together: the job splits it with its seed)."""
    if dataset == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = digits.images.astype(np.int64)[:, None]  # (N, 1, 8, 8), levels 0..16
        return ImageSet(images, digits.target.astype(np.int64), DIGIT_NAMES, 17)
    if dataset not in ("mnist", "cifar10"):
        raise ValueError(f"image.dataset='{dataset}' must be one of digits, mnist, cifar10")
    return _torchvision_set(dataset, data_root)


def _torchvision_set(dataset: str, data_root: str) -> ImageSet:
    from torchvision import datasets

    loader = datasets.MNIST if dataset == "mnist" else datasets.CIFAR10
    parts = []
    for train in (True, False):
        try:
            parts.append(loader(root=data_root or ".", train=train, download=False))
        except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
            raise data_mod.DataFileError(
                f"image.dataset={dataset}: no readable copy under image.data-root='{data_root}' ({err}); "
                "point image.data-root at a folder with torchvision's files (nothing is downloaded)"
            ) from None
    images = np.concatenate([np.asarray(p.data) for p in parts])
    images = images[:, None] if images.ndim == 3 else images.transpose(0, 3, 1, 2)  # (N, C, H, W)
    labels = np.concatenate([np.asarray(p.targets) for p in parts]).astype(np.int64)
    names = DIGIT_NAMES if dataset == "mnist" else CIFAR_NAMES
    return ImageSet(images.astype(np.int64), labels, names, 256)


def image_spec(config: Config, images: ImageSet) -> ImageSpec:
    from flower_app.tasks.image.model import ImageSpec

    i = config.image
    mean, std = _STATS[i.dataset]
    _, channels, height, width = images.images.shape
    return ImageSpec(
        channels,
        height,
        width,
        images.levels,
        mean,
        std,
        len(images.label_names),
        i.conv_width,
        i.encoder_blocks,
        i.decoder_blocks,
        i.boundary_channels,
        i.trainable,
        i.quant_bits,
    )


@lru_cache(maxsize=2)
def _dataset(config: Config) -> tuple[ImageSet, ImageSet]:
    """Pool and held-out test split (seeded, as :func:`flower_app.data.files.train_test_split`)."""
    images = load_images(config.image.dataset, config.image.data_root)
    test_size = config.data.test_size
    if not 0 < test_size < len(images):
        raise ValueError(f"data.test-size={test_size} must be in (0, {len(images)}) for image.dataset")
    order = np.random.default_rng(config.run.seed).permutation(len(images))
    return images.subset(order[test_size:]), images.subset(order[:test_size])


def pool_and_test(config: Config) -> tuple[ImageSet, ImageSet]:
    return _dataset(config)


def encode_images(images: ImageSet) -> data_mod.Encoded:
    from flower_app.tasks.image.model import levels_to_ids

    return data_mod.Encoded(levels_to_ids(images.images), images.labels)


def augmented(images: ImageSet, copies: int, seed: int) -> ImageSet:
    """``images`` plus ``copies`` seeded random-affine copies of each (torchvision transforms)."""
    if copies == 0:
        return images
    import torch
    from torchvision.transforms import v2

    torch.manual_seed(seed)
    transform = v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))
    pixels = torch.as_tensor(images.images, dtype=torch.float32)  # (N, C, H, W)
    extra = [torch.stack([transform(x) for x in pixels]).round().clamp(0, images.levels - 1) for _ in range(copies)]
    stacked = np.concatenate([images.images, *(e.long().numpy() for e in extra)])
    return ImageSet(stacked, np.tile(images.labels, copies + 1), images.label_names, images.levels)


def partition_encoded(config: Config, partition_id: int, num_partitions: int) -> data_mod.Encoded:
    """The encoded partition a node holds: its share of the pool, plus its augmented copies."""
    if not 0 <= partition_id < num_partitions:
        raise ValueError(f"partition-id {partition_id} is outside [0, {num_partitions})")
    return _encoded_share(config, _dataset(config)[0], _partitions(config, num_partitions)[partition_id], partition_id)


def partition_data(setup: Setup, indices: np.ndarray, partition_id: int) -> data_mod.Encoded:
    """Partition ``partition_id`` of the job's pool (sample ``indices``), plus its augmented copies."""
    return _encoded_share(setup.config, setup.pool, indices, partition_id)


def _encoded_share(config: Config, pool: ImageSet, indices: Any, partition_id: int) -> data_mod.Encoded:
    # Each partition augments with its own seed: the copies differ between nodes, not between runs.
    share = pool.subset(indices)
    return encode_images(augmented(share, config.image.augment, config.run.seed * 1000 + partition_id))


def node_data(config: Config, source: DataSource, root: Path) -> data_mod.Encoded:
    """A node's partition of ``image.dataset``, read in memory (no disk cache: the sets are small)."""
    if source.data_path:
        raise data_mod.DataFileError(
            "task.family=image reads partitions of image.dataset; a node's own data-path is for text"
        )
    return partition_encoded(config, source.client_id, source.num_partitions)


@lru_cache(maxsize=4)
def _partitions(config: Config, num_partitions: int) -> tuple[np.ndarray, ...]:
    d = config.data
    pool = _dataset(config)[0]
    return tuple(data_mod.partition(pool.labels, num_partitions, d.partitioner, d.alpha, config.run.seed))


def build_setup(config: Config) -> Setup:
    """The job's :class:`~flower_app.tasks.family.Setup` for the image task (no tokenizer, no verbalizer)."""
    from flower_app.model.split_model import get_state
    from flower_app.tasks.image.model import build_parts

    pool, test = _dataset(config)
    spec = image_spec(config, pool)
    client, server = build_parts(spec, config.run.seed)
    # Setup is typed for the text parts; the image parts answer the same calls.
    client_part, server_part = cast(Any, client), cast(Any, server)
    state = {**get_state(client_part), **get_state(server_part)}
    return Setup(config, server.spec, client_part, server_part, None, 0, None, pool, test, state, encode_images)


def device_part(config: Config, root: Path) -> DevicePart:
    """What a device holds: the encoder and channel, and the emulator's kept decoder blocks.

    Built in memory from the seed (a few thousand weights; the values come from the server),
    so ``root``, the device's cache, is not read.
    """
    return _device_part(config)


@lru_cache(maxsize=4)
def _device_part(config: Config) -> DevicePart:
    from flower_app.model.emulator import spaced_layers
    from flower_app.tasks.image.model import build_parts

    pool, _ = _dataset(config)
    spec = image_spec(config, pool)
    client, server = build_parts(spec, config.run.seed)
    blocks = server.stack.indices
    upper = server.emulator(spaced_layers(blocks, config.train.emulator_layers or len(blocks)))
    return DevicePart("image", server.spec, client, upper, len(blocks), 0, None, pool.label_names)


def server_model(setup: Setup, settings: SplitSettings) -> ServerHalf:
    from flower_app.tasks.image.server import ImageServer  # torch: the server's side only

    return ImageServer(setup, settings)


def device_snr_db(config: Config, profile: DeviceProfile) -> float | None:
    """The SNR of this device's encoding in training forwards (None: noiseless).

    From its channel profile (``p h / N0B``) or the config's ``image.snr-db``; None when the
    channel is noiseless or only the test sees noise (``image.channel-train=false``).
    """
    from flower_app.tasks.image.channel import profile_snr_db

    i = config.image
    if i.channel == "noiseless" or not i.channel_train:
        return None
    return profile_snr_db(profile) if i.snr_source == "profile" else i.snr_db


def prepare_device(config: Config, device: DevicePart, profile: DeviceProfile, seed: int) -> None:
    """Set the encoder's channel to this device's SNR, its noise drawn from the round's ``seed``."""
    device.client.channel.configure(device_snr_db(config, profile), seed)


def metrics(config: Config) -> tuple[str, ...]:
    """Loss and accuracy of the classes decoded from what crossed the channel."""
    return (wire.LOSS, wire.ACCURACY)


IMAGE = TaskFamily(
    name="image",
    setup=build_setup,
    device_part=device_part,
    server_model=server_model,
    partition_data=partition_data,
    node_data=node_data,
    prepare_device=prepare_device,
    metrics=metrics,
    resume_keys=("image",),
    token_embeddings=False,  # pixels enter a convolution: no embedding matrix to draw directions from
)
