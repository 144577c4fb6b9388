#!/usr/bin/env bash
# The study's DAG on one GPU at a quarter of its sizes (benchmarks/study_gpu.py says how and why), resumable:
# a run that its time limit cuts picks up where it stopped when this is called again on the same machine.
#   WORKFLOW=1 scripts/offline_gpu_bundle.sh        # here: wheels (snakemake too) and the tokenizer
#   bash benchmarks/study_gpu.sh LIMIT_S OUT         # there: at most LIMIT_S seconds of Snakemake
#   bash benchmarks/study_gpu.sh LIMIT_S OUT galore/seed0/scores.json ...   # only these outputs (and what
#                                                    # they need), paths under the run's results folder
# Writes OUT/study.json (per-step times, the extrapolated full study), OUT/snakemake_log.txt and
# OUT/study.tar.gz (every rule's log and benchmark file, report.md, comparison.json).
set -uo pipefail
cd "$(dirname "$0")/.."
limit=${1:-540}
out=${2:-benchmarks/study-h200}
shift 2 2>/dev/null || shift $#
work=/tmp/study
mkdir -p "$out"
if [ ! -e /tmp/site/.installed ]; then
    source .offline/setup.sh || exit 1
    touch /tmp/site/.installed
fi
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PATH=/tmp/bin:$PATH
mkdir -p /tmp/bin
# console scripts as pip writes them: the step's exit status is the process's (a failed step must fail its job)
printf '#!/usr/bin/env python3\nimport sys\nfrom peftbench.cli import main\nsys.exit(main())\n' > /tmp/bin/peftbench
printf '#!/usr/bin/env python3\nimport sys\nfrom snakemake.cli import main\nsys.exit(main())\n' > /tmp/bin/snakemake
chmod +x /tmp/bin/peftbench /tmp/bin/snakemake
[ -e $work/config.yaml ] || python3 benchmarks/study_gpu.py prepare --tokenizer /tmp/tok --work $work || exit 1

targets=()
for target in "${@:-report.md}"; do targets+=("$work/results/$target"); done
# a run that the time limit stopped left Snakemake's lock behind
snakemake --unlock --configfile=$work/config.yaml -- "${targets[@]}" > /dev/null 2>&1
start=$(date +%s)
timeout --signal=INT --kill-after=60 "$limit" \
    snakemake --cores 16 --resources gpu=1 --rerun-incomplete --configfile=$work/config.yaml \
    -- "${targets[@]}" >> "$out/snakemake_log.txt" 2>&1
status=$?
elapsed=$(( $(date +%s) - start ))
echo "snakemake exit $status after $elapsed s" | tee -a "$out/snakemake_log.txt"
echo "$elapsed" >> $work/wall_clock_parts.txt
gpu=$(python3 -c "import torch; print(torch.cuda.get_device_name())")
python3 benchmarks/study_gpu.py summarise --work $work --machine "$gpu" \
    --wall-clock "$(python3 -c 'import sys; print(sum(map(float, open(sys.argv[1]))))' $work/wall_clock_parts.txt)" --out "$out/study.json"
find $work/results/logs -name "*.log" -exec sed -i 's/\r/\n/g' {} +  # progress bars, one update per line
tar czf "$out/study.tar.gz" -C $work/results logs benchmarks \
    $(cd $work/results && ls report.md comparison.json */seed0/trained/train_metrics.json 2>/dev/null)
exit $status
