"""``pydoc_text``: (source, target) text pairs for a summarization-like task.

Stands in for CNN/DailyMail (the paper's T5 data; a download). Everything
comes from the Python installation, so it is available offline:

* ``train`` / ``validation`` / ``test``: docstrings of the public modules,
  classes, functions and methods of a fixed list of standard-library modules.
  ``source`` = the whole docstring (whitespace collapsed, truncated to
  ``max_source_chars``), ``target`` = its first sentence. Only docstrings with
  more than one sentence are kept (so the target is a strict summary), and
  duplicates are dropped. The split is a hash (CRC32) of the qualified name:
  80/10/10.
* ``pretrain``: a text corpus for pre-training, the paragraphs of the Python
  documentation topics shipped in ``pydoc_data.topics`` (same features;
  ``target`` = the paragraph's first sentence).

Features: ``source``, ``target``, ``name`` (text). Configs: ``tiny`` (at most
64/16/16 pairs and 64 paragraphs, sources cut to 256 characters), ``cpu``
(all pairs, sources cut to 1,024 characters), ``gpu`` (all, 4,096 characters).
The content depends on the Python version (3.11 here): the version is in the
config's description, and the data are prepared per data directory.
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
import warnings
import zlib

import numpy as np
import tensorflow_datasets as tfds

from pipelines.data.common import ArrayBuilder, ArrayConfig

__all__ = ["PydocText", "docstring_pairs", "first_sentence", "corpus_paragraphs", "MODULES"]

#: Standard-library modules whose docstrings make the pairs (side-effect free to import).
MODULES = (
    "abc", "argparse", "ast", "asyncio", "base64", "bisect", "calendar", "cmd", "codecs", "collections",
    "colorsys", "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "dis", "doctest", "email", "enum", "filecmp", "fnmatch", "fractions", "ftplib", "functools", "getopt",
    "gettext", "glob", "gzip", "hashlib", "heapq", "hmac", "html", "html.parser", "http.client",
    "http.server", "imaplib", "inspect", "io", "ipaddress", "itertools", "json", "locale", "logging",
    "lzma", "mailbox", "math", "mimetypes", "numbers", "operator", "optparse", "os", "pathlib", "pickle",
    "pickletools", "platform", "plistlib", "poplib", "pprint", "queue", "quopri", "random", "re", "reprlib",
    "sched", "secrets", "selectors", "shelve", "shlex", "shutil", "signal", "smtplib", "socket",
    "socketserver", "sqlite3", "statistics", "string", "struct", "subprocess", "symtable", "tarfile",
    "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace", "traceback", "types", "typing",
    "unittest", "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "xml.dom.minidom",
    "xml.etree.ElementTree", "zipfile", "zlib",
)

_RULE = re.compile(r"[*=~^-]{3,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z`'\"(\[])")


def _clean(text: str) -> str:
    return " ".join(text.split())


def first_sentence(text: str) -> str:
    """The first sentence of the first paragraph (whitespace collapsed)."""
    para = inspect.cleandoc(text).split("\n\n", 1)[0]
    return _SENTENCE_END.split(_clean(para), 1)[0]


def _members(module):
    yield module.__name__, module
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        yield f"{module.__name__}.{name}", obj
        if inspect.isclass(obj):
            for mname, meth in sorted(vars(obj).items()):
                if not mname.startswith("_") and callable(meth):
                    yield f"{module.__name__}.{name}.{mname}", meth


def docstring_pairs(modules=MODULES, max_source_chars: int = 1024) -> list[dict]:
    """``[{"name", "source", "target"}]`` from the modules' docstrings, in a fixed order."""
    pairs, seen = [], set()
    for modname in modules:
        try:
            module = importlib.import_module(modname)
        except ImportError:  # e.g. a Python built without sqlite3
            continue
        for qualname, obj in _members(module):
            with warnings.catch_warnings():
                # typing.io and typing.re (Python < 3.12) warn when their docstring is read; neither makes a pair.
                warnings.simplefilter("ignore", DeprecationWarning)
                doc = inspect.getdoc(obj) if not isinstance(obj, str) else None
            if not doc or not isinstance(doc, str):
                continue
            source, target = _clean(doc), first_sentence(doc)
            if not (10 <= len(target) <= 300) or len(source) < len(target) + 20 or source in seen:
                continue
            seen.add(source)
            pairs.append({"name": qualname, "source": source[:max_source_chars], "target": target})
    return pairs


def corpus_paragraphs(max_chars: int = 1024) -> list[dict]:
    """Paragraphs of ``pydoc_data.topics`` (topic order), as ``{"name", "source", "target"}``."""
    from pydoc_data.topics import topics

    out = []
    for topic in sorted(topics):
        for para in topics[topic].split("\n\n"):
            para = _RULE.sub(" ", para)  # heading underlines
            text = _clean(para)
            if len(text) >= 40:
                out.append({"name": topic, "source": text[:max_chars], "target": first_sentence(para)})
    return out


def _split_of(name: str) -> str:
    bucket = zlib.crc32(name.encode("utf-8")) % 10
    return "test" if bucket == 0 else "validation" if bucket == 1 else "train"


class PydocText(ArrayBuilder):
    """Python docstrings (source) and their first sentences (target), plus a docs corpus."""

    name = "pydoc_text"
    VERSION = tfds.core.Version("1.0.0")
    _PY = f"python {sys.version_info.major}.{sys.version_info.minor}"
    BUILDER_CONFIGS = [
        ArrayConfig(name="tiny", params={"max_source_chars": 256, "limit": {"train": 64, "validation": 16, "test": 16, "pretrain": 64}},
                    description=f"small subset ({_PY})"),
        ArrayConfig(name="cpu", params={"max_source_chars": 1024, "limit": {}}, description=f"all pairs ({_PY})"),
        ArrayConfig(name="gpu", params={"max_source_chars": 4096, "limit": {}}, description=f"all pairs, long sources ({_PY})"),
    ]

    def features(self, params):
        del params
        return {"name": tfds.features.Text(), "source": tfds.features.Text(), "target": tfds.features.Text()}

    def splits(self, params):
        out = {"train": [], "validation": [], "test": []}
        for pair in docstring_pairs(max_source_chars=params["max_source_chars"]):
            out[_split_of(pair["name"])].append(pair)
        out["pretrain"] = corpus_paragraphs(params["max_source_chars"])
        limit = params["limit"]
        return {s: v[: limit[s]] if s in limit else v for s, v in out.items()}


def n_examples(arrays: dict[str, np.ndarray]) -> int:
    """Number of examples in a loaded split."""
    return len(next(iter(arrays.values())))
