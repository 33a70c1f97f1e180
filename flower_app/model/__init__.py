"""The split transformer with a prefix per attention layer, its loading, the local-mode emulator and
the part a device holds.
"""
