"""The dashboard's entry script: ``streamlit run`` this file (``attnres-probe dashboard`` does).

It sets up the page, the navigation and the sidebar shared by every page, then runs the page
the user is on. Pages live in ``views/`` (not ``pages/``, which Streamlit would treat as a
second, automatic navigation).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from attnres_probe.app import ui
from attnres_probe.app.text import literal

VIEWS = Path(__file__).resolve().parent / "views"
PAGES = [
    st.Page(VIEWS / "runs.py", title="Runs", url_path="home", default=True),
    # The default page lives at "/"; "/runs" (a link people type) opens the same page.
    st.Page(VIEWS / "runs.py", title="Runs", url_path="runs", visibility="hidden"),
    st.Page(VIEWS / "dilution.py", title="Dilution", url_path="dilution"),
    st.Page(VIEWS / "depth_attention.py", title="Depth attention", url_path="depth-attention"),
    st.Page(VIEWS / "gradients.py", title="Gradients", url_path="gradients"),
    st.Page(VIEWS / "training.py", title="Training", url_path="training"),
    st.Page(VIEWS / "pruning.py", title="Pruning", url_path="pruning"),
    st.Page(VIEWS / "compare.py", title="Compare", url_path="compare"),
]

st.set_page_config(page_title="attnres-probe", layout="wide")
page = st.navigation(PAGES)

root = ui.root()
all_rows = ui.rows(root.path) if root.path is not None else []
st.session_state["_rows"] = all_rows
ui.run_picker(all_rows, root.path or Path("."))
ui.refresh_picker()
st.sidebar.caption("ROOT: " + literal(root.path if root.path else "(none)"))

page.run()
