"""The fake Coze of tests/fake_coze.py as a process of its own, for bench/fleet.py.

The fleet bench runs it inside the broker's network namespace (`ip netns exec NS python
bench/fleet_fake.py ...`), so the speakers reach it over their links like the broker. It
prints `port N` once it listens, then answers one line per command line on stdin:

    calls   -> `calls N`: speech syntheses Coze was asked for so far (HTTP requests and
               WebSocket sessions that sent text; every one costs money)
    quit    -> exits (so does end of input: the bench died)

Timing switches: --ttfb seconds after the headers before the first audio byte, and
--realtime-factor (audio streamed in 100 ms chunks at that multiple of real time; 0 = as
fast as possible). Standard library + tests/fake_coze.py only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fake_coze import FakeCoze  # noqa: E402

SPEECH = "/v1/audio/speech"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--token", required=True)
    ap.add_argument("--ttfb", type=float, default=0.0)
    ap.add_argument("--realtime-factor", type=float, default=0.0)
    ap.add_argument("--rate", type=int, default=24000, help="the rate the speakers ask for (chunk size)")
    args = ap.parse_args(argv)
    fake = FakeCoze(token=args.token)
    fake.host = args.host
    fake.ttfb = args.ttfb
    if args.realtime_factor > 0:
        fake.chunk_bytes = 2 * args.rate // 10  # 100 ms of s16 mono
        fake.chunk_delay = 0.1 / args.realtime_factor
    else:
        fake.chunk_bytes = 65536
        fake.chunk_delay = 0.0
    fake.start(args.port)
    print(f"port {fake.port}", flush=True)
    try:
        for line in sys.stdin:
            command = line.strip()
            if command == "calls":
                n = len(fake.requests_to(SPEECH)) + len(fake.ws_sessions_with_text())
                print(f"calls {n}", flush=True)
            elif command == "quit":
                break
            else:
                print(f"error unknown command {command!r}", flush=True)
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
