"""Export a round's adapter from a run into a local folder that plain diffusers loads."""

from __future__ import annotations

from pathlib import Path

from mitune_ray import layout
from mitune_ray.adapters import ADAPTER_FILE, check_adapter
from mitune_ray.errors import MituneError
from mitune_ray.families import FAMILIES
from mitune_ray.manifest import read_run


def export_round(run_uri: str, round_index: int, dest: str) -> Path:
    """Copy round `round_index`'s adapter to `dest` after checking it belongs to the run's model.

    Example:
        >>> export_round("s3://bucket/runs/sd21", 3, "./adapter")  # doctest: +SKIP
    """
    store, manifest = read_run(run_uri)
    entry = manifest.get("stages", {}).get(layout.train_stage(round_index))
    if not entry or entry.get("status") != "committed":
        trained = sorted(n.split("/")[0] for n in manifest.get("stages", {})
                         if layout.stage_kind(n) == "train")
        raise MituneError(f"round {round_index} of {run_uri} has no committed adapter (trained: "
                          f"{', '.join(trained) or 'none'}); pick a trained round")
    out = Path(dest)
    if (out / ADAPTER_FILE).exists():
        raise MituneError(f"{out / ADAPTER_FILE} already exists; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    store.download_dir(entry["adapter"], str(out))
    config = manifest["config"]
    check_adapter(str(out), FAMILIES[config["model"]["family"]], rank=config["train"]["rank"])
    return out
