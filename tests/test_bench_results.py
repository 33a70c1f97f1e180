"""bench/results.py: a table pasted from a bench's JSON output, with its provenance (no training)."""

import json

import pytest

from tests.benches import load_bench

results = load_bench("results")


def _output(tmp_path, name, rows, origin=True):
    out = tmp_path / name
    out.mkdir()
    (out / "hetero.json").write_text(json.dumps(rows))
    if origin:
        results.record_provenance(out, ["bench/hetero.py", "--seeds", name])
    return out


def _row(name, final, accuracy, clock):
    return {"name": name, "final": final, "accuracy": accuracy, "sim-clock-s-by-round": clock}


def test_the_table_averages_final_accuracy_and_time_to_each_target_over_seeds(tmp_path):
    # Prepare: two seeds; 'split' reaches 0.70 at 10 s and 20 s, 0.75 at 20 s and 30 s; 'local' never in seed b
    a = [_row("split", 0.80, [0.70, 0.76], [10.0, 20.0]), _row("local", 0.70, [0.71, 0.74], [1.0, 2.0])]
    b = [_row("split", 0.78, [0.69, 0.74, 0.78], [10.0, 20.0, 30.0]), _row("local", 0.60, [0.60], [1.0])]

    # Execute
    table = results.hetero_table([a, b], [0.70, 0.75])

    # Assert: means worked out by hand; a target one seed never reaches is 'never'
    lines = table.splitlines()
    assert lines[0] == "| row | mean final accuracy | s to 0.70 | s to 0.75 |"
    assert lines[2] == "| split | 0.7900 | 15.0 | 25.0 |"  # (10 + 20) / 2 and (20 + 30) / 2
    assert lines[3] == "| local | 0.6500 | never | never |"


def test_a_row_missing_from_one_seed_is_left_out(tmp_path):
    a = [_row("split", 0.8, [0.8], [1.0]), _row("kmeans", 0.7, [0.7], [1.0])]
    b = [_row("split", 0.8, [0.8], [2.0])]
    assert "kmeans" not in results.hetero_table([a, b], [0.7])


def test_pasting_replaces_only_the_block_between_its_markers(tmp_path):
    page = "# Results\n\nbefore\n\n<!-- table:hetero -->\nold table\n<!-- /table:hetero -->\n\nafter\n"

    pasted = results.paste(page, "hetero", "new table", "unused heading")

    assert pasted == "# Results\n\nbefore\n\n<!-- table:hetero -->\nnew table\n<!-- /table:hetero -->\n\nafter\n"
    assert results.paste(pasted, "hetero", "new table", "unused heading") == pasted  # a second paste: no change


def test_a_page_without_the_block_gets_it_under_a_heading(tmp_path):
    pasted = results.paste("# Results\n", "hetero", "t", "Fleets")
    assert pasted == "# Results\n\n## Fleets\n\n<!-- table:hetero -->\nt\n<!-- /table:hetero -->\n"


def test_the_page_gets_the_table_and_every_output_s_source(tmp_path):
    # Prepare
    rows = [_row("split", 0.8, [0.8], [3.0])]
    outs = [_output(tmp_path, "seed-1", rows), _output(tmp_path, "seed-2", rows)]
    page = tmp_path / "results.md"
    page.write_text("# Results\n\nkept\n")

    # Execute
    results.main(["hetero", *map(str, outs), "--page", str(page), "--targets", "0.8"])

    # Assert: the table, then one source line naming each output's command, commit, date, cores, load
    text = page.read_text()
    assert "kept" in text and "| split | 0.8000 | 3.0 |" in text
    source = next(line for line in text.splitlines() if line.startswith("*Source:"))
    assert source.count("`python bench/hetero.py --seeds seed-") == 2
    origin = json.loads((outs[0] / "provenance.json").read_text())
    assert {"command", "commit", "date", "cores", "load"} <= set(origin)
    assert f"{origin['cores']} cores" in source and origin["commit"] in source


def test_an_output_without_its_provenance_is_refused(tmp_path):
    out = _output(tmp_path, "seed-1", [_row("split", 0.8, [0.8], [3.0])], origin=False)
    page = tmp_path / "results.md"
    page.write_text("# Results\n")

    with pytest.raises(SystemExit, match="no provenance.json in"):
        results.main(["hetero", str(out), "--page", str(page)])
    assert page.read_text() == "# Results\n"  # nothing pasted
