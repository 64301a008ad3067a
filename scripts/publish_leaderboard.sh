#!/usr/bin/env bash
# Regenerate the published leaderboard in leaderboard/ with ONE command:
#
#     bash scripts/publish_leaderboard.sh [fabench sweep options, e.g. --jobs 2 or --ray-address ADDR]
#
# which is the two steps
#
#     fabench sweep leaderboard/sweep.toml && fabench leaderboard --results leaderboard/records --out leaderboard
#
# The sweep file leaderboard/sweep.toml lists every published evaluation (tasks x recipes x seeds,
# with each task's settings); finished records are reused by their configuration key, so a rerun
# only computes what is missing (delete a record to recompute it). The second step alone
# reproduces leaderboard/ byte for byte (tests/test_leaderboard.py checks it).
#
# Environment: FABENCH (the fabench command; default .venv/bin/fabench, else `fabench` on PATH);
# FABENCH_DATA (the real datasets; default ../shared/data next to the repository when it exists).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
fabench="${FABENCH:-$( [ -x .venv/bin/fabench ] && echo .venv/bin/fabench || echo fabench )}"
if [ -z "${FABENCH_DATA:-}" ] && [ -d "$root/../shared/data" ]; then export FABENCH_DATA="$root/../shared/data"; fi
$fabench sweep leaderboard/sweep.toml "$@" && $fabench leaderboard --results leaderboard/records --out leaderboard
