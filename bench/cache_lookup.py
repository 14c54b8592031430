"""Benchmark: phrase cache hit latency (lookup + reading the PCM) against the number of entries.

    python bench/cache_lookup.py [--sizes 10,10000,100000] [--lookups 2000] [--dir TMPDIR]

For each size N a fresh cache is filled with N tiny entries (0.1 s at 8 kHz: through the
public writer for small N, through the internal bulk helper ``PhraseCache._bulk_add`` for
large N, which skips fsync), reopened, and then timed on random existing keys. The
lookups write the index too (hit counter, LRU time), as in the daemon. Everything lives in
a temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from coze_speaker.cache import PhraseCache, cache_key  # noqa: E402

RATE = 8000
FRAMES = 800  # 0.1 s
PUBLIC_WRITER_MAX = 1000  # above this, fill with the bulk helper


def fill(cache: PhraseCache, n: int) -> list[str]:
    keys = [cache_key("api.coze.cn", f"phrase {i}", {"voice_id": "bench", "sample_rate": RATE}) for i in range(n)]
    pcm = bytes(range(256)) * (FRAMES * 2 // 256) + bytes(FRAMES * 2 % 256)
    if n <= PUBLIC_WRITER_MAX:
        for key in keys:
            with cache.writer(key, RATE) as w:
                w.write(pcm)
                if w.commit() is None:
                    raise SystemExit(f"could not store {key}")
    else:
        for start in range(0, n, 10000):
            cache._bulk_add((key, RATE, pcm) for key in keys[start:start + 10000])
    return keys


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def bench(base: Path, n: int, lookups: int, rng: random.Random) -> dict:
    directory = Path(tempfile.mkdtemp(prefix=f"cache-{n}-", dir=base))
    try:
        t0 = time.perf_counter()
        cache = PhraseCache(directory, 10**12)
        keys = fill(cache, n)
        cache.close()
        build = time.perf_counter() - t0

        t0 = time.perf_counter()
        cache = PhraseCache(directory, 10**12)
        open_s = time.perf_counter() - t0
        times = []
        for key in (rng.choice(keys) for _ in range(lookups)):
            t0 = time.perf_counter_ns()
            entry = cache.lookup(key)
            if entry is None:
                raise SystemExit(f"miss for an existing key {key}")
            nbytes = sum(len(chunk) for chunk in cache.read(entry))
            times.append((time.perf_counter_ns() - t0) / 1000.0)
            if nbytes != FRAMES * 2:
                raise SystemExit(f"read {nbytes} bytes for {key}")
        stats = cache.stats()
        cache.close()
        if stats.entries != n or stats.hits != lookups:
            raise SystemExit(f"unexpected stats {stats}")
        times.sort()
        return {"n": n, "build": build, "open": open_s * 1e3, "median": statistics.median(times),
                "p90": percentile(times, 0.90), "p99": percentile(times, 0.99), "max": times[-1]}
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,10000,100000", help="comma-separated entry counts")
    parser.add_argument("--lookups", type=int, default=2000, help="timed lookups per size")
    parser.add_argument("--dir", default=None, help="where to create the temporary caches")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    if not sizes or min(sizes) < 1 or args.lookups < 1:
        parser.error("sizes and lookups must be positive")

    base = Path(tempfile.mkdtemp(prefix="coze-speaker-bench-", dir=args.dir))
    rng = random.Random(args.seed)
    try:
        print(f"python {sys.version.split()[0]}, {os.uname().sysname} {os.uname().machine}, "
              f"cache under {base}, {args.lookups} hit lookups per size (lookup + read {FRAMES * 2} bytes of PCM)")
        print(f"{'entries':>8} {'build s':>8} {'open ms':>8} {'median us':>10} {'p90 us':>8} {'p99 us':>8} {'max us':>8}")
        for n in sizes:
            r = bench(base, n, args.lookups, rng)
            print(f"{r['n']:>8} {r['build']:>8.1f} {r['open']:>8.2f} {r['median']:>10.1f} {r['p90']:>8.1f} "
                  f"{r['p99']:>8.1f} {r['max']:>8.1f}", flush=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
