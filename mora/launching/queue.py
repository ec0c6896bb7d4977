"""The local work queue: N workers, each takes the next unfinished run when it is free, longest expected
first; the console shows one live progress line for the grid and one line per finished run.

Expected durations (cost.py) are seconds where something measured them, else a proxy in unknown units;
once runs finish, what they took corrects the estimates and puts the proxy in seconds, for the ETA.
On a terminal the progress line is redrawn in place every second; elsewhere (a log, CI) it is printed
after each finished run. Ctrl-C stops taking runs and asks the running ones to checkpoint and stop (a
second Ctrl-C: to stop at once); relaunching resumes them.
"""

from __future__ import annotations

import queue
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, TextIO


@dataclass
class Job:
    item: Any
    label: str
    seconds: float | None  # expected, where known
    proxy: float  # orders jobs whose seconds are unknown


@dataclass
class Finished:
    job: Job
    status: str  # done | failed | interrupted | ...
    seconds: float
    text: str  # the headline metric, or why it failed

    @property
    def ok(self) -> bool:
        return self.status == "done"


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def order(jobs: list[Job]) -> list[Job]:
    """Longest expected first: seconds where known; proxies put in seconds by the jobs that have both;
    with no seconds at all, by proxy."""
    seconds = _in_seconds([(j.seconds, j.proxy) for j in jobs if j.seconds is not None]) or (lambda proxy: proxy)
    return sorted(jobs, key=lambda j: -(j.seconds if j.seconds is not None else seconds(j.proxy)))


def _rate(pairs: list[tuple[float, float]]) -> float | None:
    ratios = [s / p for s, p in pairs if p > 0]
    return statistics.median(ratios) if ratios else None


def _in_seconds(pairs: list[tuple[float, float]]) -> Callable[[float], float] | None:
    """Proxy -> seconds, from (seconds, proxy) pairs: a fixed cost per run (start-up, evaluations) plus a
    cost per proxy unit, by least squares where the proxies differ; else in proportion."""
    if len({p for _, p in pairs}) > 1:
        slope, intercept = statistics.linear_regression([p for _, p in pairs], [s for s, _ in pairs])
        if slope > 0 and intercept >= 0:
            return lambda proxy: intercept + slope * proxy
    rate = _rate(pairs)
    return (lambda proxy: rate * proxy) if rate else None


class Progress:
    """The grid's progress line: done / running / failed / left, elapsed, ETA."""

    def __init__(self, jobs: list[Job], workers: int, stream: TextIO, live: bool, clock: Callable[[], float]):
        self.jobs, self.workers, self.stream, self.live, self.clock = jobs, workers, stream, live, clock
        self.start = clock()
        self.running: dict[int, float] = {}  # id(job) -> when it started
        self.done: list[Finished] = []
        self.lock = threading.Lock()

    def eta(self) -> float | None:
        """Seconds until the last run ends, spreading the remaining expected work over the workers. What
        the finished runs took corrects the estimates (process start-up, a slower machine) and puts the
        proxies in seconds."""
        ok = [f for f in self.done if f.ok]
        scale = _rate([(f.seconds, f.job.seconds) for f in ok if f.job.seconds]) or 1.0
        seconds = _in_seconds([(f.seconds, f.job.proxy) for f in ok]) or _in_seconds(
            [(j.seconds * scale, j.proxy) for j in self.jobs if j.seconds is not None])
        finished = {id(f.job) for f in self.done}
        now, left = self.clock(), 0.0
        for job in (j for j in self.jobs if id(j) not in finished):
            expected = job.seconds * scale if job.seconds is not None else seconds(job.proxy) if seconds else None
            if expected is None:
                return None
            left += max(expected - (now - self.running[id(job)]), 0.0) if id(job) in self.running else expected
        return left / max(1, min(self.workers, len(self.jobs) - len(finished)))

    def line(self) -> str:
        failed = sum(not f.ok for f in self.done)
        left = len(self.jobs) - len(self.done) - len(self.running)
        eta = self.eta()
        return (f"grid: {len(self.done) - failed}/{len(self.jobs)} done, {len(self.running)} running, {failed} failed, "
                f"{left} left · {_hms(self.clock() - self.start)} elapsed · ETA {'?' if eta is None else _hms(eta)}")

    def say(self, text: str = "") -> None:
        """Print a line above the live line (or the line itself when not live)."""
        with self.lock:
            if self.live:
                self.stream.write("\r\x1b[K" + (text + "\n" if text else "") + self.line())
            else:
                self.stream.write(text + "\n" if text else self.line() + "\n")
            self.stream.flush()

    def finish(self, result: Finished) -> None:
        with self.lock:
            self.running.pop(id(result.job), None)
            self.done.append(result)
        mark = result.status if result.ok else result.status.upper()
        self.say(f"[{mark} {len(self.done)}/{len(self.jobs)}] {result.job.label}: {result.text} ({_hms(result.seconds)})")
        if not self.live:
            self.say()


def run_queue(jobs: list[Job], workers: int, work: Callable[[Job], tuple[str, str]],
              interrupt: Callable[[int], None] = lambda n: None, stream: TextIO = sys.stdout, live: bool | None = None,
              clock: Callable[[], float] = time.monotonic, tick: float = 1.0) -> list[Finished]:
    """Run `work(job) -> (status, text)` (status `done` or why not) for every job on `workers` threads,
    longest expected first.
    Ctrl-C: `interrupt(1)` and no new jobs; again: `interrupt(2)`; the running jobs are waited for."""
    pending = order(jobs)
    progress = Progress(list(pending), workers, stream, stream.isatty() if live is None else live, clock)
    results: queue.Queue = queue.Queue()
    stop = threading.Event()
    lock = threading.Lock()

    def worker() -> None:
        while not stop.is_set():
            with lock:
                if not pending:
                    return
                job = pending.pop(0)
                progress.running[id(job)] = clock()
            began = clock()
            try:
                status, text = work(job)
            except Exception as exc:  # a broken worker must not hang the queue
                status, text = "failed", f"{type(exc).__name__}: {exc}"
            results.put(Finished(job, status, clock() - began, text))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(max(1, min(workers, len(jobs))))]
    for thread in threads:
        thread.start()
    finished: list[Finished] = []
    interrupts = 0
    while any(t.is_alive() for t in threads) or not results.empty():
        try:
            result = results.get(timeout=tick)
        except queue.Empty:
            if progress.live:
                progress.say()
            continue
        except KeyboardInterrupt:
            interrupts += 1
            stop.set()
            interrupt(interrupts)
            progress.say(f"interrupted: no new runs; {len(progress.running)} running "
                         + ("asked to checkpoint and stop (Ctrl-C again to stop them at once)" if interrupts == 1
                            else "stopping at once"))
            continue
        finished.append(result)
        progress.finish(result)
    if progress.live:
        stream.write("\n")
    return finished
