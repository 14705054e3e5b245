"""Reading configuration values: config files, `--set` pairs, and turning their text into each
field's declared type. Knows nothing of the Config classes, so config.py builds on it."""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from animegen.errors import UserError


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Nested mapping from a .yaml/.yml/.toml/.json file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UserError(f"{path}: cannot read config file ({e.strerror or e})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - exercised on 3.10 only
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:  # noqa: BLE001 - any parser error becomes one line naming the file
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a valid config file ({first})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must hold a mapping of sections")
    return data


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Turn a file or command-line value into the field's declared type."""
    hint = annotation
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        non_none = [a for a in args if a is not type(None)]
        hint = non_none[0] if len(non_none) == 1 else str
    try:
        if hint is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on"):
                return True
            if isinstance(value, str) and value.lower() in ("0", "false", "no", "off"):
                return False
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if hint is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if hint is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if hint is str:
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}") from None
    return value


def field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def switch_word(value: Any) -> Any:
    """true/false (a YAML boolean, a --set word, an older checkpoint's bool) as on/off."""
    words = {"true": "on", "yes": "on", "1": "on", "false": "off", "no": "off", "0": "off"}
    if isinstance(value, bool):
        return "on" if value else "off"
    return words.get(value.lower(), value) if isinstance(value, str) else value


def parse_override(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected section.key=value")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()
