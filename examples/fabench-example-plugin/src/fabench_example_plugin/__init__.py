"""fabench-example-plugin: a recipe, an attack and a task, registered through entry points.

Nothing here registers itself on import: fabench finds the objects through the entry points in
``pyproject.toml`` and registers them with this distribution as their source.
"""

__version__ = "0.1.0"
