"""Proof Key for Code Exchange (RFC 7636), S256 only.

keystile requires PKCE of every client, public and confidential (RFC 9700 §2.1.1), and
refuses the ``plain`` method: it protects nothing when the authorization request leaks.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

S256 = "S256"
# RFC 7636 §4.1 (verifier) and §4.2 (challenge): 43-128 unreserved characters; an S256
# challenge is the 43-character base64url of a SHA-256 digest.
_VERIFIER = re.compile(r"[A-Za-z0-9\-._~]{43,128}")
_S256_CHALLENGE = re.compile(r"[A-Za-z0-9\-_]{43}")


def valid_challenge(challenge: str) -> bool:
    """An S256 code_challenge has the shape of BASE64URL(SHA256(verifier))."""
    return _S256_CHALLENGE.fullmatch(challenge) is not None


def valid_verifier(verifier: str) -> bool:
    return _VERIFIER.fullmatch(verifier) is not None


def s256(verifier: str) -> str:
    """RFC 7636 §4.2: BASE64URL-ENCODE(SHA256(ASCII(code_verifier)))."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def verify(verifier: str, challenge: str) -> bool:
    """RFC 7636 §4.6: does the verifier match the stored S256 challenge? (constant time)"""
    if not valid_verifier(verifier):
        return False
    return hmac.compare_digest(s256(verifier), challenge)
