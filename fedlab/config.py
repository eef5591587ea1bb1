"""``fedlab.toml``: sources in a file, secrets from the environment.

.. code-block:: toml

    [fedlab]
    strategy = "auto"          # optional defaults
    timeout = 30

    [sources.crm]
    url = "postgresql://app:${CRM_PASSWORD}@db.example:5432/crm"
    tags = { region = "EU", function = "customers" }
    connect_timeout = 5

Relative SQLite/DuckDB paths resolve from the directory of the file.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedlab.errors import ConfigError

__all__ = ["Config", "SourceConfig", "interpolate", "load_config"]

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(text: str, env: dict[str, str] | None = None, where: str = "") -> str:
    """Replace ``${VAR}`` (or ``${VAR:-default}``) with environment values.

    >>> interpolate("postgresql://u:${PW}@h/db", {"PW": "x"})
    'postgresql://u:x@h/db'
    """
    env = dict(os.environ) if env is None else env

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ConfigError(f"{where}environment variable ${{{name}}} is not set")

    return _VAR.sub(sub, text)


@dataclass
class SourceConfig:
    name: str
    url: str
    tags: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    path: Path
    sources: list[SourceConfig]
    settings: dict[str, Any] = field(default_factory=dict)


def load_config(path: str | Path) -> Config:
    """Read a fedlab TOML file (with ``${ENV}`` interpolation in every string)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {e}") from None
    sources_table = data.get("sources")
    if not isinstance(sources_table, dict) or not sources_table:
        raise ConfigError(f"config file {str(p)!r} has no [sources.NAME] tables")
    sources = []
    for name, body in sources_table.items():
        where = f"{p.name}: [sources.{name}]: "
        if not isinstance(body, dict) or "url" not in body:
            raise ConfigError(f'{where}missing url = "..."')
        body = dict(body)
        url = interpolate(str(body.pop("url")), where=where)
        tags = {
            str(k): interpolate(str(v), where=where)
            for k, v in (body.pop("tags", {}) or {}).items()
        }
        sources.append(SourceConfig(name, url, tags, body))
    return Config(p.resolve(), sources, dict(data.get("fedlab", {})))
