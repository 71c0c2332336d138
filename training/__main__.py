"""``python -m training``: parse the command line and run one training job."""

from __future__ import annotations

import sys

from contract.artifact import ArtifactError
from contract.text import StopwordsUnavailableError
from training.config import ConfigError, TrainConfig
from training.data import DataError
from training.pipeline import run

# Errors a user can fix from the command line: one line on stderr, exit status 2. Anything
# else (a bare ValueError included) is a bug and keeps its traceback.
USER_ERRORS = (DataError, StopwordsUnavailableError, ArtifactError, ConfigError)


def main(argv: list[str] | None = None) -> int:
    config = TrainConfig.from_args(argv)
    try:
        run(config)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "CUDA" not in str(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
