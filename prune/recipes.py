"""`cutq prune --recipe`: named settings for the steps after the ratio, the combinations measured best on u2net.

A recipe says how the parameters asked for by the ratio are removed: which channels go, which Convs are
factored, whether the decoder upsamples late. The figures behind each are in docs/design/code-notes.md.
"""

from __future__ import annotations

from dataclasses import dataclass

from .pruner import PruneConfig


@dataclass(frozen=True)
class Recipe:
    """Settings on top of `PruneConfig.ratio`; `variant` is appended to the cached name so recipes do not replace
    one another's models (`u2net-p50`, `u2net-p50-fast`)."""

    name: str
    # Fraction of the channels removed from each group narrower than `PruneConfig.narrow_below` before factoring;
    # None: the factoring method's own default (none for separable). Those groups hold the full-resolution MACs.
    narrow_fraction: float | None = None
    channel_multiple: int = PruneConfig.multiple
    whole_below: int = 0  # Convs with fewer outputs stay unfactored (`LowRankConfig.min_outputs`)
    late_upsample: bool = False
    spare: tuple[tuple[int, int], ...] = ()  # `PruneConfig.spare`
    variant: str = ""


# The best masks per parameter: every big 3x3 Conv factored into a 3x1 and a 1x3 Conv, no channel removed.
DEFAULT = Recipe("default")

# For latency: narrow groups lose 30% of their channels in blocks of 16 (they hold the MACs, and the Resize and
# Concat work between them), except u2net's 64- and 128-channel groups on 80x80 maps, which cost the masks most;
# the Convs of 64 or fewer outputs stay whole so that their INT8 needs no float Conv; late upsampling.
FAST = Recipe("fast", narrow_fraction=0.3, channel_multiple=16, whole_below=65, late_upsample=True, spare=((80, 64),),
              variant="fast")

RECIPES = {recipe.name: recipe for recipe in (DEFAULT, FAST)}
