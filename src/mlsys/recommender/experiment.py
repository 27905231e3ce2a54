"""`mlsys experiment report NAME`: what an online experiment of the recommender found.

Impressions and clicks of one experiment (the model name's current or latest rollout, or
`--experiment ID`) are joined by request id; the log is read from an export folder (`--log`,
the parts `mlsys log export` wrote) plus whatever the stream still holds after them, or from
the streams alone. Per mode:

- canary / ab: per arm impressions, users, clicks, CTR (clicks per impression) with its
  always-valid interval, item CTR, p95 server time and error rate; the challenger's lift over
  the champion with an always-valid interval (`platform/online_stats.py`); the number of
  impressions, in arrival order, at which that interval first excluded zero; the sample-ratio
  check on users (the unit of assignment) against the configured split; and the guardrails;
- interleave: per answer, the arm credited with more clicks wins; the preference is the mean of
  +1 (challenger won), -1 (champion won), 0 (tie) over the answers where the two arms' rankings
  differ (where they agree, e.g. a distance sort, the teams are a coin flip and the answer can
  show no preference), with its always-valid interval, the
  fixed-horizon binomial p-value beside it, and the answers needed to decide; the sample-ratio
  check is on which team picked first (a fair coin);
- shadow: how often the challenger was scored, how its ranking agrees with the champion's
  (same first restaurant, overlap of the first ten), and its time off the critical path.

Decision: "challenger better" / "challenger worse" when the interval excludes zero,
"undecided" otherwise; "stop: guardrail" when a canary's guardrail fails, "check logging:
sample ratio mismatch" when the split is off (p < 0.001), which overrides everything else.
Writes report.json, report.md and ctr.png to `--out`.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from mlsys.platform.event_log import (
    CLICKS,
    IMPRESSIONS,
    SHADOW,
    entry_key,
    read_errors,
    read_parts,
    read_stream,
    watermark,
)
from mlsys.platform.online_stats import (
    N_OPT,
    Interval,
    binomial_p,
    first_decision,
    mean_sequence,
    prefix_sequences,
    running_interval,
    sample_ratio_p,
)
from mlsys.platform.rollout import CHALLENGER, CHAMPION, INTERLEAVED, RolloutState

SRM_ALPHA = 0.001
# Where each method's always-valid interval is tightest: about the sample each needs to find a
# 5% lift in clicks (docs/experiments-report.md; the reference kit's figures: ~1,500 requests
# for A/B at fixed n, ~45 for interleaving). Any value keeps the intervals valid.
N_OPT_BY_MODE = {"canary": 2000, "ab": 2000, "interleave": 200, "shadow": 2000}


def load_log(client: Any, name: str, log_dir: str | Path | None) -> list[dict[str, Any]]:
    """A stream's records: the exported parts (if any) and then the stream's newer entries."""
    records: list[dict[str, Any]] = []
    after = (0, 0)
    if log_dir is not None:
        folder = Path(log_dir) / name
        table = read_parts(folder)
        if table is not None:
            records.extend(table.to_pylist())
        after = watermark(folder)
    if client is not None:
        records.extend(r for r in read_stream(client, name) if entry_key(r["stream_id"]) > after)
    return records


def analyse(
    state: RolloutState,
    impressions: list[dict[str, Any]],
    clicks: list[dict[str, Any]],
    shadow: list[dict[str, Any]],
    errors: dict[str, int],
    n_opt: float | None = None,
) -> dict[str, Any]:
    n_opt = n_opt or N_OPT_BY_MODE.get(state.mode, N_OPT)
    mine = [r for r in impressions if r["experiment"] == state.experiment]
    mine.sort(key=lambda r: entry_key(r["stream_id"]))
    by_request: dict[str, Counter[str]] = {}
    for c in clicks:
        if c["experiment"] == state.experiment:
            by_request.setdefault(c["request_id"], Counter())[c["credited"]] += 1
    out: dict[str, Any] = {
        "model": state.model,
        "experiment": state.experiment,
        "mode": state.mode,
        "percent": state.percent,
        "challenger_alias": state.challenger,
        "started": state.started,
        "impressions": len(mine),
        "clicks": sum(sum(c.values()) for c in by_request.values()),
        "models": sorted({r["model"] for r in mine}),
        "n_opt": n_opt,
    }
    if state.mode in ("canary", "ab"):
        out.update(_split(state, mine, by_request, errors, n_opt))
    elif state.mode == "interleave":  # answers outside the sampled share are the champion's
        out.update(_interleaving([r for r in mine if r["arm"] == INTERLEAVED], by_request, n_opt))
    else:
        out.update(_shadow(mine, shadow, by_request))
    return out


def _p95(values: list[float]) -> float | None:
    return float(np.percentile(values, 95)) if values else None


def _split(
    state: RolloutState,
    rows: list[dict[str, Any]],
    by_request: dict[str, Counter[str]],
    errors: dict[str, int],
    n_opt: float,
) -> dict[str, Any]:
    arms: dict[str, Any] = {}
    values = np.asarray(
        [sum(by_request.get(r["request_id"], Counter()).values()) for r in rows], dtype=np.float64
    )
    is_challenger = np.asarray([r["arm"] == CHALLENGER for r in rows], dtype=bool)
    users: dict[str, set[int]] = {CHAMPION: set(), CHALLENGER: set()}
    for arm, mask in ((CHAMPION, ~is_challenger), (CHALLENGER, is_challenger)):
        picked = [r for r, m in zip(rows, mask, strict=True) if m]
        users[arm] = {r["user_id"] for r in picked}
        items = sum(len(r["ids"]) for r in picked)
        failed = errors.get(arm, 0)
        ci = mean_sequence(values[mask], n_opt=n_opt)  # descriptive: the latest interval
        arms[arm] = {
            "impressions": len(picked),
            "users": len(users[arm]),
            "clicks": int(values[mask].sum()),
            "ctr": ci.estimate,
            "ctr_interval": [ci.low, ci.high],
            "item_ctr": float(values[mask].sum() / items) if items else None,
            "p95_server_ms": _p95([r["server_ms"] for r in picked]),
            "errors": failed,
            "error_rate": failed / (len(picked) + failed) if picked or failed else 0.0,
        }
    lift = running_interval(values, is_challenger, n_opt=n_opt)
    srm = sample_ratio_p(
        [len(users[CHAMPION]), len(users[CHALLENGER])], [100 - state.percent, state.percent]
    )
    switched = len(users[CHAMPION] & users[CHALLENGER])
    guard = state.guardrails
    c95, h95 = arms[CHAMPION]["p95_server_ms"], arms[CHALLENGER]["p95_server_ms"]
    guardrails = {
        "p95_ms": {
            "limit": guard.p95_ms,
            "excess": None if c95 is None or h95 is None else h95 - c95,
        },
        "error_rate": {
            "limit": guard.error_rate,
            "excess": arms[CHALLENGER]["error_rate"] - arms[CHAMPION]["error_rate"],
        },
    }
    for g in guardrails.values():
        g["ok"] = g["excess"] is None or g["excess"] <= g["limit"]
    decision = _decide(lift)
    if not all(g["ok"] for g in guardrails.values()):
        decision = "stop: guardrail"
    if srm < SRM_ALPHA:
        decision = "check logging: sample ratio mismatch"
    return {
        "arms": arms,
        "lift": lift.to_dict(),
        "relative_lift": lift.estimate / arms[CHAMPION]["ctr"] if arms[CHAMPION]["ctr"] else None,
        "requests_to_decide": first_decision(values, is_challenger, n_opt=n_opt),
        "srm_p": srm,
        "users_in_both_arms": switched,
        "guardrails": guardrails,
        "decision": decision,
        "_series": (values, is_challenger),
    }


def _decide(interval: Interval) -> str:
    return {1: "challenger better", -1: "challenger worse", 0: "undecided"}[interval.decided]


def _interleaving(
    rows: list[dict[str, Any]], by_request: dict[str, Counter[str]], n_opt: float
) -> dict[str, Any]:
    # An answer where both arms ranked alike (a distance sort, or the same order) cannot show
    # a preference: its teams are a coin flip, so it only adds noise.
    informative = [r for r in rows if not r.get("arms_agree")]
    outcome = np.asarray(
        [
            np.sign(
                by_request.get(r["request_id"], Counter())[CHALLENGER]
                - by_request.get(r["request_id"], Counter())[CHAMPION]
            )
            for r in informative
        ],
        dtype=np.float64,
    )
    wins, losses = int((outcome > 0).sum()), int((outcome < 0).sum())
    preference = running_interval(outcome, n_opt=n_opt)
    # Counted in answers served, the uninformative ones too: they cost traffic as well.
    positions = [i for i, r in enumerate(rows) if not r.get("arms_agree")]
    decided = first_decision(outcome, n_opt=n_opt)
    credited: Counter[str] = Counter()
    for r in rows:
        credited.update(by_request.get(r["request_id"], Counter()))
    first = Counter(r["teams"][:1] for r in rows if r["teams"])
    return {
        "arms": {
            arm: {
                "impressions": len(rows),
                "clicks": credited[arm],
                "ctr": credited[arm] / len(rows) if rows else None,
            }
            for arm in (CHAMPION, CHALLENGER)
        },
        "preference": {
            **preference.to_dict(),
            "challenger_wins": wins,
            "champion_wins": losses,
            "ties": len(informative) - wins - losses,
            "answers_where_arms_agree": len(rows) - len(informative),
            "binomial_p": binomial_p(wins, losses),
        },
        "p95_server_ms": _p95([r["server_ms"] for r in rows]),
        "requests_to_decide": None if decided is None else positions[decided - 1] + 1,
        "srm_p": sample_ratio_p([first.get("a", 0), first.get("b", 0)], [50, 50]),
        "decision": _decide(preference),
        "_series": (outcome, None),
        "_decided_in_series": decided,
    }


def _shadow(
    rows: list[dict[str, Any]], shadow: list[dict[str, Any]], by_request: dict[str, Counter[str]]
) -> dict[str, Any]:
    served = {r["request_id"]: r for r in rows}
    pairs = [(served[s["request_id"]], s) for s in shadow if s["request_id"] in served]
    same_top = [bool(a["ids"][:1] == b["ids"][:1]) for a, b in pairs if a["ids"]]
    overlap = [
        len(set(a["ids"][:10]) & set(b["ids"][:10])) / max(1, min(10, len(a["ids"])))
        for a, b in pairs
        if a["ids"]
    ]
    clicks = np.asarray(
        [sum(by_request.get(r["request_id"], Counter()).values()) for r in rows], dtype=np.float64
    )
    ci = mean_sequence(clicks)
    return {
        "arms": {
            CHAMPION: {
                "impressions": len(rows),
                "clicks": int(clicks.sum()),
                "ctr": ci.estimate,
                "ctr_interval": [ci.low, ci.high],
                "p95_server_ms": _p95([r["server_ms"] for r in rows]),
            }
        },
        "shadow": {
            "scored": len(pairs),
            "coverage": len(pairs) / len(rows) if rows else None,
            "same_first": float(np.mean(same_top)) if same_top else None,
            "overlap_at_10": float(np.mean(overlap)) if overlap else None,
            "p95_shadow_ms": _p95([s["shadow_ms"] for s in shadow]),
        },
        "srm_p": None,
        "decision": "undecided",
    }


def report(
    client: Any,
    state: RolloutState,
    out_dir: str | Path,
    *,
    log_dir: str | Path | None = None,
    n_opt: float | None = None,
) -> dict[str, Any]:
    """Analyse the experiment `state` (`RolloutStore.experiment`) and write its report."""
    result = analyse(
        state,
        load_log(client, IMPRESSIONS, log_dir),
        load_log(client, CLICKS, log_dir),
        load_log(client, SHADOW, log_dir),
        read_errors(client, state.experiment),
        n_opt=n_opt,
    )
    series = result.pop("_series", None)
    decided_at = result.pop("_decided_in_series", result.get("requests_to_decide"))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "report.md").write_text(markdown(result))
    if series is not None and len(series[0]):
        plot(result, series[0], series[1], out / "ctr.png", result["n_opt"], decided_at)
    return result


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Experiment {r['experiment']}",
        "",
        f"Model `{r['model']}`, mode **{r['mode']}** ({r['percent']:g}%), versions "
        f"{', '.join(r['models'])}. {r['impressions']} impressions, {r['clicks']} clicks.",
        "",
        f"**Decision: {r['decision']}**",
        "",
        "| arm | impressions | clicks | CTR (clicks / impression) | always-valid 95% interval |",
        "|---|---|---|---|---|",
    ]
    for name, arm in r.get("arms", {}).items():
        ci = arm.get("ctr_interval")
        interval = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "(credited clicks)"
        ctr = "n/a" if arm.get("ctr") is None else f"{arm['ctr']:.3f}"
        lines.append(f"| {name} | {arm['impressions']} | {arm['clicks']} | {ctr} | {interval} |")
    if "lift" in r:
        lift = r["lift"]
        lines += [
            "",
            f"Lift (challenger - champion): {lift['estimate']:+.3f} clicks per impression, "
            f"always-valid 95% interval [{lift['low']:+.3f}, {lift['high']:+.3f}]; decided after "
            f"{r['requests_to_decide'] or 'not yet'} impressions. Sample ratio p = "
            f"{r['srm_p']:.3g}; users seen in both arms: {r['users_in_both_arms']}.",
            "",
            "| guardrail | challenger minus champion | limit | ok |",
            "|---|---|---|---|",
        ]
        for name, g in r["guardrails"].items():
            excess = "n/a" if g["excess"] is None else f"{g['excess']:+.4g}"
            lines.append(f"| {name} | {excess} | {g['limit']} | {g['ok']} |")
    if "preference" in r:
        p = r["preference"]
        lines += [
            "",
            f"Interleaving: challenger won {p['challenger_wins']}, champion won "
            f"{p['champion_wins']}, ties {p['ties']} ({p['answers_where_arms_agree']} answers "
            f"where both arms ranked alike left out). Preference {p['estimate']:+.3f}, "
            f"always-valid 95% interval [{p['low']:+.3f}, {p['high']:+.3f}], binomial p = "
            f"{p['binomial_p']:.3g}; decided after {r['requests_to_decide'] or 'not yet'} "
            f"answers. First-pick balance p = {r['srm_p']:.3g}.",
        ]
    if "shadow" in r:
        s = r["shadow"]
        lines += ["", "Shadow: " + ", ".join(f"{k} {v}" for k, v in s.items())]
    lines += ["", "![CTR over time](ctr.png)", ""]
    return "\n".join(lines)


def plot(
    r: dict[str, Any],
    values: np.ndarray[Any, Any],
    is_challenger: np.ndarray[Any, Any] | None,
    path: Path,
    n_opt: float,
    decided_at: int | None,
) -> None:
    """Top: each arm's cumulative CTR (or the credited clicks' preference); bottom: the effect
    with its always-valid band, and where it first excluded zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(values)
    points = np.unique(np.linspace(min(10, n), n, min(n, 300)).astype(int))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    if is_challenger is None:
        for sign, arm in ((1, CHALLENGER), (-1, CHAMPION)):
            share = np.cumsum(values == sign) / np.arange(1, n + 1)
            top.plot(points, share[points - 1], lw=1, label=f"share of answers {arm} won")
        top.set_ylabel("share of answers")
        effect = "preference (+1 challenger won, -1 champion won)"
        bottom.set_xlabel("answers where the rankings differ, in arrival order (red: decided)")
    else:
        for arm, mask in ((CHAMPION, ~is_challenger), (CHALLENGER, is_challenger)):
            with np.errstate(invalid="ignore", divide="ignore"):
                cum = np.cumsum(np.where(mask, values, 0.0)) / np.cumsum(mask)
            top.plot(points, cum[points - 1], lw=1, label=arm)
        top.set_ylabel("clicks per impression")
        effect = "lift: challenger - champion"
    estimate, half, _ = prefix_sequences(values, is_challenger, n_opt=n_opt)
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
    top.set_title(f"{r['experiment']}: {r['decision']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
