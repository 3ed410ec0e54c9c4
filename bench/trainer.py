"""Training throughput: simulator events -> features -> fit -> int8 -> checks, per phase.

Baseline measured in the same run: the feature pass alone (anonymize + feature vectors),
which every training run must pay; the ratio says what the model work adds on top.

    .venv/bin/python bench/trainer.py [--events 50000]   # --events 1000000 for the full run
"""

from __future__ import annotations

import argparse
import json
import time

from firmware_sim import Fleet, SimSettings

from cloud.trainer.data import records_from_messages
from cloud.trainer.pipeline import TrainSettings, train_stream


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--epochs", type=int, default=TrainSettings.epochs)
    args = ap.parse_args()
    vehicles = 100
    duration = max(600.0, args.events / vehicles)
    t0 = time.monotonic()
    fleet = Fleet(SimSettings(vehicles=vehicles, duration_s=duration, seed=42, payment_rate=10))
    messages = list(fleet.events())
    t_sim = time.monotonic() - t0
    t1 = time.monotonic()
    records = records_from_messages(messages, fleet.labels)
    t_features = time.monotonic() - t1
    n = sum(len(r) for r in records.values())
    fit: dict[str, float] = {}
    for stream in ("telemetry", "payments"):
        t2 = time.monotonic()
        train_stream(records[stream], TrainSettings(epochs=args.epochs))
        fit[stream] = time.monotonic() - t2
    total = t_features + sum(fit.values())
    result = {
        "bench": "trainer",
        "events": n,
        "sim_s": round(t_sim, 1),
        "features_s": round(t_features, 1),
        "features_events_per_s": round(n / t_features),
        "train_s": {k: round(v, 1) for k, v in fit.items()},
        "total_s": round(total, 1),
        "total_vs_features": round(total / t_features, 2),
    }
    print(json.dumps(result))
    print(
        f"{n:,} events: features {t_features:.0f} s ({n / t_features:,.0f}/s, baseline), "
        f"training telemetry {fit['telemetry']:.0f} s + payments {fit['payments']:.0f} s; "
        f"whole run {total:.0f} s = {total / t_features:.2f}x the feature pass alone"
    )


if __name__ == "__main__":
    main()
