"""``python -m scoring``: score a CSV file offline (see scoring/score.py)."""

import sys

from scoring.score import main

if __name__ == "__main__":
    sys.exit(main())
