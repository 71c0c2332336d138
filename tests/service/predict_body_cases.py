"""A fixed corpus of /predict bodies (hand-written edge cases, bodies large enough for the screen,
and seeded random JSON) whose answers are recorded in data/predict_answers.json."""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any


def corpus() -> list[bytes]:
    """The same bodies on every run (a seeded generator), duplicates removed."""
    WS = [
        "",
        " ",
        "\t",
        "\n",
        "\r",
        "\x0b",
        "\x0c",
        "\x1c",
        "\x1f",
        "\x85",
        "\xa0",
        "\u1680",
        "\u2000",
        "\u200a",
        "\u2028",
        "\u2029",
        "\u202f",
        "\u205f",
        "\u3000",
        "\ufeff",
        "\u200b",
        "\x00",
        "a",
        "é",
        "\U0001f600",
    ]
    rnd = random.Random(7)

    def val(depth=0):
        k = rnd.randrange(12)
        if k == 0:
            return None
        if k == 1:
            return rnd.choice([True, False])
        if k == 2:
            return rnd.randrange(-5, 5)
        if k == 3:
            return rnd.random()
        if k in (4, 5, 6):
            return "".join(rnd.choice(WS) for _ in range(rnd.randrange(4)))
        if k == 7:
            return "x" * rnd.choice([499, 500, 501, 1200])
        if k == 8 and depth < 2:
            return [val(depth + 1) for _ in range(rnd.randrange(4))]
        if k == 9 and depth < 2:
            return {rnd.choice(["text", "texts", "a"]): val(depth + 1)}
        return "Stocks rally"

    def body():
        k = rnd.randrange(10)
        if k == 0:
            return val()
        d = {}
        for key in rnd.sample(["text", "texts", "extra", "Text", "x"], rnd.randrange(4)):
            if key == "texts" and rnd.random() < 0.7:
                d[key] = [
                    val() if rnd.random() < 0.4 else rnd.choice(["ok", "a b", " ", ""])
                    for _ in range(rnd.choice([0, 1, 2, 3, 16, 17, 20]))
                ]
            else:
                d[key] = val()
        return d

    fixed = [
        b'{"text": "abc',
        b"not json at all",
        b'{"text": "\xff\xfe bad utf-8"}',
        b"\xc3\x28",
        b"",
        b"   ",
        b"{}",
        b"[]",
        b"null",
        b"1",
        b'"s"',
        b"text=hello",
        b'{"text": NaN}',
        b'{"text": Infinity}',
        b'{"texts": [NaN]}',
        b'{"text": "a", "text": "b"}',
        b'{"text": "a", "text": 1}',
        b'{"text": 1, "text": "a"}',
        b'{"texts": ["a"], "texts": null}',
        b'{"text": "a"} x',
        b'{"text": "a"}\n',
        b'\xef\xbb\xbf{"text": "a"}',
        '{"text": "a"}'.encode("utf-16"),
        '{"text": "a"}'.encode("utf-32"),
        b'{"text": "\\ud800"}',
        b'{"text": "\\u0000"}',
        b'{"text": 1e999}',
        b'{"text": 123456789012345678901234567890}',
        b'{"text":"a",}',
        b"{'text': 'a'}",
        b'{"text": "a"',
        b'{"texts": ["a", ]}',
        b'{"texts": [1,2,3,4,5,6,7,8,9,10,11,12]}',
        b'{"texts": [1,2,3,4,5,6,7,8,9,10,11]}',
        b'{"texts": [1,2,3,4,5,6,7,8,9,10]}',
        json.dumps({f"k{i}": 1 for i in range(11)}).encode(),
        json.dumps({f"k{i}": 1 for i in range(10)}).encode(),
        json.dumps({"text": "a", **{f"k{i}": 1 for i in range(12)}}).encode(),
        json.dumps({"texts": ["a"] * 16}).encode(),
        json.dumps({"texts": ["a"] * 17}).encode(),
        json.dumps({"texts": [None]}).encode(),
        json.dumps({"texts": None}).encode(),
        json.dumps({"text": None, "texts": None}).encode(),
        json.dumps({"text": ""}).encode(),
        json.dumps({"texts": ["", " "]}).encode(),
        json.dumps({"text": ["a"]}).encode(),
        json.dumps({"text": {"a": 1}}).encode(),
        json.dumps({"texts": {"a": 1}}).encode(),
        json.dumps({"texts": [["a"]]}).encode(),
        json.dumps({"texts": [{"a": 1}]}).encode(),
        json.dumps({"texts": "abc"}).encode(),
        json.dumps({"text": True}).encode(),
        json.dumps({"texts": ["x" * 501, "y" * 600]}).encode(),
        json.dumps({"text": "x" * 501, "texts": ["a"]}).encode(),
        json.dumps({"texts": ["ok"] * 17 + [1]}).encode(),
        json.dumps({"extra": 1}).encode(),
        json.dumps({"a": [1] * 20, "text": "a"}).encode(),
    ]
    # bodies over 16 KiB: the screen's walk
    big = [
        json.dumps({"texts": [1] * 20000}).encode(),
        json.dumps({"texts": ["a"] * 8000}).encode(),
        json.dumps({"texts": ["a"] * 5 + [[1] * 9000]}).encode(),
        json.dumps({"texts": ["a", {"k": "v" * 20000}]}).encode(),
        json.dumps({**{f"key{i}": "v" * 2000 for i in range(14)}}).encode(),
        json.dumps({"extra": [1] * 9000}).encode(),
        json.dumps({"text": [1] * 9000}).encode(),
        json.dumps({"texts": {"a": [1] * 9000}}).encode(),
        json.dumps({"text": "x" * 20000}).encode(),
        json.dumps({"texts": ["a", "y" * 20000]}).encode(),
        json.dumps({"texts": ["a"] * 10 + ["z" * 17000]}).encode(),
        json.dumps({"text": "a", "pad": "p" * 20000}).encode(),
        json.dumps({"texts": [1, "a"] * 6000}).encode(),
        b'{"texts": [' + b",".join([b'"a"'] * 5000) + b"",
        json.dumps({"texts": ["ok"] * 10 + [1] * 12 + ["p" * 17000]}).encode(),
        json.dumps({"x": 1, "texts": [1] * 11000}).encode(),
        json.dumps([1] * 10000).encode(),
        json.dumps({"text": "p" * 17000}).encode()[:-3],
        json.dumps({"texts": [None] * 9000}).encode(),
        json.dumps({"texts": [" "] * 9000}).encode(),
    ]
    raws = fixed + big + [json.dumps(body()).encode() for _ in range(500)]
    seen: set[bytes] = set()
    return [raw for raw in raws if not (raw in seen or seen.add(raw))]  # type: ignore[func-returns-value]


def key(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()[:16]


def fingerprint(status: int, payload: Any) -> list[Any]:
    """What is recorded of an answer: the status, the first words of an error's message, and a
    hash of the whole error object (type, message, details) or the number of predictions."""
    if status == 200:
        return [status, len(payload["predictions"])]
    error = payload["error"]
    digest = hashlib.sha256(json.dumps(error, sort_keys=True).encode()).hexdigest()[:12]
    return [status, error["message"][:60], digest]
