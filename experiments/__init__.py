"""Issue 17's experiment: OrthoSoftmax's subnets against individually trained models, other
criteria, granularities and selectors (`python -m experiments.run`, `experiments.report`)."""
