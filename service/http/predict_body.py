"""A bounded first look at a /predict body, before it is parsed as a whole.

``json.loads`` and pydantic cost time and memory in proportion to the number of JSON values,
not to what a valid request may hold: a 3 MB ``{"texts": [1, 1, ...]}`` is 1.5 million values,
and parsing it blocked the event loop for a third of a second (issue 8). The screen walks the
top level of the body and the ``texts`` list with the C scanner one value at a time, and stops
at the first thing no valid request contains: more than ``max_texts`` items, a nested list or
object where a text belongs, an unknown field, or a body that is not UTF-8 (JSON over HTTP is
UTF-8; ``json.loads`` would silently accept UTF-16 and UTF-32). Its work is bounded by
``max_texts`` values whatever the body, and a body it passes is parsed as before, so the error
messages of ordinary mistakes do not change.
"""

from __future__ import annotations

import json
import re

from service.errors import InvalidRequest, MalformedBody, ServiceError

_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()
_FIELDS = ("text", "texts")
MAX_EXTRA_FIELDS = 10
# Below this size a body holds at most a few thousand JSON values: only the UTF-8 check runs.
SMALL_BODY_BYTES = 16 * 1024


class _Stop(Exception):
    """The screen has seen enough: either a definite error or 'let the full parser decide'."""

    def __init__(self, error: ServiceError | None = None) -> None:
        super().__init__()
        self.error = error


def screen_predict_body(body: bytes, max_texts: int, max_chars: int | None = None) -> ServiceError | None:
    """An error for a body no valid /predict request can be, found in O(max_texts) values; else None."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return MalformedBody(f"body is not UTF-8 encoded JSON (invalid byte at position {exc.start})")
    if len(body) <= SMALL_BODY_BYTES:
        return None  # parsing it whole is cheap whatever it holds; leave the exact errors to pydantic
    try:
        _screen_object(text, max_texts, max_chars)
    except _Stop as stop:
        return stop.error
    except (ValueError, IndexError, RecursionError):
        return None  # malformed JSON: the full parser gives the precise 400
    return None


def _skip(text: str, pos: int) -> int:
    match = _SPACE.match(text, pos)
    return match.end() if match else pos


def _expect(text: str, pos: int, char: str) -> int:
    pos = _skip(text, pos)
    if not text.startswith(char, pos):
        raise _Stop()
    return pos + 1


def _screen_object(text: str, max_texts: int, max_chars: int | None) -> None:
    pos = _expect(text, 0, "{")
    pos = _skip(text, pos)
    if text.startswith("}", pos):
        return
    keys = 0
    while True:
        keys += 1
        if keys > len(_FIELDS) + MAX_EXTRA_FIELDS:
            raise _Stop(InvalidRequest(f"body: more than {keys - 1} fields; only 'text' or 'texts' allowed"))
        pos = _skip(text, pos)
        if not text.startswith('"', pos):
            raise _Stop()
        key, pos = _DECODER.raw_decode(text, pos)
        pos = _expect(text, pos, ":")
        pos = _skip(text, pos)
        if key == "texts" and text.startswith("[", pos):
            pos = _screen_texts(text, pos + 1, max_texts, max_chars)
        elif text.startswith(("[", "{"), pos):  # never valid here, and its size is unbounded
            if key not in _FIELDS:
                raise _Stop(_invalid(["body", key[:64]], "Extra inputs are not permitted", "extra_forbidden"))
            what = "a valid string" if key == "text" else "a valid list"
            raise _Stop(_invalid(["body", key], f"Input should be {what}", "string_type"))
        else:
            value, pos = _DECODER.raw_decode(text, pos)
            _check_length(value, ["body", key], max_chars)
        pos = _skip(text, pos)
        if text.startswith("}", pos):
            return
        pos = _expect(text, pos, ",")


def _screen_texts(text: str, pos: int, max_texts: int, max_chars: int | None) -> int:
    """Walk the list after its ``[``; return the position after its ``]``."""
    pos = _skip(text, pos)
    if text.startswith("]", pos):
        return pos + 1
    count = 0
    while True:
        pos = _skip(text, pos)
        if count == max_texts:
            raise _Stop(InvalidRequest(f"too many texts: more than {max_texts} given, at most {max_texts} allowed"))
        if text.startswith(("[", "{"), pos):
            raise _Stop(_invalid(["body", "texts", count], "Input should be a valid string", "string_type"))
        value, pos = _DECODER.raw_decode(text, pos)
        _check_length(value, ["body", "texts", count], max_chars)
        count += 1
        pos = _skip(text, pos)
        if text.startswith("]", pos):
            return pos + 1
        pos = _expect(text, pos, ",")


def _invalid(loc: list[str | int], msg: str, kind: str) -> InvalidRequest:
    """The same message and detail shape a pydantic error gets (app.py's validation handler)."""
    return InvalidRequest(f"{'.'.join(str(p) for p in loc)}: {msg}", [{"loc": loc, "msg": msg, "type": kind}])


def _check_length(value: object, loc: list[str | int], max_chars: int | None) -> None:
    """A text over the limit ends the screen: no need to parse and validate megabytes again."""
    if max_chars is not None and isinstance(value, str) and len(value) > max_chars and loc[1] in _FIELDS:
        raise _Stop(
            InvalidRequest(
                f"text too long: {'.'.join(str(p) for p in loc)} has {len(value)} characters, "
                f"at most {max_chars} allowed",
                [{"loc": loc, "chars": len(value)}],
            )
        )
