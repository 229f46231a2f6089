"""Research code and results beside the package: not shipped in the wheel, run from the repo root."""
