"""Upgrade ``fabench audit`` results of format 1 to the current format (:data:`fabench.audit.AUDIT_FORMAT`),
and rebind current ones to records that only verify more attacks since.

Format 1 (no ``format`` field) took its gaps against the audit's re-run of the protocol and was
bound to a digest of the record's numbers alone; the current format takes them against the
record's own numbers, says whether the re-run reproduced the record and which strong attacks ran,
and is bound to a digest of the whole record less its volatile fields
(:func:`fabench.audit.record_digest`). An old audit is upgraded only while it still applies to its
record (``<record>.json`` beside ``<record>.audit``):

* its ``record_key`` is the record's key, and that key is the key of the record's configuration;
* its old digest (:func:`old_record_digest`, format 1's ``record_digest``, copied here) matches the
  record's numbers, and it has the record's radii.

Then the gaps are recomputed against the record's worst-case curve (``record - strong worst``,
never negative; the strong worst case is the last entry of the audit's cumulative ``strong``
curves), ``reproduced`` compares the audit's ``protocol`` curve (its re-run) with the record's on
as many points, the strong attacks that ran and were skipped come from its ``config.attacks`` and
``config.skipped`` (format 1 skipped an attack only when the record's protocol had already run it
with the same parameters), and the new digest is written. Anything else is refused, with the
reason, and left as it is::

    python scripts/migrate_audits.py leaderboard/records            # every *.audit below
    python scripts/migrate_audits.py --dry-run path/to/seed0-....audit

An audit of the current format whose digest no longer matches is *rebound* to its record when the
record differs from the audited one only in attacks verified since (``verified_attacks`` grew:
fabench now checks more attacks' claims on the model, with the same numbers): its old digest must
be :func:`fabench.audit.record_digest` of the record with ``verified_attacks`` cut back to a subset
of today's list. Nothing else is changed but the digest, and ``config.rebound_verified`` lists the
newly verified attacks. Any other difference (numbers, configuration, fewer verified attacks) is
refused.

One line per audit (``upgraded``, ``rebound``, ``current`` when already in the current format and
matching, ``refused``); exit status 1 if any was refused, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from fabench import params as P
from fabench import registry
from fabench.audit import (AUDIT_FORMAT, SKIP_ALREADY_RUN, STRONG_PARAMS, AuditResult, audit_path, gaps_against,
                           record_curve, record_digest, reproduction, suite_summary, write_audit)
from fabench.errors import FabenchError
from fabench.records import Record, config_key, radius_key, read_record

#: Format 1's ``AUDITED_FIELDS``: the fields of a record its digest covered.
OLD_AUDITED_FIELDS = ("n_eval", "radii", "clean_accuracy", "robust_accuracy", "median_min_distance", "median_distance",
                      "fa_score", "cosine_matrix", "certified", "feature_space")


def old_record_digest(record: Record) -> str:
    """Format 1's ``record_digest`` (copied unchanged): SHA-256 of :data:`OLD_AUDITED_FIELDS` (as
    JSON; the feature space without its timings)."""
    data = record.to_json()
    fields = {k: data.get(k) for k in OLD_AUDITED_FIELDS}
    if isinstance(fields["feature_space"], dict):  # its stage timings are not numbers it vouches for
        fields["feature_space"] = {k: v for k, v in fields["feature_space"].items() if k != "timings"}
    payload = json.dumps(fields, sort_keys=True, allow_nan=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


class Refused(Exception):
    """An audit that cannot be upgraded; the message says why."""


class Current(Exception):
    """An audit already in the current format, matching its record."""


#: The most verified attacks whose subsets :func:`rebind` tries (2**12 digests at most).
MAX_REBIND_ATTACKS = 12


def rebind(old: dict[str, Any], record: Record) -> AuditResult:
    """The current-format audit ``old``, bound to ``record`` when its digest is that of ``record``
    with fewer ``verified_attacks`` (and the same key); :class:`Refused` otherwise."""
    if old.get("record_key") != record.key:
        raise Refused(f"an audit of another record (key {str(old.get('record_key'))[:16]}, "
                      f"the record's {record.key[:16]})")
    verified = list(record.verified_attacks)
    if len(verified) > MAX_REBIND_ATTACKS:
        raise Refused(f"its record verifies more than {MAX_REBIND_ATTACKS} attacks")
    for size in range(len(verified) - 1, -1, -1):  # the smallest growth first
        for kept in itertools.combinations(verified, size):
            if old.get("record_digest") == record_digest(dataclasses.replace(record, verified_attacks=list(kept))):
                fields = {f.name for f in dataclasses.fields(AuditResult)}
                if not fields <= set(old):
                    raise Refused(f"it lacks {', '.join(sorted(fields - set(old)))}")
                new = {k: old[k] for k in fields}
                new["record_digest"] = record_digest(record)
                new["config"] = {**old["config"], "rebound_verified": [a for a in verified if a not in kept]}
                return AuditResult(**new)
    raise Refused("its digest does not match the record, nor the record with fewer verified attacks "
                  "(recomputed with other numbers, or edited, since the audit)")


def _curve(obj: Any, radii: Sequence[str], what: str) -> dict[str, float]:
    if not isinstance(obj, dict):
        raise Refused(f"its {what} is not a curve")
    out = {}
    for r in radii:
        v = obj.get(r)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise Refused(f"its {what} has no number at radius {r}")
        out[r] = float(v)
    return out


def _suite_params(name: str) -> dict[str, Any] | None:
    """The strong suite's parameters of attack ``name`` (``None``: no such attack here)."""
    try:
        entry = registry.attacks.entry(name)
    except FabenchError:
        return None
    return P.resolve(entry.meta.params, STRONG_PARAMS.get(name, {}), owner=f"attack {name}")


def migrate(audit_file: Path) -> tuple[AuditResult, Path]:
    """The upgraded audit of ``audit_file`` and its record's path; :class:`Refused` (why) when it
    no longer applies to its record, :class:`Current` when it needs no upgrade."""
    try:
        old = json.loads(audit_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(f"not a readable audit ({exc})") from None
    if not isinstance(old, dict):
        raise Refused("not an audit (not a JSON object)")
    if "format" in old and old["format"] != AUDIT_FORMAT:
        raise Refused(f"an audit of unknown format {old['format']!r}")
    record_file = audit_file.with_suffix(".json")
    if audit_path(record_file) != audit_file:
        raise Refused("not named <record>.audit")
    try:
        record = read_record(record_file)
    except FabenchError as exc:
        raise Refused(f"its record cannot be read: {exc}") from None
    if old.get("format") == AUDIT_FORMAT:
        if old.get("record_key") == record.key and old.get("record_digest") == record_digest(record):
            raise Current()
        return rebind(old, record), record_file
    if old.get("record_key") != record.key:
        raise Refused(f"an audit of another record (key {str(old.get('record_key'))[:16]}, "
                      f"the record's {record.key[:16]})")
    if config_key(record.config) != record.key:
        raise Refused("the record's key is not the key of its configuration (edited by hand?)")
    if old.get("record_digest") != old_record_digest(record):
        raise Refused("its digest does not match the record's numbers (recomputed or edited since the audit)")
    radii = [float(r) for r in record.radii]
    if [float(r) for r in old.get("radii", [])] != radii:
        raise Refused("its radii are not the record's")
    keys = [radius_key(r) for r in radii]
    strong = old.get("strong")
    if not isinstance(strong, dict) or not strong:
        raise Refused("it has no strong curves")
    strong_worst = _curve(list(strong.values())[-1], keys, "strong worst case")
    rerun = _curve(old.get("protocol"), keys, "re-run protocol curve")
    try:
        reported = record_curve(record)
    except FabenchError as exc:
        raise Refused(str(exc)) from None
    n_eval = old.get("n_eval")
    if isinstance(n_eval, bool) or not isinstance(n_eval, int):
        raise Refused("it has no number of audited points")
    reproduced, difference = reproduction(reported, rerun, same_points=n_eval == int(record.n_eval))
    gaps = gaps_against(reported, strong_worst)
    config = old.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("attacks"), dict):
        raise Refused("it does not say which strong attacks it ran (config.attacks)")
    skipped_names = config.get("skipped", [])
    if not isinstance(skipped_names, list) or not set(skipped_names) <= set(config["attacks"]):
        raise Refused("its config.skipped is not a list of its attacks")
    ran = [n for n in config["attacks"] if n not in skipped_names]
    modified = [n for n, p in config["attacks"].items() if _suite_params(n) != p]
    result = AuditResult(
        record_key=record.key, record_digest=record_digest(record), n_eval=n_eval, radii=radii,
        record=reported, protocol=rerun, reproduced=reproduced, max_difference=difference,
        strong={str(k): v for k, v in strong.items()}, gaps=gaps, max_gap=max(gaps.values()) if gaps else 0.0,
        suite=suite_summary(ran, {n: SKIP_ALREADY_RUN for n in skipped_names}, modified),
        config={**config, "migrated_from_format": 1},
        timings=old.get("timings", {}) if isinstance(old.get("timings"), dict) else {},
        created=str(old.get("created", "")),
    )
    return result, record_file


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Upgrade fabench audits of format 1, and rebind current ones, "
                                             "that still match their records.")
    ap.add_argument("paths", nargs="+", help=".audit files, or directories to search for them")
    ap.add_argument("--dry-run", action="store_true", help="say what would be done; write nothing")
    args = ap.parse_args(argv)
    files: list[Path] = []
    for name in args.paths:
        path = Path(name)
        if path.is_dir():
            files += sorted(path.rglob("*.audit"))
        elif path.is_file():
            files.append(path)
        else:
            print(f"migrate_audits: error: no such file or directory {name!r}", file=sys.stderr)
            return 2
    refused = 0
    for path in files:
        try:
            result, record_file = migrate(path)
        except Current:
            print(f"current   {path}")
            continue
        except Refused as exc:
            refused += 1
            print(f"refused   {path}: {exc}")
            continue
        if not args.dry_run:
            write_audit(result, record_file)
        if "rebound_verified" in result.config:
            print(f"rebound   {path}: the record verifies {', '.join(result.config['rebound_verified'])} since; "
                  f"max gap {result.max_gap:.3f}" + (" (dry run)" if args.dry_run else ""))
            continue
        print(f"upgraded  {path}: max gap {result.max_gap:.3f}, "
              f"{'reproduced' if result.reproduced else f'NOT reproduced (max difference {result.max_difference:g})'}, "
              f"{'full suite' if result.suite['full'] else 'partial suite'}" + (" (dry run)" if args.dry_run else ""))
    print(f"{len(files)} audits: {len(files) - refused} upgraded, rebound or current, {refused} refused")
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
