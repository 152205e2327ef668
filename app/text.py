"""Text the dashboard shows: stored strings made literal, errors as one line, attributes
decoded for display. No Streamlit here, so the escaping is testable on its own."""

from __future__ import annotations

import json
import re

TRAIN_HINT = "attnres-probe train --residual full --layers 4 --steps 200 --out {root}/full-s0"
COMMAND_ENV = "ATTNRES_PROBE_COMMAND"  # the command line as the user runs it, for hints

_MARKDOWN_SPECIALS = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&])")


def literal(text: object) -> str:
    """``text`` escaped so Streamlit markdown shows it verbatim (no HTML, links, emphasis)."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", str(text)).replace("\n", " ")


def describe_error(err: BaseException) -> str:
    """One line for a failure: the error's own message, prefixed by its type when unclear."""
    text = " ".join(str(err).split()) or type(err).__name__
    if isinstance(err, ValueError | FileNotFoundError | PermissionError):
        return text
    return f"{type(err).__name__}: {text}"


def decoded_attrs(attrs: dict) -> dict:
    """A run's attributes with the JSON strings among them (model_config, versions, ...)
    decoded into nested values, for display; other values unchanged."""
    out = {}
    for key, value in attrs.items():
        if isinstance(value, str) and value[:1] in "{[":
            try:
                value = json.loads(value)
            except ValueError:
                pass
        out[str(key)] = value
    return out
