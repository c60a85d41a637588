"""Library messages name settings as Python does; each command line shows them as its flags."""

from __future__ import annotations

import pytest

from cutq.cli.ui import cli_text
from cutq_runtime import batch
from cutq_runtime.errors import CutqError
from cutq_runtime.flags import RUNTIME_FLAGS, for_cli


def test_settings_become_flags_and_the_rest_is_left_alone() -> None:
    message = "x.png: over the limit (`max_bytes`); lower `max_pixels`, or set `workers` to 1; `lowrank` is None"
    assert for_cli(message) == "x.png: over the limit (--max-bytes); lower --max-pixels, or set --workers to 1; `lowrank` is None"
    assert for_cli("plain max_pixels and --max-pixels stay") == "plain max_pixels and --max-pixels stay"
    # cutq's commands extend the runtime's names with the pipelines' own
    assert cli_text("`ratio` 0.95 with `min_outputs` and `max_bytes`") == "--ratio 0.95 with --whole-below and --max-bytes"
    assert all(flag.startswith("--") for flag in RUNTIME_FLAGS.values())


def test_a_library_error_names_the_setting_not_the_flag() -> None:
    with pytest.raises(CutqError) as info:
        batch.plan(["a.png", "b.png"], "out.png", None)
    assert "`out_dir`" in str(info.value) and "--" not in str(info.value)
    assert "--out-dir" in for_cli(str(info.value))
