"""The file plumbing of the price catalogs, written once for the three clouds.

Each cloud's catalog (providers/aws_catalog.py, azure_catalog.py, gcp_catalog.py) is one or more CSV files shipped
in the package under `providers/data/`, overlaid by files of the same name and columns that `gpu-autoscaler prices
refresh` (providers/*_prices.py) writes under `<state_dir>/prices/`. Finding, reading and replacing those files is
the same for every cloud, and so are the rules for reading them: a bad shipped row is a packaging bug and raises;
a bad overlay row is skipped with a warning, and an overlay that cannot be read or has the wrong columns is ignored
with a warning, so that the daemon keeps running on the shipped prices. That lives here, so the clouds cannot drift
apart. What a row holds, how it is parsed and written, and how an offering is priced stay in each cloud's module,
which passes its columns and its row parser in. Warnings go to the logger the caller passes (its own), so they
keep the name of the catalog they are about.
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import TypeVar

SHIPPED_DIR = "data"  # in the `providers` package
OVERLAY_DIR = "prices"  # in the state dir

Key = tuple[str, str]  # (type, region)
_R = TypeVar("_R")
RowParser = Callable[[Mapping[str, str | None]], tuple[Key, _R]]  # one CSV row -> (key, value); raises if bad


class CatalogFormatError(ValueError):
    """A catalog file that does not have the expected columns or values."""


def shipped_text(name: str) -> str:
    """The text of the catalog file `name` as the package ships it (`providers/data/<name>`)."""
    return resources.files("providers").joinpath(f"{SHIPPED_DIR}/{name}").read_text(encoding="utf-8")


def overlay_path(state_dir: Path, name: str) -> Path:
    """Where `prices refresh` writes, and the daemon reads, the refreshed rows of the catalog file `name`."""
    return state_dir / OVERLAY_DIR / name


def read_rows(
    text: str,
    columns: tuple[str, ...],
    parse: RowParser[_R],
    *,
    where: str,
    strict: bool,
    log: logging.Logger,
) -> dict[Key, _R]:
    """Parse a catalog CSV, a row at a time with `parse` (which raises KeyError, TypeError or ValueError for a
    bad row). `strict`: a bad or repeated row raises CatalogFormatError; otherwise it is logged and skipped (a
    later row of the same key wins). A missing column always raises."""
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise CatalogFormatError(f"{where}: missing columns {missing}")
    out: dict[Key, _R] = {}
    for line, row in enumerate(reader, start=2):
        try:
            key, value = parse(row)
            if strict and key in out:
                raise CatalogFormatError(f"duplicate row for {key}")
        except (KeyError, TypeError, ValueError) as exc:
            if strict:
                raise CatalogFormatError(f"{where}:{line}: {exc}") from None
            log.warning("%s:%d: skipped: %s", where, line, exc)
            continue
        out[key] = value
    return out


def read_shipped(
    name: str,
    columns: tuple[str, ...],
    parse: RowParser[_R],
    *,
    log: logging.Logger,
) -> dict[Key, _R]:
    """The rows of the shipped catalog file `name`; any bad row raises CatalogFormatError (a packaging bug)."""
    return read_rows(
        shipped_text(name), columns, parse, where=f"providers/{SHIPPED_DIR}/{name}", strict=True, log=log
    )


def read_overlay(
    state_dir: Path,
    name: str,
    columns: tuple[str, ...],
    parse: RowParser[_R],
    *,
    log: logging.Logger,
) -> dict[Key, _R]:
    """The refreshed rows of the catalog file `name` under `state_dir` ({} when there are none or the file cannot
    be used: that is logged, and the shipped catalog serves)."""
    path = overlay_path(state_dir, name)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        log.warning("%s: cannot read refreshed prices, using the shipped catalog: %s", path, exc)
        return {}
    try:
        return read_rows(text, columns, parse, where=str(path), strict=False, log=log)
    except CatalogFormatError as exc:
        log.warning("%s: ignored, using the shipped catalog: %s", path, exc)
        return {}


def write_atomically(path: Path, text: str) -> Path:
    """Replace `path` with `text` so that a reader sees the old file or the new one, never half of one (a temporary
    file in the same directory, flushed to disk, then renamed over `path`; the rename is made durable where the
    filesystem lets the directory be synced). Raises OSError when the file cannot be written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not every filesystem lets a directory be opened
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return path
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
    return path
