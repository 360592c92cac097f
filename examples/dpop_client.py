"""A client that gets and uses DPoP-bound access tokens (RFC 9449), in about 60 lines.

    pip install httpx joserfc
    ISSUER=https://auth.example.com CLIENT_ID=reports CLIENT_SECRET=ks_cs_... \
        API_URL=https://api.example.com/orders python dpop_client.py

Its key pair lives only in this process: a token copied from a log or a proxy is useless
without it.
"""

import asyncio
import base64
import hashlib
import json
import os
import secrets
import time

import httpx
from joserfc import jws
from joserfc.jwk import ECKey


class DpopClient:
    """Signs a fresh proof for every request (RFC 9449 §4) with one ES256 key."""

    def __init__(self, http: httpx.AsyncClient, issuer: str, client_id: str, secret: str):
        self.http, self.issuer, self.auth = http, issuer.rstrip("/"), (client_id, secret)
        self.key = ECKey.generate_key("P-256")  # private: never leaves this object
        self.nonce: str | None = None  # the server's, once it asked for one (§8, §9)
        self.access_token = ""

    def proof(self, method: str, url: str, access_token: str | None = None) -> str:
        header = {"typ": "dpop+jwt", "alg": "ES256", "jwk": self.key.as_dict(private=False)}
        claims = {"jti": secrets.token_urlsafe(16), "htm": method, "iat": int(time.time())}
        claims["htu"] = url.split("?")[0].split("#")[0]  # no query, no fragment (§4.2)
        if access_token is not None:  # §4.2: ath binds the proof to the token
            digest = hashlib.sha256(access_token.encode("ascii")).digest()
            claims["ath"] = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
        if self.nonce is not None:
            claims["nonce"] = self.nonce
        return jws.serialize_compact(header, json.dumps(claims), self.key)

    async def send(
        self, method: str, url: str, token: str | None = None, data: dict[str, str] | None = None
    ) -> httpx.Response:
        for _ in range(2):  # one retry when the server hands out a nonce (use_dpop_nonce)
            headers = {"DPoP": self.proof(method, url, token)}
            if token is not None:
                headers["Authorization"] = f"DPoP {token}"
            auth = self.auth if token is None else None
            r = await self.http.request(method, url, headers=headers, data=data, auth=auth)
            self.nonce = r.headers.get("DPoP-Nonce", self.nonce)
            asked = r.headers.get("WWW-Authenticate", "") + (r.text if r.status_code == 400 else "")
            if "use_dpop_nonce" not in asked:
                break
        return r

    async def get_token(self, scope: str) -> dict[str, object]:
        url = self.issuer + "/oauth2/token"
        r = await self.send("POST", url, data={"grant_type": "client_credentials", "scope": scope})
        r.raise_for_status()
        self.access_token = r.json()["access_token"]  # token_type: "DPoP"
        return dict(r.json())

    async def get(self, url: str) -> httpx.Response:
        return await self.send("GET", url, token=self.access_token)


async def main() -> None:
    async with httpx.AsyncClient() as http:
        client = DpopClient(
            http, os.environ["ISSUER"], os.environ["CLIENT_ID"], os.environ["CLIENT_SECRET"]
        )
        print(
            "token_type:", (await client.get_token(os.environ.get("SCOPE", "read")))["token_type"]
        )
        r = await client.get(os.environ["API_URL"])
        print(r.status_code, r.text)


if __name__ == "__main__":
    asyncio.run(main())
