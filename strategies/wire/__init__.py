"""What crosses the wire: names, chunks, codecs (:mod:`.codecs`), top-k uploads and reply validation."""
