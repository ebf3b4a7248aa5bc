"""
The night's reduce science: the workers' candidates become detections on the sky, objects and
alerts, as functions of Arrow tables and the store (no Redis, no torch; Ray only to run the
per-exposure step as a task).

- `skyblink.reduce.measurement`: windowed centroids and trails measured on the difference stamps.
- `skyblink.reduce.association`: the fields' reference catalogs (static sources) and the sky
  cross-matches (duplicates, reference sources, objects).
- `skyblink.reduce.linking`: moving-object tracklets across a field's exposures, and their predictions.
- `skyblink.reduce.steps`: the steps in order (locate, merge, match, link, associate, decide,
  build alerts) and their chains, per exposure (`static_detections`) and per night
  (`night_detections`).
- `skyblink.reduce.exposure_task`: the per-exposure step (`reduce_exposure`: one exposure's
  candidates in, its detections out, the store by URL), which the night run runs in Ray tasks.

The driver (`skyblink.cluster`) calls them; they know nothing of the cluster.
"""
