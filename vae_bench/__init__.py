"""vae-bench: does the VAE encoder's σ-parameterization matter, and when?"""

import os

# PyTorch's CPU threads run on libgomp, whose idle threads spin at every barrier before they
# sleep. On a shared, loaded machine a spinning thread holds the core its partner needs: a conv
# training step on 2 threads took 3.7-5.5 s spinning and 0.27-0.40 s with PASSIVE at a load of
# 13-17 on 2 cores (scripts/bench_threads.py). The wait policy changes no result: same threads,
# same split of the work. libgomp reads it once, when torch is first imported, so it is set
# here, before any vae-bench module imports torch; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
