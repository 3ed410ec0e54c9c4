"""One training run for one stream: split, scale, fit, quantize, check, threshold, manifest."""

from __future__ import annotations

import hashlib
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from numpy.typing import NDArray

from cloud.evaluation import ranking
from cloud.evaluation.episode_report import (
    EpisodeRule,
    LabelEpisode,
    alert_episodes,
    declared_rule,
    evaluate_episodes,
    vehicle_hours,
)
from cloud.trainer import autoencoder as ae
from cloud.trainer.data import Records, declaration, time_split, vehicle_split
from cloud.trainer.data import memory_s as data_memory_s
from cloud.trainer.errors import NeedsLabelsError, QuantizationError, TrainerError
from cloud.trainer.threshold import (
    UNLABELLED_RULE,
    ThresholdRule,
    choose_threshold,
    describe,
)
from shared import signing, streams
from shared.contracts import ModelManifest, Scaling, encode
from shared.declarations.schema import EpisodeAlerts
from shared.features import feature_label

REFERENCE_FILE = "reference.npz"
# Smallest mean normal squared error a feature is divided by (scaled units squared): a
# feature the model reconstructs almost perfectly must not turn rounding into alarms.
ERROR_FLOOR = 0.01
SCORE_RULE = (
    "mean squared reconstruction error of the scaled features; alert when score > threshold"
)


DECLARED_RANK_TAIL = 0.02


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 12
    batch_size: int = 1024
    max_fit_rows: int = 200_000  # a subsample is plenty for a few thousand weights
    hidden: tuple[int, ...] = (32, 12)
    learning_rate: float = 3e-3
    seed: int = 7
    splits: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split: str = "time"  # "time": by event time; "vehicle": by key (see data.vehicle_split)
    max_auc_drop: float = 0.005
    # Without labelled anomalies in the holdout the int8 model is checked against the float
    # one by rank agreement of their scores (Spearman) instead of ROC AUC; False refuses it.
    allow_unlabelled: bool = False
    min_rank_agreement: float = 0.95
    # ... among the holdout events in either model's top this fraction (None: all events).
    # None here: all events for the built-in streams, the top 2 % for a declared stream,
    # which trains without labels as a rule (see check_quantization_unlabelled).
    rank_tail: float | None = None
    representative_rows: int = 2000
    # The int8 input tensor covers [-input_range, input_range] scaled units. Calibrated on
    # normal rows alone it would end at the normal envelope, where every fault would saturate:
    # a failing sensor could then add no more error than a merely unusual one. None: the
    # stream's default. 0: the calibrated range.
    input_range: float | None = None
    threshold: ThresholdRule | None = None  # None: the stream's default rule
    # The built-in streams' episode rule; a declared stream replays its declaration's alerts.
    episode_rule: EpisodeRule = field(default_factory=EpisodeRule)
    detect_within_s: float = 60.0
    envelope: bool = True  # clip inputs to the normal envelope inside the model
    normalize_errors: bool = True  # divide each feature's error by its normal error...
    error_quantile: float = 0.999  # ... at this quantile

    def input_range_for(self, stream: str) -> float:
        if self.input_range is not None:
            return self.input_range
        return streams.declaration_of(stream).training.input_range

    def rank_tail_for(self, stream: str) -> float | None:
        if self.rank_tail is not None or declaration(stream) is None:
            return self.rank_tail
        return DECLARED_RANK_TAIL

    def rule_for(self, stream: str) -> ThresholdRule:
        if self.threshold is not None:
            return self.threshold
        return ThresholdRule.parse(streams.declaration_of(stream).training.threshold)

    def episode_rule_for(self, stream: str) -> EpisodeRule:
        decl = declaration(stream)
        return self.episode_rule if decl is None else declared_rule(decl.alerts)


@dataclass
class TrainedModel:
    manifest: ModelManifest
    tflite: bytes
    layers: list[ae.Layer]
    # Scores of the holdout split (int8 and float), kept for reports and tests.
    holdout: Records
    holdout_int8: NDArray[np.float32]
    holdout_float: NDArray[np.float32]


Progress = Callable[[str, int, int, float | None], None]  # (phase, done, total, loss)


def _noop(phase: str, done: int, total: int, loss: float | None) -> None:
    return None


def train_stream(
    records: Records,
    settings: TrainSettings = TrainSettings(),
    parent: str | None = None,
    progress: Progress = _noop,
) -> TrainedModel:
    """Train, quantize and evaluate one stream's model; raises QuantizationError on a bad int8."""
    started = time.monotonic()
    splitter = vehicle_split if settings.split == "vehicle" else time_split
    train, val, hold = splitter(records, settings.splits)
    memory_s = data_memory_s(records)
    decl = declaration(records.stream)
    episode_rule = settings.episode_rule_for(records.stream)
    fit = _fit(records.stream, train, settings, progress)
    tflite = _quantize(fit, records.stream, settings, progress)
    int8 = ae.Int8Model(tflite)
    xs_val, xs_hold = ae.scale(val.x, fit.mean, fit.std), ae.scale(hold.x, fit.mean, fit.std)
    hold_q, hold_f = int8.scores(xs_hold), ae.float_scores(fit.layers, xs_hold)
    quant = _check_int8(records.stream, hold, hold_f, hold_q, settings)
    rule = _threshold_rule(records.stream, val, settings)
    val_q = int8.scores(xs_val)
    threshold = choose_threshold(rule, val, val_q, episode_rule, memory_s)
    m = evaluation_metrics(hold, hold_q, hold_f, threshold, settings)
    m["validation"] = ranking.summary(val.labelled, val_q, threshold)
    if decl is not None or not hold.labelled.any():
        m["unlabelled"] = unlabelled_metrics(
            hold, hold_q, int8.reconstruct(xs_hold) - xs_hold, threshold, episode_rule
        )
    m["quantization"] = quant
    m["threshold_rule"] = describe(rule, val)
    m["score_rule"] = SCORE_RULE
    m["episode_rule"] = vars(episode_rule).copy()
    m["training"] = {
        "records": len(records),
        "train": len(train),
        "validation": len(val),
        "holdout": len(hold),
        "split": settings.split,
        "feature_memory_s": memory_s,
        **_fit_summary(fit, settings),
        "seconds": round(time.monotonic() - started, 1),
        "rejected_messages": records.rejected,
    }
    m["reference_sha256"] = hashlib.sha256(reference_bytes(fit.layers)).hexdigest()
    manifest = ModelManifest(
        stream=records.stream,
        version=_version(records.stream, tflite),
        feature_spec=streams.declaration_of(records.stream).feature_spec,
        features=list(records.features),
        scaling=Scaling(mean=[float(v) for v in fit.mean], scale=[float(v) for v in fit.std]),
        threshold=float(threshold),
        input_quant=int8.input_quant,
        output_quant=int8.output_quant,
        metrics=m,
        data_range=(float(records.ts.min()), float(records.ts.max())),
        parent=parent,
        created_ts=time.time(),
    )
    return TrainedModel(manifest, tflite, fit.layers, hold, hold_q, hold_f)


@dataclass
class _Fit:
    """A fitted float model: its Keras model and Dense layers, the scaling, the (scaled)
    rows it was fitted on, its batch size and each epoch's loss."""

    model: Any
    layers: list[ae.Layer]
    mean: NDArray[np.float64]
    std: NDArray[np.float64]
    xs: NDArray[np.float32]
    batch: int
    losses: list[float]


def _fit(stream: str, train: Records, settings: TrainSettings, progress: Progress) -> _Fit:
    """Scale and fit the autoencoder on the training split's normal records; with
    ``normalize_errors``, each feature's error rescaled into the model and its scaling."""
    normal = train.x[~train.labelled]
    if normal.shape[0] < 50:
        raise TrainerError(
            f"only {normal.shape[0]} normal {stream} records in the "
            f"training split; need at least 50"
        )
    mean, std = ae.fit_scaling(normal)
    xs_fit = ae.scale(_subsample(normal, settings.max_fit_rows, settings.seed), mean, std)
    bounds = ae.envelope(xs_fit) if settings.envelope else None
    model = ae.build_autoencoder(
        xs_fit.shape[1], settings.hidden, settings.learning_rate, settings.seed, bounds
    )
    # Enough optimizer steps even on small data: at least ~100 batches per epoch.
    batch = int(min(settings.batch_size, max(32, xs_fit.shape[0] // 100)))
    losses: list[float] = []

    def on_epoch(epoch: int, loss: float) -> None:
        losses.append(loss)
        progress(f"fit {stream}", epoch, settings.epochs, loss)

    model.fit(
        xs_fit,
        xs_fit,
        epochs=settings.epochs,
        batch_size=batch,
        shuffle=True,
        verbose=0,
        callbacks=[ae.keras_progress_callback(on_epoch)],
    )
    layers = ae.dense_layers(model)
    if settings.normalize_errors:
        c = ae.error_scale(layers, xs_fit, ERROR_FLOOR, settings.error_quantile)
        layers = ae.fold_error_scale(layers, c)
        model.set_weights([w for layer in layers for w in layer[:2]])
        std = std * c
        xs_fit = (xs_fit / c.astype(np.float32)).astype(np.float32)
    return _Fit(model, layers, mean, std, xs_fit, batch, losses)


def _quantize(fit: _Fit, stream: str, settings: TrainSettings, progress: Progress) -> bytes:
    """The int8 model, calibrated on a sample of the fitted rows and the input range."""
    progress(f"quantize {stream}", 0, 1, None)
    rep = fit.xs[_subsample_idx(fit.xs.shape[0], settings.representative_rows, settings.seed)]
    rep = with_input_range(rep, settings.input_range_for(stream))
    tflite = ae.quantize(fit.model, rep)
    progress(f"quantize {stream}", 1, 1, None)
    return tflite


def _check_int8(
    stream: str,
    hold: Records,
    hold_f: NDArray[np.float32],
    hold_q: NDArray[np.float32],
    settings: TrainSettings,
) -> dict[str, Any]:
    """The int8 model against the float one on the holdout: by ROC AUC with labels, by rank
    agreement without (when allowed)."""
    if hold.labelled.any() and not hold.labelled.all():
        return check_quantization(hold.labelled, hold_f, hold_q, settings.max_auc_drop)
    if settings.allow_unlabelled:
        return check_quantization_unlabelled(
            hold_f, hold_q, settings.min_rank_agreement, settings.rank_tail_for(stream)
        )
    raise NeedsLabelsError(
        f"the holdout split ({len(hold)} {stream} records) needs both normal and "
        f"labelled events to check the int8 model ({int(hold.labelled.sum())} labelled); "
        "pass the labels (or more data), or allow unlabelled training"
    )


def _threshold_rule(stream: str, val: Records, settings: TrainSettings) -> ThresholdRule:
    """The stream's rule; a precision rule falls back to the unlabelled one when the
    validation split has no labels and unlabelled training is allowed."""
    rule = settings.rule_for(stream)
    if rule.mode == "precision" and not val.labelled.any() and settings.allow_unlabelled:
        return UNLABELLED_RULE
    return rule


def _fit_summary(fit: _Fit, settings: TrainSettings) -> dict[str, Any]:
    return {
        "fit_rows": int(fit.xs.shape[0]),
        "epochs": settings.epochs,
        "batch_size": fit.batch,
        "envelope": settings.envelope,
        "normalized_errors": settings.normalize_errors,
        "hidden": list(settings.hidden),
        "loss": [round(v, 6) for v in fit.losses],
        "seed": settings.seed,
    }


def check_quantization(
    labels: NDArray[np.bool_],
    float_scores: NDArray[np.float32],
    int8_scores: NDArray[np.float32],
    max_drop: float,
) -> dict[str, Any]:
    """Fail when the int8 model's holdout ROC AUC is more than ``max_drop`` below float's."""
    if not labels.any() or labels.all():
        raise TrainerError(
            "the holdout split needs both normal and labelled events to check "
            "the int8 model; pass the labels file (or more data)"
        )
    auc_f = ranking.roc_auc(labels, float_scores)
    auc_q = ranking.roc_auc(labels, int8_scores)
    result = {
        "float_roc_auc": round(auc_f, 6),
        "int8_roc_auc": round(auc_q, 6),
        "max_drop": max_drop,
        "score_mean_abs_diff": float(np.mean(np.abs(int8_scores - float_scores))),
    }
    if auc_q < auc_f - max_drop:
        raise QuantizationError(
            f"int8 model ROC AUC {auc_q:.4f} is {auc_f - auc_q:.4f} below the float model's "
            f"{auc_f:.4f} (allowed: {max_drop}); check the representative dataset and scaling"
        )
    return result


def check_quantization_unlabelled(
    float_scores: NDArray[np.float32],
    int8_scores: NDArray[np.float32],
    min_agreement: float,
    tail: float | None = None,
) -> dict[str, Any]:
    """With no labels to rank against: the int8 model must order events as the float one
    does (Spearman rank correlation of their scores at least ``min_agreement``).

    ``tail``: judge the order only among the events either model puts in its top ``tail``
    fraction, where thresholds are chosen and alerts raised. Among the bulk of normal events
    the scores are a few int8 steps apart, and their order is rounding, not the model.
    """
    if float_scores.size < 2:
        raise TrainerError("the holdout split is too small to check the int8 model")
    rho_all = ranking.spearman(float_scores, int8_scores)
    rho = rho_all
    result = {
        "labelled": False,
        "min_agreement": min_agreement,
        "score_mean_abs_diff": float(np.mean(np.abs(int8_scores - float_scores))),
    }
    if tail is not None:
        top = (float_scores >= np.quantile(float_scores, 1 - tail)) | (
            int8_scores >= np.quantile(int8_scores, 1 - tail)
        )
        if top.sum() >= 2:
            rho = ranking.spearman(float_scores[top], int8_scores[top])
        result.update(tail=tail, tail_events=int(top.sum()), rank_agreement_all=round(rho_all, 6))
    result["rank_agreement"] = round(rho, 6)
    if not rho >= min_agreement:
        where = "the holdout" if tail is None else f"the holdout's top {tail:g}"
        raise QuantizationError(
            f"int8 model's scores rank {where} with Spearman {rho:.4f} against the float "
            f"model's (need {min_agreement}); check the representative dataset and scaling"
        )
    return result


def evaluation_metrics(
    hold: Records,
    int8_scores: NDArray[np.float32],
    float_scores: NDArray[np.float32],
    threshold: float,
    settings: TrainSettings,
) -> dict[str, Any]:
    y = hold.labelled
    out: dict[str, Any] = {"holdout": ranking.summary(y, int8_scores, threshold)}
    out["holdout_float"] = {
        "roc_auc": ranking._finite(ranking.roc_auc(y, float_scores)),
        "pr_auc": ranking._finite(ranking.pr_auc(y, float_scores)),
    }
    per_kind: dict[str, Any] = {}
    for kind in sorted(set(hold.kinds[y])):
        mask = ~y | (hold.kinds == kind)
        s = ranking.summary(hold.kinds[mask] == kind, int8_scores[mask], threshold)
        per_kind[kind] = {k: s[k] for k in ("positives", "roc_auc", "pr_auc", "recall")}
    out["per_kind"] = per_kind
    # Episode figures for a stream whose alerts are episodes: a built-in one always, a
    # declared one when its holdout has labelled anomalies to measure them against.
    episodic = isinstance(streams.declaration_of(hold.stream).alerts, EpisodeAlerts)
    if episodic and (declaration(hold.stream) is None or y.any()):
        out["episodes"] = episode_metrics(hold, int8_scores, threshold, settings)
    return out


# How many features the unlabelled report names as driving the alerts.
TOP_DRIVERS = 5
UNKNOWN_QUALITY = "unknown: no labelled anomalies in the holdout; precision and recall need labels"


def unlabelled_metrics(
    hold: Records,
    scores: NDArray[np.float32],
    errors: NDArray[np.float32],
    threshold: float,
    rule: EpisodeRule,
) -> dict[str, Any]:
    """What a run can measure on its holdout without labelled anomalies.

    Events without a label are presumed normal. The alert rate and the alert episodes (the
    stream's own rule replayed) per device-hour are what operators would see; the score
    distribution puts the threshold in context; the drivers are the features holding the most
    of the (int8 model's) squared reconstruction error summed over the alerted events, named
    by their declared labels. Whether those alerts are faults is unknown: precision and
    recall need labels.
    """
    normal = ~hold.labelled
    s = scores[normal]
    flagged = s > threshold
    hours = vehicle_hours(hold.tokens[normal], hold.ts[normal])
    episodes = alert_episodes(hold.tokens[normal], hold.ts[normal], flagged, rule)
    q = np.quantile(s, [0.5, 0.9, 0.99]) if s.size else np.zeros(3)
    sq = np.square(errors[normal][flagged]).sum(axis=0) if flagged.any() else None
    drivers: list[dict[str, Any]] = []
    if sq is not None and float(sq.sum()) > 0:
        decl = declaration(hold.stream)
        share = sq / sq.sum()
        for i in np.argsort(-share, kind="stable")[:TOP_DRIVERS]:
            name = hold.features[int(i)]
            drivers.append(
                {
                    "feature": name,
                    "label": decl.label(name) if decl is not None else feature_label(name),
                    "share": round(float(share[i]), 4),
                }
            )
    return {
        "events": int(s.size),
        "alerts": int(flagged.sum()),
        "alert_rate": round(float(flagged.mean()), 6) if s.size else None,
        "alert_episodes": len(episodes),
        "device_hours": round(hours, 3),
        "alert_episodes_per_device_hour": round(len(episodes) / hours, 4) if hours else None,
        "alert_episodes_per_100h": round(100.0 * len(episodes) / hours, 4) if hours else None,
        "scores": {
            "p50": round(float(q[0]), 6),
            "p90": round(float(q[1]), 6),
            "p99": round(float(q[2]), 6),
            "max": round(float(s.max()), 6) if s.size else None,
            "threshold": round(float(threshold), 6),
        },
        "drivers": drivers,
        "detection_quality": (
            "measured on the holdout's labelled events (see holdout)"
            if hold.labelled.any()
            else UNKNOWN_QUALITY
        ),
    }


def label_episodes(records: Records) -> list[LabelEpisode]:
    """Labelled episodes as seen in ``records``: their token and first/last labelled event.

    Keyed by token and episode id together: files of several runs may reuse an id.
    """
    spans: dict[tuple[str, str], list[Any]] = {}
    for i in np.flatnonzero(records.labelled):
        ep, t = (str(records.tokens[i]), str(records.episodes[i])), float(records.ts[i])
        span = spans.get(ep)
        if span is None:
            spans[ep] = [str(records.kinds[i]), str(records.tokens[i]), t, t]
        else:
            span[2], span[3] = min(span[2], t), max(span[3], t)
    return [LabelEpisode(ep, k, tok, s, e) for (_, ep), (k, tok, s, e) in spans.items()]


def episode_metrics(
    hold: Records, scores: NDArray[np.float32], threshold: float, settings: TrainSettings
) -> dict[str, Any]:
    rule = settings.episode_rule_for(hold.stream)
    alerts = alert_episodes(hold.tokens, hold.ts, scores > threshold, rule)
    report = evaluate_episodes(
        alerts,
        label_episodes(hold),
        vehicle_hours(hold.tokens, hold.ts),
        within_s=settings.detect_within_s,
        memory_s=data_memory_s(hold),
    )
    return report.as_dict()


def with_input_range(rep: NDArray[np.float32], reach: float) -> NDArray[np.float32]:
    """The representative rows plus two rows at +-``reach``, so the int8 input range spans it."""
    if reach <= 0:
        return rep
    edges = np.stack([np.full(rep.shape[1], reach), np.full(rep.shape[1], -reach)])
    return np.vstack([rep, edges.astype(np.float32)])


def _subsample_idx(n: int, k: int, seed: int) -> NDArray[np.int64]:
    if n <= k:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def _subsample(x: NDArray[np.float32], k: int, seed: int) -> NDArray[np.float32]:
    return x[_subsample_idx(x.shape[0], k, seed)]


def _version(stream: str, tflite: bytes) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    return f"{stream}-{stamp}-{hashlib.sha256(tflite).hexdigest()[:8]}"


def reference_bytes(layers: list[ae.Layer]) -> bytes:
    """Float weights for the edge's numpy reference scorer: w0, b0, ..., activations."""
    arrays: dict[str, NDArray[Any]] = {"activations": np.array([a for _, _, a in layers])}
    for i, (w, b, _a) in enumerate(layers):
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def write_model_dir(trained: TrainedModel, out_dir: Path, private_key: Ed25519PrivateKey) -> Path:
    """model.tflite, manifest.json, reference.npz and the signature over the first two."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / signing.MODEL_FILE).write_bytes(trained.tflite)
    manifest = msgspec.json.format(encode(trained.manifest), indent=2) + b"\n"
    (out_dir / signing.MANIFEST_FILE).write_bytes(manifest)
    (out_dir / REFERENCE_FILE).write_bytes(reference_bytes(trained.layers))
    signing.sign_model_dir(out_dir, private_key)
    signing.verify_model_dir(out_dir, private_key.public_key())  # never ship what fails
    return out_dir
