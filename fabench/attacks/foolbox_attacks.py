"""foolbox 3 adapters: L2 PGD (fixed-epsilon) and L2 DeepFool (minimisation).

Both attack the classifier's 2-logit view of the binary decision, so they optimise exactly the
decision that is reported. PGD runs once per radius (it is a fixed-epsilon attack) and only on
points not already broken at a smaller radius; ``restarts`` extra random starts are tried on the
points that survive. DeepFool runs once and gives every point's (approximately) minimal distance,
hence a whole robustness curve; each adversarial it returns is checked by the model.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import torch

from fabench import registry
from fabench.attacks.base import RADIUS_RTOL, is_adversarial, outcome_from_distances, perturbation_norms
from fabench.types import AttackOutcome, Meta, Params, TaskData

if TYPE_CHECKING:  # pragma: no cover
    from fabench.models import Classifier


def import_foolbox() -> Any:
    """Import foolbox, silencing the DeprecationWarning its scipy import emits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import foolbox

    return foolbox


def _fmodel(model: "Classifier", data: TaskData) -> Any:
    fb = import_foolbox()
    model.eval()
    return fb.PyTorchModel(model, bounds=data.bounds, device="cpu")


@registry.attacks.register
class PGDAttack:
    meta: ClassVar[Meta] = Meta(
        name="pgd",
        description="foolbox L2 projected gradient descent, one run per radius (+ random restarts)",
        reference="Madry et al. (2018); foolbox.attacks.L2PGD",
        params={"steps": 50, "rel_stepsize": 0.05, "random_start": True, "restarts": 0},
        bounds={"steps": (1, 1_000_000), "rel_stepsize": (1e-9, None), "restarts": (0, 10_000)},
    )
    minimization: ClassVar[bool] = False

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        fb = import_foolbox()
        fmodel = _fmodel(model, data)
        attack = fb.attacks.L2PGD(
            rel_stepsize=float(params["rel_stepsize"]), steps=int(params["steps"]),
            random_start=bool(params["random_start"]),
        )
        n = len(x)
        distances = torch.full((n,), float("inf"))
        broken = torch.zeros(len(radii), n, dtype=torch.bool)
        clean_wrong = is_adversarial(model, x, y)
        distances[clean_wrong] = 0.0
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for i, eps in enumerate(radii):
                todo = ~(broken[i - 1] if i else clean_wrong)
                broken[i] = ~todo
                if eps <= 0 or not todo.any():
                    continue
                idx = todo.nonzero().squeeze(1)
                for _ in range(1 + int(params["restarts"])):
                    _, adv, _ = attack(fmodel, x[idx], fb.criteria.Misclassification(y[idx]), epsilons=float(eps))
                    ok = is_adversarial(model, adv, y[idx])
                    norms = perturbation_norms(adv, x[idx])
                    ok &= norms <= eps * (1 + RADIUS_RTOL) + 1e-6
                    broken[i, idx[ok]] = True
                    distances[idx[ok]] = torch.minimum(distances[idx[ok]], norms[ok])
                    idx = idx[~ok]
                    if len(idx) == 0:
                        break
        return AttackOutcome(tuple(float(r) for r in radii), broken, distances)


@registry.attacks.register
class DeepFoolAttack:
    meta: ClassVar[Meta] = Meta(
        name="deepfool",
        description="foolbox L2 DeepFool: minimal-distance attack, one run gives a whole curve",
        reference="Moosavi-Dezfooli et al. (2016); foolbox.attacks.L2DeepFoolAttack",
        params={"steps": 100, "overshoot": 0.02},
        bounds={"steps": (1, 1_000_000), "overshoot": (0.0, None)},
    )
    minimization: ClassVar[bool] = True

    def run(
        self, model: "Classifier", x: torch.Tensor, y: torch.Tensor, radii: Sequence[float], *,
        data: TaskData, params: Params, seed: int,
    ) -> AttackOutcome:
        fb = import_foolbox()
        fmodel = _fmodel(model, data)
        attack = fb.attacks.L2DeepFoolAttack(
            steps=int(params["steps"]), candidates=2, overshoot=float(params["overshoot"]), loss="logits"
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            _, adv, _ = attack(fmodel, x, fb.criteria.Misclassification(y), epsilons=None)
        ok = is_adversarial(model, adv, y)
        distances = torch.where(ok, perturbation_norms(adv, x), torch.tensor(float("inf")))
        return outcome_from_distances(radii, distances)
