"""The one configuration schema (:mod:`.schema`), its loader, the generated reference, and the
strategy's settings built from it.
"""
