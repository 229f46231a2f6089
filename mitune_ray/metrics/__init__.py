"""Evaluation metrics: BLIP-VQA (T2I-CompBench), CLIPScore, HPS v2, and their agreement with MI.

Each metric lives in its own module and imports its heavy dependencies (torch, transformers, Ray)
inside functions, so importing `mitune_ray.metrics` is cheap:

- `nounphrases`: the noun phrases T2I-CompBench's BLIP-VQA asks about (spaCy, or a rule fallback).
- `blipvqa`: BLIP-VQA, p(yes) per noun phrase multiplied over phrases.
- `clipscore`: CLIPScore and HPS v2.
- `openclip`: the one-time converter of HPS v2's OpenCLIP checkpoint into a transformers folder.
- `agreement`: Kendall tau between MI and a metric within prompts, with a bootstrap interval.
"""
