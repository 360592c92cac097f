"""Clients and resource servers in the PostgreSQL store (never cached in-process)."""

from __future__ import annotations

from typing import Any

import asyncpg

from keystile.core.models import Client, ResourceServer
from keystile.store.base import CLIENT_DELETED, CLIENT_DISABLED, Conflict, NotFound
from keystile.store.postgres.cascade import _append_event, _revoke_client_tokens
from keystile.store.postgres.connection import PostgresBase, _rowcount
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

_RS_SELECT = (
    "SELECT rs.identifier, rs.name, rs.claims, rs.rules, rs.created_at, rs.updated_at,"
    " rs.introspection_response,"
    " (SELECT string_agg(client_id, ' ') FROM resource_server_clients rsc"
    "   WHERE rsc.identifier = rs.identifier)"
    " FROM resource_servers rs"
)


def _rs_from_row(r: Any) -> ResourceServer:
    return ResourceServer(
        identifier=r[0],
        name=r[1],
        claims=split(r[2]),
        rules=split(r[3]),
        created_at=r[4],
        updated_at=r[5],
        introspection_response=r[6],
        introspection_clients=split(r[7] or ""),
    )


async def _set_rs_clients(c: asyncpg.Connection, rs: ResourceServer) -> None:
    for client_id in sorted(rs.introspection_clients):
        if await c.fetchval("SELECT 1 FROM clients WHERE client_id = $1", client_id) is None:
            raise NotFound(f"no client {client_id!r}")
        other = await c.fetchval(
            "SELECT identifier FROM resource_server_clients WHERE client_id = $1", client_id
        )
        if other is not None and other != rs.identifier:
            raise Conflict(f"client {client_id!r} already introspects for {other!r}")
        await c.execute(
            "INSERT INTO resource_server_clients (client_id, identifier) VALUES ($1, $2)",
            client_id,
            rs.identifier,
        )


_CLIENT_UPDATE = client_update("$")


class ClientsMixin(PostgresBase):
    async def create_client(self, client: Client) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(
                f"INSERT INTO clients ({CLIENT_COLUMNS})"
                f" VALUES ({placeholders(CLIENT_COLUMNS, '$')})"
                " ON CONFLICT (client_id) DO NOTHING",
                *client_params(client),
            )
            if _rowcount(status) == 0:
                raise Conflict(f"client {client.client_id!r} exists already")

        await self._tx(fn)

    async def get_client(self, client_id: str) -> Client | None:
        if "\x00" in client_id:  # from a request; no stored id has it (PostgreSQL text can't)
            return None
        # Not cached: another process may have changed it a moment ago. The server's
        # verified-caller cache spares this read on the introspection hot path.
        row = await self._fetchrow(
            f"SELECT {CLIENT_COLUMNS} FROM clients WHERE client_id = $1", client_id
        )
        return None if row is None else client_from_row(row)

    async def list_clients(self) -> list[Client]:
        rows = await self._fetch(f"SELECT {CLIENT_COLUMNS} FROM clients ORDER BY client_id")
        return [client_from_row(r) for r in rows]

    async def update_client(self, client: Client) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(_CLIENT_UPDATE, *client_update_params(client, "$"))
            if _rowcount(status) == 0:
                raise NotFound(f"no client {client.client_id!r}")

        await self._tx(fn)

    async def set_client_enabled(self, client_id: str, enabled: bool, now: int) -> int:
        """Enable or disable a client; disabling revokes all its live tokens (one transaction).

        Returns how many tokens were revoked. Re-enabling does not bring tokens back.
        """

        async def fn(c: asyncpg.Connection) -> int:
            status = await c.execute(
                "UPDATE clients SET enabled = $2, updated_at = $3 WHERE client_id = $1",
                client_id,
                enabled,
                now,
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no client {client_id!r}")
            if enabled:
                return 0
            n = await _revoke_client_tokens(c, client_id, now)
            await _append_event(
                c, CLIENT_DISABLED, now, {"client_id": client_id, "tokens_revoked": n}
            )
            return n

        return await self._tx(fn)

    async def delete_client(self, client_id: str, now: int) -> int:
        """Delete a client, revoking its live tokens first (kept as rows until they expire)."""

        async def fn(c: asyncpg.Connection) -> int:
            # FOR UPDATE: a concurrent disable or delete of the same client waits for us.
            found = await c.fetchrow(
                "SELECT 1 FROM clients WHERE client_id = $1 FOR UPDATE", client_id
            )
            if found is None:
                raise NotFound(f"no client {client_id!r}")
            n = await _revoke_client_tokens(c, client_id, now)
            await c.execute("DELETE FROM clients WHERE client_id = $1", client_id)
            await _append_event(
                c, CLIENT_DELETED, now, {"client_id": client_id, "tokens_revoked": n}
            )
            return n

        return await self._tx(fn)

    async def create_resource_server(self, rs: ResourceServer) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(
                "INSERT INTO resource_servers (identifier, name, claims, rules, created_at,"
                " updated_at, introspection_response) VALUES ($1,$2,$3,$4,$5,$6,$7)"
                " ON CONFLICT (identifier) DO NOTHING",
                rs.identifier,
                rs.name,
                join(rs.claims),
                join(rs.rules),
                rs.created_at,
                rs.updated_at,
                rs.introspection_response,
            )
            if _rowcount(status) == 0:
                raise Conflict(f"resource server {rs.identifier!r} exists already")
            await _set_rs_clients(c, rs)

        await self._tx(fn)

    async def update_resource_server(self, rs: ResourceServer) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(
                "UPDATE resource_servers SET name=$2, claims=$3, rules=$4, updated_at=$5,"
                " introspection_response=$6 WHERE identifier=$1",
                rs.identifier,
                rs.name,
                join(rs.claims),
                join(rs.rules),
                rs.updated_at,
                rs.introspection_response,
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no resource server {rs.identifier!r}")
            await c.execute(
                "DELETE FROM resource_server_clients WHERE identifier = $1", rs.identifier
            )
            await _set_rs_clients(c, rs)

        await self._tx(fn)

    async def delete_resource_server(self, identifier: str) -> None:
        async def fn(c: asyncpg.Connection) -> None:
            status = await c.execute(
                "DELETE FROM resource_servers WHERE identifier = $1", identifier
            )
            if _rowcount(status) == 0:
                raise NotFound(f"no resource server {identifier!r}")

        await self._tx(fn)

    async def get_resource_server(self, identifier: str) -> ResourceServer | None:
        row = await self._fetchrow(_RS_SELECT + " WHERE rs.identifier = $1", identifier)
        return None if row is None else _rs_from_row(row)

    async def resource_server_for_client(self, client_id: str) -> ResourceServer | None:
        row = await self._fetchrow(
            _RS_SELECT + " WHERE rs.identifier = (SELECT identifier FROM resource_server_clients"
            " WHERE client_id = $1)",
            client_id,
        )
        return None if row is None else _rs_from_row(row)

    async def list_resource_servers(self) -> list[ResourceServer]:
        rows = await self._fetch(_RS_SELECT + " ORDER BY rs.identifier")
        return [_rs_from_row(r) for r in rows]

    async def known_resources(self) -> frozenset[str]:
        rows = await self._fetch("SELECT identifier FROM resource_servers")
        return frozenset(r[0] for r in rows)

    async def all_scopes(self) -> frozenset[str]:
        rows = await self._fetch("SELECT scopes FROM clients WHERE enabled")
        scopes: set[str] = set()
        for (value,) in rows:
            scopes.update(value.split())
        return frozenset(scopes)
