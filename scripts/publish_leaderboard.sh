#!/usr/bin/env bash
# Regenerate the published leaderboard in leaderboard/ with ONE command:
#
#     bash scripts/publish_leaderboard.sh
#
# 1. runs every published evaluation for seeds 0,1,2 into leaderboard/records (a finished record
#    with the same configuration is reused, so a rerun only computes what is missing);
# 2. writes the tables and figures from those records: `fabench leaderboard --results
#    leaderboard/records --out leaderboard` (this step alone reproduces leaderboard/ byte for byte).
#
# Environment: FABENCH (the fabench command, default `fabench` on PATH), FABENCH_SEEDS (default
# 0,1,2), FABENCH_PUBLISH_TASKS (default "synthetic mnist5v5 cifar5v5"; real-data tasks need their
# datasets, see `fabench evaluate --help` for --data-dir / $FABENCH_DATA).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
fabench="${FABENCH:-fabench}"
seeds="${FABENCH_SEEDS:-0,1,2}"
tasks="${FABENCH_PUBLISH_TASKS:-synthetic mnist5v5 cifar5v5}"
records="leaderboard/records"
recipes="binary fine robust"

for task in $tasks; do
  for recipe in $recipes; do
    echo "publish: $task / $recipe / seeds $seeds" >&2
    $fabench evaluate --task "$task" --recipe "$recipe" --seeds "$seeds" --out "$records" --quiet
  done
done
$fabench leaderboard --results "$records" --out leaderboard
