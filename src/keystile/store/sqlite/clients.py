"""Clients and resource servers in the SQLite store, cached in-process per registry version."""

from __future__ import annotations

import sqlite3
from typing import Any

from keystile.core.models import Client, ResourceServer
from keystile.store.base import CLIENT_DELETED, CLIENT_DISABLED, Conflict, NotFound
from keystile.store.rows import (
    CLIENT_COLUMNS,
    client_from_row,
    client_params,
    client_update,
    client_update_params,
    join,
    placeholders,
    split,
)
from keystile.store.sqlite.cascade import _append_event, _revoke_client_tokens
from keystile.store.sqlite.connection import SQLiteBase

_CLIENT_UPDATE = client_update("?")

_CACHE_LIMIT = 10_000


def _set_rs_clients(c: sqlite3.Connection, rs: ResourceServer) -> None:
    for client_id in sorted(rs.introspection_clients):
        if not c.execute("SELECT 1 FROM clients WHERE client_id = ?", (client_id,)).fetchone():
            raise NotFound(f"no client {client_id!r}")
        other = c.execute(
            "SELECT identifier FROM resource_server_clients WHERE client_id = ?", (client_id,)
        ).fetchone()
        if other is not None and other[0] != rs.identifier:
            raise Conflict(f"client {client_id!r} already introspects for {other[0]!r}")
        c.execute(
            "INSERT INTO resource_server_clients (client_id, identifier) VALUES (?, ?)",
            (client_id, rs.identifier),
        )


class ClientsMixin(SQLiteBase):
    async def create_client(self, client: Client) -> None:
        def fn(c: sqlite3.Connection) -> None:
            if c.execute(
                "SELECT 1 FROM clients WHERE client_id = ?", (client.client_id,)
            ).fetchone():
                raise Conflict(f"client {client.client_id!r} exists already")
            c.execute(
                f"INSERT INTO clients ({CLIENT_COLUMNS}) VALUES ({placeholders(CLIENT_COLUMNS)})",
                client_params(client),
            )

        await self._write(fn)

    async def get_client(self, client_id: str) -> Client | None:
        self._sync_registry()
        try:
            return self._clients[client_id]
        except KeyError:
            pass
        rows = self._query(
            f"SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = ?", (client_id,)
        )
        client = client_from_row(rows[0]) if rows else None
        if client is not None:  # misses are not cached: unknown ids must not fill memory
            if len(self._clients) >= _CACHE_LIMIT:
                self._clients.clear()
            self._clients[client_id] = client
        return client

    async def list_clients(self) -> list[Client]:
        rows = self._query(f"SELECT {CLIENT_COLUMNS} FROM clients ORDER BY client_id")
        return [client_from_row(r) for r in rows]

    async def update_client(self, client: Client) -> None:
        def fn(c: sqlite3.Connection) -> None:
            cur = c.execute(_CLIENT_UPDATE, client_update_params(client))
            if cur.rowcount == 0:
                raise NotFound(f"no client {client.client_id!r}")

        await self._write(fn)

    async def set_client_enabled(self, client_id: str, enabled: bool, now: int) -> int:
        """Enable or disable a client; disabling revokes all its live tokens (one transaction).

        Returns how many tokens were revoked. Re-enabling does not bring tokens back.
        """

        def fn(c: sqlite3.Connection) -> int:
            cur = c.execute(
                "UPDATE clients SET enabled = ?, updated_at = ? WHERE client_id = ?",
                (int(enabled), now, client_id),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no client {client_id!r}")
            if enabled:
                return 0
            n = _revoke_client_tokens(c, client_id, now)
            _append_event(c, CLIENT_DISABLED, now, {"client_id": client_id, "tokens_revoked": n})
            return n

        return await self._write(fn)

    async def delete_client(self, client_id: str, now: int) -> int:
        """Delete a client, revoking its live tokens first (kept as rows until they expire)."""

        def fn(c: sqlite3.Connection) -> int:
            if not c.execute("SELECT 1 FROM clients WHERE client_id = ?", (client_id,)).fetchone():
                raise NotFound(f"no client {client_id!r}")
            n = _revoke_client_tokens(c, client_id, now)
            c.execute("DELETE FROM clients WHERE client_id = ?", (client_id,))
            _append_event(c, CLIENT_DELETED, now, {"client_id": client_id, "tokens_revoked": n})
            return n

        return await self._write(fn)

    async def create_resource_server(self, rs: ResourceServer) -> None:
        def fn(c: sqlite3.Connection) -> None:
            if c.execute(
                "SELECT 1 FROM resource_servers WHERE identifier = ?", (rs.identifier,)
            ).fetchone():
                raise Conflict(f"resource server {rs.identifier!r} exists already")
            c.execute(
                "INSERT INTO resource_servers (identifier, name, claims, rules, created_at,"
                " updated_at, introspection_response) VALUES (?,?,?,?,?,?,?)",
                (
                    rs.identifier,
                    rs.name,
                    join(rs.claims),
                    join(rs.rules),
                    rs.created_at,
                    rs.updated_at,
                    rs.introspection_response,
                ),
            )
            _set_rs_clients(c, rs)

        await self._write(fn)

    async def update_resource_server(self, rs: ResourceServer) -> None:
        def fn(c: sqlite3.Connection) -> None:
            cur = c.execute(
                "UPDATE resource_servers SET name=?, claims=?, rules=?, updated_at=?,"
                " introspection_response=? WHERE identifier=?",
                (
                    rs.name,
                    join(rs.claims),
                    join(rs.rules),
                    rs.updated_at,
                    rs.introspection_response,
                    rs.identifier,
                ),
            )
            if cur.rowcount == 0:
                raise NotFound(f"no resource server {rs.identifier!r}")
            c.execute("DELETE FROM resource_server_clients WHERE identifier = ?", (rs.identifier,))
            _set_rs_clients(c, rs)

        await self._write(fn)

    async def delete_resource_server(self, identifier: str) -> None:
        def fn(c: sqlite3.Connection) -> None:
            cur = c.execute("DELETE FROM resource_servers WHERE identifier = ?", (identifier,))
            if cur.rowcount == 0:
                raise NotFound(f"no resource server {identifier!r}")

        await self._write(fn)

    def _load_rs(self, where: str, params: tuple[Any, ...]) -> list[ResourceServer]:
        rows = self._query(
            "SELECT rs.identifier, rs.name, rs.claims, rs.rules, rs.created_at, rs.updated_at,"
            " (SELECT group_concat(client_id, ' ') FROM resource_server_clients rsc"
            "   WHERE rsc.identifier = rs.identifier), rs.introspection_response"
            f" FROM resource_servers rs {where} ORDER BY rs.identifier",
            params,
        )
        return [
            ResourceServer(
                identifier=r[0],
                name=r[1],
                claims=split(r[2]),
                rules=split(r[3]),
                created_at=r[4],
                updated_at=r[5],
                introspection_clients=split(r[6] or ""),
                introspection_response=r[7],
            )
            for r in rows
        ]

    async def get_resource_server(self, identifier: str) -> ResourceServer | None:
        found = self._load_rs("WHERE rs.identifier = ?", (identifier,))
        return found[0] if found else None

    async def resource_server_for_client(self, client_id: str) -> ResourceServer | None:
        self._sync_registry()
        try:
            return self._rs_by_client[client_id]
        except KeyError:
            pass
        found = self._load_rs(
            "WHERE rs.identifier = (SELECT identifier FROM resource_server_clients"
            " WHERE client_id = ?)",
            (client_id,),
        )
        rs = found[0] if found else None
        # Only authenticated clients get here, so caching misses is bounded by the registry.
        if len(self._rs_by_client) >= _CACHE_LIMIT:
            self._rs_by_client.clear()
        self._rs_by_client[client_id] = rs
        return rs

    async def list_resource_servers(self) -> list[ResourceServer]:
        return self._load_rs("", ())

    async def known_resources(self) -> frozenset[str]:
        self._sync_registry()
        if self._known_resources is None:
            rows = self._query("SELECT identifier FROM resource_servers")
            self._known_resources = frozenset(r[0] for r in rows)
        return self._known_resources

    async def all_scopes(self) -> frozenset[str]:
        self._sync_registry()
        if self._scopes is None:
            rows = self._query("SELECT scopes FROM clients WHERE enabled = 1")
            scopes: set[str] = set()
            for (value,) in rows:
                scopes.update(value.split())
            self._scopes = frozenset(scopes)
        return self._scopes
