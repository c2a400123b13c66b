"""The model organism: a tiny Qwen2.5-VL trained by priorscope on its synthetic benchmark.

``checkpoint/`` holds the shipped weights, tokenizer, processor config, model card and its
measured accuracies (``metrics.json``); :mod:`.train` reproduces it and :mod:`.evaluate`
measures it.
"""
