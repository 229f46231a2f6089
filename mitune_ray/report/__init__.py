"""What a run produced, for people and for diffusers: read only from the run's folder.

- `page`: `mitune report RUN`, one static HTML page of a run (`write_report`).
- `markup`: the page's HTML and SVG pieces (pure: no I/O).
- `export`: `mitune export RUN --round N DIR`, a round's adapter as a folder diffusers loads.
"""
