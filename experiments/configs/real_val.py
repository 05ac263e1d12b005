"""VALIDATION comparison on the real pipelines (the README's final table): real_cpu's
pipelines, every method including the memoization-aware Gittins index ``pbgi``, on
validation seeds 100-104, which took no part in choosing any default (development seeds
are 0-4: levers_real_dev).

Budgets are sized so that the 120 runs (3 pipelines x 8 methods x 5 seeds) fit about an
hour on the 2-core reference machine with ``--workers 2``: about 25 full trials per run
at each pipeline's measured cost of a full trial (1.2 s stacking, 1.7 s segmentation,
2.1 s language at cpu size; docs/real_pipelines.md), the first 10 of them the shared
warm-up. ``real_cpu`` keeps 100 s per run for longer studies; override here with
``--set budget=...`` and ``--set "budgets={...}"``."""

import ml_collections

from experiments.configs import real_cpu


def get_config():
    c = real_cpu.get_config()
    c.name = "real_val"
    c.methods = ["ei", "eips", "carbo", "ms_carbo", "lambo", "ms_bo", "eeipu", "pbgi"]
    c.seeds = 5
    c.seed_offset = 100
    c.budget = 40.0
    c.budgets = ml_collections.ConfigDict({"stacking": 30.0, "segmentation": 40.0, "language": 50.0})
    return c
