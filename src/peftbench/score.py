"""score_<run>: BLEU-4 and ROUGE-L of the generated answers against the references -> scores.json, plus
each example's statistics (example_scores.json) for the bootstrap in `peftbench compare`.

BLEU-4 is sacrebleu's corpus BLEU on detokenized text (default 13a tokenization, exp smoothing), on a
0-100 scale; its signature is recorded. This is not the character-level, sentence-averaged "BLEU-4" of
some other tools, so numbers are comparable only with sacrebleu corpus BLEU. ROUGE-L is rouge-score's
F1 with Porter stemming, averaged over examples, times 100.
"""
import argparse
import json
import statistics
from collections import defaultdict

from peftbench.io import read_jsonl, write_json

ROUGE_SETTINGS = {"type": "rougeL", "measure": "F1", "use_stemmer": True, "aggregate": "mean over examples"}


def _bleu_metric():
    from sacrebleu.metrics import BLEU

    return BLEU()


def bleu_statistics(predictions, references):
    """(per-example BLEU sufficient statistics, sacrebleu signature). Each example's statistics are
    [hyp_len, ref_len, correct_1..4, total_1..4]; summed over any subset of examples they give that
    subset's corpus BLEU (sacrebleu's own bootstrap resamples them the same way)."""
    metric = _bleu_metric()
    stats = metric._extract_corpus_statistics(predictions, [references])
    return [[int(x) for x in row] for row in stats], str(metric.get_signature())


def bleu_from_statistics(summed_rows):
    """Corpus BLEU-4 (0-100) of each row of statistics summed over examples (one row per resample)."""
    metric = _bleu_metric()
    return [metric._compute_score_from_stats([int(x) for x in row]).score for row in summed_rows]


def bleu(predictions, references):
    """(corpus BLEU-4, sacrebleu signature)."""
    metric = _bleu_metric()
    return metric.corpus_score(predictions, [references]).score, str(metric.get_signature())


def rouge_l_per_example(predictions, references):
    """ROUGE-L F1 (0-1) of each example; rouge-score's default tokenizer drops non-alphanumeric text."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references)]


def rouge_l(predictions, references):
    """Mean ROUGE-L F1 (x100)."""
    per_example = rouge_l_per_example(predictions, references)
    return 100 * statistics.fmean(per_example) if per_example else 0.0


def _summary(bleu_stats, rouge):
    summed = [sum(column) for column in zip(*bleu_stats)] if bleu_stats else [0] * 10
    return {"n": len(rouge), "bleu": bleu_from_statistics([summed])[0],
            "rouge_l": 100 * statistics.fmean(rouge) if rouge else 0.0}


def score(generations_path, out_path, method, seed=None, examples_path=None):
    """Score one run (a method, and for trained methods a seed). The per-example statistics are computed
    once here; every score below is a sum or mean of them."""
    rows = read_jsonl(generations_path)
    predictions = [r["prediction"] for r in rows]
    references = [r["reference"] for r in rows]
    bleu_stats, signature = bleu_statistics(predictions, references)
    rouge = rouge_l_per_example(predictions, references)
    by_source = defaultdict(list)
    for i, row in enumerate(rows):
        by_source[row["source"]].append(i)
    scores = {
        "method": method,
        "seed": seed,
        **_summary(bleu_stats, rouge),
        "per_source": {name: _summary([bleu_stats[i] for i in idx], [rouge[i] for i in idx])
                       for name, idx in sorted(by_source.items())},
        "bleu_signature": signature,
        "rouge": ROUGE_SETTINGS,
    }
    if examples_path:
        write_json(examples_path, {"method": method, "seed": seed, "ids": [r["id"] for r in rows],
                                   "sources": [r["source"] for r in rows], "bleu_stats": bleu_stats,
                                   "rouge_l": rouge})
    write_json(out_path, scores)
    return scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", required=True, help="generations.jsonl of one run")
    parser.add_argument("--variant", required=True, help="the variant's name (its row in the report)")
    parser.add_argument("--seed", type=int, default=None, help="the training seed (none for an untrained variant)")
    parser.add_argument("--out", required=True, help="scores.json to write")
    parser.add_argument("--examples", help="where to write each example's statistics (for the bootstrap)")
    args = parser.parse_args(argv)
    scores = score(args.generations, args.out, args.variant, args.seed, args.examples)
    print(json.dumps({k: scores[k] for k in ("method", "seed", "n", "bleu", "rouge_l")}))
