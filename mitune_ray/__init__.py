"""mitune_ray: MI-TUNE self-supervised text-to-image alignment at cluster scale, on Ray."""

__version__ = "0.1.0"
