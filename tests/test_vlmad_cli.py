"""The shared script preamble and device option (vlmad/cli.py)."""

from __future__ import annotations

import pytest
import torch

from vlmad.cli import resolve_device, script_parser
from vlmad.errors import UserError

DOC = """Do one thing.

    python -m scripts.x --flag      # an example, kept as written

Outputs: a file.
"""


def test_script_parser_splits_the_docstring():
    p = script_parser("scripts.x", DOC)
    assert p.prog == "python -m scripts.x"
    assert p.description == "Do one thing."
    assert p.epilog.startswith("    python -m scripts.x --flag") and p.epilog.rstrip().endswith("a file.")
    assert "    python -m scripts.x --flag      # an example" in p.format_help()  # raw: indentation kept
    assert script_parser("scripts.x", "One paragraph only.").epilog is None
    assert script_parser("scripts.x", DOC, epilog="E").epilog == "E"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == want and resolve_device(None).type == want
    with pytest.raises(UserError, match=r"--device='gpu0' is not a torch device"):
        resolve_device("gpu0", "--device")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU"):
            resolve_device("cuda:1")
    else:
        assert resolve_device("cuda:0") == torch.device("cuda:0")
