"""Throughput benchmark: call-seconds per CPU-second, per stage and end to end.

    python -m bench throughput [--calls 6] [--min-s 120] [--max-s 600] [--json FILE] [--quick]
    python -m bench throughput --long-s 7200 [--json FILE]    # one long call: streamed vs whole

The workload is built from the corpora: two-party stereo calls, 8 kHz G.711 mu-law WAV,
parties taking turns with pauses and some overtalk. Every figure is measured in this one run
and printed as a ratio (audio or call seconds per CPU second), never compared with a constant.
One thread everywhere (ONNX Runtime, BLAS): the figures are per core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    # before numpy loads, and forced: the figures are per core, and an operator's own
    # OMP_NUM_THREADS=4 was kept by setdefault, here and in every child (a review)
    os.environ[_var] = "1"

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.redis_server import private_redis  # noqa: E402
from bench.workload import read_manifest, synthesize_call, write_call  # noqa: E402
from worker.settings import Settings  # noqa: E402


@dataclass
class StageClock:
    """CPU seconds spent per pipeline stage."""

    cpu_s: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.process_time()
        try:
            yield
        finally:
            self.cpu_s[name] = self.cpu_s.get(name, 0.0) + time.process_time() - start


def build_workload(settings: Settings, out_dir: Path, n_calls: int, min_s: float, max_s: float,
                   seed: int = 0) -> list[Path]:
    """``n_calls`` stereo mu-law calls of min_s..max_s seconds from RAVDESS/TESS/EmoDB clips."""
    rng = np.random.default_rng(seed)
    clips = pd.concat([read_manifest(settings.corpora_dir, c) for c in ("ravdess", "tess", "emodb")])
    speakers = clips.groupby(["corpus", "speaker"])
    keys = list(speakers.groups)
    paths = []
    for i in range(n_calls):
        target_s = rng.uniform(min_s, max_s)
        a, b = rng.choice(len(keys), size=2, replace=False)
        agent, customer = speakers.get_group(keys[a]), speakers.get_group(keys[b])
        # ~2.5 s per clip and two parties: clips per party for the target length
        n = max(2, int(target_s / 5.0))
        call = synthesize_call(agent.sample(n, replace=True, random_state=int(rng.integers(1 << 31))),
                               customer.sample(n, replace=True, random_state=int(rng.integers(1 << 31))),
                               rng, gap_s=(0.1, 0.8), overlap_share=0.2)
        paths.append(write_call(call, out_dir / f"call-{i:03d}.wav", subtype="ULAW"))
    return paths


def stage_breakdown(paths: Sequence[Path], settings: Settings) -> dict[str, float]:
    """CPU seconds per stage over ``paths``, running the pipeline's own functions."""
    import soundfile as sf
    from sqlalchemy import select

    from worker.audio import resample
    from worker.db import session_scope, upgrade
    from worker.emotion import decide, load_model
    from worker.features import extract_features
    from worker.pipeline import RecordingAnalysis, SegmentEmotion
    from worker.schema import Call
    from worker.segmentation import utterances
    from worker.store import CallRequest, register_call, save_analysis
    from worker.vad import speech_probabilities

    clock = StageClock()
    with clock.stage("model load"):
        model = load_model(settings.model_path, settings.onnx_threads)
    upgrade(settings.database_url)
    for path in paths:
        with clock.stage("decode"):
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
        with clock.stage("resample"):
            channels = [resample(data[:, c], int(rate)) for c in range(data.shape[1])]
        segments: list[SegmentEmotion] = []
        for c, audio in enumerate(channels):
            with clock.stage("vad"):
                probs = speech_probabilities(audio, settings.vad)
            with clock.stage("segmentation"):
                spans = utterances(probs, settings.vad.frame_s, audio.size / 8000, settings.segmentation)
            with clock.stage("features"):
                feats = [extract_features(audio[round(s.start_s * 8000):round(s.end_s * 8000)],
                                          model.card.features) for s in spans]
            with clock.stage("model"):
                p = model.predict_proba(feats) if feats else np.zeros((0, 7), np.float32)
                for span, row in zip(spans, p, strict=True):
                    d = decide(row.tolist(), model.labels)
                    segments.append(SegmentEmotion(c, "agent" if c == 0 else "customer", span.start_s,
                                                   span.end_s, d.label,
                                                   dict(zip(model.labels, map(float, row), strict=True)),
                                                   d.confidence, model.stamp))
        with clock.stage("store"), session_scope(settings) as session:
            call = register_call(session, CallRequest(uri=str(path), external_call_id=f"stage-{path.stem}"))
            save_analysis(session, call.id, RecordingAnalysis(
                path, data.shape[0] / rate, data.shape[1], int(rate), "0" * 64, model.stamp,
                tuple(segments)))
    with session_scope(settings) as session:
        assert session.scalar(select(Call.id).limit(1)) is not None
    return clock.cpu_s


def end_to_end_in_process(paths: Sequence[Path], settings: Settings,
                          tag: str = "") -> tuple[float, int]:
    """CPU seconds to process every call with ``process_call`` (the task body), segments made
    (``tag``: in the call ids, so copies of one file run as calls of their own)."""
    from worker.jobs import process_call
    from worker.store import CallRequest

    start = time.process_time()
    segments = 0
    for path in paths:
        # reprocess: the warm-up already analysed this call; a re-run replaces its rows
        outcome = process_call(CallRequest(uri=str(path), external_call_id=f"e2e-{tag}{path.stem}",
                                           reprocess=True), settings)
        assert outcome.status == "done", outcome.reason
        segments += outcome.segments
    return time.process_time() - start, segments


def _tree_cpu_s(pid: int) -> tuple[float, int]:
    """(CPU seconds, processes counted): user + system time of process ``pid``, its live
    descendants and the children they reaped; Linux /proc. A prefork pool's children are
    alive, so the parent's rusage of children misses them."""
    tick = os.sysconf("SC_CLK_TCK")
    total, counted, todo = 0.0, 0, [pid]
    while todo:
        current = todo.pop()
        try:
            # after the ")" closing the command name, fields 14-17 (utime, stime, cutime,
            # cstime) of proc(5) are at 11-14
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15]) / tick
            counted += 1
            for task in Path(f"/proc/{current}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited between the listing and the read
    return total, counted


def end_to_end_celery(paths: Sequence[Path], settings: Settings, broker_url: str) -> dict[str, float]:
    """A real one-process Celery worker on ``broker_url``: its start-up cost (imports, model,
    one warm-up call) and, warm, the wall and worker CPU seconds (main + pool process, from
    /proc) for every call in ``paths``, sent at once."""
    import uuid

    from worker.celery_app import make_celery, worker_command
    from worker.db import session_scope, upgrade
    from worker.runner import stop_worker, worker_environment, worker_settings
    from worker.store import CallRequest, calls_by_external_id
    from worker.tasks import send_analysis

    s = worker_settings(settings.replace(broker_url=broker_url), paths)
    upgrade(s.database_url)
    queue = f"callmood-bench-{uuid.uuid4().hex[:8]}"
    app = make_celery(s)

    def send(batch: Sequence[Path], tag: str) -> list[str]:
        ids = [f"hop-{queue}-{tag}-{p.stem}" for p in batch]
        send_analysis(app, [CallRequest(uri=str(p), external_call_id=i, reprocess=True)
                            for p, i in zip(batch, ids, strict=True)], queue=queue)
        return ids

    def wait(ids: Sequence[str]) -> None:
        deadline = time.monotonic() + 1800
        while time.monotonic() < deadline:
            with session_scope(s) as session:
                calls = calls_by_external_id(session, ids)
                if len(calls) == len(ids) and all(c.status in ("done", "failed")
                                                   for c in calls.values()):
                    failed = [c.failure_reason for c in calls.values() if c.status != "done"]
                    assert not failed, failed
                    return
            time.sleep(0.05)
        raise TimeoutError(f"calls not analysed through Celery on {broker_url.split(':')[0]}")

    try:
        # Sent before the worker starts (the sender creates the SQLite broker's tables), so
        # the start-up figures end with one call analysed by a fresh worker.
        warm_up = send(sorted(paths, key=_duration_s)[:1], "warm")
        start = time.perf_counter()
        process = subprocess.Popen(
            worker_command(1, "WARNING", queue, f"bench-{queue}@%h", s.broker_url),
            env=worker_environment(s), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL, cwd=s.data_dir, start_new_session=True)
        try:
            wait(warm_up)
            startup_wall_s = time.perf_counter() - start
            startup_cpu_s, processes = _tree_cpu_s(process.pid)
            # the main process and its pool process, or the worker CPU would be undercounted
            # (a kernel without /proc/PID/task/TID/children)
            assert processes >= 2, f"found {processes} worker process(es) in /proc"
            wall0 = time.perf_counter()
            wait(send(paths, "timed"))
            wall_s = time.perf_counter() - wall0
            cpu_s = _tree_cpu_s(process.pid)[0] - startup_cpu_s
        finally:
            stop_worker(process)
    finally:
        app.close()
    return {"startup_wall_s": startup_wall_s, "startup_cpu_s": startup_cpu_s,
            "wall_s": wall_s, "worker_cpu_s": cpu_s}


def child_env(settings: Settings) -> dict[str, str]:
    """The CALLMOOD_ settings a process the benchmark starts runs with: its database, data,
    model and input roots, and one ONNX thread (an operator's own setting must not reach the
    per-core figures)."""
    return {"CALLMOOD_DATABASE_URL": settings.database_url,
            "CALLMOOD_DATA_DIR": str(settings.data_dir),
            "CALLMOOD_MODEL_PATH": str(settings.model_path), "CALLMOOD_ONNX_THREADS": "1",
            "CALLMOOD_INPUT_ROOTS": os.pathsep.join(map(str, settings.input_roots))}


def fresh_process(path: Path, settings: Settings) -> dict[str, float]:
    """Wall time to first result and peak RSS of a fresh Python process analysing ``path``."""
    code = ("import time; t0 = time.perf_counter();"
            "from worker.settings import Settings; from worker.jobs import process_call;"
            "from worker.store import CallRequest;"
            "s = Settings.from_env();"
            f"r = CallRequest(uri={str(path)!r}, external_call_id='fresh-' + str(time.time_ns()));"
            "o = process_call(r, s);"
            "assert o.status == 'done', o.reason;"
            # VmHWM, not ru_maxrss: Linux carries the parent's high-water mark over exec
            # (see peak_rss_kb; read inline, as importing this module would add to the peak)
            "hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')];"
            "print(time.perf_counter() - t0, hwm[0])")
    env = {**os.environ, **child_env(settings)}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    wall_s = time.perf_counter() - start
    inner_s, rss_kb = out.stdout.split()
    return {"first_result_wall_s": wall_s, "first_result_after_start_s": float(inner_s),
            "peak_rss_mb": int(rss_kb) / 1024}


_WARM_BARRIER: Any = None


def _scaling_init(barrier: Any) -> None:
    global _WARM_BARRIER
    _WARM_BARRIER = barrier


def _scaling_warm(args: tuple[list[str], dict[str, str], str]) -> float:
    """Warm one pool process (imports, model, caches), then wait for its siblings: the
    barrier makes each process take exactly one warm-up job."""
    cpu_s = _scaling_worker(args)
    _WARM_BARRIER.wait()
    return cpu_s


def _scaling_worker(args: tuple[list[str], dict[str, str], str]) -> float:
    paths, env, tag = args
    os.environ.update(env)
    settings = Settings.from_env()
    cpu_s, _ = end_to_end_in_process([Path(p) for p in paths], settings, tag)
    return cpu_s


def _busy_loop(iterations: int) -> int:
    """Pure CPU work with no memory traffic: a same-minute reference for the 1-to-2-process
    ratio (short jobs, so not an upper bound)."""
    total = 0
    for i in range(iterations):
        total += i * i % 7
    return total


BUSY_ITERATIONS = 4_000_000
"""~0.5 s of the busy loop here; each pool process gets jobs of this size."""
SCALING_COPIES = 3
"""Times each call is analysed in one scaling run."""
SCALING_REPEATS = 3
"""Timed runs per process count; the speed-up reported is the median of the paired ratios
(one run is ~4 s of wall here, where a neighbour's burst moves it by 10-20 %)."""


def scaling(paths: Sequence[Path], settings: Settings, copies: int = SCALING_COPIES,
            repeats: int = SCALING_REPEATS) -> dict[str, Any]:
    """Wall-clock throughput with 1 and 2 warm processes sharing the same calls, and the
    same ratio for a pure-Python busy loop (what this machine's two cores allow at best)."""
    import multiprocessing as mp

    env = child_env(settings)
    ctx = mp.get_context("spawn")
    # One call per job, longest first, handed to whichever process is free: what a Celery
    # pool with prefetch 1 does. (Fixed halves of 6 uneven calls measured the split, not
    # the scaling: 1.55x.)
    # Each call SCALING_COPIES times: a nightly batch has thousands of calls, and with 6 the
    # last long call alone bounds the 2-process speed-up (to 1.85x for the default workload).
    ordered = sorted(paths, key=lambda p: p.stat().st_size, reverse=True)
    # each copy a call of its own: copies of one call id, taken by both processes at once,
    # waited on one row's lock (a review)
    jobs = [([str(p)], env, f"copy{k}-") for p in ordered for k in range(copies)]
    walls: dict[int, list[float]] = {1: [], 2: []}
    busy: dict[int, list[float]] = {1: [], 2: []}
    pools = {n: ctx.Pool(n, initializer=_scaling_init, initargs=(ctx.Barrier(n),)) for n in (1, 2)}
    try:
        for n, pool in pools.items():
            pool.map(_scaling_warm, [([str(paths[0])], env, f"warm{n}-{k}-") for k in range(n)],
                     chunksize=1)
        # 1 and 2 processes alternate, so a neighbour's load drifting over the minute hits
        # both sides of each ratio alike (the idle pool sleeps meanwhile).
        for _ in range(repeats):
            for n, pool in pools.items():
                start = time.perf_counter()
                pool.map(_scaling_worker, jobs, chunksize=1)
                walls[n].append(time.perf_counter() - start)
                start = time.perf_counter()
                pool.map(_busy_loop, [BUSY_ITERATIONS] * 4, chunksize=1)
                busy[n].append(time.perf_counter() - start)
    finally:
        for pool in pools.values():
            pool.close()
            pool.join()
    ratios = sorted(one / two for one, two in zip(walls[1], walls[2], strict=True))
    reference = sorted(one / two for one, two in zip(busy[1], busy[2], strict=True))
    return {"wall_s_1_process": walls[1], "wall_s_2_processes": walls[2],
            "speedup_2_vs_1_runs": ratios, "speedup_2_vs_1": ratios[len(ratios) // 2],
            "busy_loop_speedup_2_vs_1_runs": reference,
            "busy_loop_speedup_2_vs_1": reference[len(reference) // 2]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    base = Settings.from_env()
    work = Path(args.work_dir)
    settings = base.replace(
        data_dir=work / "data", database_url=f"sqlite:///{work / 'bench.sqlite'}",
        broker_url=f"sqla+sqlite:///{work / 'broker.sqlite'}", input_roots=(work,), onnx_threads=1)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    print(f"building {args.calls} calls of {args.min_s:.0f}-{args.max_s:.0f} s in {work} ...",
          file=sys.stderr)
    paths = build_workload(settings, work / "calls", args.calls, args.min_s, args.max_s)
    call_s = sum(_duration_s(p) for p in paths)
    result: dict[str, Any] = {"calls": len(paths), "call_seconds": call_s,
                              "channel_seconds": 2 * call_s, "model": str(settings.model_path)}

    stages = stage_breakdown(paths, settings)
    result["stages_cpu_s"] = stages
    result["stages_call_s_per_cpu_s"] = {k: call_s / v for k, v in stages.items()
                                         if v > 0 and k != "model load"}
    cpu_s, segments = end_to_end_in_process(paths, settings)
    result["segments"] = segments
    result["in_process_call_s_per_cpu_s"] = call_s / cpu_s
    result.update(fresh_process(max(paths, key=_duration_s), settings))
    # --quick runs every part once, on a tiny workload: it checks the code, not the figures.
    with private_redis() as redis_url:
        brokers = {"sqlite": settings.broker_url, **({"redis": redis_url} if redis_url else {})}
        for name, url in brokers.items():
            hop = end_to_end_celery(paths, settings, url)
            result[f"celery_{name}"] = hop
            result[f"celery_{name}_call_s_per_wall_s"] = call_s / hop["wall_s"]
            # /proc counts in clock ticks (10 ms): a tiny workload may read 0
            result[f"celery_{name}_call_s_per_worker_cpu_s"] = (
                call_s / hop["worker_cpu_s"] if hop["worker_cpu_s"] > 0 else None)
    result.update(scaling(paths, settings, copies=1, repeats=1) if args.quick
                  else scaling(paths, settings))
    return result


def _duration_s(path: Path) -> float:
    import soundfile as sf

    return float(sf.info(str(path)).duration)


def format_table(result: dict[str, Any]) -> str:
    lines = [f"workload: {result['calls']} stereo 8 kHz mu-law calls, {result['call_seconds']:.0f} call-s, "
             f"{result['segments']} segments; model {Path(result['model']).name}",
             "", "| stage | CPU s | call-s per CPU-s |", "|---|---|---|"]
    for name, cpu in result["stages_cpu_s"].items():
        ratio = result["stages_call_s_per_cpu_s"].get(name)
        lines.append(f"| {name} | {cpu:.2f} | {ratio:,.0f} |" if ratio else f"| {name} | {cpu:.2f} | |")
    lines += ["", "| end to end | value |", "|---|---|",
              f"| in-process (process_call + SQLite writes), call-s per CPU-s | "
              f"{result['in_process_call_s_per_cpu_s']:,.0f} |"]
    for name in ("sqlite", "redis"):
        if f"celery_{name}" not in result:
            continue
        hop = result[f"celery_{name}"]
        per_cpu = result[f"celery_{name}_call_s_per_worker_cpu_s"]
        lines += [f"| through Celery ({name} broker, 1 warm worker process), call-s per worker "
                  f"CPU-s | {'n/a' if per_cpu is None else f'{per_cpu:,.0f}'} |",
                  f"| through Celery ({name} broker), call-s per wall-s | "
                  f"{result[f'celery_{name}_call_s_per_wall_s']:,.0f} |",
                  f"| through Celery ({name} broker): worker start-up + first call, wall s / "
                  f"CPU s | {hop['startup_wall_s']:.2f} / {hop['startup_cpu_s']:.2f} |"]
    if "speedup_2_vs_1" in result:
        runs = result["speedup_2_vs_1_runs"]
        lines.append(f"| 2 processes vs 1 (same calls), speed-up, median of {len(runs)} "
                     f"({', '.join(f'{r:.2f}' for r in runs)}) | {result['speedup_2_vs_1']:.2f}x |")
        lines.append("| the same for a pure-Python busy loop: a same-minute reference | "
                     f"{result['busy_loop_speedup_2_vs_1']:.2f}x |")
    lines += ["| fresh process: first result after (wall s, incl. imports) | "
              f"{result['first_result_wall_s']:.2f} |",
              f"| fresh process: peak RSS (MB) | {result['peak_rss_mb']:.0f} |"]
    return "\n".join(lines)


# --------------------------------------------------------------------------- long recordings

def write_long_call(path: Path, corpora_dir: Path, duration_s: float, sample_rate: int = 8000,
                    subtype: str = "ULAW", seed: int = 0) -> float:
    """Write a stereo call of ``duration_s`` seconds turn by turn, never holding it whole.

    Two RAVDESS speakers take turns (channel 0, 1, 0, ...) with 0.3-2 s pauses, cycling
    through 48 of their clips; a -60 dBFS noise floor keeps the VAD working on every frame
    (no digital silence to skip). Returns the duration written (s).
    """
    import soundfile as sf

    from worker.audio import load_mono

    rng = np.random.default_rng(seed)
    manifest = read_manifest(corpora_dir, "ravdess")
    speakers = sorted(manifest["speaker"].unique())[:2]
    clips = [[load_mono(Path(p), sample_rate) for p in
              manifest[manifest["speaker"] == sp]["audio_path"].sort_values().head(24)]
             for sp in speakers]
    target = int(duration_s * sample_rate)
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", samplerate=sample_rate, channels=2, subtype=subtype,
                      format="WAV") as out:
        turn = 0
        while written < target:
            channel = turn % 2
            clip = clips[channel][(turn // 2) % len(clips[channel])]
            gap = int(rng.uniform(0.3, 2.0) * sample_rate)
            n = min(clip.size + gap, target - written)
            block = (rng.standard_normal((n, 2)) * 1e-3).astype(np.float32)
            block[:min(n, clip.size), channel] += clip[:n] * 0.6
            out.write(np.clip(block, -1.0, 1.0))
            written += n
            turn += 1
    return written / sample_rate


def peak_rss_kb() -> int:
    """This process's peak RSS (KiB): VmHWM from /proc where there is one, else ru_maxrss.

    Not ru_maxrss on Linux: the kernel carries the pre-exec high-water mark over exec, so a
    child started from a large process (a pytest run) reports its parent's peak instead.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    # bytes on macOS, KiB elsewhere (getrusage(2))
    return peak // 1024 if sys.platform == "darwin" else peak


def long_child(argv: Sequence[str]) -> None:
    """Child side of :func:`measure_long`: ``PATH MODE OUT_JSON`` (MODE: streamed | whole).

    Peak RSS is read before the analysis (imports and model loaded: the baseline every
    worker pays) and after it; the difference is what the recording cost.
    """
    path, mode, out = argv
    from worker.pipeline import _load_checked_model, analyze_file

    settings = Settings.from_env()
    _load_checked_model(settings)  # cached: the analysis below reuses it
    baseline_kb = peak_rss_kb()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = analyze_file(path, settings, streaming=(mode == "streamed"))
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    peak_kb = peak_rss_kb()
    Path(out).write_text(json.dumps({
        "mode": mode, "duration_s": result.duration_s, "cpu_s": cpu_s, "wall_s": wall_s,
        "baseline_rss_mb": baseline_kb / 1024, "peak_rss_mb": peak_kb / 1024,
        "growth_rss_mb": (peak_kb - baseline_kb) / 1024,
        "segments": [[s.channel, s.start_s, s.end_s, s.emotion] for s in result.segments]}))


def measure_long(path: Path, settings: Settings, mode: str) -> dict[str, Any]:
    """Analyse ``path`` in a fresh process (``mode`` streamed or whole): its peak RSS, CPU
    seconds and segments. A fresh process, because ru_maxrss only ever grows."""
    out = path.with_name(f"{path.stem}-{mode}.json")
    env = {**os.environ, **child_env(settings),
           "CALLMOOD_MAX_DURATION_S": str(settings.max_duration_s)}
    code = "import sys; from bench.throughput import long_child; long_child(sys.argv[1:])"
    subprocess.run([sys.executable, "-c", code, str(path), mode, str(out)], env=env, check=True,
                   cwd=Path(__file__).resolve().parent.parent)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def compare_segments(whole: Sequence[Sequence[Any]], streamed: Sequence[Sequence[Any]]
                     ) -> dict[str, Any]:
    """Pair segments (channel, start_s, end_s, emotion) by channel and nearest start; report
    counts, the largest start/end difference (s) and the share of pairs with one label."""
    pairs = []
    by_channel: dict[int, list[Sequence[Any]]] = {}
    for seg in streamed:
        by_channel.setdefault(int(seg[0]), []).append(seg)
    for seg in whole:
        candidates = by_channel.get(int(seg[0]), [])
        if candidates:
            pairs.append((seg, min(candidates, key=lambda c: abs(c[1] - seg[1]))))
    deltas = [max(abs(a[1] - b[1]), abs(a[2] - b[2])) for a, b in pairs]
    return {"segments_whole": len(whole), "segments_streamed": len(streamed),
            "max_boundary_delta_s": max(deltas, default=0.0),
            "label_agreement": (sum(a[3] == b[3] for a, b in pairs) / len(pairs)) if pairs else 1.0,
            "identical": [list(s) for s in whole] == [list(s) for s in streamed]}


def run_long(args: argparse.Namespace) -> dict[str, Any]:
    """One ``--long-s`` call, streamed and whole, each in a fresh process."""
    base = Settings.from_env()
    work = Path(args.work_dir)
    settings = base.replace(data_dir=work / "data", database_url=f"sqlite:///{work / 'bench.sqlite'}",
                            input_roots=(work,), onnx_threads=1,
                            max_duration_s=max(base.max_duration_s, args.long_s + 60))
    path = work / f"long-{args.long_s:.0f}s.wav"
    print(f"writing a {args.long_s:.0f} s stereo 8 kHz mu-law call to {path} ...", file=sys.stderr)
    duration_s = write_long_call(path, settings.corpora_dir, args.long_s)
    runs = {mode: measure_long(path, settings, mode) for mode in ("streamed", "whole")}
    result: dict[str, Any] = {"long_call_s": duration_s, "file_mb": path.stat().st_size / 2**20}
    for mode, r in runs.items():
        result.update({f"{mode}_{k}": r[k] for k in ("peak_rss_mb", "baseline_rss_mb",
                                                      "growth_rss_mb", "cpu_s", "wall_s")})
    result.update(compare_segments(runs["whole"]["segments"], runs["streamed"]["segments"]))
    result["streamed_vs_whole_cpu"] = runs["streamed"]["cpu_s"] / runs["whole"]["cpu_s"]
    return result


def format_long(result: dict[str, Any]) -> str:
    lines = [f"long call: {result['long_call_s']:.0f} s stereo 8 kHz mu-law ({result['file_mb']:.0f} MB)",
             "", "| | streamed | whole file |", "|---|---|---|"]
    for key, name in (("peak_rss_mb", "peak RSS (MB)"), ("baseline_rss_mb", "RSS before the call (MB)"),
                      ("growth_rss_mb", "peak RSS growth for the call (MB)"), ("cpu_s", "CPU s"),
                      ("wall_s", "wall s")):
        lines.append(f"| {name} | {result['streamed_' + key]:.1f} | {result['whole_' + key]:.1f} |")
    lines += ["", f"segments whole/streamed: {result['segments_whole']}/{result['segments_streamed']}, "
              f"identical: {result['identical']}, max boundary delta: "
              f"{result['max_boundary_delta_s'] * 1000:.0f} ms, label agreement: "
              f"{result['label_agreement']:.3f}, streamed/whole CPU: {result['streamed_vs_whole_cpu']:.2f}"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench throughput", description=__doc__)
    parser.add_argument("--calls", type=int, default=6)
    parser.add_argument("--min-s", type=float, default=120.0)
    parser.add_argument("--max-s", type=float, default=600.0)
    parser.add_argument("--work-dir", help="keep the workload and databases here")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="small workload, each measurement once (checks it works)")
    parser.add_argument("--long-s", type=float,
                        help="instead: one call this long (s), streamed vs whole file, each in a "
                             "fresh process (peak RSS, CPU, segment differences)")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as stack:
        if not args.work_dir:
            # removed afterwards: a default run left its ~35 MB workload (a --long-s 7200
            # run its 110 MB call) in the temp folder each time (a review)
            args.work_dir = stack.enter_context(tempfile.TemporaryDirectory(
                prefix="callmood-long-" if args.long_s else "callmood-bench-"))
        return _run_and_print(args)


def _run_and_print(args: argparse.Namespace) -> int:
    if args.long_s:
        long_result = run_long(args)
        print(format_long(long_result))
        if args.json:
            args.json.write_text(json.dumps(long_result, indent=2))
        return 0
    if args.quick:
        args.calls, args.min_s, args.max_s = 2, 20.0, 40.0
    result = run(args)
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


