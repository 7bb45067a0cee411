"""The network and its training rule: activations, the MLP (forward and backward written once), the
parameterizations (νP and the baselines), the normalized-update optimizer, device and dtype choice."""
