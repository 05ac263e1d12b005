"""The real-pipeline comparison on CPU: stacking, segmentation and language
pipelines at their ``cpu`` sizes, the paper's methods, 3 seeds, the same
warm-up and the same wall-clock budget (seconds) for every method."""

import ml_collections


def get_config():
    from eeipu_jax.methods import registered

    c = ml_collections.ConfigDict()
    c.name = "real_cpu"
    # Registered names; pipelines not registered in this checkout are skipped with a warning.
    c.pipelines = ["stacking", "segmentation", "language"]
    c.methods = ["ei", "eips", "carbo", "ms_carbo", "eeipu"] + [m for m in ("lambo", "ms_bo") if m in registered()]
    c.seeds = 3
    c.seed_offset = 0
    c.budget = 100.0  # wall seconds of trials per run (the paper: 500 s for stacking)
    # Per-pipeline budgets (seconds); a pipeline not listed uses `budget`. At cpu size a full
    # trial costs about 1.2 s (stacking), 1.7 s (segmentation) and 2.1 s (language) of one core
    # (docs/real_pipelines.md), so 100 s leaves room for about 40-50 full trials after the
    # 10 warm-up trials.
    c.budgets = ml_collections.ConfigDict({})
    c.n_warmup = 10
    c.epsilon = 0.1
    # top_q: the stage cache keeps exactly the prefixes the optimizer may propose (bo.top_q per depth)
    c.cache_policy = "top_q"
    c.cache_max_bytes = None
    c.stage_timeout = ml_collections.FieldReference(None, field_type=float)
    c.max_trials = ml_collections.FieldReference(None, field_type=int)
    # True: each trial is also charged the optimizer's seconds before it (its ask and the tell
    # before); they are recorded either way (ask_seconds, optimizer_fraction in summary.json).
    c.charge_optimizer = False
    c.bo = ml_collections.ConfigDict()  # other BOConfig fields, e.g. {"top_q": 5}
    return c
