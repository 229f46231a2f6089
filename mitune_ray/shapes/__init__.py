"""ShapesWorld: a synthetic text-to-image world with an exact checker and a small trained model.

- `world`: scenes, rendering, the held-out split.
- `prompts`: templates, the exact prompt parser, train / held-out prompt lists.
- `checker`: scores an image against a prompt's facts from the pixels.
- `model` / `train`: the small diffusers text-to-image model and its CPU training recipe.
"""
