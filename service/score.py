"""``python -m service.score``: the offline scorer under its older name (it lives in ``scoring``)."""

import sys

from scoring.score import main

if __name__ == "__main__":
    sys.exit(main())
