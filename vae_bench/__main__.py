from vae_bench.cli import main

main()
