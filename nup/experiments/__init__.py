"""One module per notebook: its parameter schema, ``run(params) -> frames`` and ``claims(frames) -> verdicts``."""
