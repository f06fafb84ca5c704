"""Tagged JSON for watermark values, so that each one comes back with the type it went in with.

The source compares the watermark with typed SQL parameters (``WHERE (updated_at, id) > (?, ?)``),
so a ``datetime`` that came back as a string, or a ``Decimal`` that came back as a float, would
compare wrongly or not at all. Each value is stored as ``{"t": tag, "v": text}``.

Time zones keep their offset, not their name: ``ZoneInfo("Europe/Paris")`` comes back as a fixed
``+01:00``/``+02:00`` offset, which is the same instant and compares the same.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

# Order matters where types nest: bool is an int, datetime is a date.
_ENCODERS: tuple[tuple[type, str, Callable[[Any], str]], ...] = (
    (bool, "bool", lambda v: "true" if v else "false"),
    (int, "int", str),
    (float, "float", repr),
    (Decimal, "decimal", str),
    (str, "str", str),
    (datetime, "datetime", lambda v: v.isoformat()),
    (date, "date", lambda v: v.isoformat()),
    (time, "time", lambda v: v.isoformat()),
    (UUID, "uuid", str),
    (bytes, "bytes", lambda v: v.hex()),
)

_DECODERS: dict[str, Callable[[str], Any]] = {
    "bool": lambda s: s == "true",
    "int": int,
    "float": float,
    "decimal": Decimal,
    "str": str,
    "datetime": datetime.fromisoformat,
    "date": date.fromisoformat,
    "time": time.fromisoformat,
    "uuid": UUID,
    "bytes": bytes.fromhex,
}


def encode(value: Any) -> str:
    """Encode one cursor or key value as tagged JSON text; TypeError for unsupported types."""
    return json.dumps(_tag(value), separators=(",", ":"), ensure_ascii=False)


def decode(text: str) -> Any:
    """Decode what ``encode`` produced; ValueError if the text is not a tagged value.

    ``ArithmeticError`` is caught because ``Decimal("junk")`` raises ``InvalidOperation``.
    """
    try:
        return _untag(json.loads(text))
    except (KeyError, TypeError, ArithmeticError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a tagged value: {text[:200]!r}") from exc


def _tag(value: Any) -> dict[str, Any]:
    if value is None:
        return {"t": "null"}
    if isinstance(value, tuple | list):
        tag = "tuple" if isinstance(value, tuple) else "list"
        return {"t": tag, "v": [_tag(item) for item in value]}
    for cls, tag, to_text in _ENCODERS:
        if isinstance(value, cls):
            return {"t": tag, "v": to_text(value)}
    raise TypeError(f"cannot store a watermark value of type {type(value).__name__}")


def _untag(node: dict[str, Any]) -> Any:
    tag = node["t"]
    if tag == "null":
        return None
    if tag in ("tuple", "list"):
        items = [_untag(item) for item in node["v"]]
        return tuple(items) if tag == "tuple" else items
    decoder = _DECODERS.get(tag)
    if decoder is None:
        raise ValueError(f"unknown watermark value tag {tag!r}")
    return decoder(node["v"])
