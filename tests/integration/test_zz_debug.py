import asyncio, msgpack
import pytest
from aiokafka import AIOKafkaConsumer
from app import reconcile
from tests.integration.test_reconcile import credited_players

async def dump(st, tenant, player):
    cons = AIOKafkaConsumer(bootstrap_servers=reconcile._bootstrap_servers(st.kafka_url), enable_auto_commit=False, fetch_max_wait_ms=20)
    await cons.start()
    topic = reconcile.changelog_topic(st)
    tps = await reconcile._partitions(cons, topic)
    cons.assign(tps); await cons.seek_to_beginning(*tps)
    end = await cons.end_offsets(tps)
    out = []
    deadline = asyncio.get_running_loop().time() + 5
    while asyncio.get_running_loop().time() < deadline:
        b = await cons.getmany(timeout_ms=200)
        for tp, ms in b.items():
            for m in ms:
                if m.key == f"{tenant}|{player}".encode():
                    d = msgpack.unpackb(m.value, raw=False, strict_map_key=False)
                    out.append((tp.partition, m.offset, m.timestamp, d["version"], d["balances"].get("CASH:EUR")))
    await cons.stop()
    return out, end

@pytest.mark.parametrize("i", range(6))
async def test_debug(stack, client, i):
    players = await credited_players(stack, client, [(12_050, 50), (3_000, 0), (999, 9)])
    report = await reconcile.reconcile(stack.settings, tenant=stack.tenant_id, confirm_after_s=1)
    for row in report.drifting:
        print(reconcile.render(report))
        print(await dump(stack.settings, stack.tenant_id, row.player_id))
        print(stack.log_tail("worker-1"))
    assert not report.drifting
