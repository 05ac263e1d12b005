"""VALIDATION comparison on the synthetic pipelines: synthetic_paper's 3-, 5- and 10-stage
pipelines at their budgets, every method including the memoization-aware Gittins index
``pbgi``, on 10 validation seeds 100-109, which took no part in choosing any default
(development seeds are 0-4: levers_synth_dev)."""

from experiments.configs import synthetic_paper


def get_config():
    c = synthetic_paper.get_config()
    c.name = "synthetic_val"
    c.methods = ["ei", "eips", "carbo", "ms_carbo", "lambo", "ms_bo", "eeipu", "pbgi"]
    c.seeds = 10
    c.seed_offset = 100
    return c
