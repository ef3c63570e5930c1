"""The model package: the networks, the diffusion math and samplers, data, generation, scoring and evaluation.

Importing it configures Jittor's environment for this machine before Jittor's first import
(`jmodels.runtime.boot`: set-up's CUDA route on a GPU, the CPU otherwise), so that its modules and the
entry scripts import Jittor at their tops. It sets no Jittor flags: seed and precision are set in each
entry's `main` by `jmodels.runtime.init_jittor`.
"""
from .runtime import boot

boot()
