"""Credential hygiene: nothing fedlab prints, logs or raises carries a password."""

from __future__ import annotations

import re

__all__ = ["redact", "redact_url", "register_secret"]

_SECRETS: set[str] = set()


def register_secret(secret: str) -> None:
    """Remember a password so that it is masked wherever it appears, URL or not."""
    if secret and len(secret) >= 3:
        _SECRETS.add(secret)


# scheme://user:password@host  ->  scheme://user:***@host
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]{0,31}://[^:/@\s]*):(?P<pw>[^@\s]*)@")
# password=...  /  pwd=... / token=... in query strings, DSNs and messages
_KV_SECRET = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|token|secret|api_key|apikey)\s*[=:]\s*)(?P<val>'[^']*'|\"[^\"]*\"|[^\s&;,)]+)",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``.

    >>> redact_url("postgresql://bob:s3cret@db:5432/crm")
    'postgresql://bob:***@db:5432/crm'
    """
    return redact(url)


def redact(text: str) -> str:
    """Remove passwords and tokens from any text (URLs, DSNs, key=value pairs).

    >>> redact("connect failed: mysql://root:hunter2@127.0.0.1/x?password=hunter2")
    'connect failed: mysql://root:***@127.0.0.1/x?password=***'
    """
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", str(text))
    text = _KV_SECRET.sub(lambda m: f"{m['key']}***", text)
    for secret in _SECRETS:
        text = text.replace(secret, "***")
    return text
