import json

import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from peftbench.score import bleu, rouge_l, score

PREDICTIONS = [
    "The math module provides gcd.",
    "",                                   # empty prediction
    "Ça marche: naïve café ☕",           # unicode
    "line one\nline two\n\nline three",   # multi-line
    "It returns the value.",
]
REFERENCES = [
    "The math module provides gcd and lcm.",
    "An answer the model did not give.",
    "Ça marche : naïve café ☕",
    "line one\nline two\nline three",
    "",                                   # empty reference
]


def test_bleu_equals_sacrebleu_corpus_bleu():
    value, signature = bleu(PREDICTIONS, REFERENCES)
    expected = BLEU().corpus_score(PREDICTIONS, [REFERENCES]).score
    assert value == pytest.approx(expected)
    assert 0 < value < 100
    assert signature.startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp")


def test_rouge_l_equals_rouge_score_mean_f1():
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    expected = 100 * sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(PREDICTIONS, REFERENCES)) / 5
    assert rouge_l(PREDICTIONS, REFERENCES) == pytest.approx(expected)
    assert rouge_l(["identical text"], ["identical text"]) == pytest.approx(100)
    assert rouge_l([""], ["something"]) == 0


def test_identical_answers_score_100_and_per_source(tmp_path):
    rows = [{"id": str(i), "source": "a" if i % 2 else "b", "prompt": [], "reference": r, "prediction": r}
            for i, r in enumerate(["the cat sat on the mat today", "a dog ran in the park at noon"] * 3)]
    path = tmp_path / "generations.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    scores = score(path, tmp_path / "scores.json", "lora")
    assert scores["bleu"] == pytest.approx(100)
    assert scores["rouge_l"] == pytest.approx(100)
    assert set(scores["per_source"]) == {"a", "b"}
    assert scores["per_source"]["a"]["n"] == 3
    assert json.loads((tmp_path / "scores.json").read_text()) == scores
