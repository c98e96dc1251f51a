from vae_bench.command import main

main()
