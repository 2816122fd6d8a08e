"""npeff.baselines: the methods NPEFF is judged against (paper §3.4 and its later version).

- ``capture``: activations of any named module via a forward hook, streamed to HDF5.
- ``kmeans``: scikit-learn k-means on per-example features, ranked by distance to the centroid.
- ``gradients``: normalized (top-K) per-example gradients of the predicted class (PEF engine).
- ``sae``: a sparse autoencoder (TopK or L1) on activations; coefficients = feature activations.
- ``tcav``: TCAV significance of a component's / cluster's top examples.
- ``fit``: ``fit_baseline(name, features, settings)``, the method dispatch (k-means or SAE).
- ``compare``: NPEFF and the baselines side by side (concepts, TCAV, matching, selectivity).
Every method hands on an examples × components score matrix that ``npeff.analysis`` reads.
"""

BASELINES = ("kmeans", "gradient_kmeans", "sae")

__all__ = ["BASELINES"]
