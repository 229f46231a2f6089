"""ShapesWorld research tools (`python -m research.shapes.sweep`, `python -m research.shapes.probe`)
and their results (`results/`); the world, checker, model and bench they use live in
`mitune_ray.shapes`."""
