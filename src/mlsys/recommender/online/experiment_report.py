"""An experiment's report on disk: report.json (from `ExperimentReport.to_json`), report.md
and ctr.png, for `mlsys experiment report` and the pipeline's shadow and canary steps."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mlsys.platform.event_log import CLICKS, IMPRESSIONS, SHADOW, read_errors
from mlsys.platform.online_stats import Interval, prefix_sequences
from mlsys.platform.redis_client import RedisClient
from mlsys.platform.rollout import Arm, RolloutState
from mlsys.recommender.online.experiment import analyse, load_log
from mlsys.recommender.online.experiment_results import (
    CreditedArm,
    ExperimentReport,
    Series,
    ServedArm,
    SplitArm,
)


def report(
    client: RedisClient,
    state: RolloutState,
    out_dir: str | Path,
    *,
    log_dir: str | Path | None = None,
    n_opt: float | None = None,
) -> ExperimentReport:
    """Analyse the experiment `state` (`RolloutStore.experiment`) and write its report."""
    result = analyse(
        state,
        load_log(client, IMPRESSIONS, log_dir),
        load_log(client, CLICKS, log_dir),
        load_log(client, SHADOW, log_dir),
        read_errors(client, state.experiment),
        n_opt=n_opt,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    (out / "report.md").write_text(markdown(result))
    if result.series is not None and len(result.series.values):
        plot(result, result.series, out / "ctr.png")
    return result


def _arm_row(name: str, arm: SplitArm | CreditedArm | ServedArm) -> str:
    interval = (
        "(credited clicks)"
        if isinstance(arm, CreditedArm)
        else f"[{arm.ctr_interval[0]:.3f}, {arm.ctr_interval[1]:.3f}]"
    )
    ctr = "n/a" if arm.ctr is None else f"{arm.ctr:.3f}"
    return f"| {name} | {arm.impressions} | {arm.clicks} | {ctr} | {interval} |"


def _signed(i: Interval) -> str:
    return f"{i.estimate:+.3f}, always-valid 95% interval [{i.low:+.3f}, {i.high:+.3f}]"


def markdown(r: ExperimentReport) -> str:
    lines = [
        f"# Experiment {r.experiment}",
        "",
        f"Model `{r.model}`, mode **{r.mode}** ({r.percent:g}%), versions "
        f"{', '.join(r.models)}. {r.impressions} impressions, {r.clicks} clicks.",
        "",
        f"**Decision: {r.decision}**",
        "",
        "| arm | impressions | clicks | CTR (clicks / impression) | always-valid 95% interval |",
        "|---|---|---|---|---|",
    ]
    decided = r.requests_to_decide or "not yet"
    if r.split is not None:
        s = r.split
        lines += [_arm_row("champion", s.champion), _arm_row("challenger", s.challenger)]
        lines += [
            "",
            f"Lift (challenger - champion): {s.lift.estimate:+.3f} clicks per impression, "
            f"always-valid 95% interval [{s.lift.low:+.3f}, {s.lift.high:+.3f}]; decided after "
            f"{decided} impressions. Sample ratio p = {r.srm_p:.3g}; users seen in both arms: "
            f"{s.users_in_both_arms}.",
            "",
            "| guardrail | challenger minus champion | limit | ok |",
            "|---|---|---|---|",
        ]
        for name, g in s.guardrails.items():
            excess = "n/a" if g.excess is None else f"{g.excess:+.4g}"
            lines.append(f"| {name} | {excess} | {g.limit} | {g.ok} |")
    if r.interleaving is not None:
        i = r.interleaving
        p = i.preference
        lines += [_arm_row("champion", i.champion), _arm_row("challenger", i.challenger)]
        lines += [
            "",
            f"Interleaving: challenger won {p.challenger_wins}, champion won "
            f"{p.champion_wins}, ties {p.ties} ({p.answers_where_arms_agree} answers "
            f"where both arms ranked alike left out). Preference {_signed(p.interval)}, "
            f"binomial p = {p.binomial_p:.3g}; decided after {decided} answers. First-pick "
            f"balance p = {r.srm_p:.3g}.",
        ]
    if r.shadow is not None:
        s_ = r.shadow.shadow
        lines += [_arm_row("champion", r.shadow.champion)]
        lines += ["", f"Shadow: scored {s_.scored}, coverage {s_.coverage}, same_first "
                  f"{s_.same_first}, overlap_at_10 {s_.overlap_at_10}, p95_shadow_ms "
                  f"{s_.p95_shadow_ms}"]  # fmt: skip
    lines += ["", "![CTR over time](ctr.png)", ""]
    return "\n".join(lines)


def plot(report: ExperimentReport, series: Series, path: Path) -> None:
    """Top: each arm's cumulative CTR (or the credited clicks' preference); bottom: the effect
    with its always-valid band, and where it first excluded zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values, is_challenger, decided_at = series.values, series.is_challenger, series.decided_at
    n = len(values)
    points = np.unique(np.linspace(min(10, n), n, min(n, 300)).astype(int))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    if is_challenger is None:
        for sign, arm in ((1, Arm.CHALLENGER), (-1, Arm.CHAMPION)):
            share = np.cumsum(values == sign) / np.arange(1, n + 1)
            top.plot(points, share[points - 1], lw=1, label=f"share of answers {arm} won")
        top.set_ylabel("share of answers")
        effect = "preference (+1 challenger won, -1 champion won)"
        bottom.set_xlabel("answers where the rankings differ, in arrival order (red: decided)")
    else:
        for arm, mask in ((Arm.CHAMPION, ~is_challenger), (Arm.CHALLENGER, is_challenger)):
            with np.errstate(invalid="ignore", divide="ignore"):
                cum = np.cumsum(np.where(mask, values, 0.0)) / np.cumsum(mask)
            top.plot(points, cum[points - 1], lw=1, label=arm)
        top.set_ylabel("clicks per impression")
        effect = "lift: challenger - champion"
    estimate, half, _ = prefix_sequences(values, is_challenger, n_opt=report.n_opt)
    est, lo, hi = estimate[points - 1], (estimate - half)[points - 1], (estimate + half)[points - 1]
    top.legend(loc="best", fontsize=8)
    bottom.plot(points, est, color="k", lw=1.5, label=effect)
    bottom.fill_between(points, lo, hi, color="k", alpha=0.15, label="always-valid 95% interval")
    with np.errstate(invalid="ignore"):
        kept = (np.maximum.accumulate(np.where(np.isfinite(lo), lo, -np.inf)),
                np.minimum.accumulate(np.where(np.isfinite(hi), hi, np.inf)))  # fmt: skip
    bottom.plot(points, kept[0], color="tab:blue", lw=0.8, ls="--", label="running intersection")
    bottom.plot(points, kept[1], color="tab:blue", lw=0.8, ls="--")
    bottom.axhline(0, color="grey", lw=0.8)
    if decided_at:
        for ax in (top, bottom):
            ax.axvline(decided_at, color="tab:red", ls="--", lw=1)
    tail = np.isfinite(lo) & np.isfinite(hi)
    if tail.any():
        later = np.flatnonzero(tail)[len(np.flatnonzero(tail)) // 10 :]
        span = float(max(np.abs(lo[later]).max(), np.abs(hi[later]).max()))
        bottom.set_ylim(-span, span)
    if is_challenger is not None:
        bottom.set_xlabel("impressions, in arrival order (red: first decided)")
    bottom.legend(loc="best", fontsize=8)
    top.set_title(f"{report.experiment}: {report.decision}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
