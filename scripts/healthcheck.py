"""Container health probe: exit 0 when the service reports ready, 1 otherwise.

Used by the Dockerfile's HEALTHCHECK and docker-compose.yml. The slim base image has no curl,
and this keeps the probe to the standard library. It reads the same ``HC_PORT`` the service
listens on, so overriding the port does not break the probe.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

READY_PATH = "/health/ready"


def probe(url: str, timeout: float) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        # HTTPError (503 while loading or draining) is a URLError: not ready.
        return False


def main(argv: list[str]) -> int:
    """``healthcheck.py [URL]``; the default URL is the readiness endpoint on ``HC_PORT``."""
    url = argv[0] if argv else f"http://127.0.0.1:{os.environ.get('HC_PORT', '8000')}{READY_PATH}"
    return 0 if probe(url, timeout=3.0) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
