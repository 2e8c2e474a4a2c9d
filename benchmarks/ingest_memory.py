"""Peak memory while ingesting many events through the real pipeline (no HTTP).

Sensors BatchConsumer bodies are decoded by the collector's decoder, appended to the
ingest log, and applied by the ingest pipeline (stitching, state store, event store),
in one process, in rounds so that the input never sits in memory whole. Prints the
rate and the process's peak resident memory.

    .venv/bin/python benchmarks/ingest_memory.py --events 10000000
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from ingest import make_requests, peak_rss_mb

from touchline.config import load_settings
from touchline.runtime import open_runtime
from touchline.track.decode import CollectRequest
from touchline.track.sensors import decode_sensors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=10_000_000)
    args = ap.parse_args()
    per_round = 200_000
    with tempfile.TemporaryDirectory() as d:
        rt = open_runtime(load_settings(Path(d)))
        rt.pipeline.start()
        now = int(time.time() * 1000)
        started = time.perf_counter()
        done = 0
        seed = 1
        while done < args.events:
            for raw in make_requests(per_round // 50, 50, 1, seed=seed):
                body = raw.split(b"\r\n\r\n", 1)[1]
                req = CollectRequest(method="POST", path="/sa", query={"project": "default"},
                                     headers={"content-type": "application/x-www-form-urlencoded"},
                                     body=body)
                rt.sink.submit_sync(decode_sensors(req, rt.projects, now).records)
            done += per_round
            seed += 1
            print(f"{done:>12,} events submitted, {time.perf_counter() - started:6.0f} s, "
                  f"peak RSS {peak_rss_mb(os.getpid()):,.0f} MB", flush=True)
        rt.pipeline.stop()
        elapsed = time.perf_counter() - started
        count = rt.events.query("default", "SELECT count(*) FROM events", timeout_s=600,
                                max_rows=1).rows[0][0]
        rt.close()
    print(f"ingested {count:,} events in {elapsed:.0f} s ({count / elapsed:,.0f} events/s, "
          f"decode + log + pipeline in one process)")
    print(f"peak resident memory {peak_rss_mb(os.getpid()):,.0f} MB (target 1,500 MB)")


if __name__ == "__main__":
    main()
