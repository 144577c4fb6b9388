#!/usr/bin/env bash
# Measure the README's demo command as a newcomer meets it: a fresh clone of this repository's HEAD in a
# temporary folder, the install and the workflow timed apart, then the results copied into
# benchmarks/demo-cpu/ (report, plots, comparison, manifest, each run's train_metrics.json, timing.json).
#   scripts/measure_demo.sh            # then review and commit benchmarks/demo-cpu/
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
clone="$(mktemp -d)/peftbench"
git clone -q "$repo" "$clone"
cd "$clone"
commit="$(git rev-parse --short HEAD)"
# The README's quickstart command, split at its '&&' into the install and the workflow.
command="$(grep -m1 -- '--configfile=configs/demo.yaml$' README.md)"
install="${command% && .venv/bin/snakemake*}"
workflow=".venv/bin/snakemake${command#*&& .venv/bin/snakemake}"
start=$(date +%s)
bash -c "$install"
installed=$(date +%s)
bash -c "$workflow" 2>&1 | tee snakemake_log.txt | tail -3
finished=$(date +%s)

out="$repo/benchmarks/demo-cpu"
rm -rf "$out" && mkdir -p "$out/metrics"
cp results/demo/{report.md,report.html,comparison.json,*.png} "$out/"
cp results/demo/data/manifest.json "$out/"
for metrics in results/demo/*/seed*/trained/train_metrics.json; do
    run="${metrics#results/demo/}"; run="${run%/trained/train_metrics.json}"
    cp "$metrics" "$out/metrics/${run//\//-}.json"
done
cores=$(nproc)
cpu="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
gpu="$(command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name --format=csv,noheader | head -1 || echo no GPU)"
memory_gb=$(( $(grep MemTotal /proc/meminfo | awk '{print $2}') / 1024 / 1024 ))
cat > "$out/timing.json" <<EOF
{"install_s": $((installed - start)), "workflow_s": $((finished - installed)), "total_s": $((finished - start)), "cores": $cores, "commit": "$commit", "date": "$(date -u +%F)", "machine": "$cores-core $cpu, $memory_gb GB, $gpu", "install_command": "$install", "workflow_command": "$workflow"}
EOF
cat "$out/timing.json"
