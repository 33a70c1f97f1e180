"""Labelled samples: files and offline sets, partitions, a node's own data cached on its disk, the job's setup."""
