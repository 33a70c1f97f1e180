"""bench/llm.py's plumbing on a tiny random Llama: every row is produced, and the PEFT reference
starts from exactly the split model's prefix (else the comparison would not be fair)."""

import json

import pytest

from tests.benches import load_bench


@pytest.mark.slow
def test_llm_bench_runs_and_its_reference_starts_where_the_split_model_does(tmp_path):
    # Prepare
    bench = load_bench("llm")

    # Execute
    assert bench.main(["--model", "random-llama", "--quick", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "report.json").read_text())

    # Assert: PEFT's prefix is the split model's, laid out again: the same held-out perplexity
    assert report["headlines-peft-initial"]["perplexity"] == pytest.approx(
        report["headlines-initial"]["perplexity"], rel=1e-4
    )
    assert [r["round"] for r in report["headlines-rounds"]] == [1, 2]
    assert report["headlines-rounds"][-1]["eval-perplexity"] < report["headlines-initial"]["perplexity"]
    assert report["step-seconds"]["device"] > 0 and report["step-seconds"]["server"] > 0
    assert len(report["generations-after"]) == 3
