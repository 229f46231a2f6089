"""The pieces of the Ray Train + DeepSpeed stage (`mitune_ray.stages.train` is its entry point):
checkpoint (safetensors DeepSpeed checkpoints), data (the selected set), loss, loop (the worker)."""
