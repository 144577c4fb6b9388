"""Does a second process find the first one's compilations? The training path compiles each decoder layer
(peftbench.trainable, `training.compile`: regional, dynamic shapes); a study runs each variant 7 times (5
rates, 2 more seeds), every run a new process. This compiles a small Gemma 3 model with LoRA the same way in
two processes that share one empty cache folder, and prints each one's first forward-and-backward time and
torch's cache counters. CPU here (the GPU path compiles the same way, with Triton kernels).

  python benchmarks/compile_cache.py     # prints two lines: cold, then warm
"""
import os
import subprocess
import sys
import tempfile
import time


def one_process(label):
    import torch
    from peft import LoraConfig, get_peft_model
    from torch._dynamo.utils import counters
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=512, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=64, sliding_window=64)
    model = get_peft_model(AutoModelForCausalLM.from_config(config), LoraConfig(r=8, target_modules="all-linear"))
    for layer in model.base_model.model.model.layers:
        layer.compile(dynamic=True)
    ids = torch.randint(0, 512, (1, 200))
    start = time.perf_counter()
    model(input_ids=ids, labels=ids).loss.backward()
    caches = {k: v for group in ("inductor", "aot_autograd") for k, v in counters[group].items() if "cache" in k}
    print(f"{label}: first forward and backward {time.perf_counter() - start:.1f} s; {caches}", flush=True)


def main():
    if len(sys.argv) > 1:
        return one_process(sys.argv[1])
    with tempfile.TemporaryDirectory() as cache:
        for label in ("first process (cold cache)", "second process (warm cache)"):
            subprocess.run([sys.executable, __file__, label], check=True,
                           env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache})


if __name__ == "__main__":
    main()
