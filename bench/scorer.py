"""Scoring-path throughput on one core, and how much of it is int8 inference.

Measures, in one process pinned to one CPU, over anonymized simulator records (the bytes the
scorer reads from anon.*): decode -> feature matrix -> int8 LiteRT model -> Score records
(encoded) -> alert episodes and explanations, in micro-batches as the service runs them.
Kafka I/O is left out (the enricher and bridge benchmarks measure the broker path). Times are
CPU seconds of this process (one core's worth of work), so other load on a shared machine
does not count against it; the wall-clock rate is printed beside it.

Baseline, measured in the same run: the raw batched LiteRT invoke on the same int8 inputs
(no decoding, scaling or encoding), and the share of per-event time spent inside it.

Beside the built-in streams, a declared one: ``telemetry_generic``, the built-in telemetry
declaration with its named transforms left out (as ``bench/features.py`` declares it), its
records made by the declared streams' anonymizer from the same frames and scored with a model
built here for its digest (a stand-in: no baseline ships for it). Its rate is printed beside
the built-in telemetry's, measured in the same run.

``--against REV`` runs another commit's own ``bench/scorer.py`` too (from a git worktree of
it, with the same fleet, batch and repeats, pinned to the same core), after this tree's
passes, and prints each stream's rate beside it: the scorer of a commit before the stages read
the declarations (e.g. 4e19468) against this one.

Target: >= 30,000 events/s on one core.

    .venv/bin/python bench/scorer.py [--vehicles 300] [--duration 240] [--batch 1024] \
        [--against REV]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from bench._worktree import checkout, git, remove  # noqa: E402
from bench.features import generic_telemetry  # noqa: E402
from edge.config import EdgeConfig  # noqa: E402
from edge.scorer.model_runner import ModelHolder, baseline_dir, load_model  # noqa: E402
from edge.scorer.scorer import BatchResult, Out, ScorerService  # noqa: E402
from edge.scorer.scorers import TFLiteScorer  # noqa: E402
from shared.contracts import encode  # noqa: E402

TARGET = 30_000
DECLARED = "telemetry_generic"


def pin_one_core() -> int:
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    return cpus[-1]


def records(vehicles: int, duration: int) -> dict[str, list[bytes]]:
    """Anonymized simulator events, encoded as the enricher writes them to anon.*."""
    from firmware_sim import Fleet, SimSettings

    from shared.features import Anonymizer
    from shared.tokens import Tokenizer

    anon = Anonymizer(Tokenizer(b"bench-secret-0123456789"))
    out: dict[str, list[bytes]] = {"telemetry": [], "payments": [], DECLARED: []}
    fleet = Fleet(SimSettings(vehicles=vehicles, duration_s=duration, seed=3))
    for topic, payload in fleet.events():
        stream = topic.rsplit("/", 1)[-1]
        if stream in out:
            out[stream].append(encode(anon.message(topic, payload)))
        if stream == "telemetry":
            out[DECLARED].append(encode(anon.message(f"{topic}_generic", payload)))
    # Payments are rare next to telemetry: repeat them so their rate is measured on enough.
    out["payments"] = (out["payments"] * (1 + 20_000 // max(1, len(out["payments"]))))[:20_000]
    return out


def models(tmp: Path, data: dict[str, list[bytes]]) -> tuple[dict[str, ModelHolder], str]:
    """The shipped baselines; without them, small stand-ins trained here (same shape)."""
    from edge.scorer.errors import ModelError

    declared = declared_model(tmp, data[DECLARED])
    try:
        holders = {
            s: ModelHolder(load_model(baseline_dir(s), s)) for s in ("telemetry", "payments")
        }
        return holders | {DECLARED: declared}, "baseline"
    except ModelError as exc:  # e.g. built for an older feature spec: say so, measure anyway
        print(f"baseline refused ({exc}); using stand-ins of the same shape", file=sys.stderr)
    from shared.contracts import AnonPayment, AnonTelemetry, decode
    from shared.features import feature_matrix
    from shared.signing import generate_private_key
    from tests.scorer_models import SyntheticFeatures, build_model_dir

    key, holders = generate_private_key(), {}
    kinds: dict[str, Any] = {"telemetry": AnonTelemetry, "payments": AnonPayment}
    for s in ("telemetry", "payments"):
        rows = feature_matrix(s, [decode(kinds[s], v) for v in data[s][:20_000]])
        d, pub = build_model_dir(
            tmp / s, s, SyntheticFeatures(s), key=key, epochs=5, train_rows=rows
        )
        holders[s] = ModelHolder(load_model(d, s, pub))
    holders[DECLARED] = declared
    return holders, "stand-in (baseline missing or refused)"


def declared_model(tmp: Path, values: list[bytes]) -> ModelHolder:
    """A model for the declared stream, trained here on its records for its digest."""
    from shared import streams
    from shared.contracts import AnonRecord, decode
    from shared.features import feature_matrix
    from shared.signing import generate_private_key
    from tests.scorer_models import SyntheticFeatures, build_model_dir

    decl = streams.get(DECLARED).declaration
    assert decl is not None
    rows = feature_matrix(DECLARED, [decode(AnonRecord, v) for v in values[:20_000]])
    d, pub = build_model_dir(
        tmp / DECLARED,
        DECLARED,
        SyntheticFeatures(DECLARED, names=decl.feature_names),
        key=generate_private_key(),
        epochs=5,
        train_rows=rows,
        feature_spec=decl.feature_spec,
    )
    return ModelHolder(load_model(d, DECLARED, pub))


class TimedScorer:
    """Counts the seconds spent in the int8 invoke while the service scores."""

    def __init__(self, scorer: TFLiteScorer) -> None:
        self.scorer, self.seconds = scorer, 0.0
        self._invoke = scorer.invoke_int8
        scorer.invoke_int8 = self._timed  # type: ignore[method-assign]

    def _timed(self, q: np.ndarray) -> np.ndarray:
        t = time.process_time()
        try:
            return self._invoke(q)
        finally:
            self.seconds += time.process_time() - t


def run_path(
    svc: ScorerService, stream: str, values: list[bytes], batch: int, repeat: int
) -> tuple[float, float, int]:
    """(cpu seconds, wall seconds, events) of the scoring path."""
    n, c0, t0 = 0, time.process_time(), time.perf_counter()
    for _ in range(repeat):
        for i in range(0, len(values), batch):
            out, result = Out(), BatchResult()
            recs = svc.decode_batch(stream, list(values[i : i + batch]), out, result)
            svc.score_records(stream, recs, out, result)
            n += len(recs)
    return time.process_time() - c0, time.perf_counter() - t0, n


def raw_invoke(
    invoke: Callable[[np.ndarray], np.ndarray], q: np.ndarray, batch: int, repeat: int
) -> float:
    c0 = time.process_time()
    for _ in range(repeat):
        for i in range(0, q.shape[0], batch):
            invoke(q[i : i + batch])
    return time.process_time() - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vehicles", type=int, default=150)
    ap.add_argument("--duration", type=int, default=150)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--against", metavar="REV", help="also run this commit's bench/scorer.py")
    args = ap.parse_args()
    core = pin_one_core()
    tmp = Path(tempfile.mkdtemp(prefix="bench-scorer-"))
    (tmp / "streams").mkdir()
    generic_telemetry(tmp / "streams")  # registers the declared stream
    t = time.perf_counter()
    data = records(args.vehicles, args.duration)
    gen_s = time.perf_counter() - t
    holders, source = models(tmp, data)
    svc = ScorerService(EdgeConfig(), holders=holders)
    svc.prepare()
    timers = {}
    for stream, values in data.items():
        scorer = holders[stream].current.scorer
        assert isinstance(scorer, TFLiteScorer)
        timers[stream] = TimedScorer(scorer)
        run_path(svc, stream, values[: args.batch * 2], args.batch, 1)  # warm-up
    # Each repeat takes the streams in turn (a busy spell on the machine costs each alike);
    # a stream's figure is its best pass.
    passes: dict[str, list[tuple[float, float, int, float]]] = {s: [] for s in data}
    for _ in range(args.repeat):
        for stream, values in data.items():
            timers[stream].seconds = 0.0
            secs, wall, n = run_path(svc, stream, values, args.batch, 1)
            passes[stream].append((secs, wall, n, timers[stream].seconds))
    results: dict[str, dict[str, float]] = {}
    for stream, values in data.items():
        secs, wall, n, infer = min(passes[stream])
        scorer = holders[stream].current.scorer
        assert isinstance(scorer, TFLiteScorer)
        recs = svc.decode_batch(stream, values, Out(), BatchResult())
        matrix = svc.matrix(holders[stream].current, recs)
        q = scorer.quantize(scorer.scale(matrix))
        raw = raw_invoke(timers[stream]._invoke, q, args.batch, 1)
        results[stream] = {
            "events": n,
            "events_per_s": round(n / secs),
            "us_per_event": 1e6 * secs / n,
            "wall_events_per_s": round(n / wall),
            "int8_share": infer / secs,
            "int8_us_per_event": 1e6 * infer / n,
            "raw_invoke_us_per_event": 1e6 * raw / n,
            "raw_invoke_events_per_s": round(n / raw),
        }
    declared_ratio = results["telemetry"]["us_per_event"] / results[DECLARED]["us_per_event"]
    # The fleet's mix: five telemetry frames for every payment (as bench/latency.py drives).
    us = (5 * results["telemetry"]["us_per_event"] + results["payments"]["us_per_event"]) / 6
    mixed = round(1e6 / us)
    out = {
        "bench": "scorer",
        "core": core,
        "batch": args.batch,
        "models": source,
        "generate_s": round(gen_s, 1),
        "mixed_events_per_s": mixed,
        "target": TARGET,
        "meets_target": mixed >= TARGET,
        "declared_vs_builtin_telemetry": round(declared_ratio, 2),
        "streams": results,
    }
    print(json.dumps(out))
    for stream, r in results.items():
        print(
            f"{stream}: {r['events_per_s']:,} events/s on one core "
            f"({r['us_per_event']:.1f} us/event, of which int8 inference "
            f"{r['int8_us_per_event']:.2f} us = {100 * r['int8_share']:.1f}%); raw batched "
            f"LiteRT invoke alone: {r['raw_invoke_us_per_event']:.2f} us/event "
            f"({r['raw_invoke_events_per_s']:,}/s)"
        )
    print(f"declared {DECLARED} / built-in telemetry speed in this run: {declared_ratio:.2f}x")
    print(
        f"mixed 5 telemetry : 1 payment: {mixed:,} events/s (target >= {TARGET:,}: "
        f"{'met' if mixed >= TARGET else 'NOT met'}); models: {source}"
    )
    if args.against:
        against(args, results, core)


def against(args: argparse.Namespace, results: dict[str, dict[str, float]], core: int) -> None:
    """Run commit ``args.against``'s own bench/scorer.py (a worktree of it) with the same
    fleet, batch and repeats on the same core; print each stream's rate beside this tree's."""
    where = checkout(args.against)
    try:
        argv = [sys.executable, str(where / "bench" / "scorer.py")]
        argv += ["--vehicles", str(args.vehicles), "--duration", str(args.duration)]
        argv += ["--batch", str(args.batch), "--repeat", str(args.repeat)]
        # Its own simulator too: firmware-sim is the package firmware_sim.
        (where / ".sim").mkdir()
        (where / ".sim" / "firmware_sim").symlink_to(where / "firmware-sim")
        env = {**os.environ, "PYTHONPATH": f"{where / '.sim'}{os.pathsep}{where}"}
        out = subprocess.run(
            ["taskset", "-c", str(core), *argv],
            cwd=where,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"{args.against}'s bench/scorer.py failed:\n{out.stderr[-3000:]}")
        theirs = json.loads(next(x for x in out.stdout.splitlines() if x.startswith("{")))
        commit = git("rev-parse", "--short=10", "HEAD", cwd=where)
    finally:
        remove(where)
    report = {"bench": "scorer-against", "rev": args.against, "commit": commit, "streams": {}}
    for stream, mine in results.items():
        other = theirs["streams"].get(stream)
        if other is None:
            continue
        ratio = other["us_per_event"] / mine["us_per_event"]
        report["streams"][stream] = {
            "this_us_per_event": round(mine["us_per_event"], 2),
            "against_us_per_event": round(other["us_per_event"], 2),
            "this_vs_against": round(ratio, 2),
        }
        print(
            f"{stream}: this tree {mine['events_per_s']:,} events/s "
            f"({mine['us_per_event']:.1f} us/event); {args.against} ({commit}) "
            f"{other['events_per_s']:,} ({other['us_per_event']:.1f} us/event): {ratio:.2f}x it"
        )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
