"""The sources load no code from data: a scan of every module with ``ast``.

A stored run, checkpoint or config must never be able to run code when it is opened. So the
package (``attnres_probe/``, ``hooks/``, ``cli/``, ``app/``) and the ``scripts/`` and
``benchmarks/`` beside it may not:

- import ``pickle``, ``_pickle``, ``cPickle``, ``cloudpickle``, ``dill``, ``shelve`` or
  ``marshal`` (also through ``__import__`` / ``importlib.import_module``);
- call ``torch.load`` without ``weights_only=True``;
- call the built-ins ``eval``, ``exec`` or ``compile`` (``re.compile``, ``torch.compile`` and
  ``model.eval()`` are other functions);
- call ``yaml.load`` / ``yaml.load_all`` without a safe loader, or ``yaml.unsafe_load``;
- run a shell: ``subprocess.*(..., shell=<not False>)``, ``os.system``, ``os.popen``,
  ``asyncio.create_subprocess_shell``;
- call ``pandas.read_pickle``, or ``numpy.load`` with ``allow_pickle`` not False;
- use ``streamlit.cache_data`` (it pickles every return value and unpickles it on each hit;
  ``cache_resource`` keeps the object itself).

Names are resolved through the module's imports (``import numpy as np``,
``from torch import load``), so an alias does not hide a call. The snippet tests below show
each rule catching what it is meant to catch, and leaving the safe spelling alone.

The dashboard's other guarantees live beside its code: it binds to 127.0.0.1 unless told
otherwise (tests/test_app_cli.py::test_dashboard_binds_localhost_headless_over_the_given_root),
serves only runs under its ROOT and shows names and attributes literally (tests/test_app.py,
tests/test_app_confine.py).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCANNED = ("attnres_probe", "hooks", "cli", "app", "scripts", "benchmarks")
PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "cloudpickle", "dill", "shelve", "marshal"}
CODE_BUILTINS = {"eval", "exec", "compile"}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
SUBPROCESS_CALLS = {"run", "call", "check_call", "check_output", "Popen", "getoutput"}
PICKLING_CACHES = {"streamlit.cache_data", "streamlit.experimental_memo"}


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    rule: str
    detail: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.detail}"


class Scanner(ast.NodeVisitor):
    """Collects the findings of one module."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.aliases: dict[str, str] = {}  # local name -> dotted name it was imported as
        self.local_names: set[str] = set()  # functions / classes the module defines itself
        self.findings: list[Finding] = []

    def report(self, node: ast.AST, rule: str, detail: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), rule, detail))

    # -- names

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._check_module(node, alias.name)
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                top = alias.name.split(".")[0]
                self.aliases[top] = top

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        module = node.module or ""
        if node.level == 0:
            self._check_module(node, module)
        for alias in node.names:
            if node.level == 0:
                self.aliases[alias.asname or alias.name] = f"{module}.{alias.name}"
            else:
                self.local_names.add(alias.asname or alias.name)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.local_names.add(node.name)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.local_names.add(node.name)
        self.generic_visit(node)

    def _check_module(self, node: ast.AST, name: str) -> None:
        if name in PICKLING_MODULES or name.split(".")[0] in PICKLING_MODULES:
            self.report(node, "pickle-import", f"imports {name}")

    def dotted(self, func: ast.expr) -> str | None:
        """The imported dotted name a call target stands for, e.g. ``np.load`` -> numpy.load."""
        parts = []
        while isinstance(func, ast.Attribute):
            parts.append(func.attr)
            func = func.value
        if not isinstance(func, ast.Name):
            return None
        head = self.aliases.get(func.id, func.id)
        return ".".join([head, *reversed(parts)])

    # -- names

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.generic_visit(node)
        self._check_name(node)

    def visit_Name(self, node: ast.Name) -> None:
        self._check_name(node)

    def _check_name(self, node: ast.Attribute | ast.Name) -> None:
        if self.dotted(node) in PICKLING_CACHES:
            self.report(node, "pickle-load", f"uses {self.dotted(node)} (pickles its values)")

    # -- calls

    def visit_Call(self, node: ast.Call) -> None:
        self.generic_visit(node)
        name = self.dotted(node.func)
        if name is None:
            return
        keywords = {k.arg: k.value for k in node.keywords if k.arg is not None}
        spread = any(k.arg is None for k in node.keywords)  # **kwargs: cannot be proven safe

        if isinstance(node.func, ast.Name) and node.func.id in CODE_BUILTINS:
            if node.func.id not in self.aliases and node.func.id not in self.local_names:
                self.report(node, "code-from-string", f"calls the built-in {node.func.id}()")
        if name in ("__import__", "importlib.import_module") and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                self._check_module(node, first.value)
        if name == "torch.load" and not _is_true(keywords.get("weights_only")):
            self.report(node, "torch-load", "torch.load without weights_only=True")
        if name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            if not _is_safe_loader(loader):
                self.report(node, "yaml-load", f"{name} without a safe Loader")
        if name in ("yaml.unsafe_load", "yaml.unsafe_load_all"):
            self.report(node, "yaml-load", f"calls {name}")
        module, _, function = name.rpartition(".")
        if module == "subprocess" and function in SUBPROCESS_CALLS:
            shell = keywords.get("shell")
            if function == "getoutput" or spread or (shell is not None and not _is_false(shell)):
                self.report(node, "shell", f"{name} through a shell")
        if name in ("os.system", "os.popen", "asyncio.create_subprocess_shell"):
            self.report(node, "shell", f"calls {name}")
        if name == "pandas.read_pickle" or function == "read_pickle":
            self.report(node, "pickle-load", f"calls {name}")
        if name == "numpy.load":
            allow = keywords.get("allow_pickle")
            if spread or (allow is not None and not _is_false(allow)):
                self.report(node, "pickle-load", "numpy.load with allow_pickle")


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _is_false(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is False


def _is_safe_loader(node: ast.expr | None) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr in SAFE_YAML_LOADERS
    return isinstance(node, ast.Name) and node.id in SAFE_YAML_LOADERS


def scan_source(source: str, path: str = "<snippet>") -> list[Finding]:
    scanner = Scanner(path)
    scanner.visit(ast.parse(source, filename=path))
    return scanner.findings


def scanned_files() -> list[Path]:
    files = []
    for folder in SCANNED:
        files += [p for p in sorted((REPO / folder).rglob("*.py")) if "__pycache__" not in p.parts]
    return files


# ----------------------------------------------------------------------------- the sources


def test_the_scan_reads_every_source_folder():
    files = scanned_files()
    for folder in SCANNED:
        assert any(p.relative_to(REPO).parts[0] == folder for p in files), folder
    assert len(files) > 40


def test_no_source_loads_code_from_data():
    findings = []
    for path in scanned_files():
        rel = path.relative_to(REPO).as_posix()
        findings += scan_source(path.read_text(encoding="utf-8"), rel)
    assert findings == [], "\n".join(map(str, findings))


# ----------------------------------------------------------------------------- the rules

CAUGHT = {
    "import pickle": "pickle-import",
    "import cPickle": "pickle-import",
    "import dill as d": "pickle-import",
    "from shelve import open": "pickle-import",
    "import marshal": "pickle-import",
    "from _pickle import loads": "pickle-import",
    "mod = __import__('pickle')": "pickle-import",
    "import importlib\nm = importlib.import_module('dill')": "pickle-import",
    "import torch\nsd = torch.load(path)": "torch-load",
    "import torch\nsd = torch.load(path, weights_only=False)": "torch-load",
    "import torch as T\nsd = T.load(path, map_location='cpu')": "torch-load",
    "from torch import load\nsd = load(path)": "torch-load",
    "import torch\nsd = torch.load(path, **options)": "torch-load",
    "value = eval(text)": "code-from-string",
    "exec(stored)": "code-from-string",
    "code = compile(text, 'x', 'exec')": "code-from-string",
    "import yaml\ncfg = yaml.load(text)": "yaml-load",
    "import yaml\ncfg = yaml.load(text, Loader=yaml.FullLoader)": "yaml-load",
    "import yaml\ncfg = yaml.load(text, yaml.UnsafeLoader)": "yaml-load",
    "import yaml\ncfg = yaml.unsafe_load(text)": "yaml-load",
    "import subprocess\nsubprocess.run(cmd, shell=True)": "shell",
    "from subprocess import Popen\nPopen(cmd, shell=flag)": "shell",
    "import subprocess as sp\nsp.check_output(cmd, shell=1)": "shell",
    "import subprocess\nsubprocess.getoutput(cmd)": "shell",
    "import os\nos.system(cmd)": "shell",
    "import os\nout = os.popen(cmd).read()": "shell",
    "import pandas as pd\nframe = pd.read_pickle(path)": "pickle-load",
    "from pandas import read_pickle\nframe = read_pickle(path)": "pickle-load",
    "import numpy as np\na = np.load(path, allow_pickle=True)": "pickle-load",
    "import numpy\na = numpy.load(path, allow_pickle=ok)": "pickle-load",
    "import streamlit as st\n@st.cache_data(ttl=5)\ndef f():\n    pass": "pickle-load",
    "import streamlit as st\n@st.cache_data\ndef f():\n    pass": "pickle-load",
    "from streamlit import cache_data\n@cache_data\ndef f():\n    pass": "pickle-load",
}

ALLOWED = [
    "import torch\nsd = torch.load(path, weights_only=True)",
    "import torch\nfast = torch.compile(model)",
    "import re\npattern = re.compile('x+')",
    "model.eval()",
    "import json\nvalue = json.loads(text)",
    "import yaml\ncfg = yaml.safe_load(text)",
    "import yaml\ncfg = yaml.load(text, Loader=yaml.SafeLoader)",
    "import subprocess\nsubprocess.run(['git', 'status'], check=True)",
    "import subprocess\nsubprocess.run(cmd, shell=False)",
    "import numpy as np\na = np.load(path)",
    "import numpy as np\na = np.load(path, allow_pickle=False)",
    "from safetensors.torch import load_file\nsd = load_file(path)",
    "def compile(spec):\n    return spec\ncompiled = compile('x')",
    "import streamlit as st\n@st.cache_resource(ttl=5)\ndef f():\n    pass",
]


@pytest.mark.parametrize("source,rule", list(CAUGHT.items()), ids=list(CAUGHT))
def test_each_rule_catches_what_it_forbids(source, rule):
    findings = scan_source(source)
    assert [f.rule for f in findings] == [rule], findings


@pytest.mark.parametrize("source", ALLOWED)
def test_the_safe_spellings_pass(source):
    assert scan_source(source) == []


def test_a_finding_names_the_file_and_line():
    (finding,) = scan_source("import json\n\nimport pickle\n", "attnres_probe/x.py")
    assert str(finding) == "attnres_probe/x.py:3: pickle-import: imports pickle"
