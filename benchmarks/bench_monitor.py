"""What following a worker costs Blender's main thread: a timer tick under a flood of events,
and how long a cancel takes until the worker is gone.

    .venv/bin/python benchmarks/bench_monitor.py [--events 20000 --budget-ms 4 --repeat 5]

The worker is the tests' stand-in (``tests/test_monitor.py``: a tiny ``engine.worker`` run by
this interpreter), so the figures are the monitor's own, not DA3's:

* ``tick``: a stand-in floods ``--events`` progress events; a loop like the modal timer's (a short
  sleep, then ``poll(budget_s=...)``) drains them. Printed: ticks, the median and worst tick, and
  how far the worst tick overran its budget (it stops after the event that spends it).
* ``cancel``: a stand-in that reads the cancel line ("slow"), and one that ignores it and SIGTERM
  ("deaf", only SIGKILL after the grace period ends it): ``cancel(wait=True)`` until it is gone.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.test_monitor import start, write_fake_worker  # noqa: E402


def bench_ticks(root: Path, events: int, budget_s: float, interval_s: float) -> dict:
    monitor = start(root, Path(tempfile.mkdtemp(dir=root.parent)), "flood", n=events)
    ticks = []
    while not monitor.finished:
        time.sleep(interval_s)
        begin = time.perf_counter()
        monitor.poll(budget_s=budget_s)
        ticks.append(time.perf_counter() - begin)
    if monitor.state.done != events:
        raise RuntimeError(f"the flood ended at {monitor.state.done} of {events} events")
    monitor.close()
    return {"ticks": len(ticks), "median_ms": 1000 * statistics.median(ticks),
            "worst_ms": 1000 * max(ticks), "overrun_ms": 1000 * max(0.0, max(ticks) - budget_s)}


def bench_cancel(root: Path, mode: str, grace_s: float) -> float:
    monitor = start(root, Path(tempfile.mkdtemp(dir=root.parent)), mode, grace_s=grace_s)
    while monitor.state.done < 2:  # it runs and reports
        monitor.poll(timeout=0.05)
    begin = time.perf_counter()
    monitor.cancel(wait=True)
    took = time.perf_counter() - begin
    if monitor.process.poll() is None or monitor.state.final.get("kind") != "cancelled":
        raise RuntimeError(f"the {mode} stand-in was not cancelled")
    monitor.close()
    return took


def run(root: Path, args) -> None:
    for _ in range(args.repeat):
        t = bench_ticks(root, args.events, args.budget_ms / 1000, args.interval_ms / 1000)
        print(f"tick: {t['ticks']} ticks for {args.events} events, median {t['median_ms']:.2f} ms, "
              f"worst {t['worst_ms']:.2f} ms (budget {args.budget_ms:g} ms, "
              f"overrun {t['overrun_ms']:.2f} ms)")
    for mode in ("slow", "deaf"):
        took = [bench_cancel(root, mode, args.grace_s) for _ in range(args.repeat)]
        print(f"cancel ({mode}): {', '.join(f'{1000 * s:.0f}' for s in took)} ms "
              f"(grace {args.grace_s:g} s)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=20000)
    parser.add_argument("--budget-ms", type=float, default=4.0, help="poll's budget per tick")
    parser.add_argument("--interval-ms", type=float, default=20.0, help="sleep between ticks")
    parser.add_argument("--grace-s", type=float, default=0.5, help="SIGTERM -> SIGKILL grace")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="da3-bench-monitor-"))
    try:
        run(write_fake_worker(scratch / "fake"), args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0

if __name__ == "__main__":
    raise SystemExit(main())
