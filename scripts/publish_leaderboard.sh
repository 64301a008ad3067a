#!/usr/bin/env bash
# Regenerate the published leaderboard in leaderboard/ with ONE command:
#
#     bash scripts/publish_leaderboard.sh
#
# 1. runs every published evaluation (tasks x recipes binary, fine, robust x seeds 0,1,2) into
#    leaderboard/records; a finished record with the same configuration is reused, so a rerun only
#    computes what is missing (delete a record, or the directory, to recompute);
# 2. writes the tables and figures from those records:
#        fabench leaderboard --results leaderboard/records --out leaderboard
#    (this step alone reproduces leaderboard/ byte for byte; tests/test_leaderboard.py checks it).
#
# Published settings (chosen for a 2-core CPU machine): the synthetic task at the paper's setting
# (k=10, d=3072, 1000 train / 1000 test, every test point attacked); MNIST 5v5 on the full official
# data, 500 seeded test points attacked per seed (--n-eval 500), in both settings: mnist5v5 (the
# paper's: full-batch GD heads on a frozen CNN trained here) and mnist5v5-pixels (heads on pixels);
# CIFAR-10 5v5 on the shared CIFAR-10 *subset* (8068 train / 1017 test images, marked as a subset in
# the tables), every test image attacked, in both settings: cifar5v5 (GD heads on a frozen width-32
# CNN trained here) and cifar5v5-smallcnn (Adam heads on the earlier width-16 CNN). Every choice is
# in the records' configurations, listed under each table.
#
# Environment: FABENCH (the fabench command; default .venv/bin/fabench, else `fabench` on PATH), FABENCH_SEEDS (default
# 0,1,2), FABENCH_PUBLISH_TASKS (default "synthetic mnist5v5 mnist5v5-pixels cifar5v5 cifar5v5-smallcnn"), FABENCH_DATA (where the
# real datasets are; default ../shared/data next to the repository when it exists).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
default_fabench=fabench
if [ -x "$root/.venv/bin/fabench" ]; then default_fabench="$root/.venv/bin/fabench"; fi
fabench="${FABENCH:-$default_fabench}"
seeds="${FABENCH_SEEDS:-0,1,2}"
tasks="${FABENCH_PUBLISH_TASKS:-synthetic mnist5v5 mnist5v5-pixels cifar5v5 cifar5v5-smallcnn}"
records="leaderboard/records"
recipes="binary fine robust"
data="${FABENCH_DATA:-}"
if [ -z "$data" ] && [ -d "$root/../shared/data" ]; then data="$root/../shared/data"; fi

task_options() {  # the published options of each task
  case "$1" in
    synthetic) echo "" ;;
    mnist5v5|mnist5v5-pixels) echo "--n-eval 500" ;;
    cifar5v5) echo "" ;;
    *) echo "" ;;
  esac
}

for task in $tasks; do
  for recipe in $recipes; do
    echo "publish: $task / $recipe / seeds $seeds" >&2
    # shellcheck disable=SC2046
    $fabench evaluate --task "$task" --recipe "$recipe" --seeds "$seeds" --out "$records" --quiet \
      ${data:+--data-dir "$data"} $(task_options "$task")
  done
done
$fabench leaderboard --results "$records" --out leaderboard
