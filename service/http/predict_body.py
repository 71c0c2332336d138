"""The one parser for ``POST /predict`` bodies: bytes in, the texts or the error to answer with.

Three steps, each only when the one before cannot decide:

1. msgspec decodes a well-formed body straight into its texts (the common case, a few
   microseconds);
2. a bounded screen refuses, in work proportional to ``max_texts`` values whatever the body
   size, what no valid request can be: invalid UTF-8 (JSON over HTTP is UTF-8; ``json.loads``
   would quietly accept UTF-16 and UTF-32), too many texts, a nested value where a text
   belongs, a flood of unknown fields, a text over the limit. A 3 MB ``{"texts": [1, 1, ...]}``
   is 1.5 million JSON values, and parsing it whole blocked the event loop for a third of a
   second;
3. the full validation names every problem the way the published schema states it (field
   paths, pydantic's wording), many problems of one kind folded into one.

The OpenAPI schema (service/api/schemas.py) is generated from pydantic models that describe
these rules; a property test holds the two to the same verdicts.
"""

from __future__ import annotations

import json
import re
from typing import Any

import msgspec

from service.errors import InvalidRequest, MalformedBody, ServiceError, summarize_validation_errors

# The one whitespace rule, used verbatim as the OpenAPI pattern and by the parser. A text is
# blank when every character is whitespace. "Whitespace" is the union of Python's str.isspace()
# and ECMAScript's \s (which JSON-schema patterns use): the two disagree on U+001C-U+001F and
# U+0085 (Python only) and U+FEFF (ECMAScript only), so the set is spelled out instead of
# writing \s, which would mean something different to the parser and to a schema client.
WHITESPACE = r"\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
NOT_BLANK = f"[^{WHITESPACE}]"  # JSON-schema pattern (a search): at least one non-whitespace character
_NOT_BLANK = re.compile(NOT_BLANK)
FIELDS = ("text", "texts")
# More problems of one kind than this are reported as one error with a count: one error object
# per bad list item or extra key made a 3 MB body of 1.5 million numbers cost seconds and
# gigabytes before the 422 went out.
MAX_ITEM_ERRORS = 10
MAX_EXTRAFIELDS = 10
# Below this size a body holds at most a few thousand JSON values: only the UTF-8 check runs.
SMALL_BODY_BYTES = 16 * 1024


def is_blank(text: str) -> bool:
    """True when ``text`` has no character outside :data:`WHITESPACE` (the schema's pattern fails)."""
    return _NOT_BLANK.search(text) is None


class _Body(msgspec.Struct, forbid_unknown_fields=True):
    text: str | msgspec.UnsetType = msgspec.UNSET
    texts: list[str] | msgspec.UnsetType = msgspec.UNSET


class PredictBodyParser:
    """``parse(body)`` for one server's limits. Errors are returned, not raised: a raised error's
    traceback keeps the caller's frame, and with it the body, alive until the cyclic GC runs."""

    def __init__(self, max_texts: int, max_chars: int) -> None:
        self.max_texts = max_texts
        self.max_chars = max_chars
        self._decode = msgspec.json.Decoder(_Body).decode

    def parse(self, body: bytes) -> list[str] | ServiceError:
        texts = self.well_formed(body)
        if texts is not None:
            return texts
        problem = screen_predict_body(body, self.max_texts, self.max_chars)
        if problem is not None:
            return problem
        return self._validate(body)

    def well_formed(self, body: bytes) -> list[str] | None:
        """The texts of a body that is valid as it stands, or None to look closer (step 1)."""
        try:
            parsed = self._decode(body)
        except (msgspec.DecodeError, ValueError):  # ValueError: invalid UTF-8 inside a string
            return None
        text, texts = parsed.text, parsed.texts
        if text is not msgspec.UNSET:
            if texts is not msgspec.UNSET:
                return None
            texts = [text]
        elif texts is msgspec.UNSET or not texts or len(texts) > self.max_texts:
            return None
        max_chars = self.max_chars
        for item in texts:
            if len(item) > max_chars or is_blank(item):
                return None
        return texts

    def _validate(self, body: bytes) -> list[str] | ServiceError:
        """Step 3: every problem, named; the texts when there is none."""
        if not body:
            return _invalid(["body"], "Field required", "missing")
        try:
            data = json.loads(body)
        except json.JSONDecodeError as exc:
            _, details = summarize_validation_errors(
                [{"loc": ["body", exc.pos], "msg": "JSON decode error", "type": "json_invalid"}]
            )
            return MalformedBody(f"body is not valid JSON ({exc.msg})", details)
        except (ValueError, RecursionError) as exc:  # nested past the recursion limit
            return MalformedBody(f"body is not valid JSON ({type(exc).__name__})")
        if not isinstance(data, dict):
            return _invalid(
                ["body"], "Input should be a valid dictionary or object to extract fields from", "model_attributes_type"
            )
        mass = _mass_error(data)
        if mass is not None:
            return mass
        errors = _field_errors(data)
        if errors:
            return InvalidRequest(*summarize_validation_errors(errors))
        if ("text" in data) == ("texts" in data):
            return _invalid(["body"], "give exactly one of 'text' or 'texts'", "value_error")
        return self._within_limits(data)

    def _within_limits(self, data: dict[str, Any]) -> list[str] | ServiceError:
        single = "text" in data
        texts: list[str] = [data["text"]] if single else data["texts"]
        if len(texts) > self.max_texts:
            return InvalidRequest(f"too many texts: {len(texts)} given, at most {self.max_texts} allowed")
        too_long = [
            {"loc": ["body", "text"] if single else ["body", "texts", i], "chars": len(t)}
            for i, t in enumerate(texts)
            if len(t) > self.max_chars
        ]
        if too_long:
            return InvalidRequest(
                f"text too long: {len(too_long)} text(s) over {self.max_chars} characters", details=too_long
            )
        return texts


def _mass_error(data: dict[Any, Any]) -> ServiceError | None:
    """Nulls, and one error for many non-string items or unknown fields, found in one C-speed pass."""
    for key in FIELDS:
        if key in data and data[key] is None:
            return _invalid(["body"], f"'{key}' must not be null", "value_error")
    extra = [key for key in data if key not in FIELDS]
    if len(extra) > MAX_ITEM_ERRORS:
        return _invalid(
            ["body"],
            f"{len(extra)} unknown fields (first {str(extra[0])[:40]!r}); only 'text' or 'texts' allowed",
            "value_error",
        )
    texts = data.get("texts")
    if isinstance(texts, list) and not all(type(t) is str for t in texts):
        bad = sum(type(t) is not str for t in texts)
        if bad > MAX_ITEM_ERRORS:
            first = next(i for i, t in enumerate(texts) if type(t) is not str)
            return _invalid(
                ["body"],
                f"texts: {bad} of {len(texts)} items are not strings (the first at index {first})",
                "value_error",
            )
    return None


def _field_errors(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Each field's problems in field order, then the unknown fields, worded as the schema's validator words them."""
    errors: list[dict[str, Any]] = []
    if "text" in data:
        text = data["text"]
        if type(text) is not str:
            errors.append(_error(["body", "text"], "Input should be a valid string", "string_type"))
        elif is_blank(text):
            errors.append(_error(["body", "text"], "text must not be empty or whitespace only", "value_error"))
    if "texts" in data:
        texts = data["texts"]
        if type(texts) is not list:
            errors.append(_error(["body", "texts"], "Input should be a valid list", "list_type"))
        else:
            bad = [
                _error(["body", "texts", i], "Input should be a valid string", "string_type")
                for i, t in enumerate(texts)
                if type(t) is not str
            ]
            if bad:
                errors += bad
            elif not texts:
                errors.append(_error(["body", "texts"], "texts must not be an empty list", "value_error"))
            else:
                blank = next((i for i, t in enumerate(texts) if is_blank(t)), None)
                if blank is not None:
                    msg = f"texts[{blank}] must not be empty or whitespace only"
                    errors.append(_error(["body", "texts"], msg, "value_error"))
    errors += [
        _error(["body", key], "Extra inputs are not permitted", "extra_forbidden") for key in data if key not in FIELDS
    ]
    return errors


def _error(loc: list[str | int], msg: str, kind: str) -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}


# -- step 2: the bounded screen -----------------------------------------------------------
_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class _Stop(Exception):
    """The screen has seen enough: either a definite error or 'let the full validation decide'."""

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
        return None  # malformed JSON: the full validation gives the precise 400
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
        if keys > len(FIELDS) + MAX_EXTRAFIELDS:
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
            if key not in FIELDS:
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
    """The same message and detail shape the full validation gives (:func:`_field_errors`)."""
    return InvalidRequest(f"{'.'.join(str(p) for p in loc)}: {msg}", [{"loc": loc, "msg": msg, "type": kind}])


def _check_length(value: object, loc: list[str | int], max_chars: int | None) -> None:
    """A text over the limit ends the screen: no need to parse and validate megabytes again."""
    if max_chars is not None and isinstance(value, str) and len(value) > max_chars and loc[1] in FIELDS:
        raise _Stop(
            InvalidRequest(
                f"text too long: {'.'.join(str(p) for p in loc)} has {len(value)} characters, "
                f"at most {max_chars} allowed",
                [{"loc": loc, "chars": len(value)}],
            )
        )
