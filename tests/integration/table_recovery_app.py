"""A Faust worker built by Bankroll's own create_streams(), for the table-recovery test.

MODE=write: an agent stores every command message in the `wallets` table as it comes
(fast enough that changelog batches hold several records). MODE=recover: once table
recovery has completed, dump the table to OUT as JSON. Settings from the environment."""
import asyncio
import json
import os
import sys

from app.streaming import create_streams
from config import load_settings

settings = load_settings()
settings.run_dir.mkdir(parents=True, exist_ok=True)
streams = create_streams(settings)
app = streams.app
mode, out = sys.argv[1], sys.argv[2]

if mode == "write":
    @app.agent(streams.wallet_commands)
    async def writer(stream):  # type: ignore[no-untyped-def]
        async for key, value in stream.items():
            streams.wallets[key] = value
            if value == b"last":
                open(out, "w").write("done")
else:
    @app.task
    async def dump() -> None:
        await app.tables.recovery.completed.wait()
        await asyncio.sleep(0.5)
        table = {k.decode(): v.decode() for k, v in streams.wallets.data.data.items()}
        with open(out + ".tmp", "w") as f:
            json.dump(table, f)
        os.replace(out + ".tmp", out)

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn", "--without-web"]
    app.main()
