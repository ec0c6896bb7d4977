"""The local work queue (mora/launching/queue.py) on fake grids: longest expected first, a free worker
takes the next run, the live progress line and one line per finished run, Ctrl-C; and the estimates a
real grid gets from runs recorded in the store (mora/launching/cost.py)."""

from __future__ import annotations

import _thread
import io
import json
import re
import threading
import time
from pathlib import Path

from mora.launching.queue import Job, Progress, order, run_queue


def _jobs(seconds: list[float | None], proxies: list[float] | None = None) -> list[Job]:
    proxies = proxies or [1.0] * len(seconds)
    return [Job(f"run{i}", f"run {i}", s, p) for i, (s, p) in enumerate(zip(seconds, proxies))]


def test_longest_expected_first_with_proxies_put_in_seconds_by_the_known_runs():
    jobs = _jobs([10.0, None, 30.0, None], proxies=[1.0, 5.0, 3.0, 0.5])  # 10 s per proxy unit
    assert [j.item for j in order(jobs)] == ["run1", "run2", "run0", "run3"]  # 50, 30, 10, 5 s
    assert [j.item for j in order(_jobs([None] * 3, [2.0, 9.0, 4.0]))] == ["run1", "run2", "run0"]


def test_a_free_worker_takes_the_next_run_so_the_workers_stay_balanced():
    """Table 3's miniature as it went wrong with a fixed split: four small and four large runs over two
    workers. Longest first, the two workers each get two large and two small runs and finish together."""
    durations = {f"small{i}": 0.05 for i in range(4)} | {f"large{i}": 0.2 for i in range(4)}
    jobs = [Job(name, name, None, 4.0 if name.startswith("large") else 1.0) for name in durations]
    started, who = [], {}

    def work(job):
        started.append(job.item)
        who[job.item] = threading.current_thread().name
        time.sleep(durations[job.item])
        return "done", "ok"

    begun = time.monotonic()
    results = run_queue(jobs, 2, work, stream=io.StringIO(), live=False)
    wall = time.monotonic() - begun
    assert sorted(started[:4]) == [f"large{i}" for i in range(4)] and len(results) == 8
    per_worker = {t: sum(durations[j] for j, w in who.items() if w == t) for t in set(who.values())}
    assert len(per_worker) == 2 and all(abs(v - 0.5) < 1e-9 for v in per_worker.values()), per_worker
    assert wall < 0.5 + 0.25  # the fixed split of old (large runs on one worker) took 0.8 s


def test_the_console_shows_one_line_per_finished_run_and_the_grid_line():
    jobs = _jobs([0.05, 0.05, 0.05])
    jobs[1].label = "LoRA r=4 | lr=0.01"
    out = io.StringIO()

    def work(job):
        time.sleep(job.seconds)
        return ("failed", "failed: NaN at step 3; log x.log") if job.item == "run1" else ("done", "char_acc 24.7")

    run_queue(jobs, 1, work, stream=out, live=False)
    lines = out.getvalue().splitlines()
    assert len(lines) == 6  # a finished line, then the grid line, per run
    assert re.fullmatch(r"\[done 1/3\] run 0: char_acc 24\.7 \(0m00s\)", lines[0]), lines[0]
    # the worker may have taken the next run already when the line is printed
    assert re.fullmatch(r"grid: 1/3 done, (0 running, 0 failed, 2|1 running, 0 failed, 1) left · 0m00s elapsed · "
                        r"ETA 0m00s", lines[1]), lines[1]
    assert lines[2] == "[FAILED 2/3] LoRA r=4 | lr=0.01: failed: NaN at step 3; log x.log (0m00s)"
    assert lines[5].startswith("grid: 2/3 done, 0 running, 1 failed, 0 left")

    live = io.StringIO()
    run_queue(_jobs([0.3]), 1, lambda job: (time.sleep(job.seconds), ("done", "ok"))[1], stream=live, live=True, tick=0.05)
    text = live.getvalue()
    assert text.count("\r\x1b[K") >= 3 and "grid: 0/1 done, 1 running" in text and "[done 1/1] run 0: ok" in text


def test_the_eta_spreads_the_work_left_over_the_workers_and_learns_from_finished_runs():
    now = [100.0]
    jobs = _jobs([60.0, 60.0, 60.0, None], proxies=[1.0, 1.0, 1.0, 2.0])
    progress = Progress(jobs, 2, io.StringIO(), False, lambda: now[0])
    assert progress.eta() == (60 * 3 + 120) / 2  # the proxy-only run: 2 units at 60 s a unit
    progress.running[id(jobs[0])] = 100.0
    now[0] = 130.0
    assert progress.eta() == (30 + 60 * 2 + 120) / 2
    from mora.launching.queue import Finished

    progress.running.pop(id(jobs[0]))
    progress.done.append(Finished(jobs[0], "done", 90.0, "ok"))  # it took 1.5x its estimate: so will the others
    assert progress.eta() == (90 * 2 + 180) / 2


def test_ctrl_c_stops_taking_runs_and_asks_the_running_ones_to_stop():
    interrupts, started = [], []

    def work(job):
        started.append(job.item)
        time.sleep(0.4)
        return "done", "ok"

    threading.Timer(0.1, _thread.interrupt_main).start()  # Ctrl-C while the first run is running
    out = io.StringIO()
    results = run_queue(_jobs([1.0, 1.0, 1.0]), 1, work, interrupt=interrupts.append, stream=out, live=False, tick=0.05)
    assert interrupts == [1] and started == ["run0"] and len(results) == 1
    assert "interrupted: no new runs; 1 running asked to checkpoint and stop" in out.getvalue()


def test_a_run_recorded_like_it_gives_the_estimate(tmp_path):
    """Same config but the learning rate and steps: its wall time, scaled by steps, orders the queue."""
    from mora.launch import expand
    from runner import TINY_RUN

    spec = tmp_path / "spec.yaml"
    spec.write_text("artifact: t\nmini:\n  experiment: uuid_mini\n  columns: [3]\n  metric: char_acc\n  rows:\n"
                    "    - {label: LoRA, overrides: [method=lora], lr_grid: [1e-2, 3e-2]}\n"
                    "    - {label: MoRA, overrides: [method=mora, method.r=4], lr_grid: [1e-2]}\n")
    store = tmp_path / "runs"
    lora, _, mora = expand(spec, ["mini"], store, TINY_RUN[1:])
    assert all(c.estimate.seconds is None for c in (lora, mora)) and mora.estimate.proxy > 0
    Path(lora.path).mkdir(parents=True)
    (Path(lora.path) / "identity.json").write_text(json.dumps(lora.run.composed.identity))
    (Path(lora.path) / "metrics.json").write_text(json.dumps(
        {"status": "completed", "wall_seconds": 30.0, "summary": {"max_steps": 3}}))  # recorded at 3 steps
    _, lora2, mora2 = expand(spec, ["mini"], store, TINY_RUN[1:])
    assert lora2.extra["lr"] == 0.03 and lora2.estimate.seconds == 60.0  # 6 steps: twice the time
    assert lora2.estimate.source == "a recorded run like it" and mora2.estimate.seconds is None


def test_finished_runs_of_two_sizes_fit_a_fixed_cost_plus_a_cost_per_unit():
    """Table 3's miniature: small runs cost more than their proxy says (start-up, evaluation): two sizes
    finished give the fixed part, so the ETA of the small runs left is not a fraction of it."""
    from mora.launching.queue import Finished

    jobs = _jobs([None] * 4, proxies=[8.0, 1.0, 8.0, 1.0])
    progress = Progress(jobs, 1, io.StringIO(), False, lambda: 0.0)
    progress.done += [Finished(jobs[0], "done", 150.0, "ok"), Finished(jobs[1], "done", 48.0, "ok")]
    assert abs(progress.eta() - (150.0 + 48.0)) < 1e-9  # a + 8b = 150, a + b = 48
