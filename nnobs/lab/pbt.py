"""Population-based training's decisions: who takes whose checkpoint at the end of each interval, and with which
eta. Pure: the controller (nnobs.lab.pbt_controller) reads the members and carries the decisions out.

As Ray Tune's PopulationBasedTraining has it: every interval, the members in the bottom quantile by the metric take a
top member's checkpoint in place, and its eta, multiplied by one of the perturbation factors or, with the resample
probability, drawn afresh from the range. The draws of a round come from a generator seeded by the population's seed
and the round alone: the same scores give the same decisions, whenever and however often they are made.
"""

from __future__ import annotations

import math
import random

from nnobs.protocol.commands import MAX_ETA
from nnobs.protocol.errors import NnobsError
from nnobs.protocol.population import Exploit, Population

SCORE_SHARE = 0.25  # the training loss is scored by its mean over the interval's last quarter of batches


def parse_range(text: str) -> tuple[float, float]:
    """ "0.01..1" as (0.01, 1.0): the etas a population draws from, log-uniformly."""
    low_text, dots, high_text = text.partition("..")
    try:
        low, high = float(low_text), float(high_text)
    except ValueError:
        low = high = math.nan
    if not dots or not (0 < low < high <= MAX_ETA):
        raise NnobsError(
            f"--eta {text!r} refused: a population takes a range LO..HI of etas, 0 < LO < HI <= {MAX_ETA:g}, e.g. 0.01..1"
        )
    return low, high


def initial_etas(count: int, eta_range: tuple[float, float], seed: int) -> list[float]:
    """count etas drawn log-uniformly from the range, by the seed."""
    draw = random.Random(f"pbt-start-{seed}")
    return [_log_uniform(draw, eta_range) for _ in range(count)]


def _log_uniform(draw: random.Random, eta_range: tuple[float, float]) -> float:
    low, high = eta_range
    return float(f"{math.exp(draw.uniform(math.log(low), math.log(high))):.4g}")


def decide(
    population: Population,
    round_index: int,
    scores: dict[str, float | None],
    checkpoints: dict[str, tuple[int, float]],
) -> list[Exploit]:
    """The exploits of a round: scores by member (lower is better; None or NaN ranks last) and each member's
    checkpoint (batch, eta). Members absent from scores (stopped by hand) take part in nothing."""
    ranked = sorted(scores, key=lambda m: (_rank_value(scores[m]), population.members.index(m)))
    scored = sum(math.isfinite(_rank_value(scores[m])) for m in ranked)
    count = math.ceil(len(ranked) * population.quantile)
    # The bottom and the top never overlap, and a donor has a score: members without one (no metric logged, a
    # diverged net) rank last, and take a checkpoint if they are in the bottom, but never give one.
    count = min(count, len(ranked) // 2, scored)
    if count < 1:
        return []
    top, bottom = ranked[:count], ranked[-count:]
    draw = random.Random(f"pbt-{population.seed}-{round_index}")
    exploits = []
    for member in bottom:
        donor = draw.choice(top)
        batch, donor_eta = checkpoints[donor]
        if draw.random() < population.resample:
            eta, how = _log_uniform(draw, population.eta_range), "resampled"
        else:
            factor = draw.choice(population.factors)
            eta, how = min(MAX_ETA, float(f"{donor_eta * factor:.6g}")), f"x{factor:g}"
        exploits.append(Exploit(member, donor, batch, checkpoints[member][1], eta, how))
    return exploits


def _rank_value(score: float | None) -> float:
    return math.inf if score is None or not math.isfinite(score) else score
