"""A quick look at the real-pipeline comparison: stacking only, EI vs EEIPU,
one seed, 30 s budget, 5 warm-up trials (a deviation from the paper's 10)."""

from experiments.configs import real_cpu


def get_config():
    c = real_cpu.get_config()
    c.name = "real_smoke"
    c.pipelines = ["stacking"]
    c.methods = ["ei", "eeipu"]
    c.seeds = 1
    c.budget = 30.0
    c.n_warmup = 5
    return c
