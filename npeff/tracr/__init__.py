"""npeff.tracr: TRACR-compiled transformers as ground truth for NPEFF (paper §3.2).

* :mod:`npeff.tracr.compile` — ``npeff-tracr-compile`` (needs the ``tracr`` extra: jax, haiku);
* :mod:`npeff.models.tracr` — :class:`TracrTransformer`, the pure-torch port (``model=tracr``);
* :mod:`npeff.tracr.programs` / :mod:`npeff.tracr.nli_program` — the RASP programs;
* :mod:`npeff.tracr.layers` — the layer check (pseudo-Fisher mass on the concept's layers).

Only ``compile`` imports tracr/jax, and only when it runs.
"""
