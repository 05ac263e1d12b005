"""Development runs for the lock-in study (docs/lock_in.md): synthetic_paper's pipelines on
DEVELOPMENT seeds 0-4, EEIPU against the memoization-aware Gittins index ``pbgi``. Every
lever is this config with one ``bo`` field changed on the command line (``--set
bo.prefix_select=top_prefixes``, ``--set bo.prefix_pool=post_warmup``, ...; the exact
commands are in docs/lock_in.md). Validation seeds (100 onward) are never used here."""

import ml_collections

from experiments.configs import synthetic_paper


def get_config():
    c = synthetic_paper.get_config()
    c.name = "levers_synth_dev"
    c.methods = ["eeipu", "pbgi"]
    c.seeds = 5
    c.seed_offset = 0
    # Defaults, listed so that each can be overridden with --set bo.<field>=... (and PBGI's own
    # params with --set bo.pbgi.<param>=...)
    c.bo.prefix_pool = "all"
    c.bo.prefix_select = "top_trials"
    c.bo.pbgi = ml_collections.ConfigDict(dict(lambda0=0.1, decay=2.0))
    return c
