"""Wire codecs of boundary tensors, and the tag that says which one a record holds.

======== ============ ========== =============== ===============================================
codec    wire dtype   bytes a    bytes a vector  what
                      value      beside values
======== ============ ========== =============== ===============================================
float32  float32      4          0               lossless (:mod:`.float32`)
float16  float16      2          0               11-bit mantissa, range to 65504 (:mod:`.float16`)
int8     int8         1          4 (a scale)     within ``max|x| / 254`` per vector (:mod:`.int8`)
int4     uint8        0.5        4 (a scale)     within ``max|x| / 14``: lossy (:mod:`.int4`)
bfloat16 uint16       2          0               float32's range, 8-bit mantissa (:mod:`.bfloat16`)
======== ============ ========== =============== ===============================================

A record of boundary tensors (``act.i``, ``grad.i``, a generation step's boundary) travels
with its codec's name under :data:`strategies.wire.names.CODEC` in the message's config
record; :func:`tagged_codec` reads it back and refuses a missing, unknown or unexpected tag.
A new codec is one module here and one line in :mod:`.registry`, which also looks them up
(:func:`~.registry.wire_codec`, :func:`~.registry.tagged_codec`).
"""
