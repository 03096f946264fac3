"""Remove per-run execution timestamps from notebooks (`make notebooks` calls this).

nbconvert records when each cell ran; those timestamps change on every run, so they would
make every re-execution a diff of every cell and turn parallel edits into conflicts.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def strip(path: Path) -> None:
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("execution", None)
    path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    for name in sys.argv[1:]:
        strip(Path(name))
