"""score_<method>: BLEU-4 and ROUGE-L of the generated answers against the references -> scores.json.

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


def bleu(predictions, references):
    """(corpus BLEU-4, sacrebleu signature)."""
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    return metric.corpus_score(predictions, [references]).score, str(metric.get_signature())


def rouge_l(predictions, references):
    """Mean ROUGE-L F1 (x100); rouge-score's default tokenizer drops non-alphanumeric text."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    if not predictions:
        return 0.0
    return 100 * statistics.fmean(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(predictions, references))


def score_rows(rows):
    predictions = [r["prediction"] for r in rows]
    references = [r["reference"] for r in rows]
    bleu_score, signature = bleu(predictions, references)
    return {"n": len(rows), "bleu": bleu_score, "rouge_l": rouge_l(predictions, references)}, signature


def score(generations_path, out_path, method):
    rows = read_jsonl(generations_path)
    overall, signature = score_rows(rows)
    by_source = defaultdict(list)
    for row in rows:
        by_source[row["source"]].append(row)
    scores = {
        "method": method,
        **overall,
        "per_source": {name: score_rows(group)[0] for name, group in sorted(by_source.items())},
        "bleu_signature": signature,
        "rouge": ROUGE_SETTINGS,
    }
    write_json(out_path, scores)
    return scores


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    scores = score(args.generations, args.out, args.method)
    print(json.dumps({k: scores[k] for k in ("method", "n", "bleu", "rouge_l")}))
