"""The paired bootstrap: a real difference is significant, identical systems are not, seeds are averaged."""
import json
import statistics
import sys

import pytest
from sacrebleu.metrics import BLEU

from peftbench import compare as compare_module
from peftbench.compare import compare, pairs
from peftbench.errors import UserError
from peftbench.score import score

REFERENCES = [f"the {noun} number {i} is stored in the {place} of the module"
              for i, (noun, place) in enumerate([("value", "list"), ("key", "dict"), ("item", "set")] * 20)]
SOURCES = ["alpaca", "tulu", "ultrachat"] * 20


def write_run(tmp_path, method, seed, predictions):
    """Score one run's answers the way the workflow does; returns its example_scores.json."""
    name = method if seed is None else f"{method}_seed{seed}"
    generations = tmp_path / f"{name}.jsonl"
    generations.write_text("".join(json.dumps({"id": str(i), "source": s, "prompt": [], "reference": r,
                                               "prediction": p}) + "\n"
                                   for i, (s, r, p) in enumerate(zip(SOURCES, REFERENCES, predictions))))
    examples = tmp_path / f"{name}.examples.json"
    score(generations, tmp_path / f"{name}.scores.json", method, seed, examples)
    return examples


def degraded(keep_every):
    """Answers that match the reference on every `keep_every`-th prompt and are unrelated elsewhere."""
    return [r if i % keep_every == 0 else "no idea at all, sorry" for i, r in enumerate(REFERENCES)]


def test_a_known_difference_is_significant(tmp_path):
    good = write_run(tmp_path, "lora", 0, degraded(1))     # every answer right
    bad = write_run(tmp_path, "base", None, degraded(4))   # one in four right
    result = compare([bad, good], samples=500)
    diff = result["differences"]["lora - base"]["overall"]
    for metric in ("bleu", "rouge_l"):
        assert diff[metric]["significant"] and diff[metric]["ci"][0] > 0 and diff[metric]["p"] < 0.01
    assert result["methods"]["lora"]["overall"]["bleu"]["mean"] == pytest.approx(100)
    expected = BLEU().corpus_score(degraded(4), [REFERENCES]).score
    assert result["methods"]["base"]["overall"]["bleu"]["mean"] == pytest.approx(expected)
    low, high = result["methods"]["base"]["overall"]["bleu"]["ci"]
    assert low < expected < high


def test_identical_systems_are_not_significantly_different(tmp_path):
    answers = degraded(2)
    result = compare([write_run(tmp_path, "base", None, answers), write_run(tmp_path, "lora", 0, answers)], samples=300)
    for name in ("overall", "alpaca", "tulu", "ultrachat"):
        for metric in ("bleu", "rouge_l"):
            diff = result["differences"]["lora - base"][name][metric]
            assert diff["diff"] == 0 and diff["ci"] == [0, 0] and not diff["significant"] and diff["p"] == 1


def test_a_small_noisy_difference_is_not_significant(tmp_path):
    # Two systems that each get one different prompt right out of 60: a 1-prompt difference is noise.
    a = ["no idea at all, sorry"] * 60
    b = list(a)
    a[0], b[1] = REFERENCES[0], REFERENCES[1]
    result = compare([write_run(tmp_path, "lora", 0, a), write_run(tmp_path, "qlora", 0, b)], samples=500)
    assert not result["differences"]["lora - qlora"]["overall"]["rouge_l"]["significant"]


def test_seeds_are_averaged_and_their_spread_reported(tmp_path):
    paths = [write_run(tmp_path, "lora", seed, degraded(keep)) for seed, keep in [(0, 2), (1, 3), (2, 5)]]
    paths.append(write_run(tmp_path, "base", None, degraded(6)))
    result = compare(paths, samples=200)
    per_seed = [BLEU().corpus_score(degraded(k), [REFERENCES]).score for k in (2, 3, 5)]
    lora = result["methods"]["lora"]["overall"]["bleu"]
    assert lora["per_seed"] == pytest.approx(per_seed)
    assert lora["mean"] == pytest.approx(statistics.fmean(per_seed))
    assert lora["sd"] == pytest.approx(statistics.stdev(per_seed))
    assert result["methods"]["base"]["overall"]["bleu"]["sd"] is None
    assert result["seeds"] == {"lora": [0, 1, 2], "base": [None]}
    assert result["n"] == {"overall": 60, "alpaca": 20, "tulu": 20, "ultrachat": 20}
    assert result["methods"]["lora"]["tulu"]["rouge_l"]["ci"][0] <= result["methods"]["lora"]["tulu"]["rouge_l"]["mean"]


def test_pairs_compare_each_method_with_base_then_with_each_other():
    assert pairs(["base", "lora", "qlora", "galore"]) == [
        ("lora", "base"), ("qlora", "base"), ("galore", "base"),
        ("lora", "qlora"), ("lora", "galore"), ("qlora", "galore")]
    assert pairs(["lora", "qlora"]) == [("lora", "qlora")]


def test_runs_on_other_prompts_stop_with_one_line(tmp_path):
    first = write_run(tmp_path, "base", None, degraded(2))
    other = write_run(tmp_path, "lora", 0, degraded(2))
    data = json.loads(other.read_text())
    data["ids"] = data["ids"][::-1]
    other.write_text(json.dumps(data))
    with pytest.raises(UserError, match="lora seed 0 was scored on other test prompts than base: rerun"):
        compare([first, other], samples=100)


def test_cli_writes_comparison_json(tmp_path, capsys):
    paths = [str(write_run(tmp_path, "base", None, degraded(3))), str(write_run(tmp_path, "lora", 0, degraded(1)))]
    compare_module.main(["--examples", *paths, "--samples", "200", "--out", str(tmp_path / "comparison.json")])
    result = json.loads((tmp_path / "comparison.json").read_text())
    assert result["bootstrap"]["samples"] == 200 and "lora - base" in result["differences"]
    assert '"lora"' in capsys.readouterr().out
    with pytest.raises(UserError, match="at least 100"):
        compare_module.main(["--examples", *paths, "--samples", "10", "--out", str(tmp_path / "x.json")])


def test_one_source_has_one_interval_and_sources_share_the_resamples(tmp_path, monkeypatch):
    """Per-source intervals come from the same resamples as the overall one: with a single source the two
    are the same numbers (issue 25: the report printed two intervals for one score)."""
    monkeypatch.setattr(sys.modules[__name__], "SOURCES", ["alpaca"] * len(REFERENCES))
    runs = [write_run(tmp_path, "base", None, degraded(3)), write_run(tmp_path, "lora", 0, degraded(2))]
    result = compare(runs, samples=300)
    for method in ("base", "lora"):
        assert result["methods"][method]["alpaca"] == result["methods"][method]["overall"]
    assert result["differences"]["lora - base"]["alpaca"] == result["differences"]["lora - base"]["overall"]


def test_resamples_keep_each_sources_size():
    import numpy as np

    sources = ["a"] * 5 + ["b"] * 3 + ["a"] * 2
    weights = compare_module.resample_weights(sources, 50, np.random.default_rng(0))
    a = np.asarray(sources) == "a"
    assert (weights[0] == 1).all()
    assert (weights[:, a].sum(axis=1) == 7).all() and (weights[:, ~a].sum(axis=1) == 3).all()
