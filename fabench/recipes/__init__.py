"""Built-in recipes (each module registers one): ``binary``, ``fine``, ``robust``."""

from fabench.recipes import binary, fine, robust  # noqa: F401
