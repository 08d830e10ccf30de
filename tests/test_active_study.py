"""The study's active-learning simulation (``nnUNetv2_sss_study --active-learning``, issue 28 part 3), unit: the
plan and its jobs, the options refused before any run, and the statistics against hand computations (area
under the learning curve, paired differences to both random baselines and to supervised + random, annotation
cost). The simulation through the real commands (resume, the queries, no hidden label in any training):
``tests/test_study_executors.py``."""
from __future__ import annotations

from argparse import Namespace
from types import SimpleNamespace

import numpy as np
import pytest

from nnunetv2_sss.errors import UserValueError
from nnunetv2_sss.evaluation.study.active_summary import active_learning_markdown, area_under_curve, curve_by_seed
from nnunetv2_sss.evaluation.study.jobs import jobs_to_do, study_jobs
from nnunetv2_sss.evaluation.study.plan import ActiveLearning, Run, plan_runs
from nnunetv2_sss.evaluation.study.runner import active_learning

A, B = "nnUNetTrainerPlugin", "nnUNetTrainerMeanTeacher"


def test_plan_rounds_groups_and_jobs():
    active = ActiveLearning(("random", "entropy"), budget=2, rounds=2, initial=2)
    runs = plan_runs([A, B], [2, 4], [0, 1], A, ceiling=False, active=active)
    assert len(runs) == 2 * (4 + 2 * 2 * 2)  # per seed: 2 trainers x 2 counts, then 2 rounds x 2 strategies x 2 rows
    rounds = runs[4:12]
    assert [(r.trainer, r.strategy, r.round, r.labeled) for r in rounds[:4]] == [
        (A, "random", 1, 4), (B, "random", 1, 4), (A, "entropy", 1, 4), (B, "entropy", 1, 4)]
    assert rounds[4].group == f"n2_s0_random_b2_r2_{A}" and rounds[4].labeled == 6
    assert rounds[4].previous_round() == rounds[0] and rounds[0].previous_round() == Run(A, 2, 0)
    jobs = {job.name: job for job in study_jobs(SimpleNamespace(runs=runs, teachers={}))}
    assert jobs[f"n2_s0_random_b2_r1_{A}"].after == (f"n2_s0_{A}",)  # round 0: the ordinary row
    assert jobs[f"n2_s0_random_b2_r2_{A}"].after == (f"n2_s0_random_b2_r1_{A}",)
    assert jobs[f"n2_s1_entropy_b2_r2_{B}"].label == f"{B} + entropy, round 2 (6 labeled), seed 1"
    todo, stopped = jobs_to_do(list(jobs.values()), {f"n2_s0_{A}", f"n2_s0_{B}"}, max_runs=None)
    assert len(todo) == 22 and not stopped


def _options(**given) -> Namespace:
    return Namespace(**{"active_learning": None, "budget": None, "al_rounds": None, "disable_tta": False, **given})


def test_options_refused_with_one_message():
    assert active_learning(_options(), [2]) is None
    assert active_learning(_options(active_learning=["random", "entropy"], budget=2, al_rounds=3), [4, 2]) == \
        ActiveLearning(("random", "entropy"), 2, 3, 2)  # from the smallest count
    for given, message in (
            ({"budget": 2}, "--budget: an option of --active-learning"),
            ({"active_learning": ["entropy", "nosuch"], "budget": 1, "al_rounds": 1},
             "--active-learning nosuch: not a strategy; one of diverse-entropy, entropy, foreground-random, "
             "mutual-information, random"),
            ({"active_learning": ["random", "random"], "budget": 1, "al_rounds": 1},
             "--active-learning random random: a strategy is listed twice"),
            ({"active_learning": ["random"], "al_rounds": 1}, "--active-learning needs --budget"),
            ({"active_learning": ["random"], "budget": 1, "al_rounds": 0}, "--al-rounds 0: must be >= 1"),
            ({"active_learning": ["random", "mutual-information"], "budget": 1, "al_rounds": 1, "disable_tta": True},
             "--active-learning mutual-information needs several predictions of each scan")):
        with pytest.raises(UserValueError) as error:
            active_learning(_options(**given), [2])
        assert str(error.value).startswith(message), str(error.value)


# hand values: trainers A and B from 2 labeled (round 0), budget 2, 2 rounds -> 2, 4, 6 labeled; the area of
# equally spaced rounds is (y0 + 2 y1 + y2) / 4
ROUND_0 = {0: 40.0, 1: 30.0, 2: 60.0}
ROUNDS = {"random": {0: (50.0, 60.0), 1: (30.0, 50.0), 2: (62.0, 64.0)},             # areas 50, 35, 62
          "foreground-random": {0: (52.0, 58.0), 1: (36.0, 44.0), 2: (61.0, 66.0)},  # 50.5, 36.5, 62
          "entropy": {0: (44.0, 70.0), 1: (40.0, 50.0), 2: (70.0, 62.0)}}            # 49.5, 40, 65.5
FOREGROUND = {0: (1200, 800), 1: (1000, 1000), 2: (1600, 400)}  # revealed foreground voxels per round


def _rows() -> list:
    rows = []
    for trainer, shift in ((A, 0.0), (B, 1.0)):  # B: every Dice of A + 1
        for seed, dice in ROUND_0.items():
            rows.append({"trainer": trainer, "num_labeled": 2, "seed": seed, "dice_mean": dice + shift})
        for strategy, by_seed in ROUNDS.items():
            for seed, values in by_seed.items():
                for index, dice in enumerate(values):
                    rows.append({"trainer": trainer, "num_labeled": 4 + 2 * index, "seed": seed,
                                 "dice_mean": dice + shift, "strategy": strategy, "round": index + 1,
                                 "revealed_voxels": 64000, "revealed_foreground_voxels": FOREGROUND[seed][index],
                                 "query_seconds": 10.0 + index, "scoring_seconds_per_scan": 0.5 + index})
    rows.append({"trainer": A, "num_labeled": 4, "seed": 0, "dice_mean": 99.0})  # an ordinary row of 4: not a round
    return rows


def test_area_under_the_learning_curve_by_hand():
    assert area_under_curve({2: 40.0, 4: 50.0, 6: 60.0}, [2, 4, 6]) == 50.0
    assert area_under_curve({1: 10.0, 2: 20.0, 5: 50.0}, [1, 2, 5]) == pytest.approx((15 + 105) / 4)  # uneven steps
    assert np.isnan(area_under_curve({2: 40.0, 4: 50.0}, [2, 4, 6]))  # a round missing
    assert curve_by_seed(_rows(), A, "entropy", 2)[2] == {2: 60.0, 4: 70.0, 6: 62.0}


def test_summary_tables_by_hand():
    text = "\n".join(active_learning_markdown(_rows(), [A, B], ActiveLearning(tuple(ROUNDS), 2, 2, 2), A))
    # Dice per round and areas: entropy's areas 49.5, 40, 65.5
    assert "| entropy | 43.3 ± 15.3 (n=3) | 51.3 ± 16.3 (n=3) | 60.7 ± 10.1 (n=3) | 51.7 ± 12.9 (n=3) |" in text
    # entropy - random: areas -0.5, +5, +3.5; final +10, 0, -2 (a tie is no win)
    # entropy - foreground-random: areas -1, +3.5, +3.5; final +12, +6, -4
    assert f"| {A} | entropy | +2.7 ± 2.8 (2/3) | +2.0 ± 2.6 (2/3) | +2.7 ± 6.4 (1/3) | +4.7 ± 8.1 (2/3) |" in text
    # random - foreground-random: areas -0.5, -1.5, 0; final +2, +6, -2
    assert f"| {A} | random | – | -0.7 ± 0.8 (0/3) | – | +2.0 ± 4.0 (2/3) |" in text
    # B + S - A + random: every point of B is A's + 1, so areas (S - random) + 1: random +1, +1, +1;
    # foreground-random +1.5, +2.5, +1; entropy +0.5, +6, +4.5
    assert f"| {B} | +1.0 ± 0.0 (3/3) | +1.7 ± 0.8 (3/3) | +3.7 ± 2.8 (3/3) |" in text
    assert f"| {A} | – | +0.7 ± 0.8 (2/3) | +2.7 ± 2.8 (2/3) |" in text
    # cost: 2 rounds of 2 scans, 64000 voxels per round, 2000 foreground voxels per seed (1.5625 %); per round
    # 0.5 and 1.5 s per scored scan, queries of 10 and 11 s
    assert f"| {A} | entropy | 4 | 128 ± 0 (n=3) | 2.0 ± 0.0 (n=3) | 1.56 ± 0.00 (n=3) | 1.00 ± 0.55 (n=6) | " \
           f"10.5 ± 0.5 (n=6) |" in text
