"""Real architecture configs (SD-2.1-base, SD-XL base, SD3.5-medium) for `mitune bench`.

Each JSON file restates a published diffusers denoiser config and scheduler config, with the
conditioning shapes the benchmark feeds it (random embeddings: no text encoder is needed to time
the denoiser). Nothing is downloaded: the benchmark builds random-weight models from these.
"""
