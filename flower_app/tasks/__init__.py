"""Task families, one module each, registered in :mod:`.registry`: text (classification, causal LM) and
image semantic communication.
"""
