"""A tiny random Gemma 3 and a small byte-level BPE tokenizer with Gemma's special tokens, for fast tests."""
from pathlib import Path

import torch

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
CORPUS = [
    "What does the Python function do? It returns the value of the argument.",
    "Which module provides dedent? The textwrap module: from textwrap import dedent.",
    "The signature is json.dumps(obj, *, skipkeys=False). Explain this keyword in one sentence.",
    "user model assistant system Name some functions from the math module: gcd, sqrt and floor.",
] * 20


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from peftbench.chat_format import resolve_template

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        additional_special_tokens=["<start_of_turn>", "<end_of_turn>"],
    )
    tokenizer.chat_template = resolve_template("gemma")  # a real model's tokenizer carries its template
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


def make_tiny_model(folder):
    """Save a random tiny Gemma 3 and its tokenizer into folder (a Hugging Face model folder)."""
    from transformers import Gemma3ForCausalLM

    folder = Path(folder)
    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(tiny_config(len(tokenizer))).to(torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def make_model_dir(root):
    """A prepare_model output folder (model.json) over a fresh tiny model."""
    from peftbench.model import prepare_model

    hf = make_tiny_model(Path(root) / "tiny-hf")
    prepare_model({"source": "local", "path": str(hf)}, Path(root) / "model")
    return Path(root) / "model"
