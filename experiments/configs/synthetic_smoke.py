"""The README's default job: the authors' 3-stage synthetic pipeline, 3 seeds,
EI vs the cost-aware baselines vs EEIPU, a reduced budget (minutes on 2 CPU cores)."""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.name = "synthetic_smoke"
    c.pipelines = ["synthetic3"]
    c.methods = ["ei", "eips", "carbo", "ms_carbo", "eeipu"]
    c.seeds = 3
    c.seed_offset = 0
    c.budget = 250.0  # the paper's pipeline uses 400; None = the pipeline's own
    c.epsilon = 0.1
    c.cache_policy = "top_q"
    c.warmup = "cost_aware"
    c.max_trials = 200
    c.capacity = 32
    c.bo = ml_collections.ConfigDict(dict(n_warmup=10))
    return c
