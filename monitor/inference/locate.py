"""Which artifact the commands use: --weights, else the config's model.weights, else the default path.

Kept apart from weights.py (which builds artifacts with torch) so that `monitor run` imports no torch.
"""
from __future__ import annotations

import os
from pathlib import Path

class WeightsError(Exception):
    """A download, checkpoint or build problem; the message names the file or URL (credentials redacted)."""


DEFAULT_CONFIG = "config.yaml"
DEFAULT_ARTIFACT = Path("weights/resnet18-int8.pt")


def resolve_weights(weights: str | None, config: str | None) -> Path:
    """--weights, else the config's model.weights, else weights/resnet18-int8.pt; WeightsError for a config
    that does not load."""
    if weights:
        return Path(weights)
    path = config or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    if path:
        from monitor.config.loader import ConfigError, load_config
        try:
            return Path(load_config(path).model.weights)
        except ConfigError as e:
            raise WeightsError(f"{path}: invalid config, cannot read model.weights:\n{e}") from None
    return DEFAULT_ARTIFACT
