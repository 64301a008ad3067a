"""Sanity flags of one evaluation, in the spirit of AutoAttack's checks (Croce & Hein, 2020).

* ``weaker``: per attack, the largest amount (over radii) by which its robust accuracy is above the
  worst case; an attack far above it (``> weak_gap``) is flagged (it adds little, or it failed).
* ``silent``: attacks that broke no correctly classified point at any radius (e.g. ``exact`` where
  it does not apply, in the default list): reported as such, never as ``weaker``.
* ``masking``: a gradient-free attack (``square``) broke points that no gradient attack broke at
  the same radius: the classic sign of gradient masking (or of dead-ReLU plateaus).
* ``bracket``: with a certificate, the largest gap (over radii) between the worst attacked
  robust accuracy (an upper bound on the true one) and the certified one (a lower bound), and
  ``tight`` when it is at most ``tight_gap``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

from fabench._lazy import lazy

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

GRADIENT_FREE = ("square",)
GRADIENT = ("pgd", "apgd", "deepfool", "fab", "cw", "surrogate")


def sanity_flags(
    radii: Sequence[float], broken: Mapping[str, torch.Tensor], worst: torch.Tensor,
    certified: Mapping[float, float] | None = None, *, clean_correct: torch.Tensor | None = None,
    weak_gap: float = 0.1, tight_gap: float = 0.01,
) -> dict[str, Any]:
    """Flags from per-attack ``broken`` (``R x N``), the worst case and the clean decision (``N``);
    see the module doc."""
    worst_acc = (~worst).float().mean(1)
    weaker: dict[str, float] = {}
    silent: list[str] = []
    for name, b in broken.items():
        if clean_correct is not None and len(radii) and not bool((b[-1] & clean_correct).any()):
            silent.append(name)
            continue
        weaker[name] = round(float(((~b).float().mean(1) - worst_acc).max()), 6) if len(radii) else 0.0
    flagged = sorted(n for n, g in weaker.items() if g > weak_gap)
    masking: dict[str, int] = {}
    grads = [broken[n] for n in broken if n in GRADIENT]
    for name in broken:
        if name in GRADIENT_FREE and grads:
            any_grad = torch.stack(grads).any(0)
            masking[name] = int((broken[name] & ~any_grad).sum(0).gt(0).sum())
    out: dict[str, Any] = {
        "weaker": weaker,
        "weak_attacks": flagged,
        "silent": sorted(silent),
        "masking": masking,
        "masking_suspected": any(v > 0 for v in masking.values()),
    }
    if certified:
        gaps = [float(worst_acc[i]) - certified.get(float(r), 0.0) for i, r in enumerate(radii)]
        gap = max(gaps) if gaps else 0.0
        out["bracket_gap"] = round(gap, 6)
        out["tight"] = gap <= tight_gap
    return out


def describe(flags: Mapping[str, Any]) -> list[str]:
    """One line per raised flag (empty when everything looks sane)."""
    lines = []
    for name in flags.get("weak_attacks", []):
        lines.append(f"attack {name} is up to {flags['weaker'][name]:.3f} above the worst case (weak here)")
    for name in flags.get("silent", []):
        lines.append(f"attack {name} found no adversarial example (it does not apply here, or it failed)")
    for name, count in flags.get("masking", {}).items():
        if count:
            lines.append(f"gradient-free {name} broke {count} points no gradient attack broke (masking?)")
    if "tight" in flags:
        state = "tight" if flags["tight"] else "open"
        lines.append(f"bracket [certified, worst attacked]: largest gap {flags['bracket_gap']:.3f} ({state})")
    return lines
