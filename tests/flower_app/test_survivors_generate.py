"""GPT-2's learnt position table: a generation may fill it exactly, one position more is refused."""

import pytest

from flower_app.generate.session import DeviceSession, GenerationError, max_positions
from flower_app.model.loading import build_random
from flower_app.model.split_model import SplitSpec, initial_prefix, split

PREFIX = 4


def test_generating_exactly_up_to_n_positions_succeeds_and_one_more_is_refused():
    # Prepare: a tiny GPT-2 (256 positions) with a prefix of 4 and a prompt that leaves 2 positions
    model, _ = build_random("gpt2", seed=0)
    prefix = initial_prefix(model, "gpt2", PREFIX, seed=1, vocab_size=512)
    client, _ = split(model, SplitSpec(split_layer=2, prefix_length=PREFIX, head="lm", pooling="last"), prefix)
    limit = max_positions(client)
    device = DeviceSession(client)
    device.start([5] * (limit - PREFIX - 2))

    # Execute: positions limit - 1 and limit are the table's last two
    device.step(7)
    last = device.step(8)

    # Assert
    assert limit == model.config.n_positions == 256
    assert last.shape == (1, 1, 64) and device.past_length == limit - PREFIX
    with pytest.raises(GenerationError, match=f"= {limit + 1} positions, more than the model's {limit}"):
        device.step(9)
