"""Prune: remove channels for real, so the exported artifacts are smaller dense models.

Channels that must go together (a conv's outputs and the depthwise conv and residual adds
that share them) form groups, found on the captured graph; each group is ranked by
weight magnitude and cut to the same share, rounded to the target's channel multiple.
"""

from edgetune.prune.apply import prune_channels
from edgetune.prune.config import PruneConfig, parse_prune

__all__ = ["PruneConfig", "parse_prune", "prune_channels"]
