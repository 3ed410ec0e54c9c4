"""ROC and PR curves of a report as one PNG (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

from cloud.evaluation import ranking
from cloud.evaluation.report import StreamScores
from shared.errors import MissingExtraError


def write_chart(curves: dict[str, StreamScores], path: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingExtraError("matplotlib (report charts)", "cloud") from None
    fig, (roc_ax, pr_ax) = plt.subplots(1, 2, figsize=(11, 4.8))
    for stream, s in curves.items():
        y = s.labelled
        if not y.any() or y.all():
            continue
        fpr, tpr = ranking.roc_curve(y, s.scores)
        recall, precision = ranking.pr_curve(y, s.scores)
        roc_ax.plot(fpr, tpr, label=f"{stream} (AUC {ranking.roc_auc(y, s.scores):.3f})")
        pr_ax.step(
            recall,
            precision,
            where="post",
            label=f"{stream} (AP {ranking.pr_auc(y, s.scores):.3f})",
        )
    roc_ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc_ax.set(
        title="ROC",
        xlabel="false positive rate",
        ylabel="true positive rate",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    pr_ax.set(
        title="Precision-recall", xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02)
    )
    for ax in (roc_ax, pr_ax):
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if ax is roc_ax else "lower left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
