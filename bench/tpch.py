"""TPC-H over SQLite + PostgreSQL + MariaDB: fedlab's strategies against DuckDB attaching
the same databases and one PostgreSQL holding all tables: ``python bench/tpch.py``.

A thin wrapper: the benchmark lives in :mod:`fedlab.bench` (also ``fedlab bench`` and
``python -m fedlab.bench``); every argument is passed through (``--help``), so
``python bench/tpch.py --sharded`` runs the sharded benchmark and ``--drop`` drops the
benchmark's databases.
"""

from __future__ import annotations

import sys

from fedlab.bench import main

if __name__ == "__main__":
    sys.exit(main())
