"""The Flower app: the ClientApp and ServerApp, the split model, the tasks, data, deployment and selection.

Imports :mod:`strategies`, never the other way round."""
