"""Strong (expensive) attacks for audits: foolbox's L2 Carlini-Wagner.

``cw`` runs ``foolbox.attacks.L2CarliniWagnerAttack`` (a minimisation attack with a binary search
over its trade-off constant) on the classifier's 2-logit view; every adversarial it returns is
checked on the model, and its distance gives a whole robustness curve. It runs in the unit-box
view of :mod:`fabench.attacks.autoattack` (CW's tanh parametrisation needs finite bounds).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Sequence

from fabench._lazy import lazy
from fabench import registry
from fabench.attacks.base import MAX_CONSTANT, MAX_STEP_FACTOR, MAX_STEPS, candidates_outcome
from fabench.attacks.autoattack import unit_box
from fabench.attacks.foolbox_attacks import import_foolbox
from fabench.types import AttackOutcome, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover - heavy imports are lazy (see fabench._lazy)
    import torch
else:
    torch = lazy("torch")

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models import Classifier


#: The most steps of C&W's search over its constant ``c`` accepted: foolbox multiplies ``c`` by 10
#: per step until an adversarial is found, so after about 40 steps it is past float32's range.
MAX_CW_SEARCH_STEPS = 100


@registry.attacks.register
class CarliniWagnerAttack:
    meta: ClassVar[Meta] = Meta(
        name="cw",
        description="foolbox L2 Carlini-Wagner: minimal-distance attack with a binary search over c",
        reference="Carlini & Wagner (2017); foolbox.attacks.L2CarliniWagnerAttack",
        params={"steps": 1000, "binary_search_steps": 9, "stepsize": 0.01, "initial_const": 0.1,
                "confidence": 0.0},
        bounds={"steps": (1, MAX_STEPS), "binary_search_steps": (1, MAX_CW_SEARCH_STEPS),
                "stepsize": (0.0, MAX_STEP_FACTOR), "initial_const": (0.0, MAX_CONSTANT), "confidence": (0.0, MAX_CONSTANT)},
    )
    minimization: ClassVar[bool] = True

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        fb = import_foolbox()
        attack = fb.attacks.L2CarliniWagnerAttack(
            binary_search_steps=int(params["binary_search_steps"]), steps=int(params["steps"]),
            stepsize=float(params["stepsize"]), confidence=float(params["confidence"]),
            initial_const=float(params["initial_const"]), abort_early=True,
        )
        # CW optimises in tanh space, which needs finite bounds: the unit-box view of autoattack.py.
        box = unit_box(model, x, data, 2 * max(max(radii), 1e-6))
        fmodel = fb.PyTorchModel(box.eval(), bounds=(0.0, 1.0), device=x.device)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            _, u_adv, _ = attack(fmodel, box.to_unit(x), fb.criteria.Misclassification(y), epsilons=None)
        adv = box.from_unit(u_adv.detach())
        return candidates_outcome(model, x, y, adv, radii)
