"""TPC-H through fedlab's engines: the local Polars engine, Spark ``local[2]`` and a Spark
standalone cluster of two workers on loopback: ``python bench/engines.py --sf 0.1``.

A thin wrapper of ``fedlab bench --engines polars,spark-local,spark-standalone`` (the
benchmark lives in :mod:`fedlab.bench_engines`); every other argument is passed through
(``--help``; a later ``--engines`` wins).
"""

from __future__ import annotations

import sys

from fedlab.bench import main
from fedlab.bench_engines import ENGINES

if __name__ == "__main__":
    sys.exit(main(["--engines", ",".join(ENGINES), *sys.argv[1:]]))
