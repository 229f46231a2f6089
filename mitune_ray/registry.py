"""Plug-in points: what a testbed adds to the framework by name, without the framework importing it.

Each kind of entry maps a name, as the config spells it, to a "package.module:attribute" string:

- `PROMPT_SOURCES`: a prompt source `NAME:...` in `prompts.train` / `prompts.eval`; the callable
  gets the whole source and the setting it came from (`fn(source, where)`) and returns the texts.
- `SELECTORS`: `generate.select_by: NAME` (besides the built-in mi, mi_filter and random); the callable
  `fn(prompt_text, images) -> scores` ranks a prompt's candidates instead of MI.
- `POOL_METRICS`: `generate.pool_metric: NAME`; the callable `fn(prompt_text, images) -> scores`
  judges every candidate, kept or not (does selection help?).
- `EVAL_METRICS`: `eval.metrics: [NAME]` (besides the built-in mi, blip_vqa, clip_score, hps);
  the callable `fn(prompts, pngs) -> {column: values}` gives per-image values.

Entries are strings and are imported only when used (`load`): a Ray actor runs in another
process, which never ran the registration, so a stage hands it the entry string and the actor
imports it in its constructor. A testbed fills the tables with `register` (ShapesWorld:
`mitune_ray.shapes.register`, which the CLI calls).

Example:
    >>> register(SELECTORS, "brightest", "my_testbed.scores:brightness")  # doctest: +SKIP
    >>> load(entry(SELECTORS, "brightest", where="generate.select_by"))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import re
from typing import Callable

from mitune_ray.errors import MituneError

PROMPT_SOURCES = "prompt source"
SELECTORS = "selector"
POOL_METRICS = "pool metric"
EVAL_METRICS = "evaluation metric"
KINDS = (PROMPT_SOURCES, SELECTORS, POOL_METRICS, EVAL_METRICS)

_ENTRY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_tables: dict[str, dict[str, str]] = {kind: {} for kind in KINDS}
_default_pool_metric: dict[str, str] = {}  # model.path -> pool metric of generate.pool_metric=auto


def register(kind: str, name: str, entry_point: str) -> None:
    """Make `name` mean the callable at `entry_point` ("package.module:attribute") for `kind`;
    registering the same entry again is a no-op, another entry under a taken name an error."""
    if kind not in _tables:
        raise ValueError(f"unknown plug-in kind {kind!r}; use one of {', '.join(KINDS)}")
    if not _ENTRY.match(entry_point):
        raise ValueError(f"entry point {entry_point!r} is not 'package.module:attribute'")
    taken = _tables[kind].get(name)
    if taken is not None and taken != entry_point:
        raise ValueError(f"{kind} {name!r} is registered already (as {taken})")
    _tables[kind][name] = entry_point


def names(kind: str) -> tuple[str, ...]:
    """The registered names of `kind`, sorted."""
    return tuple(sorted(_tables[kind]))


def find(kind: str, name: str) -> str | None:
    """The entry point registered as `name` for `kind` (None: not registered)."""
    return _tables[kind].get(name)


def entry(kind: str, name: str, *, where: str) -> str:
    """The entry point registered as `name`; a one-line error naming the setting otherwise."""
    found = find(kind, name)
    if found is None:
        known = ", ".join(names(kind)) or "none"
        raise MituneError(f"{where}={name} names no registered {kind} (registered: {known}); "
                          "a testbed registers its own, e.g. mitune_ray.shapes.register()")
    return found


def load(entry_point: str) -> Callable:
    """Import the callable an entry point names (in whichever process calls this)."""
    module, _, attribute = entry_point.partition(":")
    return getattr(importlib.import_module(module), attribute)


def register_default_pool_metric(model_path: str, name: str) -> None:
    """`generate.pool_metric=auto` means `name` for runs of the model at `model_path`."""
    _default_pool_metric[model_path] = name


def default_pool_metric(model_path: str) -> str:
    """What `generate.pool_metric=auto` resolves to for `model_path` ("none" unless registered)."""
    return _default_pool_metric.get(model_path, "none")
