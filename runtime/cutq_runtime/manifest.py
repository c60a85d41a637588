"""Reading a variant's JSON manifest safely: a bounded read, finite numbers, and the shape `manifest.schema.json` gives.

A manifest decides how photos are preprocessed (input size, mean, std) and which checksum the model file must
match, and it travels with model files from anywhere (a download, a shared folder). So it is checked before
anything uses it: a malformed one is a `ModelError` naming the file and the field, never a traceback, a hang or
a tensor the size of a poster. The schema file is the one description of the format, for people and for any
JSON Schema validator; the validator here knows only the keywords that file uses, so the runtime keeps its
three dependencies.

Versions: a manifest's `schema_version` says which format it is in. One newer than `SCHEMA_VERSION` is refused
first, whatever else it holds, because its fields may mean something this runtime cannot tell; the fix is a
newer cutq-runtime. One without `schema_version` was written before the field existed and is read as version 1
(`upgrade`): users' caches keep loading, and their files are never rewritten.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ModelError

SCHEMA_VERSION = 1
"""The newest manifest format this runtime reads, and the one cutq writes; the schema's `$id` ends in it."""
SCHEMA_ID = f"urn:cutq:manifest:{SCHEMA_VERSION}"
LEGACY_PHOTOS = {"calibrate": "images", "finetune": "images", "lowrank": "photos"}
"""Step -> the key where manifests without `schema_version` listed photos the step fitted on: `cutq quantize`'s
calibration, `cutq finetune`'s training photos, `cutq prune`'s low-rank statistics (its refit photos were in
`calibration` already)."""
MAX_BYTES = 1 << 20
"""The largest manifest read: cutq's biggest (a pruned u2net's kept channels, every step's figures) is 93 KB."""
MAX_INT_DIGITS = 32
"""Longer integers are refused while parsing: no field needs them, and Python 3.10 converts digits in quadratic time."""
SCHEMA_FILE = "manifest.schema.json"
SUPPORTED = frozenset({"$schema", "$id", "$defs", "$ref", "title", "description", "type", "enum", "properties",
                       "required", "additionalProperties", "items", "minItems", "maxItems", "minimum", "maximum",
                       "exclusiveMinimum", "minLength", "pattern"})
"""The JSON Schema keywords `check` understands; a schema using any other is refused when loaded."""

_TYPE_NAMES = {"object": "an object", "array": "an array", "string": "a string", "integer": "an integer",
               "number": "a number", "boolean": "true or false", "null": "null"}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHOWN = 40  # characters of a bad value or key quoted in a message, so a hostile one keeps the message one short line


class _Invalid(Exception):
    """A value that breaks the schema: the dotted field it sits at and what is wrong with it."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field or 'top level'}: {reason}")


def load(path: Path) -> dict[str, Any]:
    """The manifest at `path`, checked, and read as version 1 when it has no `schema_version` (`upgrade`);
    `ModelError` ("<path>: <field>: <reason>") when it is unusable."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ModelError(f"{path}: unreadable manifest ({exc.strerror or exc})") from exc
    return upgrade(parse(data, str(path)))


def parse(data: bytes, source: str) -> dict[str, Any]:
    """The manifest in `data` (the bytes of `source`), checked. Writers parse what they are about to write, so cutq
    never writes a manifest it would refuse to read."""
    if len(data) > MAX_BYTES:
        raise ModelError(f"{source}: manifest larger than {MAX_BYTES} bytes (1 MB); refused")
    try:
        parsed = json.loads(data.decode("utf-8"), parse_int=_bounded_int)
    except RecursionError as exc:
        raise ModelError(f"{source}: manifest nested too deeply to read; refused") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError and _bounded_int's refusal
        raise ModelError(f"{source}: not a JSON manifest ({_clip(str(exc), 80)})") from exc
    return check(parsed, source)


def check(manifest: Any, source: str) -> dict[str, Any]:
    """`manifest` (as `json.loads` returns it) when it is a JSON object of finite numbers, of a version this runtime
    reads, that fits the schema; `ModelError` naming `source` and the first bad field otherwise."""
    try:
        _check_finite(manifest)
        _check_version(manifest)
        _check(manifest, schema(), "")
    except _Invalid as exc:
        raise ModelError(f"{source}: {exc}") from None
    return manifest


def upgrade(manifest: dict[str, Any]) -> dict[str, Any]:
    """A checked manifest as the runtime reads it. One with a `schema_version` is returned as it is. One without
    (written before the field existed) is version 1: it gets `schema_version: 1` and the `calibration` object,
    gathered from where its steps listed the photos (`LEGACY_PHOTOS`), so readers look in one place whatever
    cutq wrote the file. The steps stay as written (they are the file's record), and so does the file."""
    if "schema_version" in manifest:
        return manifest
    calibration = _legacy_calibration(manifest)
    return {**manifest, "schema_version": 1, **({"calibration": calibration} if calibration else {})}


def _legacy_calibration(manifest: dict[str, Any]) -> dict[str, Any]:
    """The `calibration` object of a manifest written before `schema_version`. Steps are checked only for their
    name, so a record that does not fit the object's schema is left out rather than refused. Names are kept in a
    dict, so a hostile file's long lists cost linear time."""
    rules = schema()["$defs"]["calibration"]["properties"]
    calibration = dict(manifest.get("calibration") or {})
    names = dict.fromkeys(calibration.get("images", []))
    for step in manifest.get("steps", []):
        listed = step.get(LEGACY_PHOTOS.get(step["step"], ""))
        if not _fits(listed, rules["images"]):
            continue
        if not names:  # the step's own record: its fingerprint and seed describe these photos
            calibration.update({key: step[key] for key in ("fingerprint", "seed") if _fits(step.get(key), rules[key])})
        added = [name for name in listed if name not in names]
        if added and names:  # the fingerprint covers fewer photos than are now listed
            calibration.pop("fingerprint", None)
        names.update(dict.fromkeys(added))
    if names:
        calibration["images"] = sorted(names)
    return calibration


@functools.lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    """The schema shipped in this package, refused if it uses unknown keywords or its `$id` and `schema_version`
    bound disagree with `SCHEMA_VERSION` (the writers' number and the validator's must be one)."""
    loaded = json.loads(resources.files("cutq_runtime").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))
    _check_keywords(loaded)
    if loaded.get("$id") != SCHEMA_ID or loaded["properties"]["schema_version"].get("maximum") != SCHEMA_VERSION:
        raise ValueError(f"{SCHEMA_FILE}: $id and schema_version.maximum must name version {SCHEMA_VERSION}")
    return loaded


def _check_version(manifest: Any) -> None:
    """Refuse a newer format before the schema: it may break this schema's rules without being wrong, and what
    the user must do is upgrade the runtime, not edit the file."""
    version = manifest.get("schema_version") if isinstance(manifest, dict) else None
    if _is(version, "integer") and version > SCHEMA_VERSION:
        raise _Invalid("schema_version", f"{version} is newer than this cutq-runtime reads ({SCHEMA_VERSION}); "
                       "upgrade cutq-runtime (pip install -U cutq-runtime)")


def _check(value: Any, rule: Mapping[str, Any], field: str) -> None:
    """Raise `_Invalid` for the first way `value` breaks `rule`. Recurses along the schema, never deeper than it,
    so a deeply nested value costs nothing where the schema does not look."""
    if "$ref" in rule:
        rule = _ref(rule["$ref"])
    kinds = rule.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        if not any(_is(value, kind) for kind in kinds):
            raise _Invalid(field, f"must be {' or '.join(_TYPE_NAMES[kind] for kind in kinds)} (got {_show(value)})")
    if "enum" in rule and not any(_same(value, option) for option in rule["enum"]):
        raise _Invalid(field, f"must be one of {', '.join(map(_show, rule['enum']))} (got {_show(value)})")
    if _is(value, "number"):
        _check_bounds(value, rule, field)
    elif isinstance(value, str):
        _check_string(value, rule, field)
    elif isinstance(value, list):
        _check_array(value, rule, field)
    elif isinstance(value, dict):
        _check_object(value, rule, field)


def _check_bounds(value: float, rule: Mapping[str, Any], field: str) -> None:
    if "minimum" in rule and value < rule["minimum"]:
        raise _Invalid(field, f"must be >= {rule['minimum']} (got {_show(value)})")
    if "exclusiveMinimum" in rule and value <= rule["exclusiveMinimum"]:
        raise _Invalid(field, f"must be > {rule['exclusiveMinimum']} (got {_show(value)})")
    if "maximum" in rule and value > rule["maximum"]:
        raise _Invalid(field, f"must be <= {rule['maximum']} (got {_show(value)})")


def _check_string(value: str, rule: Mapping[str, Any], field: str) -> None:
    shortest = rule.get("minLength", 0)
    if len(value) < shortest:
        raise _Invalid(field, "must not be empty" if shortest == 1 else f"must have at least {shortest} characters")
    if "pattern" in rule and not _pattern(rule["pattern"]).fullmatch(value):
        raise _Invalid(field, f"must be {rule.get('title') or 'of the form ' + rule['pattern']} (got {_show(value)})")


def _check_array(value: list[Any], rule: Mapping[str, Any], field: str) -> None:
    low, high = rule.get("minItems", 0), rule.get("maxItems")
    if len(value) < low or (high is not None and len(value) > high):
        wanted = f"exactly {low}" if low == high else f"at least {low}" if high is None else f"{low} to {high}"
        raise _Invalid(field, f"must have {wanted} items (got {len(value)})")
    if "items" in rule:
        for index, item in enumerate(value):
            _check(item, rule["items"], f"{field}[{index}]")


def _check_object(value: dict[str, Any], rule: Mapping[str, Any], field: str) -> None:
    for key in rule.get("required", ()):
        if key not in value:
            raise _Invalid(_join(field, key), "is required")
    known, extra = rule.get("properties", {}), rule.get("additionalProperties", True)
    for key, item in value.items():
        if key in known:
            _check(item, known[key], _join(field, key))
        elif extra is False:
            raise _Invalid(_join(field, key), f"is not a known field (allowed: {', '.join(sorted(known))})")
        elif isinstance(extra, Mapping):
            _check(item, extra, _join(field, key))


def _check_finite(value: Any) -> None:
    """Refuse NaN and ±Infinity anywhere, with the field they sit at. Python's json reads `NaN`, `Infinity` and
    1e400 as floats that slip past every comparison; the walk is iterative, so nesting depth costs no stack."""
    trail: list[tuple[int, str | int]] = []  # (parent's entry, key) for every value below the top
    pending: list[tuple[int, Any]] = [(-1, value)]
    while pending:
        entry, item = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            keys: list[str | int] = []
            while entry >= 0:
                entry, key = trail[entry]
                keys.append(key)
            field = ""
            for key in reversed(keys):
                field = f"{field}[{key}]" if isinstance(key, int) else _join(field, key)
            raise _Invalid(field, f"must be a finite number (got {_show(item)})")
        children = item.items() if isinstance(item, dict) else enumerate(item) if isinstance(item, list) else ()
        for key, child in children:
            trail.append((entry, key))
            pending.append((len(trail) - 1, child))


def _check_keywords(rule: Any) -> None:
    """Fail loudly on a keyword `_check` would silently ignore (a schema edit needing validator support)."""
    if not isinstance(rule, Mapping):
        return
    unknown = set(rule) - SUPPORTED
    if unknown:
        raise ValueError(f"{SCHEMA_FILE}: unsupported JSON Schema keywords {sorted(unknown)}")
    if "pattern" in rule and not (rule["pattern"].startswith("^") and rule["pattern"].endswith("$")):
        raise ValueError(f"{SCHEMA_FILE}: pattern {rule['pattern']} must be anchored (^...$): it is matched in full")
    for named in ("properties", "$defs"):
        for sub in rule.get(named, {}).values():
            _check_keywords(sub)
    for key in ("items", "additionalProperties"):
        _check_keywords(rule.get(key))


def _ref(pointer: str) -> Mapping[str, Any]:
    prefix = "#/$defs/"
    if not pointer.startswith(prefix):
        raise ValueError(f"{SCHEMA_FILE}: only local {prefix}<name> references are supported, not {pointer}")
    return schema()["$defs"][pointer[len(prefix):]]


@functools.cache
def _pattern(text: str) -> re.Pattern[str]:
    """Matched with `fullmatch`: for an anchored pattern that is ECMA-262's search, while Python's `search`
    would also let `$` match before a final newline."""
    return re.compile(text)


def _is(value: Any, kind: str) -> bool:
    """JSON Schema's types over what `json.loads` returns; true and false are not numbers."""
    if kind in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, {"object": dict, "array": list, "string": str, "integer": int, "number": (int, float),
                              "boolean": bool, "null": type(None)}[kind])


def _fits(value: Any, rule: Mapping[str, Any]) -> bool:
    try:
        _check(value, rule, "")
    except _Invalid:
        return False
    return True


def _same(value: Any, option: Any) -> bool:
    return type(value) is type(option) and value == option


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text)} digits")
    return int(text)


def _join(field: str, key: str) -> str:
    """`input` + `std` -> `input.std`; a key that is not an identifier is quoted: `files[".onnx"]`."""
    if _IDENTIFIER.fullmatch(key):
        return f"{field}.{key}" if field else key
    return f"{field}[{_clip(json.dumps(key), _SHOWN)}]"


def _show(value: Any) -> str:
    """A value as JSON spells it (NaN, Infinity, "text", null), containers by kind only, long ones cut short."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return _clip(json.dumps(value), _SHOWN)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
