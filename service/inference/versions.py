"""Several versions live: one lane (predictor + batcher) per version, and the table that routes a
request to its lane.

Each version has a batcher of its own, so a batch never mixes versions; every batcher hands
its batches to the one model thread (and the one model process), whose thread budget is sized
for one. A request names its version (the ``X-Model-Version`` header on ``/predict``, the path
on ``/v2``), or gets the default, or, with a canary, the canary version for a fixed share of
request ids: the share is a hash of ``X-Request-ID``, so a client's retries land on the
version they landed on before. The shadow version gets a copy of live traffic after each
answer is sent (see :meth:`ModelService.shadow`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from service.errors import UnknownModel
from service.inference.batching import Batcher
from service.inference.predictor import Predictor

_BUCKETS = 10_000  # canary shares to a hundredth of a percent


@dataclass(eq=False)
class Lane:
    """One served version: its predictor (swapped by a reload of the default) and its batcher."""

    predictor: Predictor
    batcher: Batcher

    @property
    def version(self) -> str:
        return self.predictor.version


def canary_bucket(request_id: str) -> int:
    """A request id's fixed place in ``[0, 10000)``: the same id always routes the same way."""
    digest = hashlib.blake2b(request_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % _BUCKETS


def parse_canary(value: str) -> tuple[str, float]:
    """``VERSION:PERCENT`` -> (version, percent); the settings check the format."""
    version, _, percent = value.rpartition(":")
    return version, float(percent)


class VersionTable:
    """The served lanes by version (the default first), the canary split and the shadow version."""

    def __init__(self, default: Lane) -> None:
        self.lanes: dict[str, Lane] = {default.version: default}
        self.default = default
        self.canary: Lane | None = None
        self.canary_buckets = 0  # requests whose bucket is below this go to the canary
        self.shadow: Lane | None = None

    def versions(self) -> list[str]:
        """Every served version, the default first."""
        return [self.default.version, *(v for v in self.lanes if v != self.default.version)]

    def lane(self, version: str) -> Lane:
        lane = self.lanes.get(version)
        if lane is None:
            raise UnknownModel(f"unknown model version {version[:100]!r}; served: {', '.join(self.versions())}")
        return lane

    def route(self, version: str | None, request_id: str) -> Lane:
        """The lane for a request naming ``version`` (None: the default, or the canary's share)."""
        if version is not None:
            return self.lane(version)
        if self.canary is not None and canary_bucket(request_id) < self.canary_buckets:
            return self.canary
        return self.default

    def set_canary(self, lane: Lane | None, percent: float = 0.0) -> None:
        self.canary = lane
        self.canary_buckets = round(percent * _BUCKETS / 100) if lane is not None else 0

    def add(self, lane: Lane) -> None:
        self.lanes[lane.version] = lane

    def remove(self, version: str) -> Lane:
        lane = self.lane(version)
        del self.lanes[version]
        return lane

    def rename(self, old: str, lane: Lane) -> None:
        """The default lane now serves another version (a reload swapped its predictor)."""
        self.lanes.pop(old, None)
        self.lanes = {lane.version: lane, **self.lanes}

    def roles(self) -> dict[str, object]:
        """The routing, for ``GET /model``."""
        return {
            "default": self.default.version,
            "canary": None
            if self.canary is None
            else {"version": self.canary.version, "percent": self.canary_buckets * 100 / _BUCKETS},
            "shadow": None if self.shadow is None else self.shadow.version,
        }
