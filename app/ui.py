"""What every dashboard page shares: the root, cached run loading, the pickers bound to the URL,
live refresh, and showing figures and errors.

The run picker, the compared runs and the step are widgets bound to query parameters
(``?run=…&compare=…&step=…``), so a view can be shared and reloaded. Loaded runs are cached
on the run's commit marker (``store.store_version``): a run being written is re-read only
when a flush has landed.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import streamlit as st
import xarray as xr

from attnres_probe.analysis.select import DEFAULT_FRACTION, AnalysisError, nearest_step, tail
from attnres_probe.app import confine
from attnres_probe.app.text import COMMAND_ENV, TRAIN_HINT, describe_error, literal
from attnres_probe.checkpoint import CHECKPOINT_FILE
from attnres_probe.figures import figure_table, run_series
from attnres_probe.store import RunInfo, open_run, run_info, run_paths, store_version

RUN_KEY = "run"
COMPARE_KEY = "compare"
STEP_KEY = "step"
WINDOW_KEY = "window"
# The options are also the URL's values (?window=one+step): Streamlit puts labels in the URL.
TAIL, ONE_STEP = "mean of the last 10 %", "one step"
SEEDS_KEY = "each_seed"
REFUSED_KEY = "_refused"  # why the run named in the URL is not shown
LATEST_KEY = "_latest_step"  # the last recorded step when the slider was last drawn
REFRESH_KEY = "refresh"
REFRESH_CHOICES = {"off": None, "2 s": 2.0, "5 s": 5.0, "10 s": 10.0, "30 s": 30.0}
DEFAULT_REFRESH = "5 s"
PLOTLY_CONFIG = {"displaylogo": False}
MAX_TRAINING_POINTS = 1000  # measures over training fit one profile per point: long runs window


# ----------------------------------------------------------------------------- runs


def root() -> confine.Root:
    """The dashboard's root (from ``$ATTNRES_PROBE_ROOT``, else the bundled sample runs)."""
    return confine.dashboard_root()


def version(path: Path) -> object:
    """The run's commit marker; None when the store cannot say (its row says why)."""
    try:
        return store_version(path, confine=root().path)
    except Exception:  # noqa: BLE001 - an unreadable store is reported on its row
        return None


@st.cache_resource(max_entries=64, show_spinner=False)
def _open(path: str, commit: object, root_path: Path) -> xr.Dataset:
    # Lazy: a figure reads only the steps it shows (one step, the tail, or the loss curve),
    # so a 100k-step run opens in milliseconds instead of reading every variable.
    return open_run(path, lazy=True, confine=root_path)


def load(path: Path) -> xr.Dataset:
    """The run at ``path`` (resolved under ROOT), cached until its next commit. Read-only;
    no file resolving outside ROOT is read."""
    return _open(str(path), version(path), root().path)


# cache_resource, not cache_data: cache_data pickles each value and unpickles it on every hit;
# these keep the (immutable) objects themselves.
@st.cache_resource(max_entries=2048, ttl=10, show_spinner=False)
def _info(root_path: str, name: str, commit: object) -> RunInfo:
    return confine.served_info(Path(root_path), name)


@st.cache_resource(ttl=5, show_spinner=False)
def _names(root_path: str) -> tuple[str, ...]:
    # A short TTL: new runs appear within seconds, and a big ROOT is not walked on every rerun.
    return tuple(run_paths(root_path))


def rows(root_path: Path) -> list[RunInfo]:
    """The store's :class:`RunInfo` of every run under ``root_path``, read confined to it
    (broken and refused runs included, with their reason)."""
    out = []
    for name in _names(str(root_path)):
        try:
            commit = version(confine.resolve_run(root_path, name))
        except confine.RunRefused:
            commit = None
        out.append(_info(str(root_path), name, commit))
    return out


# ----------------------------------------------------------------------------- pickers


def run_picker(all_rows: list[RunInfo], root_path: Path) -> str | None:
    """The sidebar's run select box (bound to ``?run=``); warns about a refused request."""
    names = [r.name for r in all_rows if r.readable]
    requested = st.query_params.get(RUN_KEY)
    if requested is not None and requested not in names:
        # Kept until the user picks a run: the URL loses the refused name on the first run.
        st.session_state[REFUSED_KEY] = refusal(root_path, requested, all_rows)
    if not names:
        return None
    return st.sidebar.selectbox(
        "Run", names, key=RUN_KEY, bind="query-params", on_change=_forget_refusal
    )


def _forget_refusal() -> None:
    st.session_state.pop(REFUSED_KEY, None)


def refusal(root_path: Path, requested: str, all_rows: list[RunInfo]) -> str:
    """Why the run named in the URL is not shown (refused path, broken run or unknown name)."""
    for row in all_rows:
        if row.name == requested:
            return f"run {requested!r} cannot be opened: {row.error}"
    try:
        confine.resolve_run(root_path, requested)
    except confine.RunRefused as err:
        return str(err)
    return f"run {requested!r} is not listed under ROOT"


def refresh_picker() -> None:
    st.sidebar.selectbox(
        "Live refresh",
        list(REFRESH_CHOICES),
        index=list(REFRESH_CHOICES).index(DEFAULT_REFRESH),
        key=REFRESH_KEY,
        help="How often a run that is still being written is re-read.",
    )


def refresh_every(live: bool) -> float | None:
    """Seconds between automatic refreshes, or None when the view is not live."""
    if not live:
        return None
    return REFRESH_CHOICES.get(st.session_state.get(REFRESH_KEY, DEFAULT_REFRESH))


def step_picker(steps: np.ndarray) -> int | None:
    """The profiles' window, bound to ``?window=`` and ``?step=``: by default the mean of the
    last 10 % of recorded steps (as in the report and ``export``), or one step on a slider over
    ``steps`` (the recorded steps). Returns the step, or None for the tail mean.

    A URL naming a step opens on that step. A step that was not recorded is said so, with the
    one shown. Left at the latest step, the slider follows a live run.
    """
    steps = np.asarray(steps)
    if steps.size == 0:
        return None
    default = ONE_STEP if STEP_KEY in st.query_params else TAIL
    window = st.segmented_control(
        "Profiles over recorded steps",
        [TAIL, ONE_STEP],
        default=default,
        key=WINDOW_KEY,
        bind="query-params",
    )
    if window != ONE_STEP:
        return None
    first, last = int(steps[0]), int(steps[-1])
    if first == last:
        st.caption(f"one recorded step: {first}")
        return first
    spacing = int(np.gcd.reduce(np.diff(steps.astype(np.int64)))) or 1
    kept = st.session_state.get(STEP_KEY)
    if kept is not None and not first <= kept <= last:
        del st.session_state[STEP_KEY]  # a step of another run: start again at the latest
    elif kept is not None and kept == st.session_state.get(LATEST_KEY) and kept != last:
        st.session_state[STEP_KEY] = last  # it was at the latest step: follow the live run
    # The initial value only when the widget is new; afterwards its state (or the URL) rules.
    initial = {} if STEP_KEY in st.session_state else {"value": last}
    step = int(
        st.slider(
            "Step",
            min_value=first,
            max_value=last,
            step=spacing,
            key=STEP_KEY,
            bind="query-params",
            **initial,
        )
    )
    st.session_state[LATEST_KEY] = last
    nearest = nearest_step(steps, step)
    if nearest != step:
        st.caption(f"Step {step} was not recorded; showing step {nearest}, the nearest one.")
    return step


def seeds_picker(runs: dict[str, xr.Dataset]) -> str:
    """'band' (runs that differ only in seed as mean and range), or 'each' when asked; the
    toggle is shown only when some of ``runs`` form such a group."""
    if all(not s.is_group for s in run_series(runs)):
        return "band"
    each = st.toggle(
        "Each seed on its own",
        key=SEEDS_KEY,
        bind="query-params",
        help="Runs that differ only in their seed are drawn as their mean with a band over the "
        "seeds' range (min to max); switch this on to draw every run.",
    )
    return "each" if each else "band"


def training_window(runs: dict[str, xr.Dataset] | xr.Dataset) -> int | None:
    """Recorded steps per point of a measure over training: None (every step) up to
    :data:`MAX_TRAINING_POINTS` steps, else windows that bring the longest run down to it."""
    datasets = [runs] if isinstance(runs, xr.Dataset) else list(runs.values())
    longest = max(ds.sizes.get("step", 0) for ds in datasets)
    return None if longest <= MAX_TRAINING_POINTS else -(-longest // MAX_TRAINING_POINTS)


def view(ds: xr.Dataset, step: int | None = None, steps: list[int] | None = None) -> xr.Dataset:
    """The recorded steps a profile figure reads: the one nearest ``step``, the given
    ``steps``, or (both None) the last ``DEFAULT_FRACTION`` of the run. Pass the figure
    ``fraction=1.0`` with a tail view. On a long lazily-opened run this reads one chunk or the
    tail from disk instead of every step."""
    if steps:
        return ds.sel(step=steps, method="nearest")
    if step is None:
        return tail(ds, DEFAULT_FRACTION)
    return ds.sel(step=[nearest_step(ds["step"].values, step)])


# ----------------------------------------------------------------------------- showing


def selected(all_rows: list[RunInfo]) -> tuple[RunInfo, Path] | None:
    """The run chosen in the sidebar and its path, or None after saying why there is none."""
    name = st.session_state.get(RUN_KEY)
    row = next((r for r in all_rows if r.name == name and r.readable), None)
    root_info = root()
    if root_info.path is None:
        return None  # header() said why
    if row is None:
        st.info(f"No run to show. Make one:\n\n```\n{make_run_hint(root_info.path)}\n```")
        return None
    return row, confine.resolve_run(root_info.path, row.name)


def describe_row(row: RunInfo) -> str:
    """One line about the shown run: name, kind, size, progress and whether it refreshes."""
    state = row.status
    if row.status == "live":
        every = refresh_every(True)
        state = f"live, refreshing every {every:g} s" if every else "live, refresh off"
    return (
        f"{row.name} · {row.residual} · {row.n_layers} layers ({sublayers(row)} sublayers) · "
        f"{row.n_steps} recorded steps · {state}"
    )


def sublayers(row: RunInfo) -> int | None:
    """Sublayers of the run (an attention and an MLP sublayer per layer)."""
    return 2 * row.n_layers if row.n_layers is not None else None


def has_checkpoint(path: Path) -> bool:
    """True when the run directory holds its trained model."""
    return (path / CHECKPOINT_FILE).is_file()


def make_run_hint(root_path: Path) -> str:
    """The command that records a run under ``root_path``, named as the dashboard was started
    (e.g. ``.venv/bin/attnres-probe``)."""
    hint = TRAIN_HINT.format(root=root_path)
    program = os.environ.get(COMMAND_ENV, "").strip()
    return program + hint.removeprefix("attnres-probe") if program else hint


def header(title: str) -> None:
    """The page title; a warning when there is no ROOT to serve, or when the URL named a run
    that is not served."""
    st.title(title)
    root_info = root()
    if root_info.path is None:
        st.warning(literal(root_info.note))
    refused = st.session_state.get(REFUSED_KEY)
    if refused:
        st.warning(literal(refused))


def error(err: BaseException) -> None:
    """A library error as one literal line (never a traceback)."""
    st.error(literal(describe_error(err)))


def chart(make: Callable[[], object], key: str, table: bool = False) -> object | None:
    """Draw the figure ``make()`` returns, exactly as the report and ``export`` draw it; an
    expected failure becomes a message. With ``table``, the numbers it draws follow in an
    expander with a CSV download. Returns the figure, or None when it could not be drawn."""
    try:
        fig = make()
    except (AnalysisError, ValueError, KeyError, FileNotFoundError) as err:
        st.info(literal(describe_error(err)))
        return None
    st.plotly_chart(fig, config=PLOTLY_CONFIG, key=key, theme=None)
    if table:
        numbers(fig, key)
    return fig


def numbers(fig, key: str) -> None:
    """The numbers a line figure draws, as a table with a CSV download."""
    frame = figure_table(fig)
    if frame.empty:
        return
    frame.columns = [html.unescape(str(c)) for c in frame.columns]
    frame.index = [html.unescape(str(i)) for i in frame.index]
    frame.index.name = "position"
    table_with_csv(frame, key, f"{key}.csv")


def table_with_csv(frame, key: str, file_name: str, **dataframe_options) -> None:
    """``frame`` in an expander, with a CSV download of it (``key``: the widgets' key stem)."""
    with st.expander("Numbers (table, CSV)"):
        st.dataframe(frame, key=f"{key}_table", **dataframe_options)
        st.download_button(
            "Download CSV",
            frame.to_csv().encode("utf-8"),
            file_name=file_name,
            mime="text/csv",
            key=f"{key}_csv",
        )


def live(
    body: Callable[[], None],
    is_live: bool,
    path: Path | None = None,
    row: RunInfo | None = None,
) -> None:
    """Run ``body`` as a fragment that re-runs on the refresh interval while ``is_live``.

    With ``row`` (the run shown), its one-line description comes first, read afresh on every
    refresh so a live run's step count moves along. With ``path``, a run that stops being live
    (finished, or its writer died) redraws the whole page once, which stops the polling and
    updates the sidebar.
    """

    def fragment() -> None:
        if row is not None:
            fresh = _info(str(root().path), row.name, version(path)) if path is not None else row
            st.caption(literal(describe_row(fresh)))
        body()
        if is_live and path is not None and _status(path) != "live":
            _info.clear()
            st.rerun()

    st.fragment(run_every=refresh_every(is_live))(fragment)()


def _status(path: Path) -> str:
    return run_info(path, confine=root().path).status


def current_rows() -> list[RunInfo]:
    """The run rows the entry script listed for this rerun."""
    return st.session_state.get("_rows", [])


def forget_loaded() -> None:
    """Drop every cached run, e.g. after the dashboard itself wrote into a store."""
    _open.clear()
    _info.clear()
    _names.clear()


def compare_picker(names: list[str], default: list[str], label: str = "Runs") -> list[str]:
    """The compared runs, bound to ``?compare=``: repeated keys (``compare=a&compare=b``) or
    one comma-separated list (``compare=a,b``); names not listed are dropped."""
    requested = st.query_params.get_all(COMPARE_KEY)
    if any(r not in names and "," in r for r in requested):
        split = [n for r in requested for n in (r.split(",") if r not in names else [r])]
        st.session_state[COMPARE_KEY] = [n for n in dict.fromkeys(split) if n in names]
        default = None  # the state set here is the value; a default beside it would warn
    return st.multiselect(label, names, default=default, key=COMPARE_KEY, bind="query-params")


def load_many(names: list[str]) -> dict[str, xr.Dataset]:
    """The runs ``names`` under ROOT that have recorded steps; one that cannot be read is
    warned about and left out."""
    root_path = root().path
    runs = {}
    for name in names:
        try:
            ds = load(confine.resolve_run(root_path, name))
        except Exception as err:  # noqa: BLE001 - one bad run must not hide the others
            st.warning(literal(f"{name}: {describe_error(err)}"))
            continue
        if ds.sizes.get("step", 0):
            runs[name] = ds
    return runs
