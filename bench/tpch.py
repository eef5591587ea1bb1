"""TPC-H over SQLite + PostgreSQL + MariaDB against one PostgreSQL: ``python bench/tpch.py``.

A thin wrapper: the benchmark lives in :mod:`fedlab.bench` (also ``fedlab bench`` and
``python -m fedlab.bench``); every argument is passed through (``--help``).
"""

from __future__ import annotations

import sys

from fedlab.bench import main

if __name__ == "__main__":
    sys.exit(main())
