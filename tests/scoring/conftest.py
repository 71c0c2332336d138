"""The scorer runs on the service's artifacts: reuse the tiny real artifact fixture."""

from tests.service.conftest import artifacts_dir

__all__ = ["artifacts_dir"]
