"""Training pipelines: the model organisms, trained from scratch on the synthetic benchmark.

Models are adapters (``engine/models``); training is a pipeline, here. :mod:`.organism` trains
``builtin:organism`` and ``builtin:bottleneck`` (:data:`.organism.PRESETS`); :mod:`.data` renders
and tokenises the training rows; :mod:`.heads` holds the training-only read-outs, which read the
model through the one hook mechanism, :func:`priorscope.engine.models.sites.hooks`;
:mod:`.evaluate` measures answers on a held-out set and :mod:`.planted` measures the planted
groups of the bottleneck organism with linear probes.
"""
