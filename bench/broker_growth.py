"""How the embedded broker's CPU grows with what it holds (the live stream's freshness depends on it).

`python -m bench.broker_growth [--steps 0,30000,60000] [--rate 200] [--seconds 4]`

Starts its own Tansu (as `inbox dev` does), then for each step fills a 4-partition topic up to that
many stored record batches of one record each (what the relay publishes at a steady few hundred
messages a second: one batch per event) and measures the broker's CPU while a producer publishes
`--rate` records a second and a consumer waiting at most 10 ms a fetch (the projection worker's
setting) reads them at the end of the topic. Prints that CPU as a ratio of the same trickle on the
empty broker, measured in the same run.

Tansu keeps every batch in memory and nothing is ever deleted, so on a long `inbox dev` (or a
benchmark that ran earlier phases) each fetch that returns data costs it more: the embedded
broker's share of the two cores grows with its age. Apache Kafka (production, docker-compose.yml)
finds an offset through its segment index and does not behave so.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench.procs import CpuMeter
from inbox.adapters.embedded import EmbeddedBroker
from inbox.adapters.kafka.faust_transport import FETCH_MAX_WAIT_MS

TOPIC, PARTITIONS = "growth", 4
PAYLOAD = b"x" * 300  # about one wire event


async def fill(producer: AIOKafkaProducer, start: int, stop: int) -> None:
    """Records start..stop, each acknowledged before the next few are sent: one batch each."""
    for first in range(start, stop, 50):
        await asyncio.gather(*[producer.send_and_wait(TOPIC, PAYLOAD, key=str(i).encode())
                               for i in range(first, min(stop, first + 50))])


async def trickle_cost(bootstrap: str, pid: int, producer: AIOKafkaProducer, rate: float, seconds: float) -> tuple[float, int]:
    """Broker cores used while `rate` records a second are produced and consumed at the topic's end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        await consumer.getmany(timeout_ms=200)
        sent = 0
        meter = CpuMeter(lambda: {"broker": [pid]})
        meter.start()
        end = time.perf_counter() + seconds

        async def produce() -> None:
            nonlocal sent
            while time.perf_counter() < end:
                await producer.send(TOPIC, PAYLOAD, key=str(sent).encode())
                sent += 1
                await asyncio.sleep(1 / rate)

        task = asyncio.create_task(produce())
        while time.perf_counter() < end:
            await consumer.getmany(timeout_ms=100)
        await task
        usage = meter.stop()
        assert usage is not None, "psutil is needed to measure the broker's CPU"
        return usage.by_group["broker"] / usage.wall_s, sent
    finally:
        await consumer.stop()


async def run(steps: list[int], rate: float, seconds: float) -> None:
    broker = EmbeddedBroker().start()
    assert broker._proc is not None
    pid = broker._proc.pid
    admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])
    await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await producer.start()
    stored, baseline = 0, None
    try:
        print(f"embedded Tansu, {PARTITIONS} partitions; a trickle of {rate:.0f} records/s produced and consumed"
              f" ({FETCH_MAX_WAIT_MS} ms fetch wait) for {seconds:.0f} s at each size", flush=True)
        for step in steps:
            if step > stored:
                await fill(producer, stored, step)
                stored = step
            cores, sent = await trickle_cost(broker.bootstrap, pid, producer, rate, seconds)
            stored += sent
            baseline = baseline or cores
            print(f"  {step:>7,} one-record batches stored: broker {100 * cores:5.1f}% of a core"
                  f" = {cores / baseline:.2f}x the empty broker's", flush=True)
    finally:
        await producer.stop()
        broker.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="0,30000,60000", help="stored batches at each measurement (first: baseline)")
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--seconds", type=float, default=4.0)
    args = p.parse_args()
    asyncio.run(run([int(s) for s in args.steps.split(",")], args.rate, args.seconds))


if __name__ == "__main__":
    main()
