"""Each AS process's dashboard counters in PostgreSQL (server/instance_stats.py), so the
console and GET /admin/v1/stats of any instance add up all of them. A table of its own:
no trigger fences these writes (migration 0009 fences only tokens and registry_version)."""

from __future__ import annotations

from keystile.store.postgres.connection import PostgresBase


class StatsMixin(PostgresBase):
    async def publish_stats(
        self, instance_id: str, now: int, stats: str, stale_before: int
    ) -> None:
        async with self._acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO instance_stats (instance_id, updated_at, stats) VALUES ($1, $2, $3)"
                " ON CONFLICT (instance_id) DO UPDATE SET updated_at = excluded.updated_at,"
                " stats = excluded.stats",
                instance_id,
                now,
                stats,
            )
            await conn.execute("DELETE FROM instance_stats WHERE updated_at < $1", stale_before)

    async def live_stats(self, since: int) -> list[tuple[str, int, str]]:
        rows = await self._fetch(
            "SELECT instance_id, updated_at, stats FROM instance_stats"
            " WHERE updated_at >= $1 ORDER BY instance_id",
            since,
        )
        return [(str(r[0]), int(r[1]), str(r[2])) for r in rows]

    async def drop_stats(self, instance_id: str) -> None:
        async with self._acquire() as conn:
            await conn.execute("DELETE FROM instance_stats WHERE instance_id = $1", instance_id)
