"""Who trains how: grouping policies (:mod:`.groupings`), resource allocation, training requirements
and failure reactions.
"""
