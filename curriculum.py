"""PolyLM's two-stage language curriculum (PolyLM paper §3.2 "Curriculum learning").

PolyLM first trains on the whole corpus in its natural mix (about 30% non-English), then switches to a
higher-quality subset in which non-English text rises to about 60% and bilingual (parallel) data is added. The paper
reports that this lifts multilingual scores without hurting English.

In code the curriculum is a *schedule* (a list of stages, each with a share of the training tokens and a target
weight per source) and a *mixer* that fills batches row by row so that the realised mixture follows the target:

  - every row of a batch is `block_size + 1` consecutive tokens of one source, so shares of rows are shares of tokens;
  - which source: the one furthest behind its cumulative target ("largest deficit first"): after n rows every source
    is within one row of the sum of its target weights over those rows. No randomness, exact at every scale;
  - each source is read sequentially from a cursor; at its end it wraps around and its epoch counter goes up (small
    languages repeat; the epochs are logged, with a warning past `repeat_warn` epochs). With a seed, every source
    starts at its own seeded offset, so two seeds see the data in a different order (what an experiment's seeds need);
  - with W processes, every rank walks the same global row sequence and keeps rows r, r+W, r+2W, ... of it: ranks
    never read the same tokens, and W ranks with batch b see exactly the rows of 1 process with batch W*b (so DDP
    and single-process loss curves can be compared step by step). No hidden RNG state anywhere;
  - the whole state is a few counters (`state_dict`), so resuming gives exactly the batches of an unbroken run.

A stage is written either with explicit weights or with a rule (PolyLM's knobs):
    {"name": "stage2", "frac": 0.2, "non_en": 0.6, "bilingual": 0.1, "hq": 0.0, "alpha": 1.0}
  frac       share of all training tokens spent in the stage (the fracs of all stages must sum to 1)
  non_en     share of the stage NOT spent on English monolingual text (bilingual and HQ shares are part of it)
  bilingual  share given to bilingual sources (parallel pairs), spread over them in proportion to size**alpha
  hq         share given to high-quality sources (data_dir/hq/<lang>.txt -> manifest entries flagged "hq": true;
             PolyLM's stage 2 draws on such a subset), likewise
  alpha      temperature over the non-English monolingual languages: p(lang) ∝ tokens**alpha (1 natural, 0 uniform;
             XLM-R used 0.3 to lift small languages)
or {"name": ..., "frac": ..., "weights": {"en": 0.5, "zh": 0.5}} (source names or language codes; must sum to 1).

Presets (`curriculum=` in train.py):
  polylm   stage 1 (first 1 - stage2_frac of tokens): 30% non-English in natural proportion;
           stage 2: 60% non-English, of which 10 points are bilingual pairs. The paper does not say which share
           of the tokens stage 2 gets; `stage2_frac` (default 0.2) is our choice.
  stage1   PolyLM's stage-1 mix for the whole run: the "no curriculum" arm of the ablation at the same start mix.
  none     the data's natural mix: every monolingual source in proportion to its tokens.
  uniform  every language equally.
Stage transitions are hard switches, or linear ramps over `ramp_frac` of the training tokens (centred on the
boundary).

    python curriculum.py --plot=RUN_DIR              # target vs realised mixture over training (stacked areas)
    python curriculum.py --compare=RUN_A,RUN_B,...   # the ablation figure + English vs non-English table
"""
import dataclasses
import json
import warnings
import zlib
from pathlib import Path

import numpy as np

from common import pyplot, read_jsonl


class CurriculumError(ValueError):
    """A schedule that cannot be run: the message names the stage/key and the fix."""


# ----------------------------------------------------------------------------- schedules

def _spread(names, sizes, total, alpha=1.0):
    """Give `total` weight to `names` in proportion to size**alpha (alpha=1 natural, 0 uniform)."""
    z = sum(sizes[n] ** alpha for n in names)
    return {n: total * sizes[n] ** alpha / z for n in names}


def preset_stages(kind, stage2_frac=0.2, bilingual=True):
    """Stage specs of a named preset (see the module docstring). Without parallel data (bilingual=False), stage 2's
    bilingual share goes to the other languages' monolingual text."""
    s1 = {"name": "stage1 (30% non-English)", "non_en": 0.3, "alpha": 1.0}
    if kind == "polylm":
        return [{**s1, "frac": 1.0 - stage2_frac},
                {"name": "stage2 (60% non-English" + (" + bilingual)" if bilingual else ")"), "frac": stage2_frac,
                 "non_en": 0.6, "bilingual": 0.1 if bilingual else 0.0, "alpha": 1.0}]
    if kind == "stage1":
        return [{**s1, "name": "stage1 mix throughout", "frac": 1.0}]
    if kind == "none":
        return [{"name": "natural mix", "frac": 1.0, "natural": True}]
    if kind == "uniform":
        return [{"name": "uniform", "frac": 1.0, "natural": True, "alpha": 0.0}]
    raise CurriculumError(f"unknown curriculum {kind!r}; choose polylm, stage1, none, uniform, or give "
                          f"curriculum_stages=[{{...}}] in a config file")


def resolve_stage(spec, manifest):
    """A stage spec -> {source: weight} over the manifest's sources with training tokens."""
    src = manifest["sources"]
    sizes = {n: e["train"]["tokens"] for n, e in src.items() if e["train"]["tokens"] > 0}
    name = spec.get("name", "?")
    if "weights" in spec:
        weights = {}
        for key, w in spec["weights"].items():
            names = [key] if key in sizes else [n for n in sizes if src[n]["lang"] == key and src[n]["kind"] == "mono"
                                                and not src[n].get("hq")]
            if not names:
                raise CurriculumError(f"curriculum stage {name!r}: {key!r} has no shard with training tokens "
                                      f"(known: {', '.join(sorted(sizes))})")
            weights.update(_spread(names, sizes, w))
        total = sum(weights.values())
        if abs(total - 1.0) > 1e-6:
            raise CurriculumError(f"curriculum stage {name!r}: weights sum to {total:.6g}, not 1; fix the weights "
                                  f"(we do not renormalise silently)")
        return weights
    alpha = float(spec.get("alpha", 1.0))
    mono = [n for n in sizes if src[n]["kind"] == "mono" and not src[n].get("hq")]
    if not mono:
        raise CurriculumError("curriculum: the data has no monolingual source with training tokens")
    if spec.get("natural"):
        if alpha == 1.0:
            return _spread(mono, sizes, 1.0)
        langs = sorted({src[n]["lang"] for n in mono})        # uniform over languages, not over files
        return {n: w for lang in langs for n, w in _spread([m for m in mono if src[m]["lang"] == lang],
                                                           sizes, 1.0 / len(langs)).items()}
    en = [n for n in mono if src[n]["lang"] == "en"]
    others = [n for n in mono if src[n]["lang"] != "en"]
    bi = [n for n in sizes if src[n]["kind"] == "bilingual"]
    hq = [n for n in sizes if src[n].get("hq")]
    non_en, b, q = float(spec.get("non_en", 0.0)), float(spec.get("bilingual", 0.0)), float(spec.get("hq", 0.0))
    for key, val in (("non_en", non_en), ("bilingual", b), ("hq", q)):
        if not 0.0 <= val <= 1.0:
            raise CurriculumError(f"curriculum stage {name!r}: {key}={val} must be in [0, 1]")
    if b + q > non_en + 1e-9:
        raise CurriculumError(f"curriculum stage {name!r}: bilingual + hq ({b + q}) exceed non_en ({non_en})")
    for label, names, share in (("English text (mono/en)", en, 1 - non_en), ("non-English text", others, non_en - b - q),
                                ("bilingual sources (parallel/)", bi, b), ("high-quality sources", hq, q)):
        if share > 1e-12 and not names:
            raise CurriculumError(f"curriculum stage {name!r} wants {share:.0%} {label}, but the data has none")
    weights = {}
    if 1 - non_en > 0:
        weights.update(_spread(en, sizes, 1 - non_en))
    for names, share in ((others, non_en - b - q), (bi, b), (hq, q)):
        if share > 1e-12:
            weights.update(_spread(names, sizes, share, alpha))
    return weights


class Stage:
    def __init__(self, name, frac, weights):
        self.name, self.frac, self.weights = name, frac, weights

    def __repr__(self):
        return f"Stage({self.name!r}, frac={self.frac}, {len(self.weights)} sources)"


def make_schedule(kind, manifest, stage2_frac=0.2, stages=None):
    """The list of Stage objects for a preset name, or for explicit stage specs (then `kind` is ignored)."""
    if stages is None and kind == "polylm" and not 0.0 < stage2_frac < 1.0:
        raise CurriculumError(f"stage2_frac must be in (0, 1), got {stage2_frac}")
    has_bi = any(e["kind"] == "bilingual" and e["train"]["tokens"] > 0 for e in manifest["sources"].values())
    specs = stages or preset_stages(kind, stage2_frac, bilingual=has_bi)
    out = []
    for i, spec in enumerate(specs):
        frac = float(spec.get("frac", 0))
        if frac <= 0:
            raise CurriculumError(f"curriculum stage {i} ({spec.get('name', '?')!r}) has frac={frac}: every stage "
                                  f"needs a positive share of the training tokens")
        out.append(Stage(spec.get("name", f"stage{i + 1}"), frac, resolve_stage(spec, manifest)))
    total = sum(s.frac for s in out)
    if abs(total - 1.0) > 1e-6:
        raise CurriculumError(f"curriculum stage fracs sum to {total:.6g}; they must cover training exactly (sum 1)")
    return out


# ----------------------------------------------------------------------------- the mixer

class Mixer:
    """Deterministic, resumable batch maker over token shards following a stage schedule."""

    def __init__(self, shards, stages, total_rows, block_size, rank=0, world_size=1, ramp_rows=0, repeat_warn=8,
                 log=None, seed=None):
        self.shards, self.stages, self.total_rows, self.T = shards, stages, total_rows, block_size
        self.repeat_warn, self.log = repeat_warn, log or (lambda msg: warnings.warn(msg, stacklevel=2))
        self.rank, self.world_size = rank, world_size
        for st in stages:
            for name in st.weights:
                if name not in shards:
                    raise CurriculumError(f"curriculum stage {st.name!r} wants source {name!r}, which has no shard")
                if len(shards[name]) < block_size + 1:
                    raise CurriculumError(f"source {name!r} has too few tokens ({len(shards[name])}) for "
                                          f"block_size={block_size}")
        ends = np.cumsum([st.frac for st in stages])
        self.stage_end_rows = [round(e / ends[-1] * total_rows) for e in ends]
        self.ramp_rows = ramp_rows
        self.sources = sorted({n for st in stages for n in st.weights})
        self.rows_done = 0
        # where each source's reading starts: 0, or with a seed a random offset per source (so a seed changes the
        # data order, not only the initialisation; the same on every rank, recorded as `start`)
        self.start = {n: 0 if seed is None or len(shards[n]) <= block_size + 1 else
                      int(np.random.default_rng([seed, zlib.crc32(n.encode())]).integers(len(shards[n]) - block_size))
                      for n in shards}
        self.cursor = dict(self.start)
        self.epoch = {n: 0 for n in shards}
        self.target = dict.fromkeys(self.sources, 0.0)     # cumulative target rows per source
        self.assigned = dict.fromkeys(self.sources, 0)     # rows given to each source so far

    def stage_index(self, row=None):
        row = self.rows_done if row is None else row
        for i, end in enumerate(self.stage_end_rows):
            if row < end:
                return i
        return len(self.stages) - 1

    def weights_at(self, row):
        """Target weights for one row: the stage's, or a linear blend of two stages inside a ramp."""
        i = self.stage_index(row)
        w = self.stages[i].weights
        half = self.ramp_rows / 2
        for j, end in enumerate(self.stage_end_rows[:-1]):      # boundaries between stage j and j+1
            if half and end - half <= row < end + half:
                t = (row - (end - half) + 0.5) / self.ramp_rows
                a, b = self.stages[j].weights, self.stages[j + 1].weights
                return {n: (1 - t) * a.get(n, 0.0) + t * b.get(n, 0.0) for n in self.sources}
        return w

    def _pick(self):
        for n, w in self.weights_at(self.rows_done).items():
            self.target[n] += w
        name = max(self.sources, key=lambda s: self.target[s] - self.assigned[s])   # largest deficit; ties -> first
        self.assigned[name] += 1
        return name

    def _advance(self, name):
        """Start offset of the next row of `name` (every rank runs this for every global row)."""
        if self.cursor[name] + self.T + 1 > len(self.shards[name]):      # wrap around: another epoch
            self.cursor[name] = 0
            self.epoch[name] += 1
            if self.epoch[name] == self.repeat_warn:
                self.log(f"curriculum: source {name!r} is being repeated for the {self.repeat_warn}th time "
                         f"(small data for its share); consider more data or a lower weight")
        c = self.cursor[name]
        self.cursor[name] = c + self.T + 1
        return c

    def next_batch(self, batch_size):
        """(x, y, sources) of this rank: int64 arrays (batch_size, block_size), y shifted by one, row sources."""
        names, rows = [], []
        for _ in range(batch_size * self.world_size):
            name = self._pick()
            start = self._advance(name)
            if self.rows_done % self.world_size == self.rank:            # only this rank's rows are read
                names.append(name)
                rows.append(np.asarray(self.shards[name][start:start + self.T + 1], dtype=np.int64))
            self.rows_done += 1
        buf = np.stack(rows)
        return buf[:, :-1], buf[:, 1:], names

    def state_dict(self):
        return {"rows_done": self.rows_done, "cursor": dict(self.cursor), "epoch": dict(self.epoch),
                "target": dict(self.target), "assigned": dict(self.assigned)}

    def load_state_dict(self, state):
        self.rows_done = state["rows_done"]
        for key in ("cursor", "epoch", "target", "assigned"):
            getattr(self, key).update(state[key])


# ----------------------------------------------------------------------------- plots and the ablation report

def _lang_of(source):
    return "bilingual" if source.startswith("bi.") else source


def _read_metrics(run_dir):
    return read_jsonl(Path(run_dir) / "metrics.jsonl", "the metrics.jsonl of a run dir written by train.py")


def plot_mixture(run_dir, out=None):
    """Stacked areas of the target and the realised mixture (per language) over training -> mixture.png."""
    plt = pyplot()
    recs = [r for r in _read_metrics(run_dir) if "mix" in r and "target" in r]
    if not recs:
        raise ValueError(f"{run_dir}/metrics.jsonl has no mixture records (written every log_interval steps)")
    langs = sorted({_lang_of(s) for r in recs for s in (*r["mix"], *r["target"])},
                   key=lambda l: (l != "en", l == "bilingual", l))
    steps = [r["step"] for r in recs]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), sharey=True)
    colors = plt.get_cmap("tab20").colors
    for ax, key, title in ((axes[0], "target", "target mixture"), (axes[1], "mix", "realised mixture")):
        ys = [[sum(v for s, v in r[key].items() if _lang_of(s) == lang) for r in recs] for lang in langs]
        ax.stackplot(steps, ys, labels=langs, colors=[colors[i % 20] for i in range(len(langs))], step="pre")
        ax.set(title=title, xlabel="step", xlim=(steps[0], steps[-1]), ylim=(0, 1))
    axes[0].set_ylabel("share of training tokens")
    axes[1].legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7)
    fig.tight_layout()
    out = Path(out or Path(run_dir) / "mixture.png")
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def compare_runs(run_dirs, out="ablation.png"):
    """Per-language val bpb curves of several runs on one figure, and a table: English vs non-English average."""
    plt = pyplot()
    runs = {}
    for d in run_dirs:
        cfg = json.loads((Path(d) / "config.json").read_text())["train"]
        evals = [r for r in _read_metrics(d) if "val_bpb" in r]
        if not evals:
            raise ValueError(f"{d}: no evaluation records in metrics.jsonl")
        runs[f"{Path(d).name} ({cfg['curriculum']})"] = evals
    langs = sorted(next(iter(runs.values()))[-1]["val_bpb"])
    fig, axes = plt.subplots(3, 6, figsize=(18, 8), sharex=True)
    for ax, lang in zip(axes.ravel(), langs):
        for label, evals in runs.items():
            ax.plot([r["step"] for r in evals], [r["val_bpb"].get(lang, np.nan) for r in evals], label=label)
        ax.set_title(lang, fontsize=9)
    for ax in axes.ravel()[len(langs):]:
        ax.axis("off")
    axes[0, 0].legend(fontsize=7)
    fig.supxlabel("step")
    fig.supylabel("validation bits per byte")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    rows = ["| run | English bpb | non-English mean bpb | all-language mean bpb |", "|---|---:|---:|---:|"]
    for label, evals in runs.items():
        b = evals[-1]["val_bpb"]
        non_en = [v for k, v in b.items() if k != "en"]
        rows.append(f"| {label} | {b.get('en', np.nan):.3f} | {np.mean(non_en):.3f} | {np.mean(list(b.values())):.3f} |")
    return "\n".join(rows)


@dataclasses.dataclass
class CurriculumConfig:
    plot: str = ""                      # a run dir: draw its target vs realised mixture -> RUN_DIR/mixture.png
    compare: str = ""                   # run dirs, comma-separated: the ablation figure + English vs non-English table
    out: str = ""                       # --compare's figure ('' = ablation.png next to the first run dir)


def run(cfg):
    if cfg.plot:
        return print(f"wrote {plot_mixture(cfg.plot)}")
    runs = [r for r in cfg.compare.split(",") if r]
    if len(runs) < 2:
        raise ValueError("give --plot=RUN_DIR, or --compare=RUN_A,RUN_B[,...] (at least two run dirs)")
    out = Path(cfg.out or Path(runs[0]).parent / "ablation.png")
    print(compare_runs(runs, out))
    print(f"wrote {out}")


def main(argv=None):
    from config import run_cli
    import sys
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--compare"] and len(argv) > 2:                   # --compare A B C (the older spelling)
        argv = ["--compare=" + ",".join(argv[1:])]
    return run_cli(run, CurriculumConfig, argv, prog="curriculum.py")


if __name__ == "__main__":
    main()
