"""Service settings: one pydantic-settings class, every field a CLI flag and an ``HC_`` env var.

Precedence: command-line flag > environment variable > default. The flags are generated from
the fields below, so the README table, ``--help`` and the env vars never drift apart.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "HC_"


class Settings(BaseSettings):
    """Inference service configuration (validated once at startup)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    artifacts_dir: Path = Field(description="Folder holding one sub-folder per model version (the training output).")
    version: str = Field(
        "latest", description="Model version to serve: a version folder name, or `latest` for the newest valid one."
    )
    model_name: str = Field(
        "headline-classifier",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="The model's name in the Open Inference Protocol's paths (/v2/models/NAME/...).",
    )
    versions: str | None = Field(
        None,
        pattern=r"^[^\s]*$",
        description="More versions to serve beside --version, comma-separated (e.g. `latest,20261203T195818Z-d29ff4`); "
        "a request picks one by name (X-Model-Version on /predict, the path on /v2), else it gets --version.",
    )
    canary: str | None = Field(
        None,
        pattern=r"^[^:,\s]+:[0-9]+(\.[0-9]+)?$",
        description="VERSION:PERCENT: that share of requests naming no version go to VERSION (served if not listed), "
        "chosen by a hash of X-Request-ID so a client's retries land on the same version.",
    )
    shadow: str | None = Field(
        None,
        pattern=r"^[^:,\s]+$",
        description="VERSION to score a copy of live traffic after each answer is sent, only while the model "
        "is idle (skips are counted); agreement with the served answers is on /metrics.",
    )
    host: str = Field("127.0.0.1", description="Interface to bind (use 0.0.0.0 inside a container).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where the model runs: `auto` picks CUDA when available, else CPU."
    )
    max_batch_size: int = Field(
        64, ge=1, description="Most texts merged into one forward pass; 1 disables dynamic batching."
    )
    max_wait_ms: float = Field(
        2.0,
        ge=0,
        description="Longest a small batch waits for requests that are already arriving; never waits when idle.",
    )
    max_queue_size: int = Field(
        1024, ge=1, description="Most texts waiting for the model; beyond it requests get 503 with Retry-After."
    )
    max_texts_per_request: int = Field(256, ge=1, description="Most texts accepted in one /predict request.")
    max_text_chars: int = Field(1000, ge=1, description="Longest accepted text, in characters.")
    request_timeout_s: float = Field(
        10.0, gt=0, description="Longest a /predict request may wait for its result before a 504."
    )
    retry_after_s: int = Field(1, ge=0, description="Value of the Retry-After header sent with 503 responses.")
    torch_threads: int = Field(
        0,
        ge=0,
        description="Torch intra-op threads; 0 = usable CPUs (affinity, cgroup quota) minus one for the event loop.",
    )
    model_process: bool = Field(
        True,
        description="Run the model in a child process, out of the event loop's GIL (off: a thread of this process).",
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token that enables POST /admin/reload; unset disables the admin endpoint."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="Log level of the JSON logs.")
    access_log: bool = Field(True, description="Write one JSON log line per request.")
    warmup: bool = Field(True, description="Run a few forward passes at startup before reporting ready.")
    drift_metrics: bool = Field(
        True,
        description="Count input tokens, OOV tokens, empty inputs, labels and confidence on /metrics (drift signals).",
    )
    max_connections: int = Field(
        2048,
        ge=1,
        description="Most open client connections; past it a new connection gets 503 with Retry-After and is closed.",
    )
    keep_alive_timeout_s: float = Field(
        5.0, gt=0, description="How long an idle keep-alive connection stays open between requests."
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest time from a request's first byte (or the connection opening) to its last header; "
        "past it the connection gets 408 and is closed.",
    )
    body_idle_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest a request body may stall with no bytes arriving; past it the connection gets 408 "
        "and is closed.",
    )
    body_timeout_s: float = Field(
        15.0,
        gt=0,
        description="Longest time from a request's first byte to its last body byte, however steadily it drips; "
        "past it the connection gets 408 and is closed (room for a 128 KiB body at about 100 kbit/s).",
    )
    max_header_bytes: int = Field(
        65536,
        ge=1024,
        description="Largest request line plus headers, in bytes; past it 414 (URL) or 431 (headers) and close.",
    )
    max_pending_body_mb: int = Field(
        128,
        ge=1,
        description="MiB of request bodies received and not yet answered, all connections together; past it a "
        "body over 64 KiB gets 503 with Retry-After and its connection is closed (bounds what large or stalled "
        "uploads can pin in memory).",
    )
    model_stall_s: float = Field(
        2.0,
        gt=0,
        description="Shortest silence of the model process, while it owes an answer, after which it is killed and "
        "replaced (its batches get 503); the watchdog allows 10 times the slowest answer seen when that is longer.",
    )
    shutdown_timeout_s: float = Field(
        30.0, gt=0, description="On SIGTERM, how long in-flight requests may take before they are cancelled."
    )

    @model_validator(mode="after")
    def _canary_share_is_a_percentage(self) -> Settings:
        if self.canary is not None and float(self.canary.rpartition(":")[2]) > 100:
            raise ValueError(f"canary (--canary / {ENV_PREFIX}CANARY = {self.canary}): PERCENT must be 0 to 100")
        return self

    @model_validator(mode="after")
    def _largest_request_fits_the_queue(self) -> Settings:
        # A request is never split, so one with more texts than the queue holds could never be
        # queued: it would get 503 + Retry-After on an idle server, and clients retry forever.
        if self.max_texts_per_request > self.max_queue_size:
            raise ValueError(
                f"max_texts_per_request ({_flag('max_texts_per_request')} / {ENV_PREFIX}MAX_TEXTS_PER_REQUEST = "
                f"{self.max_texts_per_request}) must not exceed max_queue_size ({_flag('max_queue_size')} / "
                f"{ENV_PREFIX}MAX_QUEUE_SIZE = {self.max_queue_size}): a request that large could never be queued"
            )
        return self


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """argparse front end generated from :class:`Settings` (defaults stay with pydantic)."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Headline classifier inference server. Every flag also reads from the env var shown.",
    )
    for name, field in Settings.model_fields.items():
        env = ENV_PREFIX + name.upper()
        default = "required" if field.is_required() else f"default {field.default!r}"
        if name == "admin_token":
            default = "default unset"
        help_text = f"{field.description} [env {env}; {default}]".replace("%", "%%")
        if field.annotation is bool:
            parser.add_argument(
                _flag(name), dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text
            )
        else:
            parser.add_argument(_flag(name), dest=name, default=argparse.SUPPRESS, help=help_text, metavar=name.upper())
    return parser


def format_validation_error(exc: ValidationError) -> str:
    """One line: ``max_batch_size (--max-batch-size / HC_MAX_BATCH_SIZE): Input should be ...``."""
    parts = []
    for err in exc.errors():
        message = err["msg"].removeprefix("Value error, ")
        if not err["loc"]:  # a rule across fields names them itself
            parts.append(message)
            continue
        loc = str(err["loc"][0])
        where = f"{loc} ({_flag(loc)} / {ENV_PREFIX}{loc.upper()})" if loc in Settings.model_fields else loc
        parts.append(f"{where}: {message}")
    return "invalid settings: " + "; ".join(parts)


def load_settings(argv: Sequence[str] | None = None) -> Settings:
    """Parse flags over env vars; raises ValidationError on bad values, SystemExit on bad flags."""
    args: dict[str, Any] = vars(build_parser().parse_args(argv))
    return Settings(**args)
