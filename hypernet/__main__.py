"""`python -m hypernet`: see hypernet.cli."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
