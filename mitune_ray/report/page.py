"""`mitune report RUN_URI`: one static HTML page that shows what a run did.

    <out>/index.html      the page: tables, inline SVG plots (matplotlib), a few lines of inline
                          JS, no CDN
    <out>/images/*.png    gallery and base-versus-tuned images, linked relatively

The page reads only what the run wrote (manifest.json; each round's scores with every
candidate's MI, gallery shards and training metrics table; the evaluation scores and images),
renders whatever exists and says what is missing, so it works on a run in progress or one without
evaluation. It needs no server: open it from disk or S3.

Evaluation means carry 95% intervals: a percentile bootstrap over prompts (the independent
units; each prompt's images averaged first), and for a round's change from the base model over
the paired per-prompt differences (same prompts, same seeds).

Example:
    $ mitune report s3://bucket/runs/sd21 --out /tmp/sd21-report
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import defaultdict

import pyarrow.parquet as pq

from mitune_ray import layout
from mitune_ray.layout import BASE_VERSION as BASE
from mitune_ray.layout import version_label
from mitune_ray.manifest import LEASE_TTL_S, read_run
from mitune_ray.metrics.agreement import bootstrap_mean_interval
from mitune_ray.report import plots
from mitune_ray.report.markup import Html, esc, fmt, missing, page, signed, table
from mitune_ray.storage import Store
from mitune_ray.training.tracking import read_table

GALLERY_PROMPTS = 4  # per round: enough to see the spread of MI, short enough to scroll
PAIR_PROMPTS = 8  # prompts shown base versus every tuned round
LEVEL = 0.95  # evaluation intervals

# Readable names of the keys the stages record (anything else: "some_key" -> "Some key").
LABELS = {
    # prompts (prompts.CorpusReport)
    "read": "Read", "empty": "Empty", "duplicate": "Duplicates",
    "undecodable_skipped": "Undecodable (skipped)", "truncated": "Truncated (too long)",
    "kept": "Kept", "train": "Training split", "val": "Validation split",
    "split_name": "Split", "sampled_from": "Sampled from",
    # generation
    "prompts": "Prompts", "rows": "Selected images", "candidates": "Candidates",
    "mi_mean": "Selected MI, mean", "mi_std": "Selected MI, sd",
    "generate_seconds": "Generation (s)", "actors": "Actors",
    # training (stages.train.TrainResult)
    "adapter": "Adapter", "steps": "Steps", "initial_loss": "Fixed-batch loss before",
    "final_loss": "Fixed-batch loss after", "exported_step": "Exported step",
    "export_reason": "Why that step", "samples_per_s": "Samples/s",
    "resumed_from": "Resumed from step",
    # evaluation metrics
    "mi": "MI", "blip_vqa": "BLIP-VQA", "clip_score": "CLIPScore", "hps": "HPS v2",
    "shapes_correct": "Fully correct (checker)", "shapes_fraction": "Facts correct (checker)",
}
CORPORA = {layout.TRAIN_SPLIT: "tuning (prompts.train)", layout.EVAL_SPLIT: "evaluation (prompts.eval)"}


def label(key: str) -> str:
    """A key as a reader sees it: `LABELS`, else its words capitalised.

        >>> label("undecodable_skipped"), label("some_new_key")
        ('Undecodable (skipped)', 'Some new key')
    """
    return LABELS.get(key) or key.replace("_", " ").capitalize()


def _ordered(keys) -> list[str]:
    """Keys in the order `LABELS` lists them (the order a reader follows), others after."""
    order = {k: i for i, k in enumerate(LABELS)}
    return sorted(dict.fromkeys(keys), key=lambda k: order.get(k, len(order)))


def write_report(run_uri: str, out: str | None = None) -> str:
    """Write `index.html` and its `images/` for the run at `run_uri`; return the page's URI.

    Args:
        run_uri: the run folder, local or s3://.
        out: where to write the report (default `<run_uri>/report`), local or s3://.

    Example:
        >>> write_report("s3://bucket/runs/demo", "/tmp/demo-report")  # doctest: +SKIP
        '/tmp/demo-report/index.html'
    """
    run, manifest = read_run(run_uri)
    dest = Store(out) if out else run.child(layout.REPORT)
    p = _Page(run, manifest, dest)
    body = "".join(section() for section in (
        p.summary, p.stages, p.corpus, p.generation, p.training, p.evaluation, p.galleries,
        p.pairs, p.config))
    dest.write_bytes("index.html", page(f"MI-TUNE run {run.uri}", body).encode("utf-8"))
    return dest.child_uri("index.html")


def _safe(name: str) -> str:
    """A file-name-safe form of a prompt id (ids are hex; anything else is hashed)."""
    if re.fullmatch(r"[A-Za-z0-9_-]{1,40}", name):
        return name
    return "h" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]


def _scalars(entry: dict) -> dict:
    """The scalar fields of a manifest entry (what fits in a table cell)."""
    return {k: v for k, v in entry.items()
            if isinstance(v, (int, float, str, bool)) and k not in ("status", "committed_at")}


def _read(store: Store, paths: list[str], **kwargs):
    return pq.read_table([store.path(p) for p in paths], filesystem=store.filesystem, **kwargs)


class _Page:
    """The sections of the page, each a method returning HTML, in reading order."""

    def __init__(self, run: Store, manifest: dict, dest: Store):
        self.run, self.m, self.dest = run, manifest, dest
        self.cfg = manifest.get("config") or {}
        self.st = manifest.get("stages") or {}
        seen = {r for r in map(layout.round_of, self.st) if r is not None}
        configured = int(self.cfg.get("run", {}).get("rounds") or 0)
        self.rounds = list(range(1, max([configured, *seen]) + 1))
        self.evaluates = bool(self.cfg.get("run", {}).get("evaluate")) or any(
            layout.evaluate_stage(v) in self.st for v in self._versions())

    def _versions(self) -> list[str]:
        """The version folders an evaluation of this run names: the base model's, then rounds."""
        return [BASE] + [layout.round_dir(r) for r in self.rounds]

    def _entry(self, name: str) -> dict | None:
        entry = self.st.get(name)
        return entry if entry and entry.get("status") == "committed" else None

    def _image(self, name: str, png: bytes, alt: str) -> Html:
        rel = f"images/{name}.png"
        self.dest.write_bytes(rel, png)
        return Html(f'<img src="{rel}" alt="{esc(alt)}" width="160" height="160">')

    # -- the run and its stages -----------------------------------------------------------------

    def summary(self) -> str:
        lease = self.m.get("lease")
        trained = sum(1 for r in self.rounds if self._entry(layout.train_stage(r)))
        if lease and time.time() - lease.get("heartbeat", 0) < LEASE_TTL_S:
            state = f"in progress (driver on {lease.get('host')}, pid {lease.get('pid')})"
        elif all(self._entry(name) for name in self._expected()):
            state = "complete"
        else:
            state = "incomplete (no driver running; rerun `mitune run` to resume)"
        created = self.m.get("created")
        model, gen = self.cfg.get("model", {}), self.cfg.get("generate", {})
        rows = [("Run URI", self.run.uri), ("State", state),
                ("Code version", self.m.get("code_version")),
                ("Config fingerprint", self.m.get("fingerprint")),
                ("Created", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(created))
                 if isinstance(created, (int, float)) else created),
                ("Model", model.get("path")), ("Family", model.get("family")),
                ("Rounds", f"{trained} trained of {len(self.rounds)}"),
                ("Candidates per prompt", gen.get("candidates")),
                ("Kept per prompt", gen.get("keep"))]
        return "<h1>MI-TUNE run report</h1>" + table(None, rows, cls="summary")

    def _expected(self) -> list[str]:
        """The stages a finished run of this config has committed, in the driver's order."""
        names = [layout.PROMPTS_STAGE] + ([layout.evaluate_stage(BASE)] if self.evaluates else [])
        for r in self.rounds:
            names += [layout.generate_stage(r), layout.train_stage(r)]
            names += [layout.evaluate_stage(layout.round_dir(r))] if self.evaluates else []
        return names

    def stages(self) -> str:
        expected = self._expected()
        names = expected + sorted(set(self.st) - set(expected))
        rows = []
        for name in names:
            entry = self.st.get(name) or {}
            status = entry.get("status", "not run")
            rows.append([name, Html(f'<span class="status {esc(status.replace(" ", "-"))}">'
                                    f"{esc(status)}</span>"), entry.get("seconds"),
                         self._detail(name, entry)])
        return "<h2>Stages</h2>" + table(["Stage", "Status", "Seconds", "Detail"], rows)

    @staticmethod
    def _detail(name: str, entry: dict) -> str:
        if not entry:
            return ""
        kind = layout.stage_kind(name)
        if kind == "prompts":
            t = entry.get("train", {})
            return f"{t.get('kept')} prompts kept ({t.get('train')} training, {t.get('val')} validation)"
        if kind == "generate":
            return (f"{entry.get('rows')} selected of {entry.get('candidates')} candidates, "
                    f"selected MI {fmt(entry.get('mi_mean'))} ± {fmt(entry.get('mi_std'))}")
        if kind == "train":
            result = entry.get("result", {})
            return (f"{fmt(result.get('steps'))} steps, fixed-batch loss "
                    f"{fmt(result.get('initial_loss'))} → {fmt(result.get('final_loss'))}, "
                    f"exported step {fmt(result.get('exported_step'))}")
        summary = entry.get("summary")
        if isinstance(summary, dict):
            return f"{summary.get('images')} images of {summary.get('prompts')} prompts"
        return ", ".join(f"{label(k)} {fmt(v)}" for k, v in _scalars(entry).items() if k != "seconds")

    def corpus(self) -> str:
        entry = self._entry(layout.PROMPTS_STAGE)
        if not entry:
            return "<h2>Prompts</h2>" + missing("the prompts stage has not been committed")
        splits = {k: _scalars(v) for k, v in entry.items()
                  if k in (layout.TRAIN_SPLIT, layout.EVAL_SPLIT)}
        keys = _ordered(k for v in splits.values() for k in v)
        rows = [[CORPORA.get(name, name), *(v.get(k) for k in keys)] for name, v in splits.items()]
        return "<h2>Prompts</h2>" + table(["Corpus", *map(label, keys)], rows)

    # -- generation and training ----------------------------------------------------------------

    def _mi_axis(self) -> str:
        return "MI (nats)" if self.cfg.get("mi", {}).get("reduction", "integral") == "integral" else "MI"

    def _candidate_mi(self, r: int) -> tuple[list[float], list[float], int] | None:
        """Round r's MI of every candidate and of the selected ones, and how many were pruned
        (None: no scores yet). The generation stage writes a row per prompt with every
        candidate's MI."""
        parts = self.run.list(f"{layout.round_dir(r)}/{layout.SCORES}", suffix=".parquet")
        if not parts:
            return None
        t = _read(self.run, parts, columns=["mi", "selected"])
        every, chosen, pruned = [], [], 0
        for mis, sel in zip(t.column("mi").to_pylist(), t.column("selected").to_pylist()):
            mis = [v if v is not None else math.nan for v in mis]
            every += [v for v in mis if math.isfinite(v)]
            pruned += sum(1 for v in mis if not math.isfinite(v))
            chosen += [mis[i] for i in sel or [] if i < len(mis) and math.isfinite(mis[i])]
        return every, chosen, pruned

    def generation(self) -> str:
        out, rows = ["<h2>Generation</h2>"], []
        keys = ("prompts", "rows", "candidates", "mi_mean", "mi_std", "generate_seconds", "actors")
        for r in self.rounds:
            entry = self._entry(layout.generate_stage(r))
            if entry:
                rows.append([f"round {r}", *(entry.get(k) for k in keys)])
        out.append(table(["Round", *map(label, keys)], rows) if rows else
                   missing("no generation stage has been committed"))
        scored, figures = {}, []
        for r in self.rounds:
            found = self._candidate_mi(r)
            if found is None:
                out.append(missing(f"round {r}: no MI scores ({layout.round_dir(r)}/{layout.SCORES}/) yet"))
                continue
            every, chosen, pruned = found
            scored[r] = (every, chosen, pruned)
            note = f" ({pruned} pruned)" if pruned else ""
            figures.append(plots.mi_histogram(
                every, chosen, xlabel=self._mi_axis(),
                title=f"Round {r}: MI of {len(every)} candidates{note}, {len(chosen)} selected"))
        if scored:
            out.append(self._mi_table(scored))
            figures.insert(0, plots.mi_by_round({r: v[:2] for r, v in scored.items()},
                                               ylabel=self._mi_axis()))
        out.append(f'<div class="plots">{"".join(figures)}</div>')
        return "".join(out)

    @staticmethod
    def _mi_table(scored: dict[int, tuple[list[float], list[float], int]]) -> str:
        """Every candidate's MI per round against the selected ones': does selection pick the top?"""
        rows = []
        for r, (every, chosen, pruned) in scored.items():
            q = _quartiles(every)
            rows.append([f"round {r}", len(every), pruned, _mean(every), q[1],
                         Html(f"{esc(fmt(q[0]))} to {esc(fmt(q[2]))}"), len(chosen), _mean(chosen)])
        return table(["Round", "Candidates scored", "Pruned", "All: mean MI", "All: median MI",
                      "All: middle half", "Selected", "Selected: mean MI"], rows,
                     cls="metrics mi-by-round")

    def training(self) -> str:
        rows, tables = {}, {}
        for r in self.rounds:
            entry = self._entry(layout.train_stage(r))
            if entry:
                rows[r] = {"adapter": entry.get("adapter"), **_scalars(entry.get("result") or {})}
            found = read_table(self.run.child(layout.round_dir(r)))
            if found:
                tables[r] = found
        if not rows and not tables:
            return "<h2>Training</h2>" + missing("no training stage has been committed")
        out = ["<h2>Training</h2>"]
        if rows:
            keys = _ordered(k for v in rows.values() for k in v)
            out.append(table(["Round", *map(label, keys)],
                             [[f"round {r}", *(v.get(k) for k in keys)] for r, v in rows.items()]))
        if not tables:
            out.append(missing(f"no training metrics table (round-NNN/{layout.TRAIN_METRICS}) yet"))
            return "".join(out)
        figures = []
        for column, title, ylabel in (
                ("loss", "Training loss by step", "loss"),
                ("validation_mi", "Validation MI at checkpoints", self._mi_axis()),
                ("grad_norm", "Gradient norm by step", "global gradient norm"),
                ("lr", "Learning rate by step", "learning rate")):
            series = {f"round {r}": [(row["step"], row[column]) for row in found
                                     if isinstance(row.get(column), (int, float))]
                      for r, found in tables.items()}
            if any(series.values()):
                figures.append(plots.lines(series, title=title, xlabel="optimizer step",
                                           ylabel=ylabel))
        out.append(f"<p>From each round's metrics table ({esc(layout.TRAIN_METRICS)}): one row "
                   "per optimizer step; validation at checkpoints.</p>")
        out.append(f'<div class="plots">{"".join(figures)}</div>')
        return "".join(out)

    # -- evaluation -----------------------------------------------------------------------------

    def _evaluated(self) -> dict[str, dict]:
        """Version folder -> its evaluation summary (base first, then rounds in order)."""
        out = {}
        for name in self._versions():
            entry = self._entry(layout.evaluate_stage(name))
            if entry and isinstance(entry.get("summary"), dict):
                out[name] = entry
        return out

    def _per_prompt(self, versions: list[str], metrics: list[str]) -> dict[str, dict]:
        """Version -> {(metric, category or None): {prompt id: mean of its images}} from the
        evaluation scores (versions without scores are left out: no intervals for them)."""
        out = {}
        for version in versions:
            rel = f"{version}/{layout.EVAL}/{layout.EVAL_SCORES}"
            if not self.run.exists(rel):
                continue
            sums: dict = defaultdict(lambda: defaultdict(list))
            for row in _read(self.run, [rel]).to_pylist():
                for metric in metrics:
                    value = row.get(metric)
                    if isinstance(value, (int, float)) and math.isfinite(value):
                        for cat in (None, row.get("category") or ""):
                            sums[(metric, cat)][row["prompt_id"]].append(float(value))
            out[version] = {key: {pid: sum(v) / len(v) for pid, v in by.items()}
                            for key, by in sums.items()}
        return out

    def evaluation(self) -> str:
        done = self._evaluated()
        if not done:
            why = ("no evaluation stage has been committed yet" if self.evaluates
                   else "the run does not evaluate (run.evaluate=false)")
            return "<h2>Evaluation</h2>" + missing(f"{why}; `mitune eval RUN_URI` evaluates it")
        out = ["<h2>Evaluation</h2>",
               f"<p>Means over the evaluation images with {LEVEL:.0%} intervals (bootstrap over "
               "prompts); a round's change from the base model in brackets, its interval over "
               "the paired per-prompt differences.</p>"]
        if BASE not in done:
            out.append(missing(f"the base model's evaluation ({BASE}) is missing: no deltas"))
        metrics = list(dict.fromkeys(k for e in done.values() for k in _means(e, None)))
        cats = sorted({c for e in done.values() for c in e["summary"].get("by_category", {})})
        groups = [None] + (cats if len(cats) > 1 else [])  # None: all prompts
        per_prompt = self._per_prompt(list(done), metrics)
        stats = {(name, metric, cat): _stat(done, per_prompt, name, metric, cat)
                 for name in done for metric in metrics for cat in groups}
        for cat in groups:
            out.append("" if cat is None else f"<h3>Category {esc(cat)}</h3>")
            out.append(self._metric_table(done, metrics, cat, stats))
        xs = {name: i for i, name in enumerate(done)}
        figures = []
        for metric in metrics:
            series, bars = {}, {}
            for cat in groups:
                key = cat or "all prompts"
                points = [(name, stats[(name, metric, cat)]) for name in done]
                points = [(name, st) for name, st in points if st["mean"] is not None]
                series[key] = [(xs[name], st["mean"]) for name, st in points]
                bars[key] = [st["interval"] for _, st in points]
            figures.append(plots.lines(series, intervals=bars, title=f"{label(metric)} by model",
                                       xlabel="model", ylabel=label(metric),
                                       xticks={xs[n]: version_label(n) for n in done}))
        out.append(f'<div class="plots">{"".join(figures)}</div>')
        return "".join(out)

    @staticmethod
    def _metric_table(done: dict, metrics: list[str], cat: str | None, stats: dict) -> str:
        """One row per evaluated version; rounds show their change from the base model."""
        rows = []
        for name, entry in done.items():
            cells = []
            for metric in metrics:
                st = stats[(name, metric, cat)]
                cell = esc(fmt(st["mean"])) + _interval(st["interval"], fmt)
                delta = st["delta"]
                if name != BASE and delta is not None:
                    cls = "up" if delta > 0 else "down" if delta < 0 else ""
                    cell += (f' <span class="delta {cls}">({esc(signed(delta))}'
                             f'{_interval(st["delta_interval"], signed)})</span>')
                cells.append(Html(cell))
            summary = entry["summary"]
            counts = [summary.get("prompts"), summary.get("images")] if cat is None else []
            rows.append([version_label(name), *counts, *cells])
        header = ["Model", *(["Prompts", "Images"] if cat is None else []), *map(label, metrics)]
        return table(header, rows, cls="metrics")

    # -- images ---------------------------------------------------------------------------------

    def galleries(self) -> str:
        out = ["<h2>Candidates by MI</h2>"]
        for r in self.rounds:
            folder = f"{layout.round_dir(r)}/{layout.GALLERY}"
            parts = self.run.list(folder, suffix=".parquet")
            if not parts:
                out.append(missing(f"round {r}: no gallery ({folder}/)"))
                continue
            ids = sorted(set(_read(self.run, parts, columns=["prompt_id"]).column("prompt_id")
                             .to_pylist()))[:GALLERY_PROMPTS]
            if not ids:
                out.append(missing(f"round {r}: the gallery shards hold no rows"))
                continue
            by_prompt = defaultdict(list)
            for row in _read(self.run, parts, filters=[("prompt_id", "in", ids)]).to_pylist():
                by_prompt[row["prompt_id"]].append(row)
            out.append(f"<h3>Round {r}</h3>")
            for pid in ids:
                rows = sorted(by_prompt[pid], key=lambda x: (-_num(x["mi"]), x["candidate"]))
                figs = [self._figure(f"r{r:03d}-{_safe(pid)}-c{x['candidate']:03d}", x["png"],
                                     f"candidate {x['candidate']}",
                                     f"#{x['candidate']} MI {fmt(x['mi'])}"
                                     + (" ✓ selected" if x["selected"] else ""),
                                     "selected" if x["selected"] else "")
                        for x in rows]
                out.append(f'<p class="prompt">{esc(rows[0]["prompt"])}</p>'
                           f'<div class="strip">{"".join(figs)}</div>')
        return "".join(out)

    def _figure(self, name: str, png: bytes, alt: str, caption: str, cls: str = "") -> str:
        return (f'<figure class="{cls}">{self._image(name, png, alt)}'
                f"<figcaption>{esc(caption)}</figcaption></figure>")

    def pairs(self) -> str:
        head = "<h2>Base versus tuned</h2>"
        scores_file = f"{layout.EVAL}/{layout.EVAL_SCORES}"
        versions = [n for n in self._versions() if self.run.exists(f"{n}/{scores_file}")]
        if BASE not in versions or len(versions) < 2:
            found = ", ".join(versions) or "none"
            return head + missing(f"pairs need the evaluation scores (<version>/{scores_file}) "
                                  f"of {BASE} and of a tuned round; found: {found}")
        scores = {v: _read(self.run, [f"{v}/{scores_file}"]).to_pylist() for v in versions}
        rows = {v: {(x["prompt_id"], x["candidate"]): x for x in scores[v]} for v in versions}
        common = sorted(set.intersection(*(set(r) for r in rows.values())))
        first: dict[str, int] = {}
        for pid, cand in common:
            first.setdefault(pid, cand)
        chosen = _spread(first, {pid: rows[BASE][(pid, c)].get("category") or ""
                                 for pid, c in first.items()})
        if not chosen:
            return head + missing(f"{', '.join(versions)} share no evaluation image")
        pngs = {v: self._eval_pngs(v, chosen) for v in versions}
        tuned = ", ".join(version_label(v) for v in versions[1:])
        out = [head, "<p>Same prompt, candidate and seed: the base model, then every evaluated "
                     f"round ({esc(tuned)}).</p>"]
        for pid in chosen:
            key = (pid, first[pid])
            absent = [v for v in versions if key not in pngs[v]]
            if absent:
                out.append(missing(f"prompt {pid}: the evaluation image of "
                                   f"{', '.join(map(version_label, absent))} is missing"))
                continue
            figs = [self._figure(f"{v}-{_safe(pid)}-c{key[1]:03d}", pngs[v][key],
                                 f"{version_label(v)} candidate {key[1]}",
                                 f"{version_label(v)}: " + _metric_caption(rows[v][key]))
                    for v in versions]
            cat = rows[BASE][key].get("category")
            out.append(f'<div class="pair"><p class="prompt">{esc(rows[BASE][key].get("prompt", ""))}'
                       f'{f" <small>({esc(cat)})</small>" if cat else ""}</p>'
                       f'<div class="strip">{"".join(figs)}</div></div>')
        return "".join(out)

    def _eval_pngs(self, version: str, ids: list[str]) -> dict[tuple[str, int], bytes]:
        parts = self.run.list(f"{version}/{layout.EVAL}/{layout.SELECTED}", suffix=".parquet")
        if not parts or not ids:
            return {}
        t = _read(self.run, parts, columns=["prompt_id", "candidate", "png"],
                  filters=[("prompt_id", "in", ids)])
        columns = (t.column(k).to_pylist() for k in ("prompt_id", "candidate", "png"))
        return {(p, c): b for p, c, b in zip(*columns)}

    def config(self) -> str:
        text = json.dumps(self.cfg, indent=2, sort_keys=True, default=str)
        return f"<details><summary>Resolved config</summary><pre>{esc(text)}</pre></details>"


def _means(entry: dict, cat: str | None) -> dict:
    """An evaluation entry's metric means: over all prompts (cat None) or one category's."""
    summary = entry["summary"]
    return summary.get("metrics", {}) if cat is None else summary.get("by_category", {}).get(cat, {})


def _stat(done: dict, per_prompt: dict, name: str, metric: str, cat: str | None) -> dict:
    """A version's mean of a metric (as its evaluation recorded it), its interval, and its
    change from the base model with the paired interval (None where the data is missing)."""
    mean = _means(done[name], cat).get(metric)
    mean = float(mean) if isinstance(mean, (int, float)) and math.isfinite(mean) else None
    values = per_prompt.get(name, {}).get((metric, cat), {})
    interval = bootstrap_mean_interval(list(values.values()), level=LEVEL) if values else None
    base = _means(done[BASE], cat).get(metric) if BASE in done else None
    delta = mean - base if mean is not None and isinstance(base, (int, float)) else None
    ref = per_prompt.get(BASE, {}).get((metric, cat), {})
    paired = [values[pid] - ref[pid] for pid in values if pid in ref]
    delta_interval = (bootstrap_mean_interval(paired, level=LEVEL)
                      if name != BASE and paired else None)
    return {"mean": mean, "interval": interval, "delta": delta, "delta_interval": delta_interval}


def _interval(bounds: tuple[float, float] | None, form) -> str:
    if not bounds or not all(math.isfinite(b) for b in bounds):
        return ""
    return f' <span class="ci">[{esc(form(bounds[0]))}, {esc(form(bounds[1]))}]</span>'


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _quartiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """The 25th, 50th and 75th percentiles (linear interpolation, numpy's default)."""
    if not values:
        return None, None, None
    v = sorted(values)

    def q(p: float) -> float:
        pos = p * (len(v) - 1)
        lo = math.floor(pos)
        return v[lo] + (v[min(lo + 1, len(v) - 1)] - v[lo]) * (pos - lo)

    return q(0.25), q(0.5), q(0.75)


def _num(v) -> float:
    return v if isinstance(v, (int, float)) and not math.isnan(v) else -math.inf


def _spread(first: dict[str, int], category: dict[str, str]) -> list[str]:
    """Up to PAIR_PROMPTS prompt ids, taken in turn from each category (ids in sorted order)."""
    queues = defaultdict(list)
    for pid in sorted(first):
        queues[category[pid]].append(pid)
    out: list[str] = []
    while len(out) < PAIR_PROMPTS and any(queues.values()):
        for cat in sorted(queues):
            if queues[cat] and len(out) < PAIR_PROMPTS:
                out.append(queues[cat].pop(0))
    return out


def _metric_caption(row: dict) -> str:
    skip = {"prompt_id", "prompt", "candidate", "seed", "category", "round", "rank", "family",
            "mi_stderr"}
    return ", ".join(f"{label(k)} {fmt(v)}" for k, v in row.items()
                     if k not in skip and isinstance(v, (int, float)))
