"""The enricher's feature path: the built-in streams, declared streams, and (``--against``)
another commit's built-in streams.

Measures, in one process pinned to one CPU, over the same simulator telemetry frames, the
CPU seconds per event of:

- **built-in**: ``shared.features.batch.anonymize_batch`` over the built-in ``telemetry``
  stream, as the enricher runs it: its shipped declaration in the engine, vectorised over the
  batch, records in ``anon.telemetry``'s shape;
- **declared**: a declared stream whose declaration is the built-in ``telemetry``
  declaration with its named transforms left out (48 generic features): vectorised and event
  by event (``sequential_batch``, ``shared/declarations/anonymize.py``);
- **whole declared**: the whole built-in ``telemetry`` declaration as a declared stream
  (``telemetry_whole``, ``AnonRecord``s);
- with ``--against REV``: REV's built-in telemetry, from a git worktree of it, in a child
  process running this file over that code, in turn with the others each round.

Each produces the anon records' bytes (``wire``) and the per-vehicle states, batch by batch,
with states carried over as the enricher does. Kafka, the vault and decoding are left out.

Then payments: the built-in payments stream (its shipped declaration, payment by payment in the
engine) beside the same declaration run as a declared stream (``payments_whole``), and REV's
built-in payments with ``--against``, over the same payments, each reading the vehicles' states
the fleet's telemetry left.

    .venv/bin/python bench/features.py [--vehicles 200] [--duration 120] [--batch 5000]
        [--rounds 3] [--against REV] [--payments-only]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

# ``--code DIR``: the package from DIR (another commit's worktree) instead of this checkout's.
ROOT = str(Path(__file__).resolve().parents[1])
CODE = sys.argv[sys.argv.index("--code") + 1] if "--code" in sys.argv[:-1] else None
sys.path.insert(0, CODE or ROOT)

from shared import streams  # noqa: E402
from shared.contracts import decode  # noqa: E402
from shared.declarations.catalog import load_streams  # noqa: E402
from shared.features.batch import (  # noqa: E402
    BatchResult,
    anonymize_batch,
    sequential_batch,
)
from shared.features.state import FeatureState  # noqa: E402
from shared.tokens import Tokenizer  # noqa: E402

SECRET = Tokenizer(b"bench-secret-0123456789")
Path_ = Callable[[Sequence[tuple[Any, Any]], FeatureState, Tokenizer], BatchResult]


def cpu() -> float:
    return time.process_time()


def generic_telemetry(folder: Path) -> streams.StreamSpec:
    """The built-in telemetry declaration without its named transforms, as a declared
    stream (``telemetry_generic`` on ``fleet/{vin}/telemetry_generic``)."""
    text = (resources.files("shared.declarations") / "builtin" / "telemetry.toml").read_text()
    lines = [line for line in text.splitlines() if "named =" not in line]
    text = "\n".join(lines).replace('name = "telemetry"', 'name = "telemetry_generic"')
    text = text.replace('shares = "vehicle"', "")
    (folder / "telemetry_generic.toml").write_text(text)
    streams.use_declarations(folder)
    return streams.get("telemetry_generic")


def whole_telemetry(folder: Path) -> streams.StreamSpec:
    """The built-in telemetry declaration whole, named transforms included, as a declared
    stream (``telemetry_whole``): the same 55 features the built-in code computes."""
    text = (resources.files("shared.declarations") / "builtin" / "telemetry.toml").read_text()
    # The vehicle's state is the built-in telemetry's to keep.
    text = text.replace('name = "telemetry"', 'name = "telemetry_whole"')
    text = text.replace('shares = "vehicle"', "")
    (folder / "telemetry_whole.toml").write_text(text)
    streams.use_declarations(folder)
    return streams.get("telemetry_whole")


def whole_payments(folder: Path) -> streams.StreamSpec:
    """The built-in payments declaration as a declared stream (``payments_whole``)."""
    text = (resources.files("shared.declarations") / "builtin" / "payments.toml").read_text()
    text = text.replace('name = "payments"', 'name = "payments_whole"')
    (folder / "payments_whole.toml").write_text(text)
    streams.use_declarations(folder)
    return streams.get("payments_whole")


def payment_events(vehicles: int, duration: int) -> tuple[list[bytes], FeatureState]:
    """The fleet's payments, and the vehicles' states its telemetry left."""
    from firmware_sim import Fleet, SimSettings

    fleet = Fleet(SimSettings(vehicles=vehicles, duration_s=duration, seed=3, payment_rate=60))
    frames: list[bytes] = []
    pays: list[bytes] = []
    for topic, p in fleet.events():
        (frames if topic.endswith("/telemetry") else pays).append(p)
    vehicles_state = FeatureState()
    tel = streams.TELEMETRY
    vehicles_state.apply(
        anonymize_batch(
            [(tel, decode(tel.event, p)) for p in frames], FeatureState(), SECRET
        ).updates
    )
    return pays, vehicles_state


def payments_best(
    paths: Sequence[tuple[str, Path_, list[tuple[Any, Any]]]],
    vehicles_state: FeatureState,
    rounds: int,
) -> dict[str, float]:
    """Each path's fewest CPU seconds for all the payments, in one batch."""
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, path, items in paths:
            state = FeatureState(dict(vehicles_state))
            t0 = cpu()
            result = path(items, state, SECRET)
            sum(len(data) for _key, data in result.wire)
            spent = cpu() - t0
            best[name] = min(best.get(name, spent), spent)
    return best


def payments(vehicles: int, duration: int, rounds: int, against: str | None = None) -> None:
    """The built-in payments stream beside its declaration run as a declared stream; with
    ``against``, beside that commit's built-in payments too (a child process running this
    file's payments over that commit's code, after this tree's, in turn each round)."""
    with tempfile.TemporaryDirectory() as tmp:
        whole = whole_payments(Path(tmp))
    pays, vehicles_state = payment_events(vehicles, duration)
    paths = (
        (
            "built-in payments",
            anonymize_batch,
            [(streams.PAYMENTS, decode(streams.PAYMENTS.event, p)) for p in pays],
        ),
        ("declared payments", anonymize_batch, [(whole, decode(whole.event, p)) for p in pays]),
    )
    best: dict[str, float] = {}
    worktree = None
    try:
        if against is not None:
            from bench._worktree import checkout, remove

            worktree = checkout(against)
        for _ in range(rounds):
            for name, spent in payments_best(paths, vehicles_state, 1).items():
                best[name] = min(best.get(name, spent), spent)
            if worktree is not None:
                spent = child(worktree, "payments", vehicles, duration, 0)
                name = f"{against} built-in"
                best[name] = min(best.get(name, spent), spent)
    finally:
        if worktree is not None:
            remove(worktree)
    n = len(pays)
    print(
        f"\n{n} payments of the same vehicles, one batch, each path reading their vehicles' state"
    )
    for name in best:
        print(f"{name:<24} {n / best[name]:>9,.0f} events/s  {best[name] / n * 1e6:>7.1f} µs/event")
    ratio = best["built-in payments"] / best["declared payments"]
    print(f"\ndeclared / built-in speed, payments: {ratio:.2f}x")
    if against is not None:
        other = best[f"{against} built-in"] / best["built-in payments"]
        print(f"built-in payments, this tree against {against}: {other:.2f}x its speed")


def child(code: Path, what: str, vehicles: int, duration: int, batch: int) -> float:
    """CPU seconds of ``code``'s built-in ``what`` (telemetry or payments) over the same
    events (one run), in a child process running this file over that code."""
    argv = [sys.executable, __file__, "--child", what, "--code", str(code)]
    argv += ["--vehicles", str(vehicles), "--duration", str(duration), "--batch", str(batch)]
    # The child inherits this process's CPU.
    out = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=600, cwd=code)
    if out.returncode != 0:
        raise SystemExit(f"{what} over {code} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def child_main(what: str, vehicles: int, duration: int, batch: int) -> None:
    if what == "payments":
        pays, vehicles_state = payment_events(vehicles, duration)
        items = [(streams.PAYMENTS, decode(streams.PAYMENTS.event, p)) for p in pays]
        print(payments_best([("built-in", anonymize_batch, items)], vehicles_state, 1)["built-in"])
    else:
        tel = streams.TELEMETRY
        items = [(tel, decode(tel.event, p)) for p in payloads(vehicles, duration)]
        print(run(anonymize_batch, items, batch)[0])


def payloads(vehicles: int, duration: int) -> list[bytes]:
    from firmware_sim import Fleet, SimSettings

    fleet = Fleet(SimSettings(vehicles=vehicles, duration_s=duration, seed=3))
    return [p for topic, p in fleet.events() if topic.endswith("/telemetry")]


def run(path: Path_, items: list[tuple[Any, Any]], batch: int) -> tuple[float, int]:
    """CPU seconds for every batch of ``items`` through ``path``; bytes produced."""
    state, size = FeatureState(), 0
    t0 = cpu()
    for start in range(0, len(items), batch):
        result = path(items[start : start + batch], state, SECRET)
        state.apply(result.updates)
        size += sum(len(data) for _key, data in result.wire)
    return cpu() - t0, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=200)
    ap.add_argument("--duration", type=int, default=120, help="Simulated seconds.")
    ap.add_argument("--batch", type=int, default=5000, help="The enricher's batch_size.")
    ap.add_argument("--rounds", type=int, default=3, help="Runs of each path; best is kept.")
    ap.add_argument(
        "--against", metavar="REV", help="also run this commit's built-in streams (worktree)"
    )
    ap.add_argument("--payments-only", action="store_true", help="Payments alone.")
    ap.add_argument("--child", choices=["telemetry", "payments"], help=argparse.SUPPRESS)
    ap.add_argument("--code", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[-1]})
    if args.child:
        child_main(args.child, args.vehicles, args.duration, args.batch)
        return
    if args.payments_only:
        payments(args.vehicles, args.duration, args.rounds, args.against)
        return
    with tempfile.TemporaryDirectory() as tmp:
        declared = generic_telemetry(Path(tmp))
    with tempfile.TemporaryDirectory() as tmp:
        whole = whole_telemetry(Path(tmp))
    builtin = streams.TELEMETRY
    raw = payloads(args.vehicles, args.duration)
    ours = [(builtin, decode(builtin.event, p)) for p in raw]
    theirs = [(declared, decode(declared.event, p)) for p in raw]
    all_of_it = [(whole, decode(whole.event, p)) for p in raw]
    n = len(raw)
    assert declared.declaration is not None
    print(
        f"{n} telemetry frames of {args.vehicles} vehicles, batches of {args.batch}, one CPU "
        f"(cpu {cpus[-1]}); best of {args.rounds} runs per path\n"
    )
    figures = {}
    generic = f"{len(declared.declaration.features)} generic"
    builtin_features = load_streams()["telemetry"].features
    paths = (
        ("built-in (vectorised)", anonymize_batch, ours, f"{len(builtin_features)}"),
        ("declared (vectorised)", anonymize_batch, theirs, generic),
        ("whole declared", anonymize_batch, all_of_it, f"{len(builtin_features)}, named too"),
        ("declared (one by one)", sequential_batch, theirs, generic),
    )
    # Rounds take the paths in turn, so a busy spell on the machine costs each path alike.
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name, *_ in paths}
    worktree = None
    if args.against:
        from bench._worktree import checkout, remove

        worktree = checkout(args.against)
    before = f"{args.against} built-in"
    try:
        for _ in range(args.rounds):
            for name, path, items, _features in paths:
                runs[name].append(run(path, items, args.batch))
            if worktree is not None:
                spent = child(worktree, "telemetry", args.vehicles, args.duration, args.batch)
                runs.setdefault(before, []).append((spent, 0))
    finally:
        if worktree is not None:
            remove(worktree)
    if worktree is not None:
        spent = min(runs[before])[0]
        figures[before] = spent
        print(f"{before:<24} {n / spent:>9,.0f} events/s  {spent / n * 1e6:>7.1f} µs/event")
    for name, _path, _items, features in paths:
        best = min(runs[name])
        figures[name] = best[0]
        print(
            f"{name:<24} {n / best[0]:>9,.0f} events/s  {best[0] / n * 1e6:>7.1f} µs/event  "
            f"({features} features, {best[1] / n:.0f} bytes/record)"
        )
    base = figures["built-in (vectorised)"]
    print(
        f"\ndeclared / built-in speed: vectorised {base / figures['declared (vectorised)']:.2f}x"
        f", one by one {base / figures['declared (one by one)']:.2f}x; the whole telemetry "
        f"declaration (named transforms too) {base / figures['whole declared']:.2f}x"
    )
    if worktree is not None:
        print(f"built-in telemetry, this tree against {before}: {figures[before] / base:.2f}x")
    payments(args.vehicles, args.duration, args.rounds, args.against)


if __name__ == "__main__":
    main()
