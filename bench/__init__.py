"""Benchmark of the whole Inbox pipeline with raw baselines: `python -m bench [--quick] [--json PATH]`.

It prints figures; it is not a test. Phases, in order:

- baselines: single-row INSERT tx/s with PostgreSQL (1 and C connections), raw aiokafka
  produce/consume msg/s on the same broker, and a trivial FastAPI endpoint parsing the ingest
  bodies under the same uvicorn settings (the ingest msg/s target is a ratio of it);
- (a) HTTP ingest: real `inbox api|relay|worker` processes, C concurrent keep-alive clients
  POSTing /v1/inbound-messages across many contacts; projection throughput during the burst;
- (b) accepted → counter-visible latency (a new contact per sample, polling the counters table);
- (c) replay events/s, and the replayed projections compared with the live ones;
- (d) in-process staff command latency on a 10-event and a 10,000-event room, and cold loads;
- (e) (after (c), while the pipeline runs) "resolve all expired" on 10,000 rooms, and read/inbound
  latency through the API meanwhile;
- (g) with `--freshness` / `--freshness-only`: live-update freshness, inbound 202 → event on open
  GET /v1/stream clients (bench/freshness.py), and API memory per open stream.

`--only ingest`: just the trivial endpoint and the ingest burst through `inbox api` (no relay,
worker or other phases); `--api-processes 2`: the burst again with a second `inbox api` on the
same port (SO_REUSEPORT); with (g), its scenarios run on both processes (streams and POSTs
shared by the kernel).

`--scale-out`: (s) only the scale-out comparison, each part on its own: ingest bursts through 1,
then 2 `inbox api` processes (SO_REUSEPORT; relay running, no worker; first with each contact on one
connection, so each room on one process, then without), the 2 processes on 20
shared rooms (every message must be accepted), then 1, then 2 `inbox worker` processes of one
consumer group catching up on the run's event store from a topic of `INBOX_TOPIC_PARTITIONS`
partitions (assignment settled on a probe before the clock starts); printed side by side with
ratios (docs/capacity.md).

`--only projections`: the raw Kafka consume baseline, a data set of `--messages` over `--contacts`
rooms built through the domain (`bench.dataset.build`), then (f) and (c) on it; replay is compared
with what the catching-up worker projected.

Everything lives in a fresh schema `bench_<random>` and topic prefix, dropped at the end.
"""
