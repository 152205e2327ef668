"""The demo: train a baseline and a Block AttnRes model of equal size, prune both, report.

``run_demo(DemoConfig())`` trains each kind in ``kinds`` on the same corpus with the probe
attached (one run directory per kind under ``out``), measures single-layer pruning sensitivity
and the greedy pruning path of each, writes ``out/report.html`` and returns the runs' headline
numbers. The default size fits in about three minutes on two CPU cores; ``DemoConfig.quick()``
is a sub-minute smoke version.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from attnres_probe.analysis.pruning import prune_run
from attnres_probe.data import ByteCorpus
from attnres_probe.footprint import default_threads, torch_threads
from attnres_probe.models.config import RESIDUAL_KINDS, ModelConfig
from attnres_probe.resources import Threads, check_threads
from attnres_probe.tools.prune_path import prune_path
from attnres_probe.tools.report import render_report, summarise_runs
from attnres_probe.train import TrainConfig, check_training, train


class DemoError(ValueError):
    """The demo cannot run as asked; the message names the setting and the fix."""


# The demo's model and training recipe (each kind takes the model with its own residual); the
# train command's defaults are these too.
DEMO_MODEL = ModelConfig(n_layers=16, d_model=64, n_heads=4, n_blocks=8, max_seq_len=64)
DEMO_TRAIN = TrainConfig(steps=300, batch_size=8, seq_len=64, lr=3e-3, record_every=5)
# Option name -> (the config it belongs to, its field there).
OPTIONS = {
    "layers": ("model", "n_layers"),
    "d_model": ("model", "d_model"),
    "n_heads": ("model", "n_heads"),
    "n_blocks": ("model", "n_blocks"),
    "steps": ("train", "steps"),
    "batch_size": ("train", "batch_size"),
    "seq_len": ("train", "seq_len"),
    "lr": ("train", "lr"),
    "seed": ("train", "seed"),
    "record_every": ("train", "record_every"),
    "data": ("train", "data"),
}


@dataclass(frozen=True)
class DemoConfig:
    """What the demo trains: ``model`` (its residual is each kind's in turn) and ``train`` are
    the same for every kind; the held-out evaluation uses ``prune_batches`` batches."""

    out: str = "runs/demo"
    kinds: tuple[str, ...] = ("baseline", "block")
    model: ModelConfig = DEMO_MODEL
    train: TrainConfig = DEMO_TRAIN
    prune_batches: int = 8
    threads: int | None = None  # torch threads; None picks (footprint.default_threads)

    def __post_init__(self) -> None:
        if not self.kinds:
            raise DemoError("kinds is empty; pass e.g. --kinds baseline,block")
        for kind in self.kinds:
            if kind not in RESIDUAL_KINDS:
                raise DemoError(
                    f"kind {kind!r} is not a residual kind; use {', '.join(RESIDUAL_KINDS)}"
                )
        if len(set(self.kinds)) != len(self.kinds):
            raise DemoError(f"kinds={','.join(self.kinds)} names a kind twice; name each once")
        if self.prune_batches < 1:
            raise DemoError(f"prune_batches={self.prune_batches} must be a positive integer")
        for kind in self.kinds:
            self.model_config(kind)  # raises ConfigError naming the field and the fix
        check_threads(self.threads)

    @classmethod
    def from_options(cls, quick: bool = False, **options: Any) -> DemoConfig:
        """A config from the command line's flat option names (``layers``, ``steps``, …; see
        ``OPTIONS``) over the defaults, or over :meth:`quick`'s; each is checked by the config
        it belongs to (ConfigError / ValueError naming it)."""
        base = cls.quick() if quick else cls()
        parts: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
        own = {}
        for name, value in options.items():
            if name in OPTIONS:
                part, field_name = OPTIONS[name]
                parts[part][field_name] = value
            else:
                own[name] = value
        model = replace(base.model, **parts["model"])
        seq_len = parts["train"].get("seq_len", base.train.seq_len)
        model = replace(model, max_seq_len=max(seq_len, model.max_seq_len))
        return replace(base, model=model, train=replace(base.train, **parts["train"]), **own)

    def pick_threads(self) -> Threads:
        """The torch threads the demo runs with: ``threads``, or picked for its model size."""
        if self.threads is not None:
            return Threads(self.threads, "--threads")
        train = self.train_config()
        return default_threads(self.model_config(self.kinds[0]), train.batch_size, train.seq_len)

    def check(self, device: str = "cpu") -> None:
        """Every size checked before any work: each kind's training fits the memory available
        (OptionError with the number and the limit)."""
        for kind in self.kinds:
            check_training(self.model_config(kind), self.train_config(), device)

    @classmethod
    def quick(cls) -> DemoConfig:
        """A sub-minute smoke version: tiny models, a few dozen steps."""
        model = replace(DEMO_MODEL, n_layers=4, d_model=32, n_heads=2, n_blocks=4)
        train = replace(DEMO_TRAIN, steps=30, batch_size=4, seq_len=32, record_every=2)
        return cls(model=model, train=train, prune_batches=2)

    def model_config(self, kind: str) -> ModelConfig:
        """The model every kind shares, with ``kind``'s residual."""
        return replace(self.model, residual=kind)

    def train_config(self) -> TrainConfig:
        """The training every kind shares, evaluated on ``prune_batches`` held-out batches."""
        return replace(self.train, eval_batches=self.prune_batches)


class DemoProgress:
    """Callbacks the demo calls as it goes; the default does nothing (the CLI draws bars)."""

    def stage(self, text: str) -> None:
        """A new stage begins (loading the corpus, writing the report, …)."""

    def train_step(self, kind: str, done: int, total: int, loss: float, tps: float) -> None:
        """``done`` of ``total`` steps of ``kind`` are trained; last loss, tokens per second."""

    def prune_unit(self, kind: str, done: int, total: int, unit: str) -> None:
        """``done`` of ``total`` pruning evaluations of ``kind`` are finished."""


@dataclass
class DemoResult:
    """Where the demo wrote things and what it measured."""

    runs: dict[str, Path]
    report: Path
    summaries: dict[str, dict[str, Any]]
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall seconds

    def dashboard_command(self, program: str = "attnres-probe") -> str:
        """The command that opens the dashboard on the demo's runs (``program``: the command
        line as the user runs it)."""
        return f"{program} dashboard {shlex.quote(str(self.report.parent))}"


def train_kinds(
    cfg: DemoConfig, progress: DemoProgress, corpus, threads: int = 1
) -> dict[str, Path]:
    """Train every kind of ``cfg`` into ``out/<kind>`` (a previous demo's run there is
    replaced); returns kind -> run directory."""
    runs = {}
    for kind in cfg.kinds:
        run_dir = Path(cfg.out) / kind

        def on_step(step: int, loss: float, tps: float, kind: str = kind) -> None:
            progress.train_step(kind, step + 1, cfg.train.steps, loss, tps)

        train(
            cfg.model_config(kind),
            cfg.train_config(),
            run_dir,
            on_step=on_step,
            corpus=corpus,
            overwrite=True,
            threads=threads,
        )
        runs[kind] = run_dir
    return runs


def prune_kinds(cfg: DemoConfig, runs: dict[str, Path], progress: DemoProgress) -> None:
    """Single-layer pruning sensitivity and the greedy pruning path of every run, stored."""
    total = 2 * cfg.model.n_layers + 1  # intact model, each layer alone, the greedy path
    for kind, run_dir in runs.items():

        def single(done: int, _total: int, unit: str, kind: str = kind) -> None:
            progress.prune_unit(kind, done, total, unit)

        def together(done: int, _total: int, unit: str, kind: str = kind) -> None:
            progress.prune_unit(
                kind, cfg.model.n_layers + 1 + done, total, f"first {done} together"
            )

        prune_run(run_dir, "layer", batches=cfg.prune_batches, progress=single)
        prune_path(run_dir, progress=together)


def run_demo(
    cfg: DemoConfig | None = None, progress: DemoProgress | None = None, corpus=None
) -> DemoResult:
    """Train, prune and report as ``cfg`` says; returns the runs, the report and headlines.
    ``corpus``: the ByteCorpus of ``cfg.train.data`` when the caller has loaded it already."""
    cfg = cfg or DemoConfig()
    progress = progress or DemoProgress()
    out = Path(cfg.out)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    cfg.check()

    if corpus is None:
        progress.stage("loading the corpus")
        corpus = ByteCorpus.load(cfg.train.data)
    corpus.check_fits(cfg.train.seq_len)
    seconds["corpus"] = time.perf_counter() - start

    threads = cfg.pick_threads().n
    with torch_threads(threads):
        mark = time.perf_counter()
        progress.stage("training")
        runs = train_kinds(cfg, progress, corpus, threads)
        seconds["training"] = time.perf_counter() - mark

        mark = time.perf_counter()
        progress.stage("pruning")
        prune_kinds(cfg, runs, progress)
        seconds["pruning"] = time.perf_counter() - mark

    mark = time.perf_counter()
    progress.stage("writing the report")
    datasets, summaries = summarise_runs(runs)
    kinds = " vs ".join(cfg.kinds)
    m, t = cfg.model, cfg.train
    subtitle = (
        f"{m.n_layers} layers, d_model {m.d_model}, {t.steps} steps of "
        f"{t.batch_size}×{t.seq_len} bytes from {corpus.source}, seed {t.seed}"
    )
    report = out / "report.html"
    report.write_text(
        render_report(datasets, summaries, f"attnres-probe demo: {kinds}", subtitle),
        encoding="utf-8",
    )
    seconds["report"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - start
    return DemoResult(runs=runs, report=report, summaries=summaries, seconds=seconds)
