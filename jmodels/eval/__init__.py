"""Evaluation that other code imports: FID (its Inception network and the Fréchet distance), results
folders scored by the judge and the style term, and the held-out halves' paired statistics."""
