"""Rules about the product's own source that a reviewer would otherwise have to remember."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_asyncio_wait_for_in_the_product() -> None:
    """On Python 3.11, asyncio.wait_for returns normally when a cancel lands in the same loop
    iteration as the awaited result, so a cancelled loop keeps running (a watch task once hung CI
    for 300 s that way). `async with asyncio.timeout(...)` does not have that bug."""
    offenders = [
        f"{path.relative_to(ROOT)}:{n}"
        for package in ("injector", "webhook")
        for path in sorted((ROOT / package).rglob("*.py"))
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if "asyncio.wait_for(" in line
    ]
    assert not offenders, f"use `async with asyncio.timeout(...)` instead of asyncio.wait_for at {offenders}"
