"""Each AS process's dashboard counters in the SQLite file (server/instance_stats.py), so
the workers of ``keystile serve --workers N`` add up."""

from __future__ import annotations

import sqlite3

from keystile.store.sqlite.connection import SQLiteBase


class StatsMixin(SQLiteBase):
    async def publish_stats(
        self, instance_id: str, now: int, stats: str, stale_before: int
    ) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute(
                "INSERT INTO instance_stats (instance_id, updated_at, stats) VALUES (?, ?, ?)"
                " ON CONFLICT (instance_id) DO UPDATE SET updated_at = excluded.updated_at,"
                " stats = excluded.stats",
                (instance_id, now, stats),
            )
            c.execute("DELETE FROM instance_stats WHERE updated_at < ?", (stale_before,))

        await self._write(fn)

    async def live_stats(self, since: int) -> list[tuple[str, int, str]]:
        rows = self._query(
            "SELECT instance_id, updated_at, stats FROM instance_stats"
            " WHERE updated_at >= ? ORDER BY instance_id",
            (since,),
        )
        return [(str(r[0]), int(r[1]), str(r[2])) for r in rows]

    async def drop_stats(self, instance_id: str) -> None:
        def fn(c: sqlite3.Connection) -> None:
            c.execute("DELETE FROM instance_stats WHERE instance_id = ?", (instance_id,))

        await self._write(fn)
