"""``python -m fedlab``: the same command line as ``fedlab``."""

from __future__ import annotations

from fedlab.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
