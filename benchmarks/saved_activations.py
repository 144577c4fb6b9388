"""What one compiled decoder layer keeps for backward, at the gemma-3-1b-it shape, with and without
training.recompute_elementwise (selective recomputation): bytes per token, and bytes that do not grow
with the tokens (bf16 copies of fp32 weights). Runs on a CPU: it reads the saved values that Inductor's
partitioner chooses for the joint forward/backward graph, which do not depend on the device; only the
attention kernel differs (sdpa here, flex attention on a GPU, which keeps the same output and
log-sum-exp). Weights are random; one layer; the parameters themselves are not counted (they exist
anyway).

  python benchmarks/saved_activations.py --out DIR  # writes DIR/saved_activations.md (the last run: benchmarks/2026-11-25-cpu/)
"""
import argparse
import sys
from pathlib import Path

import torch
import torch._functorch.config
import torch._functorch.partitioners as partitioners
import torch._inductor.config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from peftbench.trainable import recompute_elementwise  # noqa: E402

TOKENS = 200  # a length equal to no dimension of the model, so a saved tensor's shape tells if it grows with it


def layer_model(method, elementwise):
    """One decoder layer of the real shape, trainable as peftbench.trainable.build_trainable makes it on a
    GPU (LoRA: bf16 base + fp32 adapters; GaLore: fp32 weights; bf16 products under autocast), compiled
    as it compiles it there. Not build_trainable itself: on a CPU that loads float32 weights
    (model.compute_dtype), which would double every saved activation."""
    import yaml
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(Path(__file__).with_name("gemma-3-1b-it.config.json"))
    config.num_hidden_layers, config.vocab_size, config._attn_implementation = 1, 1024, "sdpa"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).requires_grad_(False)
    layer = model.model.layers[0]
    if elementwise:
        recompute_elementwise(layer)
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = yaml.safe_load((ROOT / "config.yaml").read_text())["variants"]["lora"]
        adapters = LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=0.0,
                              target_modules=lora["target_modules"])
        model = get_peft_model(model, adapters).get_base_model()
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    else:
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                module.weight.data = module.weight.data.float()
                module.weight.requires_grad_(True)
    layer.compile(dynamic=False)
    return model


def saved_by_partitioner(method, elementwise):
    """(bytes per token, bytes that do not grow with the tokens) kept for one layer's backward, and
    (graph inputs, all saved values) in bytes at TOKENS tokens, as the partitioner sizes them."""
    chosen, sizes = [], [0, 0]
    choose = partitioners.choose_saved_values_set

    def recording(joint_graph, node_info, *args, **kwargs):
        saved = choose(joint_graph, node_info, *args, **kwargs)
        chosen.extend(saved)
        sizes[0] += sum(map(partitioners._size_of, node_info.inputs))
        sizes[1] += sum(map(partitioners._size_of, saved))
        return saved

    torch._dynamo.reset()
    # A cached compilation skips the partitioner: compile afresh every time.
    torch._functorch.config.enable_autograd_cache = False
    torch._inductor.config.fx_graph_cache = False
    partitioners.choose_saved_values_set = recording
    try:
        model = layer_model(method, elementwise)
        hidden = torch.randn(1, TOKENS, 1152, dtype=torch.bfloat16, requires_grad=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model.model(inputs_embeds=hidden, position_ids=torch.arange(TOKENS)[None], use_cache=False)
        out.last_hidden_state.float().square().mean().backward()
    finally:
        partitioners.choose_saved_values_set = choose
    per_token = fixed = 0
    for node in chosen:
        value = node.meta.get("val")
        if not isinstance(value, torch.Tensor):
            continue
        size = value.numel() * value.element_size()
        if TOKENS in value.shape:
            per_token += size / TOKENS
        elif not node.name.startswith("primals"):  # a parameter is stored whether it is saved or not
            fixed += size
    return per_token, fixed, *sizes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args(argv)
    command = " ".join(["python benchmarks/saved_activations.py", *(sys.argv[1:] if argv is None else argv)])
    lines = ["# What one compiled gemma-3-1b-it decoder layer keeps for backward", "", f"Command: `{command}`",
             "", f"torch {torch.__version__}, CPU (the partitioner's choice; see the script's docstring). At "
             "8,192 tokens (the benchmark's longest batch) x 26 layers, 1 KB per token is 0.21 GB.", "",
             f"The last two columns are at {TOKENS} tokens, parameters included, as the partitioner weighs "
             "them: its memory budget (torch._functorch.config.activation_memory_budget) keeps the default "
             "whenever the graph's inputs weigh more than the values the default saves.", "",
             "| method | recompute_elementwise | KB per token | MB that do not grow with tokens | "
             f"GB at 8,192 tokens x 26 layers | graph inputs MB ({TOKENS} tokens) | saved MB ({TOKENS} tokens) |",
             "|---|---|---|---|---|---|---|"]
    for method in ("galore", "lora"):
        for elementwise in (False, True):
            per_token, fixed, inputs, saved = saved_by_partitioner(method, elementwise)
            total = 26 * (8192 * per_token + fixed) / 1e9
            lines.append(f"| {method} | {'yes' if elementwise else 'no'} | {per_token / 1e3:.1f} | {fixed / 1e6:.1f} | "
                         f"{total:.1f} | {inputs / 1e6:.1f} | {saved / 1e6:.1f} |")
            print(lines[-1], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "saved_activations.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
