"""Encoding a training set: the chat format's pieces tokenized one call each (how peftbench did it before
2026-12-03) against all of them in one batched call (ChatFormat.encode_chats, which the tokenizer splits
over the CPU's cores). Synthetic conversations in the study's length mix (study_gpu.synthetic_rows), a
quarter of the study's training set; 3 passes each, the order reversed every other pass, median; equal
tokens checked.

  python benchmarks/encode_speed.py --model-dir results/demo/model   # any prepare_model folder
"""
import argparse
import os
import random
import statistics
import sys
import time

from study_gpu import synthetic_rows, word_pieces
from peftbench.chat import format_of
from peftbench.model import load_tokenizer, model_path


def one_call_per_piece(fmt, conversations):
    """The way before encode_chats: a tokenizer call for each piece of each conversation."""
    return [fmt.assemble([(fmt._ids(text), role) for text, role in fmt._pieces(fmt.prepare(messages))])
            for messages in conversations]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--per-source", type=int, default=1250)
    parser.add_argument("--passes", type=int, default=3)
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model_dir)
    fmt = format_of(tokenizer)
    _, words = word_pieces(model_path(args.model_dir))
    rng = random.Random(0)
    conversations = [row["messages"] for name in ("alpaca", "tulu", "ultrachat")
                     for row in synthetic_rows(name, args.per_source, 1024, words, rng)]
    ways = {"one tokenizer call per piece": lambda: one_call_per_piece(fmt, conversations),
            "one batched call (encode_chats)": lambda: fmt.encode_chats(conversations)}
    seconds, results = {way: [] for way in ways}, {}
    for round_ in range(args.passes):
        for way in list(ways)[:: -1 if round_ % 2 else 1]:  # the order reversed every other pass
            run = ways[way]
            start = time.perf_counter()
            results[way] = run()
            seconds[way].append(time.perf_counter() - start)
    assert len({repr(r) for r in results.values()}) == 1, "the two ways gave different tokens"
    print(f"$ python benchmarks/encode_speed.py {' '.join(sys.argv[1:])}   # {os.cpu_count()} CPUs, "
          f"{len(conversations)} conversations, median of {args.passes} passes, order reversed every other; equal tokens")
    for way, s in seconds.items():
        print(f"{way}: {statistics.median(s):.1f} s (passes {', '.join(f'{x:.1f}' for x in s)})")


if __name__ == "__main__":
    main()
