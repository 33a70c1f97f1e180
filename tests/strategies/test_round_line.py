"""The per-round log line names what its accuracy measures and shows a causal-LM job's perplexity."""

import pytest

from strategies.round.record import log_round


def _record(**evaluation):
    return {
        "round": 2,
        "train-loss": 3.5,
        "dropped": {},
        "bytes-up": 2_000_000,
        "bytes-down": 1_000_000,
        "wall-s": 0.5,
        "sim-latency-s": 1.0,
        "energy-j": 2.0,
        **evaluation,
    }


@pytest.mark.parametrize(
    ("evaluation", "shown", "not_shown"),
    [
        # causal-LM: held-out perplexity comes with it (metrics.jsonl keeps its keys)
        (
            {"accuracy": 0.31, "eval-loss": 3.81, "eval-perplexity": 45.2},
            "next-token accuracy 0.3100  perplexity 45.20",
            "",
        ),
        # classes: accuracy as before, no perplexity
        ({"accuracy": 0.78, "eval-loss": 0.5}, "  accuracy 0.7800  up", "perplexity"),
        # a round without evaluation
        ({}, "  accuracy -  up", "perplexity"),
    ],
)
def test_the_round_line_names_its_accuracy(evaluation, shown, not_shown, caplog):
    # Execute
    with caplog.at_level("INFO"):
        log_round(_record(**evaluation), num_rounds=3)

    # Assert
    assert shown in caplog.text
    assert not not_shown or not_shown not in caplog.text
