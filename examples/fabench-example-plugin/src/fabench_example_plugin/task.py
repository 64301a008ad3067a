"""Task ``tiny-synthetic``: the paper's synthetic task, small enough to evaluate in seconds.

A task can be any object with ``meta`` and ``load(params, *, seed, data_dir, progress)`` returning
:class:`fabench.types.TaskData`; here it is a task file of fabench's built-in ``synthetic`` kind.
"""

from __future__ import annotations

from pathlib import Path

from fabench.taskfiles import load_task_file

tiny_synthetic = load_task_file(Path(__file__).with_name("tiny_synthetic.toml"))
