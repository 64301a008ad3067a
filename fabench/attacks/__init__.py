"""Built-in L2 attacks (each module registers its attacks): ``analytic``, ``pgd``, ``deepfool``."""

from fabench.attacks import analytic, autoattack, exact, foolbox_attacks, strong, surrogate  # noqa: F401
