"""What every `python -m scripts.<name>` shares: its argument parser preamble and the torch device it
runs on.

    def main(argv=None) -> int:
        p = script_parser("scripts.collect", __doc__)
        ...
    if __name__ == "__main__":
        cli_main(main)          # vlmad.errors: a UserError is one line on stderr and exit code 2

`script_parser` takes the module docstring: its first paragraph is the description, the rest (usage
examples, outputs) the epilog, printed as written. `resolve_device` is the one reading of a device option
("auto", "cpu", "cuda", "cuda:1", ...), shared by the scripts, the trainer and the deployed agent.
"""

from __future__ import annotations

import argparse

import torch

from vlmad.errors import UserError


def script_parser(module: str, doc: str | None, epilog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of `python -m <module>`, described by the module docstring `doc`.

    Description = the docstring's first paragraph; epilog = `epilog` when given, else the remaining
    paragraphs (none for a one-paragraph docstring). Both keep their line breaks (usage examples).
    """
    head, _, rest = (doc or "").strip().partition("\n\n")
    return argparse.ArgumentParser(prog=f"python -m {module}", description=head,
                                   epilog=epilog if epilog is not None else (rest or None),
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def resolve_device(name: str | torch.device | None = "auto", what: str = "device") -> torch.device:
    """The torch device an option names: "auto" (or None) = the first CUDA GPU when torch sees one, else
    the CPU; otherwise any torch device string, checked to exist. `what` names the option in errors.

    Raises `UserError` for a string torch does not parse, or for a CUDA device without a CUDA GPU.
    """
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"{what}={name!r} is not a torch device (auto, cpu, cuda, cuda:1)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{what}={name!r} but torch sees no CUDA GPU here; use cpu or auto")
    return dev
