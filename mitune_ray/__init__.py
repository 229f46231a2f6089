"""mitune_ray: MI-TUNE self-supervised text-to-image alignment at cluster scale, on Ray.

The Python API (`mitune_ray.api`, docs/api.md) is re-exported here and imported on first use, so
`import mitune_ray` stays light (no torch, Ray or diffusers):

    >>> import mitune_ray as mt
    >>> mt.run_config("jobs/sd21_base_compbench.yaml", {"run.rounds": 1})  # doctest: +SKIP
"""

from importlib import import_module

__version__ = "0.1.0"

API = ("PairScore", "RunResult", "export_round", "load_run_config", "load_scorer", "run_config",
       "score_pairs")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:  # PEP 562: the API module is imported on first use
        return getattr(import_module("mitune_ray.api"), name)
    raise AttributeError(f"module 'mitune_ray' has no attribute {name!r}")
