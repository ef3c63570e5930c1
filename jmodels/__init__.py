"""The model package: layers, VAE, UNet, conditioning, diffusion math, samplers, EMA, checkpoints.

Importing it sets no global Jittor flags; entry scripts call `jmodels.runtime.init_jittor()`
before anything else so that the environment is right when Jittor is first imported.
"""
