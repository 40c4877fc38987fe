import sys

from .cli import main

if __name__ == "__main__":  # guarded: engine=pool's worker processes import this module by name
    sys.exit(main())
