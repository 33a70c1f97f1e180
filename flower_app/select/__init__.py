"""Choosing a model and hyperparameters from a zoo under device constraints: ``python -m flower_app.select``."""
