"""SQL fingerprints and the audit log (JSON lines).

A *fingerprint* names the shape of a query: its literals and ``:params`` become ``?``,
IN-lists of them collapse to one ``?``, the text is normalized by sqlglot, and the result
is hashed. Two queries that differ only in their constants share a fingerprint.

>>> a = fingerprint("SELECT name FROM users WHERE id = 7 AND country IN ('US', 'FR')")
>>> b = fingerprint("select name from users where id = :id and country in (:c)")
>>> a == b, len(a)
(True, 16)
>>> mask_literals("SELECT name FROM users WHERE email = 'bob@example.com' LIMIT 5")
'SELECT name FROM users WHERE email = ? LIMIT ?'

The :class:`AuditLog` appends one JSON object per line to a file the user names, flushed
per line and safe to share between threads; every text in it passes through
:func:`fedlab.security.redact`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

import sqlglot
from sqlglot import exp

from fedlab.security import redact

__all__ = ["AuditLog", "fingerprint", "mask_literals", "normalize_sql", "tables_in_sql"]

# literals in text sqlglot cannot parse: 'strings' (with '' escapes), numbers, :params
_TEXT_LITERALS = re.compile(r"'(?:[^']|'')*'|(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?\b|:\w+", re.I)


def _hole() -> exp.Expression:
    return exp.Var(this="?")


def _is_hole(node: exp.Expression) -> bool:
    return isinstance(node, exp.Var) and node.this == "?"


def _masked_tree(sql: str, dialect: str) -> exp.Expression | None:
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except Exception:  # sqlglot raises several kinds on bad text
        return None
    if len(statements) != 1:
        return None
    tree = statements[0]

    def mask(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Literal | exp.Placeholder):
            return _hole()
        if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal | exp.Placeholder):
            return _hole()
        return node

    tree = tree.transform(mask)
    for node in list(tree.find_all(exp.In)):
        items = node.expressions
        if len(items) > 1 and all(_is_hole(i) for i in items):
            node.set("expressions", [_hole()])
    return tree


@lru_cache(maxsize=2048)
def normalize_sql(sql: str, dialect: str = "postgres") -> str:
    """``sql`` with every literal and parameter replaced by ``?`` and IN-lists collapsed,
    normalized (keywords upper case, identifiers lower case, one line)."""
    tree = _masked_tree(sql, dialect)
    if tree is None:
        text = _TEXT_LITERALS.sub("?", str(sql))
        text = re.sub(r"\(\s*\?(?:\s*,\s*\?)+\s*\)", "(?)", text)
        return " ".join(text.split()).lower()
    try:
        return tree.sql(dialect="postgres", normalize=True)
    except Exception:
        return " ".join(_TEXT_LITERALS.sub("?", str(sql)).split()).lower()


def fingerprint(sql: str, dialect: str = "postgres") -> str:
    """A 16-hex-digit hash of :func:`normalize_sql`: same shape, same fingerprint."""
    return hashlib.sha256(normalize_sql(sql, dialect).encode("utf-8", "surrogatepass")).hexdigest()[
        :16
    ]


@lru_cache(maxsize=2048)
def mask_literals(sql: str, dialect: str = "postgres") -> str:
    """``sql`` with its literals and parameters replaced by ``?`` (its own layout otherwise
    as sqlglot writes it); text sqlglot cannot parse is masked by pattern."""
    tree = _masked_tree(sql, dialect)
    if tree is not None:
        try:
            return redact(tree.sql(dialect=dialect))
        except Exception:
            pass
    return redact(_TEXT_LITERALS.sub("?", str(sql)))


def tables_in_sql(sql: str, dialect: str = "postgres") -> list[str]:
    """Table names a query text mentions (``source.table`` when qualified; CTE names left
    out): what a query refused before binding tried to touch."""
    try:
        tree = sqlglot.parse_one(sql, read=dialect)
    except Exception:
        return []
    if tree is None:
        return []
    ctes = {c.alias_or_name.lower() for c in tree.find_all(exp.CTE)}
    out: list[str] = []
    for t in tree.find_all(exp.Table):
        if not t.name or (not t.db and t.name.lower() in ctes):
            continue
        name = f"{t.db}.{t.name}" if t.db else t.name
        if name not in out:
            out.append(name)
    return out


class AuditLog:
    """Append-only JSON-lines audit file: one object per query, flushed per line.

    Each line has ``timestamp`` (ISO 8601, UTC), ``user``, ``fingerprint``, ``sql`` (literals
    masked when ``mask_literals``), ``tables``, ``sources``, ``rows`` (returned), ``status``
    (ok / error / partial), ``decision`` (allowed / denied) and ``error_class``. Writes from
    several threads never interleave.
    """

    def __init__(self, path: str | os.PathLike[str], *, mask_literals: bool = True) -> None:
        self.path = Path(path)
        self.mask_literals = mask_literals
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, open(self.path, "a", encoding="utf-8"):
            pass  # fail now (bad directory, no permission), not at the first query

    def write(self, entry: dict[str, Any]) -> None:
        """Append ``entry`` as one line (every string redacted)."""
        line = json.dumps(_redacted(entry), ensure_ascii=False, default=str)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()

    def __repr__(self) -> str:
        return f"AuditLog({str(self.path)!r}, mask_literals={self.mask_literals})"


def _redacted(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redacted(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redacted(v) for v in value]
    return value
