"""The device's activation defences checked against the rest of the config when a run config is loaded.

No torch here: :func:`flower_app.config.load.from_dict` calls :func:`check_defences`, and a node
loads its config before it knows whether it will touch the model.
"""

from __future__ import annotations

from flower_app.config.schema import Config
from flower_app.tasks.registry import family_of


def check_defences(config: Config) -> None:
    """Raise one ``ValueError`` line naming the settings that do not go together."""
    p = config.privacy
    if p.act_noise > 0 and p.act_clip <= 0:
        raise ValueError(
            f"privacy.act-noise={p.act_noise} needs privacy.act-clip > 0: the noise is calibrated to the clip"
        )
    if p.act_directions == "embedding" and not family_of(config).token_embeddings:
        raise ValueError(
            f"privacy.act-directions=embedding needs a token embedding matrix, and task.family={config.task.family} "
            "has none: use privacy.act-directions=isotropic"
        )
