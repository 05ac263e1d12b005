"""VALIDATION comparison on the real pipelines (the README's final table): real_cpu's
pipelines and budget, every method including the memoization-aware Gittins index
``pbgi``, on validation seeds 100-104, which took no part in choosing any default
(development seeds are 0-4: levers_real_dev). ``budget`` (wall seconds of trials per run)
may be overridden with ``--set budget=...``.

120 runs (3 pipelines x 8 methods x 5 seeds); at 100 s a development run took about 160 s
end to end on the shared 2-core machine (12 levers_real_dev runs in 32 min, ``--workers 1``),
so about 5.3 h with one worker (docs/lock_in.md)."""

from experiments.configs import real_cpu


def get_config():
    c = real_cpu.get_config()
    c.name = "real_val"
    c.methods = ["ei", "eips", "carbo", "ms_carbo", "lambo", "ms_bo", "eeipu", "pbgi"]
    c.seeds = 5
    c.seed_offset = 100
    c.budget = 100.0
    return c
