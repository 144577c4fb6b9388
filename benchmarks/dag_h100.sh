#!/usr/bin/env bash
# The workflow's whole DAG on one GPU at the gemma-3-1b-it shape with random weights (no checkpoint can
# reach the GPU machine) on the builtin demo data: every rule, QLoRA's 4-bit and GaLore on CUDA included.
#   bash benchmarks/dag_h100.sh [OUT]      # needs peftbench's environment and a Gemma 3 tokenizer in $TOKENIZER
# Writes OUT/report.md, comparison.json, snakemake_log.txt, logs/, manifest.json (default benchmarks/2026-11-25-h100/dag).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/2026-11-25-h100/dag}
work=/tmp/dag  # output_dir and model.path of benchmarks/2026-11-25-h100/dag/config.yaml
python3 - "${TOKENIZER:-/tmp/tok}" /tmp/hf1b <<'PY'
import sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
config = AutoConfig.from_pretrained("benchmarks/gemma-3-1b-it.config.json")
torch.manual_seed(0)
with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
model.save_pretrained(sys.argv[2])
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
PY
start=$(date +%s)
mkdir -p "$out"
status=0
snakemake --cores 4 --scheduler greedy --configfile benchmarks/2026-11-25-h100/dag/config.yaml \
    -- "$work/report.md" \
    > "$out/snakemake_log.txt" 2>&1 || status=$?
echo "snakemake exit $status after $(( $(date +%s) - start )) s"
cp "$work/report.md" "$work/comparison.json" "$work/data/manifest.json" "$out/"
rm -rf "$out/logs" && cp -r "$work/logs" "$out/logs"
find "$out/logs" -name "*.log" -exec sed -i 's/\r/\n/g' {} +  # progress bars, one update per line
exit $status
