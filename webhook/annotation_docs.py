"""The annotation tables of docs/annotations.md and README.md, generated from the contract's rows
(webhook/annotation_table.py), between marker comments; the prose around them is hand-written.

    python -m webhook.annotation_docs          # rewrite both tables
    python -m webhook.annotation_docs --check  # exit 1 when a table drifted from the rows
"""

from __future__ import annotations

import sys
from pathlib import Path

from .annotation_error import PREFIX
from .annotation_table import TABLE, Annotation

ROOT = Path(__file__).resolve().parent.parent
BEGIN = "<!-- BEGIN generated annotation table: python -m webhook.annotation_docs (edit webhook/annotation_table.py) -->"
END = "<!-- END generated annotation table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _accepted(a: Annotation) -> str:
    text = a.accepted.removeprefix("use ")
    return text[:1].upper() + text[1:]


def docs_table() -> str:
    rows = ["| annotation | default | meaning | accepted |", "|---|---|---|---|"]
    rows += [f"| `{PREFIX}{a.name}` | {_cell(a.default)} | {_cell(a.meaning)} | {_cell(_accepted(a))} |" for a in TABLE]
    return "\n".join(rows)


def readme_table() -> str:
    rows = ["| annotation | default | meaning |", "|---|---|---|"]
    rows += [f"| `{PREFIX}{a.name}` | {_cell(a.default)} | {_cell(a.readme)} |" for a in TABLE if a.readme]
    return "\n".join(rows)


TARGETS = {"docs/annotations.md": docs_table, "README.md": readme_table}


def splice(text: str, table: str, where: str) -> str:
    """`text` with the part between the markers replaced by `table`."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"{where}: needs exactly one {BEGIN!r} ... {END!r} pair")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def drifted(root: Path = ROOT) -> list[str]:
    """The files whose table is not what the rows generate."""
    out = []
    for name, make in TARGETS.items():
        text = (root / name).read_text(encoding="utf-8")
        if splice(text, make(), name) != text:
            out.append(name)
    return out


def main(argv: list[str]) -> int:
    if argv[:1] == ["--check"]:
        bad = drifted()
        for name in bad:
            print(f"{name}: the annotation table differs from webhook/annotation_table.py; "
                  "run python -m webhook.annotation_docs", file=sys.stderr)
        return 1 if bad else 0
    for name, make in TARGETS.items():
        path = ROOT / name
        path.write_text(splice(path.read_text(encoding="utf-8"), make(), name), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
