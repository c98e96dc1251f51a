"""What the benchmarks in scripts/ share: the machine description and timing tools (machine.py),
driving vae-bench's trainer epoch by epoch (trainer_loop.py), and the reference loops each
benchmark sets the trainer against (examples_mlp.py, lean_conv.py).

The benchmarks themselves are one script per question:

    scripts/bench.py               the MNIST MLP: trainer vs pytorch/examples' loop vs FLOP bound
    scripts/bench_conv.py          the CIFAR-10 conv model: trainer vs a lean loop vs FLOP bound
    scripts/bench_iwae.py          what IWAE k=1000 costs on a trained run (seconds, peak RSS)
    scripts/bench_diagnostics.py   what the default diagnostics cost per epoch
"""
