"""`python3 -m tools.conformance HOST PORT`, or `python3 tools/conformance HOST PORT`."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from tools.conformance.cli import main  # noqa: E402 (the repository's root comes first)

if __name__ == "__main__":
    sys.exit(main())
