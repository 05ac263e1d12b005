"""Development runs for the lock-in study (docs/lock_in.md): the real_cpu comparison on
DEVELOPMENT seeds 0-2 (screening; ``--set seeds=5`` for the final choice), EI and EEIPU as
the references. Each lever is the same config with one ``bo`` field or method changed
(the exact ``--set`` of each is in docs/lock_in.md). Validation seeds (100 onward) are
never used here."""

import ml_collections

from experiments.configs import real_cpu


def get_config():
    c = real_cpu.get_config()
    c.name = "levers_real_dev"
    c.methods = ["ei", "eeipu"]
    c.seeds = 3
    c.seed_offset = 0
    # Defaults, listed so that each can be overridden with --set bo.<field>=... (and PBGI's own
    # params with --set bo.pbgi.<param>=...)
    c.bo.prefix_pool = "all"
    c.bo.prefix_select = "top_trials"
    c.bo.pbgi = ml_collections.ConfigDict(dict(lambda0=0.1, decay=2.0))
    return c
