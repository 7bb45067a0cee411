"""Infinite-width theory at the Edge of Chaos: the NNGP/NTK recursions and the exact sampler of the forward
norms."""
