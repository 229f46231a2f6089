"""`python -m mitune_ray.bench ARGS...`: the same as `mitune bench ARGS...`."""

import sys

from mitune_ray.bench import main
from mitune_ray.cli import register_plugins
from mitune_ray.errors import MituneError

register_plugins()  # e.g. --shapes-prompts
try:
    sys.exit(main(sys.argv[1:]))
except MituneError as err:
    print(f"mitune bench: error: {err}", file=sys.stderr)
    sys.exit(2)
