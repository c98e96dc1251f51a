"""vae-bench's Hydra launcher plugin: Hydra only instantiates launchers from `hydra_plugins`."""
