"""What every benchmark script does with its results: stamp them, print the table, keep the JSON."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any


def stamped(**fields: Any) -> dict[str, Any]:
    """A results dict that starts with when and on what machine the run happened."""
    from bench.serve_bench import machine

    return {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "machine": machine(), **fields}


def publish(results: dict[str, Any], out: Path) -> dict[str, Any]:
    """Print ``results["markdown"]`` and write the whole dict to ``out`` as JSON (for BENCHMARKS.md)."""
    print()
    print(results["markdown"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return results
