"""The real-pipeline comparison at CPU size: every method, 3 seeds, the same wall-clock budget.

Warm-up: 5 random trials (the paper used 10) so that a 90-second budget on a 2-core
machine leaves room for BO iterations; set ``--set n_warmup=10 --set budget=300.0``
for the paper's proportions.
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "real_cpu"
    c.pipelines = ["stacking"]  # segmentation and language join when registered
    c.methods = ["ei", "eips", "carbo", "ms_carbo", "lambo", "ms_bo", "eeipu"]
    c.seeds = 3
    c.seed_offset = 0
    c.budget = 90.0  # wall seconds per run
    c.n_warmup = 5
    c.cache_policy = "top_q"
    c.stage_timeout = None
    return c
