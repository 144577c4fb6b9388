"""Tiny random models (Gemma 3, and Llama and Qwen2 for the other families) with small byte-level BPE
tokenizers carrying each family's special tokens and chat template, for fast tests."""
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
CORPUS = [
    "What does the Python function do? It returns the value of the argument.",
    "Which module provides dedent? The textwrap module: from textwrap import dedent.",
    "The signature is json.dumps(obj, *, skipkeys=False). Explain this keyword in one sentence.",
    "user model assistant system Name some functions from the math module: gcd, sqrt and floor.",
] * 20


TEMPLATES = Path(__file__).parent / "data" / "templates"
# Per family: the special tokens of its tokenizer, (bos, eos, pad) among them (None: the family has none),
# and its chat template (Gemma's is the package's built-in; the others are files in tests/data/templates).
FAMILY_TOKENS = {
    "gemma": (SPECIALS, ("<bos>", "<eos>", "<pad>")),
    "llama": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
               "<unk>"], ("<|begin_of_text|>", "<|eot_id|>", None)),  # Llama 3 instruct: no padding token
    "qwen2": (["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>"], (None, "<|im_end|>", "<|endoftext|>")),
}


def make_tokenizer(family="gemma"):
    """A small byte-level BPE tokenizer with the special tokens and chat template of a model family."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from peftbench.chat_format import resolve_template

    specials, (bos, eos, pad) = FAMILY_TOKENS[family]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    framing = [t for t in specials if t not in (bos, eos, pad, "<unk>")]
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad,
                                        unk_token="<unk>", additional_special_tokens=framing)
    # a real model's tokenizer carries its template
    template = {"gemma": None, "llama": "llama3.jinja", "qwen2": "qwen2.jinja"}[family]
    tokenizer.chat_template = (TEMPLATES / template).read_text() if template else resolve_template("gemma")
    return tokenizer


def tiny_config(vocab_size):
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=16,
        max_position_embeddings=512, pad_token_id=0, eos_token_id=1, bos_token_id=2,
        layer_types=["sliding_attention", "full_attention"],
    )


def tiny_family_config(family, vocab_size):
    """A tiny random config of another decoder family: llama, qwen2 (sliding layers after the first),
    qwen3, mistral (every layer sliding). Windows of 16 tokens, so short prompts exercise them."""
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
                  eos_token_id=1, bos_token_id=2, tie_word_embeddings=False)
    if family == "llama":
        return transformers.LlamaConfig(**common)
    if family == "qwen2":
        return transformers.Qwen2Config(**common, use_sliding_window=True, sliding_window=16, max_window_layers=1)
    if family == "qwen3":
        return transformers.Qwen3Config(**common, head_dim=16)
    if family == "mistral":
        return transformers.MistralConfig(**common, sliding_window=16)
    raise ValueError(family)


def adopt_special_tokens(config, tokenizer):
    """Give a model config the ids of this tokenizer's own special tokens (bos, eos, pad)."""
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id


def make_tiny_model(folder, family="gemma"):
    """Save a random tiny model of a family (gemma: Gemma 3; llama; qwen2) and its tokenizer into folder (a
    Hugging Face model folder)."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    tokenizer = make_tokenizer(family)
    torch.manual_seed(0)
    config = tiny_config(len(tokenizer)) if family == "gemma" else tiny_family_config(family, len(tokenizer))
    if family != "gemma":
        adopt_special_tokens(config, tokenizer)
    model = AutoModelForCausalLM.from_config(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_model_dir(root, family="gemma"):
    """A prepare_model output folder (model.json) over a fresh tiny model."""
    from peftbench.model import prepare_model

    hf = make_tiny_model(Path(root) / f"tiny-{family}-hf" if family != "gemma" else Path(root) / "tiny-hf", family)
    prepare_model({"source": "local", "path": str(hf)}, Path(root) / "model")
    return Path(root) / "model"
