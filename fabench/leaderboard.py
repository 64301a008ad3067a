"""Result records -> leaderboard tables (markdown, CSV, JSON).

One table per task, one row per *configuration group*: the records that share their whole
configuration except the seed (``Record.config`` minus ``"seed"``), which in practice is one row
per recipe (built-in or plugin). Each row gives, as mean ± sample standard deviation (``ddof=1``)
over the seeds:

* clean accuracy of the binary decision;
* worst-case robust accuracy (per point, the worst over all attacks of the record) at the task's
  headline L2 radii (``Record.headline_radii``);
* the median minimal adversarial L2 distance (worst case over attacks);
* the feature-averaging score (:mod:`fabench.metrics`);

plus the number of seeds, the attacks the worst case covered, whether the data was a subset
(``record.data_info["data_subset"]``) and what ``fabench audit`` found (:func:`audit_label`; seed by
seed, with points and radius, in the page's last table, :func:`audit_table`), and, seed by seed, how
each trained head's training went (:func:`training_table`).

Only records it can trust are shown (:func:`read_records`; each one left out with one warning
line): a file that is not a readable record of this schema (:func:`load_record`: also duplicate
JSON keys, numbers Python cannot read, missing fields; a FIFO, a device, a huge file), a record whose
fields have the wrong types or shapes or whose configuration holds values evaluate never writes
(:func:`shape_problem`, :func:`config_problem`), a record whose ``key`` is not the key of its configuration, whose file is not where
:func:`fabench.records.record_path` puts it (task/recipe/seed/key), whose numbers are impossible
(:func:`impossible_numbers`), or that conflicts with another copy of the same configuration and
seed with other contents (both are left out: which is genuine cannot be told).

Rows are ordered by task, then recipe name, then configuration id; nothing in the output depends
on file order, time or the machine, so the same records always give the same bytes
(``fabench leaderboard`` regenerates ``leaderboard/`` exactly). This module prints nothing;
:mod:`fabench.cli` does.
"""

from __future__ import annotations

import io
import json
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import pandas as pd
from tabulate import tabulate

from fabench.errors import ConfigError
from fabench.records import (
    Record, RecordWarning, config_key, iter_record_paths, radius_key, read_record_text, record_path, write_atomic,
)

FORMATS = ("markdown", "csv", "json")
TABLE_FILES = {"markdown": "README.md", "csv": "leaderboard.csv", "json": "leaderboard.json"}
FIGURES_DIR = "figures"
AUDIT_SECTION = "Audit gaps per seed"
TRAINING_SECTION = "Head training per seed"
"""The headings of the leaderboard page's per-seed audit and training tables (with spaces: no task name collides)."""
DIGITS = 6
"""Numbers in CSV and JSON are rounded to this many decimals (so they do not show float noise)."""


# -- grouping ---------------------------------------------------------------------------------
def group_key(record: Record) -> str:
    """The configuration key of a record *without its seed*: records with equal keys are seeds
    of one experiment and are aggregated into one leaderboard row."""
    return config_key({k: v for k, v in record.config.items() if k != "seed"})


@dataclass(frozen=True)
class Group:
    """The records of one configuration, one per seed, sorted by seed."""

    task: str
    recipe: str
    config_id: str
    records: tuple[Record, ...]

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(r.seed for r in self.records)

    @property
    def attacks(self) -> tuple[str, ...]:
        return tuple(self.records[0].attacks)

    @property
    def data_subset(self) -> bool:
        return any(bool(r.data_info.get("data_subset")) for r in self.records)


def group_records(records: Iterable[Record]) -> list[Group]:
    """Group records by configuration minus seed, one record per seed (the first met wins;
    :func:`read_records` has already left out conflicting copies). Sorted by task, recipe, config id."""
    by_key: dict[str, dict[int, Record]] = {}
    for rec in records:
        by_key.setdefault(group_key(rec), {}).setdefault(int(rec.seed), rec)
    groups = []
    for key, seeds in by_key.items():
        recs = tuple(seeds[s] for s in sorted(seeds))
        groups.append(Group(recs[0].task, recs[0].recipe, key[:8], recs))
    return sorted(groups, key=lambda g: (g.task, g.recipe, g.config_id))


#: Slack when comparing robust accuracies (fractions of the same points, float32: exact up to this).
ACCURACY_TOL = 1e-6
#: Relative and absolute slack of a distance against a radius (above the attacks' own, 1e-5).
DISTANCE_TOL = 1e-4


def identity_problem(path: Path | None, record: Record) -> str | None:
    """Why ``record`` (read from ``path``) is not what it says it is, or ``None``: its ``key`` is not
    :func:`~fabench.records.config_key` of its configuration, its task/recipe/seed differ from its
    configuration's, or (with a ``path``) its file is not named as :func:`~fabench.records.record_path`
    names it."""
    cfg = record.config
    if record.key != config_key(cfg):
        return f"its key {record.key[:16]} is not the key of its configuration ({config_key(cfg)[:16]})"
    for name, value in (("task", record.task), ("recipe", record.recipe), ("seed", record.seed)):
        if name in cfg and cfg[name] != value:
            return f"its {name} {value!r} is not its configuration's ({cfg[name]!r})"
    if path is None:
        return None
    expected = record_path(Path(), record.task, record.recipe, int(record.seed), record.key).parts
    if path.absolute().parts[-len(expected):] != expected:
        return f"its file is not named after its task, recipe, seed and key (expected .../{'/'.join(expected)})"
    return None


#: Fields of a record that must be JSON objects (dicts) when present; their readers call ``.get``.
DICT_FIELDS = ("config", "robust_accuracy", "median_distance", "cosine_matrix", "timings", "versions", "data_info",
               "model_info", "sources", "feature_space", "provenance", "runtime", "task_recipe_defaults",
               "certified", "flags")
_HEX = frozenset("0123456789abcdef")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _finite_list(v: Any) -> bool:
    """A list of finite numbers (not booleans)."""
    return isinstance(v, list) and all(_value(x) is not None for x in v)


def _seed_problem(seed: Any, *, what: str) -> str | None:
    """Why ``seed`` is not one :func:`fabench.validation.check_seed` accepts, or ``None``."""
    from fabench.validation import SEED_RANGE

    lo, hi = SEED_RANGE
    return None if _is_int(seed) and lo <= seed <= hi else f"{what} {seed!r} is not an integer in [{lo}, {hi}]"


def config_problem(config: Any) -> str | None:
    """Why a record's ``config`` is not a configuration :func:`fabench.evaluation.resolve` writes,
    or ``None``: the types of its fields, its seed (:func:`fabench.validation.check_seed`), radii
    (:func:`fabench.protocol.check_radii`), protocol mode, ``sources`` (one per part, as evaluate
    names them) and the values of its parameters (:func:`params_problem`). Whether evaluate would
    give this very configuration back is asked by resolving it (:func:`fabench.audit.resolve_record`)."""
    from fabench.protocol import PROTOCOL_MODES, check_radii
    from fabench.records import SCHEMA_VERSION

    if not isinstance(config, dict):
        return "its configuration is not a JSON object"
    if config.get("schema") != SCHEMA_VERSION:
        return f"its configuration is of schema {config.get('schema')!r}, this fabench reads schema {SCHEMA_VERSION}"
    for name in ("task", "recipe"):
        if not isinstance(config.get(name), str):
            return f"its configuration's {name} {config.get(name)!r} is not a name"
    for name in ("task_params", "recipe_params", "attacks"):
        if not isinstance(config.get(name), dict):
            return f"its configuration's {name} is not a JSON object"
    if not config["attacks"] or not all(isinstance(v, dict) for v in config["attacks"].values()):
        return "its configuration's attacks are not a non-empty table of attack parameters"
    if not _finite_list(config.get("radii")) or not config["radii"]:
        return f"its configuration's radii {config.get('radii')!r} are not a non-empty list of numbers"
    n_eval = config.get("n_eval")
    if not isinstance(n_eval, int) or isinstance(n_eval, bool) or n_eval < 0:
        return f"its configuration's n_eval {n_eval!r} is not a non-negative integer"
    if config.get("protocol") not in PROTOCOL_MODES:
        return f"its configuration's protocol {config.get('protocol')!r} is not one of {', '.join(PROTOCOL_MODES)}"
    problem = _seed_problem(config.get("seed"), what="its configuration's seed")
    if problem:
        return problem
    try:
        check_radii(config["radii"])
    except ConfigError as exc:
        return f"its configuration's {exc}"
    sources = config.get("sources")
    parts = ["task", "recipe", *(f"attack {a}" for a in config["attacks"])]
    if (not isinstance(sources, dict) or sorted(sources) != sorted(parts)
            or not all(isinstance(v, str) and v for v in sources.values())):
        return f"its configuration's sources {sources!r} do not name the provider of each of its {', '.join(parts)}"
    return params_problem(config)


def params_problem(config: Mapping[str, Any]) -> str | None:
    """Why the task, recipe or attack parameters of a configuration (its shape checked by
    :func:`config_problem`) are not the values :func:`fabench.evaluation.resolve` writes, or ``None``:
    each part's parameters resolved as evaluate resolves them (:func:`fabench.params.resolve` with
    the owner's declared defaults, bounds and choices: an unknown name, a value of the wrong type
    or out of range) must give them back, every one, with the same JSON value. A part whose provider
    (``sources``) is not registered here (a plugin not installed, a task file given by path) is not
    checked: its parameters are unknown."""
    from fabench import params as P
    from fabench import registry
    from fabench.errors import FabenchError
    from fabench.models.backbones import effective_params

    sources = config["sources"]
    parts = [("task", registry.tasks, config["task"], config["task_params"], sources["task"]),
             ("recipe", registry.recipes, config["recipe"], config["recipe_params"], sources["recipe"])]
    parts += [("attack", registry.attacks, name, params, sources[f"attack {name}"])
              for name, params in config["attacks"].items()]
    for kind, reg, name, params, source in parts:
        try:
            meta = reg.entry(f"{name}@{source}").meta
        except FabenchError:
            continue  # not registered here: its parameters cannot be judged
        try:
            resolved = P.resolve(meta.params, params, owner=f"{kind} {name}", bounds=meta.bounds,
                                 choices=meta.choices)
            if kind == "recipe":
                resolved = effective_params(resolved)  # as evaluate: only the backbone's own backbone_* keys
        except FabenchError as exc:
            return f"its configuration's parameters: {exc}"
        for key in sorted(set(resolved) | set(params)):
            if key not in params:
                return f"its configuration's {kind} {name} has no {key!r} (evaluate writes every parameter)"
            if key not in resolved or config_key({key: resolved[key]}) != config_key({key: params[key]}):
                return (f"its configuration's {kind} {name} has {key}={params[key]!r}, not a value evaluate writes"
                        + (f" ({resolved[key]!r})" if key in resolved else ""))
    return None


def shape_problem(record: Record) -> str | None:
    """Why the record's fields are not what ``fabench evaluate`` writes, or ``None``: the types of
    every field a reader uses (a wrong one would crash the leaderboard, the plots or the audit), a
    seed outside :data:`fabench.validation.SEED_RANGE`, a schema this fabench does not read, radii
    other than its configuration's, headline radii that are not among them, a robust-accuracy curve
    of an attack it did not run or at a radius it does not have, fewer than one evaluated point, a
    feature-averaging score outside [0, 1]. The numbers themselves: :func:`impossible_numbers`."""
    from fabench.records import SCHEMA_VERSION

    if record.schema != SCHEMA_VERSION:
        return f"a record of schema {record.schema!r}, this fabench reads schema {SCHEMA_VERSION}"
    key = record.key
    if not isinstance(key, str) or len(key) != 64 or not set(key) <= _HEX:
        return f"its key {key!r} is not a configuration key (64 hex digits)"
    for name in DICT_FIELDS:
        if not isinstance(getattr(record, name), dict):
            return f"its field {name!r} is not a JSON object"
    problem = config_problem(record.config)
    if problem:
        return problem
    problem = _seed_problem(record.seed, what="its seed")
    if problem:
        return problem
    if not isinstance(record.created, str):
        return "its created timestamp is not text"
    if not isinstance(record.verified_attacks, list) or not all(isinstance(a, str) for a in record.verified_attacks):
        return "its verified_attacks are not a list of names"
    if not _finite_list(record.radii) or sorted(float(r) for r in record.radii) != sorted(
            float(r) for r in record.config["radii"]):
        return f"its radii {record.radii!r} are not its configuration's ({record.config['radii']!r})"
    if list(record.attacks) != list(record.config["attacks"]):
        return f"its attacks {record.attacks!r} are not its configuration's ({list(record.config['attacks'])!r})"
    keys = {radius_key(r) for r in record.radii}
    if not _finite_list(record.headline_radii) or not {radius_key(r) for r in record.headline_radii} <= keys:
        return f"its headline radii {record.headline_radii!r} are not among its radii"
    for name, curve in record.robust_accuracy.items():
        if name != "worst" and name not in record.config["attacks"]:
            return f"it has a robust accuracy of {name!r}, an attack its configuration did not run"
        extra = sorted(set(curve) - keys)
        if extra:
            return f"its robust accuracy of {name} has radii {', '.join(extra)} that are not among its radii"
    for name, value in record.median_distance.items():
        if value is not None and (_value(value) is None or value < 0):
            return f"its median distance of {name} is {value!r}, not a non-negative number"
    if not _is_int(record.n_eval) or record.n_eval < 1:
        return f"its n_eval {record.n_eval!r} is not a positive number of evaluated points"
    if 0 < record.config["n_eval"] < record.n_eval:
        return f"it evaluated {record.n_eval} points, more than its configuration's n_eval {record.config['n_eval']}"
    for name in ("n_train", "n_test"):
        v = record.data_info.get(name)
        if v is not None and (not _is_int(v) or v < 0):
            return f"its data_info.{name} {v!r} is not a number of points"
    n_test = record.data_info.get("n_test")
    if isinstance(n_test, int) and not isinstance(n_test, bool) and record.n_eval > n_test:
        return f"it evaluated {record.n_eval} points, more than its test set's {n_test}"
    if record.fa_score is not None:
        fa = _value(record.fa_score)
        if fa is None or not -ACCURACY_TOL <= fa <= 1 + ACCURACY_TOL:
            return f"its feature-averaging score {record.fa_score!r} is not a number in [0, 1]"
    return _cosine_problem(record.cosine_matrix)


def _cosine_problem(cm: Mapping[str, Any]) -> str | None:
    """Why ``cosine_matrix`` cannot be drawn (not a rectangle of numbers in [-1, 1] or nulls, labels
    that are not lists), or ``None``."""
    values = cm.get("values")
    if values is not None:
        if not isinstance(values, list) or not all(isinstance(row, list) for row in values):
            return "its cosine matrix is not a list of rows"
        if len({len(row) for row in values}) > 1:
            return "its cosine matrix's rows are of different lengths"
        for row in values:
            for v in row:
                if v is not None and (_value(v) is None or not -1 - DISTANCE_TOL <= v <= 1 + DISTANCE_TOL):
                    return f"its cosine matrix holds {v!r}, not a cosine in [-1, 1]"
    for name in ("units", "features", "positive_features", "unit_positive", "unit_scores"):
        if cm.get(name) is not None and not isinstance(cm.get(name), list):
            return f"its cosine matrix's {name} are not a list"
    return None


def record_problem(record: Record, path: Path | None = None) -> str | None:
    """Why a record cannot be trusted (shown, plotted or audited), or ``None``: its fields
    (:func:`shape_problem`), its identity (:func:`identity_problem`; the file name only with
    ``path``) and its numbers (:func:`impossible_numbers`)."""
    return shape_problem(record) or identity_problem(path, record) or impossible_numbers(record)


def _value(v: Any) -> float | None:
    """A finite number, else ``None``."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def impossible_numbers(record: Record) -> str | None:
    """Why the record's numbers cannot be a protocol's result, or ``None``. Checked:

    * clean and robust accuracies are numbers in [0, 1] (not NaN, not missing at a radius), there
      is a worst-case curve, and every attack of the configuration has a curve;
    * no robust accuracy is above the clean accuracy, and every curve is non-increasing in the radius;
    * the worst case is never above an attack's curve (``full`` mode: the attack's own; ``fast``
      mode: the cumulative curves, whose lowest is then the worst case itself) and, in ``full``
      mode, never below what all the attacks together can have broken;
    * below the median minimal distance at least half the points are unbroken (a point broken at
      ``r`` has a distance at most ``r``: :mod:`fabench.validation`);
    * an input-space certified robust accuracy (a lower bound) is never above the worst case.
    """
    clean = _value(record.clean_accuracy)
    if clean is None or not 0.0 <= clean <= 1.0:
        return f"clean accuracy {record.clean_accuracy!r} is not a number in [0, 1]"
    curves = record.robust_accuracy
    if "worst" not in curves:
        return "it has no worst-case robust accuracy"
    attacks = record.config.get("attacks", {})
    missing = [str(a) for a in (attacks if isinstance(attacks, (dict, list)) else []) if a not in curves]
    if missing:
        return f"its configuration's attacks {', '.join(missing)} have no robust accuracy"
    keys = [radius_key(r) for r in sorted(float(r) for r in record.radii)]
    table: dict[str, list[float]] = {}
    for name, curve in curves.items():
        row: list[float] = []
        for k in keys:
            v = _value(curve.get(k))
            if v is None or not 0.0 <= v <= 1.0:
                return f"robust accuracy of {name} at r={k} is {curve.get(k)!r}, not a number in [0, 1]"
            if v > clean + ACCURACY_TOL:
                return f"robust accuracy of {name} at r={k} ({v:g}) is above the clean accuracy ({clean:g})"
            if row and v > row[-1] + ACCURACY_TOL:
                return f"robust accuracy of {name} rises with the radius ({row[-1]:g} -> {v:g} at r={k})"
            row.append(v)
        table[name] = row
    worst = table.pop("worst")
    fast = str(record.config.get("protocol", "full") or "full") == "fast"
    for i, k in enumerate(keys):
        for name, row in table.items():
            if worst[i] > row[i] + ACCURACY_TOL:
                return f"the worst case at r={k} ({worst[i]:g}) is above {name}'s curve ({row[i]:g})"
        if not table:
            continue
        if fast and abs(worst[i] - min(row[i] for row in table.values())) > ACCURACY_TOL:
            return f"the worst case at r={k} ({worst[i]:g}) is not the lowest of the fast mode's cumulative curves"
        union = clean - sum(clean - row[i] for row in table.values())  # every attack broke other points
        if not fast and worst[i] < union - ACCURACY_TOL * len(table):
            return (f"the worst case at r={k} ({worst[i]:g}) is below what all the attacks together can have "
                    f"broken ({union:g})")
    median = record.median_min_distance
    if median is not None:
        m = _value(median)
        if m is None or m < 0:
            return f"median minimal distance {median!r} is not a non-negative number"
        for i, k in enumerate(keys):
            if float(k) * (1 + DISTANCE_TOL) + DISTANCE_TOL < m and worst[i] < 0.5 - ACCURACY_TOL:
                return (f"median minimal distance {m:g}, but only {worst[i]:g} of the points are unbroken at "
                        f"r={k} below it (at least half are)")
    cert = record.certified if isinstance(record.certified, dict) else {}
    cert_curve = cert.get("robust_accuracy")
    if cert.get("space") == "input" and isinstance(cert_curve, dict):
        for i, k in enumerate(keys):
            c = _value(cert_curve.get(k))
            if c is not None and c > worst[i] + ACCURACY_TOL:
                return f"certified robust accuracy at r={k} ({c:g}) is above the worst case ({worst[i]:g})"
    return None


def _warn(message: str) -> None:
    warnings.warn(f"fabench: {message}", RecordWarning, stacklevel=3)


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: a key given twice is an error (which one is meant?)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"the key {key!r} is given twice in one object")
        out[key] = value
    return out


def load_record(path: Path) -> Record:
    """The record in ``path``, read strictly: anything :func:`fabench.records.read_record` refuses
    (also a FIFO, a device or a file above :data:`~fabench.records.MAX_RECORD_BYTES`, before it is
    read: :func:`~fabench.records.read_record_text`), and also a key given twice in one JSON object,
    a number JSON cannot turn into a Python one (an integer of thousands of digits), a record
    missing one of ``Record``'s required fields, or of another schema. Every refusal is a one-line :class:`~fabench.errors.ConfigError` that starts
    with the quoted path. It does not judge the contents: see :func:`record_problem`."""
    import dataclasses

    from fabench.records import SCHEMA_VERSION

    where = repr(str(path))
    text = read_record_text(path)
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{where} is not a fabench record (nested too deeply)") from None
    except ConfigError as exc:
        raise ConfigError(f"{where} is not a fabench record ({exc})") from None
    except ValueError as exc:  # e.g. an integer of more than sys.get_int_max_str_digits() digits
        raise ConfigError(f"{where} is not a fabench record ({str(exc).split(';')[0]})") from None
    if isinstance(obj, dict):
        required = {f.name for f in dataclasses.fields(Record)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing = sorted(required - set(obj))
        if missing:
            raise ConfigError(f"{where}: not a fabench record (missing {', '.join(missing)})")
    try:
        rec = Record.from_json(obj)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: not a fabench record ({exc})") from None
    if rec.schema != SCHEMA_VERSION:
        raise ConfigError(f"{where}: a record of schema {rec.schema}, this fabench reads schema {SCHEMA_VERSION}")
    return rec


def iter_trusted(results: Path) -> Iterator[tuple[Path, Record]]:
    """Every record below ``results`` (sorted by path) that :func:`load_record` reads and
    :func:`record_problem` accepts; every other file :func:`~fabench.records.iter_record_paths`
    lists is left out with one :class:`~fabench.records.RecordWarning` line naming it and why.
    Never raises for a file's contents."""
    for path in iter_record_paths(results):
        try:
            rec = load_record(path)
        except ConfigError as exc:
            _warn(f"skipping {exc}")
            continue
        problem = record_problem(rec, path)
        if problem:
            _warn(f"skipping {str(path)!r}: {problem}")
            continue
        yield path, rec


def read_records(results: Path) -> list[Record]:
    """Every record below ``results`` that the leaderboard can trust (sorted by path), with its
    audit (``fabench audit``, ``<record>.audit``, if it applies to this record) summarised in
    memory as ``flags["audit"]``.

    Left out, each with one :class:`~fabench.records.RecordWarning` line (:func:`iter_trusted`): a
    file that is not a readable record (:func:`load_record`), a record whose fields are not what
    ``fabench evaluate`` writes (:func:`shape_problem`), whose identity is wrong
    (:func:`identity_problem`) or whose numbers are impossible (:func:`impossible_numbers`);
    copies of one configuration and seed (one key) whose contents differ
    (:func:`fabench.audit.record_digest`): all of them, one warning per conflict. Identical copies
    count once (the first with an audit that applies, else the first). An audit that does not
    apply is not shown (one warning); an ``audit`` summary stored in the record file itself is dropped."""
    from fabench.audit import audit_path, check_audit, is_full_suite, record_digest

    by_key: dict[str, list[tuple[Path, Record, str]]] = {}
    for path, rec in iter_trusted(results):
        # a summary stored in the file is not an audit: only an .audit file that applies is shown
        rec.flags = {k: v for k, v in rec.flags.items() if k != "audit"}
        by_key.setdefault(rec.key, []).append((path, rec, record_digest(rec)))
    out = []
    for copies in sorted(by_key.values(), key=lambda c: c[0][0]):
        if len({digest for _, _, digest in copies}) > 1:
            first = copies[0][1]
            _warn(f"skipping {len(copies)} records of {first.task}/{first.recipe} seed {first.seed} (key "
                  f"{first.key[:16]}) that disagree: {', '.join(repr(str(p)) for p, _, _ in copies)}; "
                  "keep only the genuine one")
            continue
        rec, found, problems = copies[0][1], None, []
        for path, copy, _ in copies:
            found, why = check_audit(path, copy)
            if found is not None:
                rec = copy
                break
            if why is not None:
                problems.append(f"{audit_path(path)} is {why}")
        if found is None:
            for problem in problems:
                _warn(f"{problem}: not shown; run `fabench audit` on the record again")
        else:
            suite = found.get("suite")
            rec.flags = {**rec.flags, "audit": {"max_gap": found.get("max_gap"), "n_eval": found.get("n_eval"),
                                                "at": largest_gap_radius(found.get("gaps")),
                                                "reproduced": found.get("reproduced") is True,
                                                "full": is_full_suite(suite if isinstance(suite, dict) else {})}}
        out.append(rec)
    return out


def _converged_label(g: Group) -> str:
    """``yes``, or ``no (k/n seeds)`` when the recipe said a head did not converge
    (``model_info.warnings``; see :func:`fabench.recipes.common.training_report`)."""
    bad = [r for r in g.records if r.model_info.get("warnings")]
    if not bad:
        return "yes"
    # a fixed step budget (no convergence stop), e.g. the paper's T = 100 steps on the synthetic task
    steps = {r.config.get("recipe_params", {}).get("steps") for r in bad
             if not r.config.get("recipe_params", {}).get("stop_tol")}
    fixed = f"; fixed T={steps.pop()}" if len(steps) == 1 and None not in steps else ""
    return f"**no** ({len(bad)}/{len(g.records)} seeds{fixed})"


def largest_gap_radius(gaps: Any) -> float | None:
    """The smallest radius at which an audit's per-radius ``gaps`` (``{radius key: gap}``) reach
    their largest positive value; ``None`` without one (no gap, or not a mapping of numbers)."""
    if not isinstance(gaps, dict):
        return None
    best: tuple[float, float] | None = None  # (gap, -radius): the largest gap, then the smallest radius
    for key, gap in gaps.items():
        try:
            radius = float(key)
        except (TypeError, ValueError):
            continue
        value = _num(gap)
        if math.isfinite(radius) and math.isfinite(value) and value > 0 and (best is None or (value, -radius) > best):
            best = (value, -radius)
    return None if best is None else -best[1]


def audit_kind(audit: Mapping[str, Any]) -> str:
    """How far an audit summary (``flags["audit"]``) vouches for its record: ``full`` (the whole
    strong suite ran and the re-run reproduced the record: its gap counts), ``partial`` (reproduced,
    part of the suite) or ``unreproduced`` (its gap vouches for nothing)."""
    if not audit.get("reproduced"):
        return "unreproduced"
    return "full" if audit.get("full") else "partial"


def audit_seed_cell(record: Record) -> str:
    """One record's cell of the per-seed audit table: ``-`` without an audit that applies;
    ``**not reproduced**`` when the audit's re-run did not give the record back (its gap vouches
    for nothing); else the largest gap, with how many of the audited points it is and the smallest
    radius where it occurs (``0.020 (3 of 150 at ε=1.3)``), ``(partial)`` for an audit that ran
    only part of the strong suite."""
    audit = record.flags.get("audit")
    if not isinstance(audit, dict):
        return "-"
    kind = audit_kind(audit)
    if kind == "unreproduced":
        return "**not reproduced**"
    gap, n = _num(audit.get("max_gap")), audit.get("n_eval")
    text = "n/a" if math.isnan(gap) else ("0" if gap == 0 else f"{gap:.3f}")
    at = audit.get("at")
    if gap > 0 and isinstance(at, float):
        points = f"{round(gap * n)} of {n} " if isinstance(n, int) and not isinstance(n, bool) and n > 0 else ""
        text += f" ({points}at ε={radius_key(at)})"
    return text if kind == "full" else f"{text} (partial)"


def audit_table(board: Leaderboard) -> str:
    """The markdown table of every row's audits, seed by seed (:func:`audit_seed_cell`), in
    leaderboard order; ``""`` when no record has an audit that applies."""
    if not any("audit" in r.flags for g in board.groups for r in g.records):
        return ""
    rows = [[f"`{g.task}`", _recipe_label(g), f"`{g.config_id}`", ", ".join(map(str, g.seeds)),
             _per_seed(g, audit_seed_cell)]
            for g in board.groups]
    headers = ["task", "recipe", "config", "seeds", "largest gap per seed (points, smallest radius)"]
    out: str = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    return out


def _per_seed(g: Group, cell: Callable[[Record], str]) -> str:
    """``cell`` of each of the group's records, in seed order, joined by `` / ``."""
    return " / ".join(cell(r) for r in sorted(g.records, key=lambda r: r.seed))


def _fmt(v: Any, spec: str) -> str:
    value = _num(v)
    return "-" if v is None else ("n/a" if math.isnan(value) else format(value, spec))


def _training(record: Record) -> dict[str, Any]:
    training = record.model_info.get("training")
    return training if isinstance(training, dict) else {}


def training_table(board: Leaderboard) -> str:
    """The markdown table of every trained head's training report (``model_info.training``, see
    :func:`fabench.recipes.common.training_report`), seed by seed, in leaderboard order: clean
    accuracy on the attacked points, the backbone's own ten-class test accuracy, final loss,
    training accuracy, steps, the share of the loss decrease in the last 10% of the steps and the
    verdict; ``""`` when no record has one (e.g. only handcrafted heads)."""
    groups = [g for g in board.groups if any(_training(r) for r in g.records)]
    if not groups:
        return ""
    rows = []
    for g in groups:
        def report(key: str, spec: str) -> str:
            return _per_seed(g, lambda r: _fmt(_training(r).get(key), spec))

        def verdict(r: Record) -> str:
            value = _training(r).get("converged")
            return "yes" if value is True else "**no**" if value is False else "-"

        converged = _per_seed(g, verdict)
        rows.append([f"`{g.task}`", _recipe_label(g), ", ".join(map(str, g.seeds)),
                     _per_seed(g, lambda r: _fmt(r.clean_accuracy, ".3f")) + f" ({g.records[0].n_eval})",
                     report("probe_accuracy", ".4f"), report("final_loss", ".3f"), report("train_accuracy", ".4f"),
                     report("steps", ".0f"), report("late_decrease", ".1%"), converged])
    headers = ["task", "recipe", "seeds", "clean acc. (attacked points)", "backbone 10-class acc.", "final loss",
               "train acc.", "steps", "loss decrease in the last 10%", "converged"]
    out: str = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
    return out


def audit_label(g: Group) -> str:
    """The *audit gap* cell: over the group's records whose audit applies, ``max gap (k/n)`` for the
    full audits (the whole strong suite, the record reproduced), ``max gap (partial, k/n)`` for
    audits that ran only part of it, ``**not reproduced** (k/n)`` for audits whose re-run did
    not give the record's numbers back (their gaps vouch for nothing); ``no`` without any."""
    audits = [r.flags["audit"] for r in g.records if "audit" in r.flags]
    n = len(g.records)
    full = [float(a["max_gap"]) for a in audits if audit_kind(a) == "full"]
    partial = [float(a["max_gap"]) for a in audits if audit_kind(a) == "partial"]
    unreproduced = [a for a in audits if audit_kind(a) == "unreproduced"]
    parts = []
    if full:
        parts.append(f"{max(full):.3f} ({len(full)}/{n})")
    if partial:
        parts.append(f"{max(partial):.3f} (partial, {len(partial)}/{n})")
    if unreproduced:
        parts.append(f"**not reproduced** ({len(unreproduced)}/{n})")
    return "; ".join(parts) or "no"


# -- the per-record frame and its summary -------------------------------------------------------
def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def robust_column(radius: float) -> str:
    """Name of the frame column of the worst-case robust accuracy at ``radius``."""
    return f"robust@{radius_key(radius)}"


def records_frame(groups: Sequence[Group]) -> pd.DataFrame:
    """One row per record: identifiers and the numbers the leaderboard aggregates."""
    rows = []
    for g in groups:
        for rec in g.records:
            row: dict[str, Any] = {
                "task": g.task, "recipe": g.recipe, "config_id": g.config_id, "seed": int(rec.seed),
                "clean_accuracy": _num(rec.clean_accuracy),
                "median_min_distance": _num(rec.median_min_distance),
                "fa_score": _num(rec.fa_score),
                "feature_space_distance": _feature_space_distance(rec),
            }
            worst = rec.robust_accuracy.get("worst", {})
            for r in rec.headline_radii:
                row[robust_column(r)] = _num(worst.get(radius_key(r)))
            rows.append(row)
    return pd.DataFrame(rows)


METRICS = ("clean_accuracy", "median_min_distance", "fa_score", "feature_space_distance")


def _feature_space_distance(rec: Record) -> float:
    """The head's median minimal distance in feature space, in units of the median distance between
    two class means (``nan`` without a backbone); the theory's 0.22 (averaging) vs 0.5 (decoupled)."""
    fs = rec.feature_space if isinstance(rec.feature_space, dict) else {}
    dist, scale = _num(fs.get("median_min_distance")), _num(fs.get("scale"))
    return dist / scale if scale > 0 else math.nan


@dataclass(frozen=True)
class TaskTable:
    """The leaderboard of one task: its headline radii and one summary row per group."""

    task: str
    headline_radii: tuple[float, ...]
    groups: tuple[Group, ...]
    summary: pd.DataFrame
    """Index: position of the group; columns ``<metric>_mean``, ``<metric>_std`` for the metrics
    and every ``robust@<radius>`` column, plus ``n_seeds``."""

    def stat(self, i: int, column: str) -> tuple[float, float]:
        """Mean and sample std (``nan`` with one seed) of ``column`` for group ``i``."""
        return float(self.summary.at[i, f"{column}_mean"]), float(self.summary.at[i, f"{column}_std"])


@dataclass(frozen=True)
class Leaderboard:
    """All task tables, in task order."""

    tables: tuple[TaskTable, ...]

    @property
    def empty(self) -> bool:
        return not self.tables

    @property
    def groups(self) -> list[Group]:
        return [g for t in self.tables for g in t.groups]


def build(records: Iterable[Record]) -> Leaderboard:
    """Group the records and aggregate each group over its seeds (mean, sample std)."""
    groups = group_records(records)
    tables = []
    for task in sorted({g.task for g in groups}):
        tgroups = tuple(g for g in groups if g.task == task)
        radii = tuple(sorted({float(r) for g in tgroups for rec in g.records for r in rec.headline_radii}))
        frame = records_frame(tgroups)
        columns = list(METRICS) + [robust_column(r) for r in radii]
        for c in columns:
            if c not in frame:
                frame[c] = math.nan
        frame["group"] = [i for i, g in enumerate(tgroups) for _ in g.records]
        agg = frame.groupby("group", sort=True)[columns].agg(["mean", "std"])
        agg.columns = [f"{c}_{s}" for c, s in agg.columns]
        agg["n_seeds"] = frame.groupby("group", sort=True)["seed"].nunique()
        tables.append(TaskTable(task, radii, tgroups, agg))
    return Leaderboard(tuple(tables))


def load(results: Path) -> Leaderboard:
    """:func:`build` on every record below ``results``."""
    return build(read_records(results))


# -- rendering --------------------------------------------------------------------------------
def _round(v: float) -> float | None:
    return None if math.isnan(v) else round(v, DIGITS)


def format_stat(mean: float, std: float, *, digits: int = 3) -> str:
    """``0.812 ± 0.004``; just ``0.812`` with one seed; ``n/a`` when there is no value."""
    if math.isnan(mean):
        return "n/a"
    if math.isinf(mean):
        return "inf"
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _data_label(g: Group) -> str:
    info = g.records[0].data_info
    counts = f"{info.get('n_train', '?')} train / {info.get('n_test', '?')} test"
    return f"**subset** ({counts})" if g.data_subset else f"full ({counts})"


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(params.items())) or "defaults"


def _recipe_label(g: Group) -> str:
    source = g.records[0].sources.get("recipe", "fabench")
    return g.recipe if source == "fabench" else f"{g.recipe} ({source})"


def markdown_table(table: TaskTable) -> str:
    """The github-flavoured markdown table of one task."""
    headers = ["recipe", "seeds", "clean acc."]
    headers += [f"robust acc. ε={radius_key(r)}" for r in table.headline_radii]
    feature_space = any(not math.isnan(table.stat(i, "feature_space_distance")[0]) for i in range(len(table.groups)))
    headers += ["median min. L2 dist."] + (["feature-space median dist. (× class-mean dist.)"] if feature_space else [])
    headers += ["FA score", "head converged", "worst case over", "audit gap", "data", "config"]
    rows = []
    for i, g in enumerate(table.groups):
        row = [_recipe_label(g), f"{len(g.seeds)} ({', '.join(map(str, g.seeds))})",
               format_stat(*table.stat(i, "clean_accuracy"))]
        row += [format_stat(*table.stat(i, robust_column(r))) for r in table.headline_radii]
        row += [format_stat(*table.stat(i, "median_min_distance"), digits=2)]
        row += [format_stat(*table.stat(i, "feature_space_distance"), digits=2)] if feature_space else []
        row += [format_stat(*table.stat(i, "fa_score")), _converged_label(g),
                ", ".join(g.attacks), audit_label(g), _data_label(g), f"`{g.config_id}`"]
        rows.append(row)
    aligns = ["left", "left"] + ["right"] * (len(headers) - 7) + ["left"] * 5
    out: str = tabulate(rows, headers=headers, tablefmt="github", colalign=aligns, disable_numparse=True)
    return out


def render_markdown(board: Leaderboard, *, figures: Mapping[str, Sequence[tuple[str, str]]] | None = None,
                    sweep: str | None = None, records_dir: str | None = None) -> str:
    """The whole leaderboard page. ``figures`` maps a task (or ``""`` for the page top) to
    ``(alt text, relative path)`` pairs to embed; ``sweep`` is the sweep file (relative to the
    page) that produced the records, if any; ``records_dir`` is where the records are (said on the
    page only when given)."""
    figs = figures or {}
    n_records = sum(len(g.records) for g in board.groups)
    lines = [
        "# fabench leaderboard",
        "",
        "Feature averaging and its cost in L2 robustness (Li, Pan, Lyu, Li, ICLR 2025).",
        f"Generated by `fabench leaderboard` from {n_records} result records; do not edit by hand.",
        *([f"The records were produced by the sweep file [`{sweep}`]({sweep}) (`fabench sweep {sweep}` "
           "in this directory runs what is missing and reuses the rest)."] if sweep else []),
        "",
        "Each row aggregates the records that share a configuration except the seed: numbers are "
        "mean ± sample standard deviation over the seeds. *Robust acc. ε=r* is the worst-case "
        "(per point, over every attack in *worst case over*) accuracy of the binary decision "
        "under L2 perturbations of norm at most r; *median min. L2 dist.* is the median over test "
        "points of the smallest adversarial distance any attack found (pixel space for real data); "
        "*feature-space median dist.* (heads on a backbone) is the same for the head alone in its "
        "input space, in units of the median distance between two class means (theory on the synthetic "
        "task: 0.22 for averaging, 0.5 for decoupled features); *audit gap* is the largest amount by "
        "which `fabench audit`'s strong suite found the record's numbers too high (audited seeds / seeds: "
        "audits of the whole strong suite that reproduced the record; *partial* and **not reproduced** audits "
        "are marked as such); *head converged* is "
        "**no** where the recipe reported that a head's training had not converged (its loss still "
        "falling, or its training accuracy below the backbone's; *fixed T* marks a fixed step budget "
        "without a convergence stop, as the paper's T = 100 on the synthetic task); the *FA score* is 1 for "
        "feature averaging (every unit equally aligned with all its class's features) and 0 for "
        "decoupled features. *config* is the first 8 hex digits of the configuration key without "
        "the seed" + (f"; the records are in `{records_dir}`." if records_dir else "."),
        "",
    ]
    lines += [f"![{alt}]({path})" for alt, path in figs.get("", ())] + ([""] if figs.get("") else [])
    for table in board.tables:
        lines += [f"## {table.task}", ""]
        if any(g.data_subset for g in table.groups):
            lines += ["**Data subset:** rows marked *subset* were trained and evaluated on a subset of "
                      "the dataset, not the full split.", ""]
        lines += [markdown_table(table), "", "Configurations:", ""]
        for g in table.groups:
            cfg = g.records[0].config
            lines.append(f"- `{g.config_id}` {g.recipe}: task {_params_text(cfg.get('task_params', {}))}; "
                         f"recipe {_params_text(cfg.get('recipe_params', {}))}; "
                         f"n_eval={cfg.get('n_eval')} (0 = all test points)")
        lines.append("")
        links = [f"![{alt}]({path})" for alt, path in figs.get(table.task, ())]
        lines += links + ([""] if links else [])
    training = training_table(board)
    if training:
        lines += [f"## {TRAINING_SECTION}", "",
                  "Each trained head's training report (`model_info.training`), seed by seed: clean accuracy on the "
                  "attacked test points, the backbone's own ten-class test accuracy (`-`: no backbone), the final "
                  "training loss and accuracy, the steps run, the share of the loss decrease that came in the last "
                  "10% of them, and the verdict (not converged: more than 1% there, or training accuracy more than "
                  "0.01 below the backbone's).", "", training, ""]
    audits = audit_table(board)
    if audits:
        lines += [f"## {AUDIT_SECTION}", "",
                  "What `fabench audit` found on each record (its re-run and the whole strong suite on the record's own "
                  "test points): the largest amount by which the record's worst-case robust accuracy was too high, as a "
                  "fraction and in points, and the smallest radius where it was; `-`: no audit that applies to the "
                  "record; *partial*: only part of the strong suite ran; **not reproduced**: the re-run did not give "
                  "the record's numbers back, so the audit vouches for nothing.", "", audits, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def rows(board: Leaderboard) -> list[dict[str, Any]]:
    """Machine-readable rows (numbers, not strings), one per group, in leaderboard order."""
    out = []
    for table in board.tables:
        for i, g in enumerate(table.groups):
            row: dict[str, Any] = {
                "task": g.task, "recipe": g.recipe, "recipe_source": g.records[0].sources.get("recipe", "fabench"),
                "config_id": g.config_id, "n_seeds": len(g.seeds), "seeds": list(g.seeds),
            }
            for m in METRICS:
                mean, std = table.stat(i, m)
                row[f"{m}_mean"], row[f"{m}_std"] = _round(mean), _round(std)
            for r in table.headline_radii:
                mean, std = table.stat(i, robust_column(r))
                row[f"robust_accuracy_{radius_key(r)}_mean"] = _round(mean)
                row[f"robust_accuracy_{radius_key(r)}_std"] = _round(std)
            row["attacks"] = list(g.attacks)
            row["data_subset"] = g.data_subset
            row["n_train"] = g.records[0].data_info.get("n_train")
            row["n_test"] = g.records[0].data_info.get("n_test")
            row["n_eval"] = g.records[0].n_eval
            row["audit_max_gap"] = [_audit_gap(r) for r in sorted(g.records, key=lambda r: r.seed)]
            out.append(row)
    return out


def _audit_gap(record: Record) -> float | None:
    """The largest gap of the record's full, reproduced audit (rounded), else ``None``."""
    audit = record.flags.get("audit")
    if not isinstance(audit, dict) or audit_kind(audit) != "full":
        return None
    gap = _num(audit.get("max_gap"))
    return None if math.isnan(gap) else _round(gap)


def render_json(board: Leaderboard) -> str:
    """``{"tasks": [{"task", "headline_radii", "rows": [...]}]}`` with numbers rounded."""
    all_rows = rows(board)
    obj = {"tasks": [{"task": t.task, "headline_radii": list(t.headline_radii),
                      "rows": [r for r in all_rows if r["task"] == t.task]} for t in board.tables]}
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def render_csv(board: Leaderboard) -> str:
    """One CSV of all tasks (a ``task`` column), numeric mean and std columns, ``;``-joined lists."""
    all_rows = rows(board)
    for r in all_rows:
        r["seeds"] = ";".join(map(str, r["seeds"]))
        r["audit_max_gap"] = ";".join("" if v is None else repr(v) for v in r["audit_max_gap"])
        r["attacks"] = ";".join(r["attacks"])
    columns: list[str] = []
    for r in all_rows:
        columns += [c for c in r if c not in columns]
    buf = io.StringIO()
    pd.DataFrame(all_rows, columns=columns).to_csv(buf, index=False, lineterminator="\n")
    return buf.getvalue()


def parse_formats(text: str | None, *, to_files: bool) -> list[str]:
    """``--format`` as a list of :data:`FORMATS` (default: markdown on stdout, all of them into
    files), or a one-line ConfigError: an unknown format, a list that names none (``","``), or
    several formats on stdout (``to_files`` false: they would run together in one stream)."""
    if text is None:
        return list(FORMATS) if to_files else ["markdown"]
    formats = [f.strip() for f in text.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ConfigError(f"--format {text!r}: unknown {', '.join(unknown)}; known: {', '.join(FORMATS)}")
    if not formats:
        raise ConfigError(f"--format {text!r} names no format; known: {', '.join(FORMATS)}")
    if len(set(formats)) > 1 and not to_files:
        raise ConfigError(f"--format {text!r}: several formats need --out (on stdout they would run together)")
    return list(dict.fromkeys(formats))


def render(board: Leaderboard, *, fmt: str = "markdown") -> str:
    """The leaderboard as text in one of :data:`FORMATS` (markdown without figures)."""
    if fmt == "markdown":
        return render_markdown(board)
    if fmt == "csv":
        return render_csv(board)
    if fmt == "json":
        return render_json(board)
    raise ValueError(f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")


def _where(records_dir: Path | None, out_dir: Path) -> str | None:
    """``records/`` when the records lie below ``out_dir`` (as published), else their path."""
    if records_dir is None:
        return None
    try:
        return records_dir.resolve().relative_to(out_dir.resolve()).as_posix() + "/"
    except ValueError:
        return str(records_dir)


def publish(board: Leaderboard, out_dir: Path, *, formats: Sequence[str] = FORMATS,
            figures: bool = True, sweep_file: Path | None = None,
            records_dir: Path | None = None) -> list[Path]:
    """Write the leaderboard into ``out_dir``: ``README.md`` (markdown, embedding the figures and
    naming ``sweep_file``, the sweep that produced the records, if given), ``leaderboard.csv``,
    ``leaderboard.json`` (as chosen by ``formats``) and, with ``figures``, ``figures/*.png|svg``
    (stale ``.png``/``.svg`` files there are removed). Returns the written paths, sorted."""
    from fabench import plots

    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    links: dict[str, list[tuple[str, str]]] = {}
    if figures:
        fig_dir = out_dir / FIGURES_DIR
        with plots.staged(fig_dir) as tmp:  # a failure leaves figures/ as it was
            drawn = plots.publish_figures(board, tmp)
        made = {where: [(alt, fig_dir / p.relative_to(tmp)) for alt, p in items] for where, items in drawn.items()}
        keep = {p for paths in made.values() for _, p in paths}
        for stale in sorted(fig_dir.glob("*")):
            if stale.suffix in (".png", ".svg") and stale not in keep:
                stale.unlink()
        for where, items in made.items():
            links[where] = [(alt, p.relative_to(out_dir).as_posix()) for alt, p in items if p.suffix == ".svg"]
        written += sorted(keep)
    for fmt in formats:
        sweep = os.path.relpath(sweep_file, out_dir).replace(os.sep, "/") if sweep_file else None
        text = (render_markdown(board, figures=links, sweep=sweep, records_dir=_where(records_dir, out_dir))
                if fmt == "markdown" else render(board, fmt=fmt))
        path = out_dir / TABLE_FILES[fmt]
        write_atomic(path, text)
        written.append(path)
    return sorted(written)
