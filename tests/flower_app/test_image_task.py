"""The image task: the channel keeps its SNR, the split network is the whole network, every mode
and a grouping policy train it, and the wire checks refuse malformed image replies."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from flower_app.apps.runner import run_inprocess
from flower_app.config.load import load_config
from flower_app.config.strategy_settings import split_settings
from flower_app.data import setup as setup_mod
from flower_app.data.files import DataFileError
from flower_app.data.setup import build
from flower_app.modes.training import from_wire, to_wire
from flower_app.tasks.image.channel import Channel, normalize_power, profile_snr_db, quantize
from flower_app.tasks.image.model import ImageSpec, build_parts
from flower_app.tasks.image.server import ImageServer
from flower_app.tasks.image.task import load_images
from strategies.cost.workload import upload_row_bytes
from strategies.fleet.devices import DeviceProfile
from strategies.persist.rundir import RunDirectory
from strategies.wire import names as wire
from strategies.wire.codecs.registry import wire_codec

FLOAT32 = wire_codec("float32")

TINY = {
    "config": "image",
    "run.num-rounds": 2,
    "data.test-size": 200,
    "train.steps-per-round": 6,
    "train.batch-size": 16,
    "image.conv-width": 8,
    "image.snr-source": "config",
    "strategy.min-clients": 1,
}
SPEC = ImageSpec(1, 8, 8, 17, (0.3,), (0.37,), 10, conv_width=8, boundary_channels=4)


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0, 20.0])
def test_channel_sends_unit_power_and_adds_noise_of_the_configured_snr(snr_db):
    # Prepare: encodings of very different scales
    z = torch.randn(64, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * torch.linspace(0.1, 50, 64).view(
        -1, 1, 1, 1
    )
    channel = Channel()
    channel.configure(snr_db, seed=3)

    # Execute
    sent = normalize_power(z)
    received = channel(z)
    noise = received - sent

    # Assert: every sample at unit mean power, the noise at 10^(-SNR/10) (1,024 values per sample)
    assert sent.pow(2).flatten(1).mean(1) == pytest.approx(torch.ones(64), abs=1e-5)
    variance = float(noise.var())
    assert variance == pytest.approx(10 ** (-snr_db / 10), rel=0.01)
    measured_snr = 10 * math.log10(float(sent.pow(2).mean()) / variance)
    assert measured_snr == pytest.approx(snr_db, abs=0.05)
    assert float(noise.mean()) == pytest.approx(0.0, abs=0.01 * 10 ** (-snr_db / 20) * 10)


def test_channel_noise_is_seeded_and_none_without_an_snr():
    # Prepare
    z = torch.randn(8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    channel = Channel()

    # Execute
    channel.configure(5.0, seed=7)
    first = channel(z)
    channel.configure(5.0, seed=7)
    again = channel(z)
    channel.configure(None, seed=7)
    clean = channel(z)

    # Assert
    assert torch.equal(first, again)
    assert torch.equal(clean, normalize_power(z))


def test_quantiser_has_the_configured_levels_and_a_straight_through_gradient():
    # Prepare
    x = torch.linspace(-5, 5, 1001, requires_grad=True)

    # Execute
    q = quantize(x, bits=3)
    q.sum().backward()

    # Assert: 2^3 levels within [-3, 3], gradient one everywhere
    assert len(torch.unique(q.detach())) == 8
    assert float(q.detach().abs().max()) == pytest.approx(3.0)
    assert torch.equal(x.grad, torch.ones_like(x))


def test_device_snr_is_its_profile_p_h_over_noise():
    # Prepare: 0.2 W at gain 1e-10 over 1e-13 W of noise: 200, i.e. 23.01 dB
    profile = DeviceProfile(
        cpu_hz_max=1e9,
        memory_bytes=1e9,
        energy_budget_j=50.0,
        bandwidth_hz=1e6,
        channel_gain=1e-10,
        noise_w=1e-13,
        max_tx_power_w=0.2,
    )

    # Execute
    snr = profile_snr_db(profile)

    # Assert
    assert snr == pytest.approx(10 * math.log10(200.0))


def test_noiseless_split_network_equals_the_unsplit_network():
    # Prepare: the same modules run in one piece, without the wire in between
    client, server = build_parts(SPEC, seed=0)
    ids = torch.randint(0, 17, (5, 64), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    client.channel.configure(None, seed=0)

    def unsplit(pixels: torch.Tensor) -> torch.Tensor:
        x = client.normalize(pixels.float().view(-1, 1, 8, 8) / 16)
        x = client.projection(client.stack(client.stem(x)))
        x = x / x.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt()
        x = server.stack(server.entry(x))
        return server.head(x.mean(dim=(2, 3)))

    # Execute: client, float32 on the wire, server
    with torch.no_grad():
        boundary = from_wire(to_wire(client(ids, mask), FLOAT32), FLOAT32)
        split = server(boundary, client.boundary_mask(mask))
        whole = unsplit(ids)

    # Assert
    assert boundary.shape == (5, SPEC.positions, SPEC.boundary_channels)
    assert torch.allclose(split, whole, atol=1e-6)


def test_adapters_train_only_batch_norm_scale_shift_and_the_head():
    # Prepare
    client, server = build_parts(ImageSpec(**{**SPEC.__dict__, "trainable": "adapters"}), seed=0)

    # Execute
    names = [*client.trainable_named(), *server.trainable_named()]

    # Assert
    assert names and all(".bn" in n or n.startswith("head.") or ".stem.1." in n for n in names)
    assert any(n.startswith("head.") for n in names)


@pytest.mark.parametrize(
    "overrides",
    [
        {"strategy.policy": "split"},
        {"strategy.policy": "local", "train.emulator-layers": 1},
        {"strategy.policy": "centralized", "train.upload-kind": "samples"},
        {"strategy.policy": "centralized", "train.upload-kind": "activations"},
        {"strategy.policy": "threshold", "image.snr-source": "profile"},
    ],
    ids=["split", "local-emulator", "centralized-samples", "centralized-activations", "threshold-profile-snr"],
)
def test_every_mode_and_a_grouping_policy_train_the_image_task(tmp_path, overrides):
    # Prepare
    run_config = {**TINY, **overrides, "run.run-dir": str(tmp_path)}
    config = load_config(run_config)
    server = ImageServer(build(config), split_settings(config))
    before = server.evaluate(server.initial_state())["loss"]

    # Execute
    summary = run_inprocess(run_config, num_nodes=3)

    # Assert: the held-out loss falls
    assert summary["status"] == "completed"
    assert summary["final-eval-loss"] < before


def _limits_and_chunk():
    config = load_config(TINY)
    server = ImageServer(build(config), split_settings(config))
    spec = server.client.image
    boundary = np.zeros((4, spec.positions, spec.boundary_channels), dtype=np.float32)
    chunk = wire.Chunk(boundary, np.ones((4, spec.positions), np.int8), np.arange(4))
    return server.limits(), chunk, spec


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda c: wire.Chunk(c.inputs[:, :-1], c.mask[:, :-1], c.label), "expected exactly 16 real positions"),
        (lambda c: wire.Chunk(c.inputs, np.concatenate([c.mask[:, :-1], 0 * c.mask[:, :1]], 1), c.label), "exactly"),
        (lambda c: wire.Chunk(c.inputs, c.mask, c.label + 10), "outside [0, 10)"),
        (lambda c: wire.Chunk(c.inputs[..., :3], c.mask, c.label), "hidden size 3"),
    ],
    ids=["fewer-positions", "padded-mask", "label-range", "symbol-width"],
)
def test_wire_checks_refuse_malformed_image_activations(change, problem):
    # Prepare
    limits, chunk, spec = _limits_and_chunk()
    arrays = wire.encode_chunks([change(chunk)], wire.ACTIVATIONS_KIND)

    # Execute
    _, problems = wire.decode_chunks(
        arrays, wire.ACTIVATIONS_KIND, count=1, hidden=spec.boundary_channels, limits=limits
    )
    _, fine = wire.decode_chunks(
        wire.encode_chunks([chunk], wire.ACTIVATIONS_KIND), wire.ACTIVATIONS_KIND, hidden=4, limits=limits
    )

    # Assert
    assert fine == []
    assert len(problems) == 1 and problem in problems[0]


def test_wire_checks_refuse_image_uploads_of_wrong_size_or_pixel_levels():
    # Prepare
    limits, _, spec = _limits_and_chunk()
    pixels = np.full((2, spec.pixels), 16, dtype=np.int32)
    good = wire.Chunk(pixels, np.ones_like(pixels, dtype=np.int8), np.arange(2))
    bright = wire.Chunk(pixels + 1, good.mask, good.label)
    short = wire.Chunk(pixels[:, :-8], good.mask[:, :-8], good.label)

    # Execute
    problems = [
        wire.decode_chunks(wire.encode_chunks([c], wire.SAMPLES), wire.SAMPLES, limits=limits)[1]
        for c in (good, bright, short)
    ]

    # Assert
    assert problems[0] == []
    assert "token ids 17..17 outside [0, 17)" in problems[1][0]
    assert "expected exactly 64 real positions" in problems[2][0]


def test_image_job_evaluates_through_the_channel_at_the_configured_snr():
    # Prepare: the same tensors at a clean and a hopeless SNR
    config = load_config({**TINY, "image.snr-db": 40.0})
    noisy = load_config({**TINY, "image.snr-db": -30.0})
    state = ImageServer(build(config), split_settings(config)).initial_state()

    # Execute
    clean_loss = ImageServer(build(config), split_settings(config)).evaluate(state)["loss"]
    noisy_loss = ImageServer(build(noisy), split_settings(noisy)).evaluate(state)["loss"]

    # Assert
    assert len(setup_mod.test_data(config)) == 200
    assert clean_loss != noisy_loss


def test_cost_model_counts_an_uploaded_image_by_its_pixels_and_a_boundary_by_its_positions():
    # Prepare
    config = load_config(TINY)
    shape = ImageServer(build(config), split_settings(config)).shape()

    # Execute
    samples = upload_row_bytes(shape, "samples", 4)
    activations = upload_row_bytes(shape, "activations", 4)

    # Assert: 64 pixel ids of 4 bytes (+ a mask byte each); 16 positions of 4 float32 symbols
    assert (shape.mean_tokens, shape.hidden, shape.client_layers, shape.server_layers) == (16, 4, 2, 2)
    assert samples == 64 * (4 + 1) + 8
    assert activations == 16 * (4 * 4 + 1) + 8
    assert shape.layer_params == 2 * 9 * 8 * 8 + 2 * 2 * 8  # two 3x3 convs and two batch norms of width 8


def _client_shift(tmp_path, scale: float) -> float:
    """How far one split round moves the encoder, run at ``train.replay-lr-scale=scale``."""
    run_config = {**TINY, "run.num-rounds": 1, "strategy.policy": "split", "train.replay-lr-scale": scale}
    run_config["run.run-dir"] = str(tmp_path / f"scale-{scale}")
    config = load_config(run_config)
    server = ImageServer(build(config), split_settings(config))
    start = server.initial_state()
    assert run_inprocess(run_config, num_nodes=2)["status"] == "completed"
    checkpoint = RunDirectory(Path(run_config["run.run-dir"])).load()
    assert checkpoint is not None
    end = checkpoint.arrays
    return math.sqrt(sum(float(np.sum((end[k] - start[k]) ** 2)) for k in server.client_keys))


def test_replay_lr_scale_sets_the_size_of_the_split_clients_steps(tmp_path):
    # Execute: the same round (same seed, batches and gradients) at three scales
    frozen, small, full = (_client_shift(tmp_path, s) for s in (0.0, 0.1, 1.0))

    # Assert: 0 leaves the encoder as it was; Adam's steps grow with the scale
    assert frozen == 0.0
    assert 0.0 < small < 0.5 * full


def _write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, the format of MNIST's raw files."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _fake_mnist(root: Path, train: int, test: int) -> None:
    """A local MNIST copy in torchvision's layout: each digit a bright square at its own place."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, count in (("train", train), ("t10k", test)):
        labels = rng.integers(0, 10, count)
        images = rng.integers(0, 40, (count, 28, 28))
        for image, label in zip(images, labels, strict=True):
            row, col = divmod(int(label), 5)
            image[4 + 10 * row : 12 + 10 * row, 2 + 5 * col : 6 + 5 * col] = 255
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)


def test_mnist_reads_a_local_copy_and_trains_split(tmp_path):
    # Prepare: 80 + 20 images in torchvision's raw MNIST files
    _fake_mnist(tmp_path / "data", train=80, test=20)
    run_config = {
        **TINY,
        "image.dataset": "mnist",
        "image.data-root": str(tmp_path / "data"),
        "data.test-size": 20,
        "run.num-rounds": 1,
        "train.steps-per-round": 2,
        "train.batch-size": 8,
        "strategy.policy": "split",
        "run.run-dir": str(tmp_path / "run"),
    }

    # Execute
    images = load_images("mnist", str(tmp_path / "data"))
    summary = run_inprocess(run_config, num_nodes=2)

    # Assert: train and test files together, 28x28 grey levels; a split round through the 14x14 encoding
    assert images.images.shape == (100, 1, 28, 28) and images.levels == 256
    assert images.images.max() == 255 and set(np.unique(images.labels)) <= set(range(10))
    assert summary["status"] == "completed" and math.isfinite(summary["final-eval-loss"])


@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_a_missing_local_copy_stops_in_one_line_naming_the_folder(tmp_path, dataset):
    # Execute / Assert: nothing is downloaded; the error names the setting and the folder
    with pytest.raises(DataFileError, match=rf"image.dataset={dataset}: no readable copy under image.data-root="):
        load_images(dataset, str(tmp_path))
    assert not any(tmp_path.iterdir())
