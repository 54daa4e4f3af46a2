"""Edit stores chosen by URL: :func:`open_store` and the registry of schemes it reads.

What a memory setting may say:

* ``sqlite:///abs/path/memory.sqlite``: an SQLite file at an absolute path (file-URL style: an empty host
  between ``//`` and the path's own leading ``/``; unlike SQLAlchemy, where three slashes mean a relative path);
* ``sqlite:relative/path/memory.sqlite``: an SQLite file relative to the current folder;
* a bare path (``memory.sqlite``, ``/abs/memory.sqlite``, a :class:`~pathlib.Path`): an SQLite file, as memory
  settings have always meant;
* ``postgresql://user:password@host:port/database`` (or ``postgres://``): a PostgreSQL database
  (:class:`~editkit.memory.postgres.PostgresStore`, psycopg 3 from the ``serve`` extra), shared by server replicas.

The path after ``sqlite:`` is taken literally (no percent-decoding, no ``~``, no query string). A string is read
as a URL when it begins with ``scheme://`` (any scheme) or with ``scheme:`` for a registered scheme; anything
else is a path. A URL whose scheme nobody registered (``mysql://...``) is an
:class:`~editkit.errors.UnknownNameError` naming the known schemes.

To add a store: implement :class:`~editkit.memory.store.EditStore` (every rule in its module docstring, and
``location``), then ``register_store("postgresql", factory)`` where ``factory(url)`` opens the store the whole
URL names. Every memory setting (``--set memory=postgresql://...``) then reaches it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from editkit.errors import ValidationError
from editkit.memory.postgres import PostgresStore
from editkit.memory.sqlite import SQLiteStore
from editkit.memory.store import EditStore
from editkit.registry import Registry

StoreFactory = Callable[[str], EditStore]

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):(//)?")
_FACTORIES: Registry[StoreFactory] = Registry("edit store scheme")


def register_store(scheme: str, factory: StoreFactory) -> None:
    """Open URLs of ``scheme`` (case-insensitive) with ``factory(url)``. A scheme registered twice with another
    factory is a :class:`ValueError` (two stores would claim the same URLs)."""
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]+", scheme):
        raise ValueError(f"a store scheme is a letter then letters, digits, '+', '.' or '-', got {scheme!r}")
    _FACTORIES.add(scheme, factory)


def store_schemes() -> list[str]:
    """The registered schemes, sorted."""
    return _FACTORIES.names()


def _scheme_of(url: str) -> str | None:
    """The scheme when ``url`` is a URL (see the module docstring), else ``None`` (a bare path)."""
    match = _SCHEME.match(url)
    if match is None:
        return None
    scheme = match.group(1).lower()
    if scheme in _FACTORIES or (match.group(2) and len(scheme) > 1):
        return scheme
    return None


def check_store_url(url: str) -> str | None:
    """The scheme of ``url`` (``None`` for a bare path), raising unless :func:`open_store` knows it, without
    opening anything: a config is checked before any model loads."""
    scheme = _scheme_of(url)
    if scheme is None:
        return None
    _FACTORIES.get(scheme)
    if scheme == "sqlite":
        sqlite_path(url)
    return scheme


def open_store(url: str | Path) -> EditStore:
    """Open the edit store ``url`` names: a registered scheme's store, or an SQLite file for a bare path."""
    scheme = None if isinstance(url, Path) else check_store_url(url)
    if scheme is None:
        return SQLiteStore(url)
    return _FACTORIES.get(scheme)(str(url))


def sqlite_path(url: str) -> Path:
    """The file an ``sqlite:`` URL names: ``sqlite:///abs/path`` or ``sqlite:relative/path``."""
    if _scheme_of(url) != "sqlite":
        raise ValidationError(f"{url!r} is not an sqlite: URL")
    rest = url.split(":", 1)[1]
    if rest.startswith("//"):
        host, _, path = rest[2:].partition("/")
        if host:
            raise ValidationError(
                f"{url!r}: an sqlite URL names no host ({host!r}); "
                "write sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH"
            )
        rest = "/" + path
    if rest.strip("/") == "":
        raise ValidationError(f"{url!r} names no file; write sqlite:///ABSOLUTE/PATH or sqlite:RELATIVE/PATH")
    return Path(rest)


register_store("sqlite", lambda url: SQLiteStore(sqlite_path(url)))
register_store("postgresql", PostgresStore)
register_store("postgres", PostgresStore)
