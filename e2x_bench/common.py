"""What every benchmark writes: ``reports/bench/<name>.{json,md}`` with command and machine.

Each result records the command that made it, the machine and the library versions, so a
reader can reproduce it. Ratios are taken within one run, never across days.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from e2x_pipeline.io_utils import write_json, write_text


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_bench(out_dir: Path, name: str, result: dict, markdown: str) -> None:
    command = "e2x " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = {"command": command, "environment": environment(), **result}
    write_json(out_dir / f"{name}.json", result)
    write_text(
        out_dir / f"{name}.md", f"# Benchmark: {name}\n\nCommand: `{command}`\n\n{markdown}\n"
    )
