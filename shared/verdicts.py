"""The verdict of an evaluation report in words, written once: report.md (worker.evaluate) and the dashboard both
show these lines."""

from __future__ import annotations

from typing import Any

from shared.contracts import QualityReport, UtilityReport


def verdict(report: QualityReport | UtilityReport) -> dict[str, Any]:
    """The headline of an evaluation report: does the synthetic data help (utility), how good is the model (quality)."""
    if isinstance(report, UtilityReport):
        return utility_verdict(report)
    quality = report.quality
    lines = [f"FID {quality.fid:.3f}", f"KID {quality.kid:.3f}", f"precision (k=3) {quality.precision:.3f}",
             f"recall (k=3) {quality.recall:.3f}",
             f"CAS {100 * report.cas:.2f} % vs {100 * report.real_trained_accuracy:.2f} % for the same classifier trained "
             "on real data"]
    return {"headline": f"Quality of model {report.model}", "good": None, "lines": lines, "warning": ""}


def utility_verdict(report: UtilityReport) -> dict[str, Any]:
    lines = [
        f"the GAN's own share: {100 * report.gan_share:+.2f} points (best with GAN samples, {report.best_with_gan}, minus "
        f"best without, {report.best_without_gan})",
        f"best with GAN samples over the real-only baseline: {100 * report.gan_over_real:+.2f} points",
    ]
    if report.imbalance > 1 and report.rare_share is not None:
        lines.append(f"the rarest third's accuracy, the same two arms: {100 * report.rare_share:+.2f} points")
    if report.ceiling_gain is not None:
        captured = report.captured
        lines.append(f"the true-label ceiling adds {100 * report.ceiling_gain:+.2f} points over the best arm without the "
                     f"GAN; the GAN captures {'nothing of it' if captured is None else f'{100 * max(captured, 0.0):.0f} %'}")
    if report.sweep is not None:
        lines.append(f"sweep: (c) - (a) {100 * report.sweep.delta_c:+.2f} points, (d) - (b) {100 * report.sweep.delta_d:+.2f} points")
    headline = "The synthetic data helps" if report.helps else "The synthetic data does not help"
    return {"headline": headline, "good": report.helps, "lines": lines, "warning": report.warning or ""}
