"""Weight files: import a public Stable Diffusion VAE, average checkpoints of a run."""
