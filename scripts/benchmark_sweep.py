"""Speed targets of ``fabench sweep`` (a script, never a test: timings depend on the machine).

    .venv/bin/python scripts/benchmark_sweep.py [--repeat N]

1. the published leaderboard's sweep with every record finished: wall time of
   ``fabench sweep leaderboard/sweep.toml --dry-run`` (a fresh process: interpreter start, imports,
   resolving all 36 jobs, one key lookup each; target <= 5 s), and whether Ray was imported;
2. the 12 small synthetic jobs of ``sweeps/synthetic-small.toml`` into a fresh directory: wall
   time with a local Ray at 2 workers (``--jobs 2``) and in-process (``--jobs 1``, with torch's
   default threads and with ``OMP_NUM_THREADS=1``);
3. Ray's own start-up and shut-down (``ray.init(num_cpus=2)`` + ``ray.shutdown()``), separately.

On a shared machine every number includes contention from other processes: run it twice.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FABENCH = [sys.executable, "-m", "fabench.cli"]


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return wall, proc.stdout


def small_sweep(tmp: Path, name: str) -> Path:
    text = (ROOT / "sweeps" / "synthetic-small.toml").read_text()
    path = tmp / f"{name}.toml"
    path.write_text(re.sub(r'^out = .*$', f'out = "records-{name}"', text, flags=re.M))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=1)
    args = ap.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} (1 min) at start")
    for _ in range(args.repeat):
        wall, out = timed(FABENCH + ["sweep", "leaderboard/sweep.toml", "--dry-run"])
        head = out.splitlines()[0]
        check = ("import sys\nfrom fabench import sweep as S\nsw = S.load_sweep('leaderboard/sweep.toml')\n"
                 "assert all(S.finished(sw))\nprint('ray' in sys.modules)")
        _, ray_imported = timed([sys.executable, "-c", check])
        print(f"1. published sweep, all finished: {wall:.2f}s wall for `fabench sweep leaderboard/sweep.toml "
              f"--dry-run` ({head.split(': ', 1)[1].split(';')[0]}; ray imported: {ray_imported.strip()})")

        with tempfile.TemporaryDirectory(prefix="fabench-bench-sweep-") as d:
            tmp = Path(d)
            rows = []
            for name, jobs, env in (("ray-2", "2", {}), ("in-process", "1", {}),
                                    ("in-process-omp1", "1", {"OMP_NUM_THREADS": "1"})):
                path = small_sweep(tmp, name)
                wall, out = timed(FABENCH + ["sweep", str(path), "--jobs", jobs, "--quiet"], env)
                summary = out.strip().splitlines()[-1]
                assert "12 ran, 0 reused, 0 failed" in summary, summary
                rows.append((name, wall, summary.split(" in ", 1)[1]))
                shutil.rmtree(tmp / f"records-{name}", ignore_errors=True)
            for name, wall, inner in rows:
                print(f"2. 12 small synthetic jobs, {name:<16}: {wall:6.2f}s wall (process); sweep itself {inner}")

        code = ("import time, ray\nt = time.perf_counter()\n"
                "ray.init(address='local', num_cpus=2, include_dashboard=False, log_to_driver=False)\n"
                "a = time.perf_counter() - t\nt = time.perf_counter()\nray.shutdown()\n"
                "print(f'{a:.2f} {time.perf_counter() - t:.2f}')")
        _, out = timed([sys.executable, "-c", code])
        start, stop = out.split()
        print(f"3. Ray local start-up {start}s, shut-down {stop}s")
    print(f"load average {os.getloadavg()[0]:.2f} (1 min) at end")


if __name__ == "__main__":
    main()
