"""Passwords of the broker sources: read from where a `Secret` points (an environment variable, then a file) at
the moment they are needed, so that a rotated password is picked up by the next connection without a restart.

Errors name the variable or the file, never what is in it.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, unquote, urlsplit

from autoscaler.config import Secret


class SecretError(Exception):
    """The secret cannot be had; the message is safe to show (it names the variable or file only)."""


def read_secret(secret: Secret, what: str) -> str:
    """The secret's value: the environment variable when it is set and not empty, else the file's content
    without its trailing line break. `what` says what the secret is for, e.g. "the Redis password"."""
    if secret.env:
        value = os.environ.get(secret.env, "")
        if value:
            return value
        if secret.file is None:
            raise SecretError(f"environment variable {secret.env} ({what}) is not set")
    if secret.file is not None:
        try:
            text = secret.file.read_text(encoding="utf-8")
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            also = f" and environment variable {secret.env} is not set" if secret.env else ""
            raise SecretError(f"cannot read {what} from file {secret.file}: {why}{also}") from None
        except UnicodeDecodeError:
            raise SecretError(f"{what} file {secret.file} is not UTF-8 text") from None
        value = text.rstrip("\r\n")  # `echo pw > file` adds a line break; anything else is part of the secret
        if not value:
            raise SecretError(f"{what} file {secret.file} is empty")
        return value
    raise SecretError(f"{what} names neither an environment variable (env) nor a file (file)")


def url_secrets(url: str) -> list[str]:
    """What of a URL may be secret, to blank out of error texts: its password and its query values. Not its
    user name, host or path, which errors name on purpose."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return [url]
    decoded = unquote(password) if password else None  # what the client library sends and may echo
    return [s for s in (password, decoded, parts.query, *(v for _, v in parse_qsl(parts.query))) if s]
