"""GET /openapi.json: the OpenAPI 3.1 description of the public API and of the internal API's
authentication (server/openapi.json), with the limits this server is configured with.

The document on disk shows the default limits. A schema that carries a limit from the settings
names it: `"x-dynwork-limit": {"maximum": "max_iterations"}` means its `maximum` is that setting.
The one number parameter (`wait`) is a string pattern, since the server takes plain decimals only
(at most 9 digits before and after the point, no sign or exponent); `decimal_pattern` writes the
anchored pattern for values 0..limit, so the document matches what the server accepts exactly.
"""

from __future__ import annotations

import copy
import decimal
import functools
import json
from pathlib import Path
from typing import Any

from aiohttp import web

SPEC_PATH = Path(__file__).with_name("openapi.json")
LIMIT_KEY = "x-dynwork-limit"
DIGITS = 9  # digits the server accepts before and after the decimal point
LIMITS = ("max_iterations", "max_body_bytes", "long_poll_max_s")  # settings the document shows


@functools.cache
def spec() -> dict[str, Any]:
    """The document as written (default limits)."""
    loaded: dict[str, Any] = json.loads(SPEC_PATH.read_text())
    return loaded


def _digits_below(digit: str) -> str:
    return "0" if digit == "1" else f"[0-{int(digit) - 1}]"


def _any_digits(low: int, high: int) -> str:
    if high == 0:
        return ""
    return "[0-9]" + ("" if (low, high) == (1, 1) else f"{{{high}}}" if low == high else f"{{{low},{high}}}")


def _below(digits: str) -> list[str]:
    """Alternatives matching exactly len(digits) digits that are smaller than `digits`."""
    n = len(digits)
    return [
        f"{digits[:i]}{_digits_below(d)}{_any_digits(n - i - 1, n - i - 1)}" for i, d in enumerate(digits) if d != "0"
    ]


def decimal_pattern(limit: float) -> str:
    """An anchored pattern for the plain decimals the server takes for a number 0..limit."""
    bound = decimal.Decimal(repr(float(limit))).quantize(decimal.Decimal(1).scaleb(-DIGITS), decimal.ROUND_FLOOR)
    whole, _, frac = f"{bound:f}".partition(".")
    frac = frac.rstrip("0")
    any_frac = rf"(?:\.{_any_digits(1, DIGITS)})?"
    if len(whole) > DIGITS:  # every integer part the server takes is below the limit
        return f"^{_any_digits(1, DIGITS)}{any_frac}$"
    pad = f"0{{0,{DIGITS - len(whole)}}}"
    smaller = [_any_digits(1, len(whole) - 1)] if len(whole) > 1 else []
    if whole.strip("0"):
        smaller.append(f"{pad}(?:{'|'.join(_below(whole))})")
    # The integer part equal to the limit's: the fraction must not exceed the limit's.
    equal_frac = [f"{frac[:j]}0{{0,{DIGITS - j}}}" for j in range(1, len(frac) + 1)]
    equal_frac += [
        f"{frac[:i]}{_digits_below(d)}{_any_digits(0, DIGITS - i - 1)}" for i, d in enumerate(frac) if d != "0"
    ]
    equal = rf"{pad}{whole}(?:\.(?:{'|'.join(equal_frac)}))?" if frac else rf"{pad}{whole}(?:\.0{{1,{DIGITS}}})?"
    branches = ([f"(?:{'|'.join(smaller)}){any_frac}"] if smaller else []) + [equal]
    return f"^(?:{'|'.join(branches)})$"


def _apply_limits(node: Any, limits: dict[str, float]) -> None:
    if isinstance(node, dict):
        for keyword, setting in node.get(LIMIT_KEY, {}).items():
            node[keyword] = decimal_pattern(limits[setting]) if keyword == "pattern" else limits[setting]
        for child in node.values():
            _apply_limits(child, limits)
    elif isinstance(node, list):
        for child in node:
            _apply_limits(child, limits)


@functools.cache
def _configured(limits: tuple[tuple[str, float], ...]) -> dict[str, Any]:
    document = copy.deepcopy(spec())
    _apply_limits(document, dict(limits))
    return document


def document_for(settings: Any) -> dict[str, Any]:
    """The document with the limits of `settings` (a ServerSettings, or anything with LIMITS)."""
    return _configured(tuple((name, getattr(settings, name)) for name in LIMITS))


async def serve(request: web.Request) -> web.Response:
    from server.api import SERVICE  # server.api imports this module

    return web.json_response(document_for(request.app[SERVICE].settings))
