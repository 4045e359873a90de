"""Tokens at rest: sealed with a key derived from SECRET_KEY for this one purpose (HKDF), so the
database alone gives nobody a person's GitHub token."""

from __future__ import annotations

import base64

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class TokenUnreadable(Exception):
    """A sealed token could not be opened (SECRET_KEY changed): the person links again."""


class TokenCipher:
    def __init__(self, secret_key: bytes):
        derived = HKDF(algorithm=SHA256(), length=32, salt=None, info=b"hosted-agents/github-tokens").derive(secret_key)
        self._fernet = Fernet(base64.urlsafe_b64encode(derived))

    def seal(self, token: str) -> str:
        return self._fernet.encrypt(token.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken:
            raise TokenUnreadable("the stored token cannot be read with this SECRET_KEY") from None
