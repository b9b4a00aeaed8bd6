#!/bin/bash
# HumanEval single-line, every 10th task (104), through `fimble lsp`, for each embedded model and
# CPU quantization, one after another on one machine: with the server's default latency budget
# (as users get it) and without one (the model alone). About 35 minutes on 2 vCPUs; needs the
# 1.5b extra. Writes benchmarks/results/cpu_tiers/<model>-<quantization>-{budget2500,no-budget}.json.
#
#     bash benchmarks/cpu_tiers.sh
set -u
cd "$(dirname "$0")/.."
export FIMBLE_DAEMON_STANDBY=0
mkdir -p benchmarks/results/cpu_tiers
work=$(mktemp -d /tmp/fimble-cpu-tiers-XXXXXX)
trap 'rm -rf "$work"' EXIT
for budget in budget2500 no-budget; do
  [ "$budget" = no-budget ] && latency=(--max-latency-ms 0) || latency=()
  for entry in "0.5b-int8-weight-only|embedded|" "0.5b-bnb-nf4|embedded|bnb-nf4" "0.5b-bnb-int8|embedded|bnb-int8" "1.5b-int8-weight-only|embedded-1.5b|"; do
    IFS='|' read -r label source quantization <<< "$entry"
    dir=$work/$label-$budget
    mkdir -p "$dir"
    {
      echo "[models.single_line]"
      echo "source = \"$source\""
      [ -n "$quantization" ] && echo "quantization = \"$quantization\""
      echo 'device = "cpu"'
    } > "$dir/config.toml"
    started=$SECONDS
    FIMBLE_CONFIG=$dir/config.toml FIMBLE_RUNTIME_DIR=$dir/run python benchmarks/humaneval_infill.py --every 10 --skip-multi-line \
      "${latency[@]}" --out "benchmarks/results/cpu_tiers/$label-$budget.json" > "$dir/log" 2>&1
    echo "$label $budget: exit $?, $((SECONDS - started)) s"
    FIMBLE_CONFIG=$dir/config.toml FIMBLE_RUNTIME_DIR=$dir/run python -m fimble daemon stop > /dev/null 2>&1
  done
done
