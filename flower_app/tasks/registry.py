"""Every task family, by its ``task.family`` name: one line each (see :mod:`flower_app.tasks.family`).

A new family is a module that builds one :class:`~flower_app.tasks.family.TaskFamily` and a
line here; ``task.family``'s choices in :mod:`flower_app.config.schema` list the same names
(a test keeps the two equal).
"""

from __future__ import annotations

from flower_app.config.schema import Config
from flower_app.tasks.family import TaskFamily
from flower_app.tasks.image.task import IMAGE
from flower_app.tasks.text import TEXT

TASK_FAMILIES: dict[str, TaskFamily] = {
    TEXT.name: TEXT,
    IMAGE.name: IMAGE,
}


def family_of(config: Config) -> TaskFamily:
    """The entry of the job's ``task.family``."""
    try:
        return TASK_FAMILIES[config.task.family]
    except KeyError:
        raise ValueError(f"task.family='{config.task.family}' is not one of {', '.join(TASK_FAMILIES)}") from None
