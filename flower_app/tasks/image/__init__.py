"""Image semantic communication: a split network, offline image sets, a noisy channel at the split."""
