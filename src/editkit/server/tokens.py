"""Bearer tokens of the server: named, with a role, stored hashed, compared in constant time.

The tokens file is JSON: ``{"tokens": [{"name": "alice", "role": "write", "sha256": "..."}, ...]}``. A token
is ``ek_`` plus 43 URL-safe characters from :func:`secrets.token_urlsafe` (256 random bits), so a plain SHA-256
of it cannot be reversed by search. :meth:`TokenBook.check` hashes the presented token and compares it with
every stored hash by :func:`hmac.compare_digest`, always visiting all of them, so the time taken does not say
which entry (if any) matched. A token's name is the author of the edits made with it.

Roles: ``write`` (add and roll back edits, and read) and ``read`` (read only, for servers started with reads
behind tokens).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from editkit.errors import ValidationError
from editkit.files import atomic_write

Role = Literal["read", "write"]
ROLES: tuple[Role, ...] = ("read", "write")
_NAME = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


@dataclass(frozen=True)
class Token:
    name: str
    role: Role
    sha256: str

    def allows(self, role: Role) -> bool:
        return self.role == "write" or role == "read"


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenBook:
    """The tokens of one tokens file (module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.tokens: list[Token] = self._read() if self.path.exists() else []

    def _read(self) -> list[Token]:
        try:
            data = json.loads(self.path.read_text())
            entries = data["tokens"]
            tokens = [Token(str(e["name"]), e["role"], str(e["sha256"])) for e in entries]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValidationError(f"tokens file {self.path} is not an editkit tokens file ({exc})") from None
        for t in tokens:
            if t.role not in ROLES or not re.fullmatch(r"[0-9a-f]{64}", t.sha256):
                raise ValidationError(f"tokens file {self.path}: entry {t.name!r} has a bad role or hash")
        return tokens

    def add(self, name: str, role: Role = "write") -> str:
        """Make a token named ``name``, store its hash (the file rewritten whole) and return the token itself:
        the only time it is ever shown."""
        if not _NAME.fullmatch(name):
            raise ValidationError(f"a token name is 1-64 letters, digits or '_.@-', got {name!r}")
        if role not in ROLES:
            raise ValidationError(f"a token's role is one of {', '.join(ROLES)}, got {role!r}")
        if any(t.name == name for t in self.tokens):
            raise ValidationError(f"{self.path} already has a token named {name!r}")
        token = "ek_" + secrets.token_urlsafe(32)
        self.tokens.append(Token(name, role, token_hash(token)))
        body = {"tokens": [{"name": t.name, "role": t.role, "sha256": t.sha256} for t in self.tokens]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(body, indent=1) + "\n")
        self.path.chmod(0o600)
        return token

    def check(self, presented: str) -> Token | None:
        """The token ``presented`` is, or ``None``; every stored hash is compared, in constant time each."""
        digest = token_hash(presented).encode()
        found = None
        for t in self.tokens:
            if hmac.compare_digest(digest, t.sha256.encode()):
                found = t
        return found
