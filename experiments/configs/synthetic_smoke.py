"""The README's default job: the authors' 3-stage synthetic pipeline, 3 seeds,
EI vs the cost-aware baselines vs EEIPU, a reduced budget (minutes on 2 CPU cores).

Fields of a synthetic config (checked by experiments.synthetic.check_config before anything runs;
any of them can be set with --set key=value):

* pipelines: names in pipelines/synthetic.py (synthetic3, synthetic5, synthetic10,
  random<K>_<seed>) or layouts written out, e.g. "levy2[0,5]-hartmann3[-2,2]-beale2[-2,2]@400":
  stages joined by '-', each function[:D][low,high], then @budget
  (pipelines.synthetic.parse_layout).
* methods: registered methods; a '_nomemo' suffix turns memoization off (eeipu_nomemo is the
  paper's Q = 0 ablation).
* seeds, seed_offset: seeds seed_offset .. seed_offset + seeds - 1.
* budget: cost units per run, or None for each pipeline's own budget.
* epsilon, cache_policy, warmup, max_trials, capacity: see eeipu_jax.simulate.run_python.
* bo: other BOConfig fields, e.g. {"n_warmup": 10, "top_q": 5}.
"""

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
