"""The shipped AWS on-demand catalog and its overlay of refreshed prices."""

from __future__ import annotations

import csv
import io
import logging
from datetime import date
from pathlib import Path

import pytest

from providers.aws_catalog import (
    COLUMNS,
    AwsCatalog,
    CatalogFormatError,
    CatalogPrice,
    format_rows,
    overlay_path,
    read_rows,
    shipped_text,
    write_overlay,
)

REQUIRED_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p4d", "p4de", "p5", "p5e", "p5en")
# p5e: the source lists the type with no on-demand price (Capacity Blocks only), so it cannot ship.
UNSOURCED_FAMILIES = frozenset({"p5e"})
MAJOR_REGIONS = ("us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1", "ap-northeast-1")


def shipped_rows() -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(shipped_text())))


def family(instance_type: str) -> str:
    return instance_type.split(".", 1)[0]


def test_shipped_file_has_the_columns_and_only_major_regions() -> None:
    reader = csv.DictReader(io.StringIO(shipped_text()))
    assert tuple(reader.fieldnames or ()) == COLUMNS
    rows = list(reader)
    assert len(rows) >= 150
    assert {r["region"] for r in rows} <= set(MAJOR_REGIONS)


def test_every_required_family_is_priced_in_us_east_1() -> None:
    catalog = AwsCatalog.shipped()
    in_us_east_1 = {family(t) for t in catalog.instance_types() if catalog.price(t, "us-east-1") is not None}
    for fam in REQUIRED_FAMILIES:
        if fam in UNSOURCED_FAMILIES:
            assert fam not in in_us_east_1  # no invented price
        else:
            assert fam in in_us_east_1, fam


def test_every_size_of_the_g_families_is_there() -> None:
    types = AwsCatalog.shipped().instance_types()
    sizes = ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge")
    for fam in ("g4dn", "g5", "g6", "g6e"):
        for size in sizes:
            assert f"{fam}.{size}" in types
    assert "g4dn.metal" in types
    for fam in ("g5", "g6", "g6e"):
        assert {f"{fam}.24xlarge", f"{fam}.48xlarge"} <= types
    assert {"p4d.24xlarge", "p4de.24xlarge", "p5.48xlarge", "p5en.48xlarge"} <= types


def test_every_row_has_a_source_a_date_and_sane_values() -> None:
    for row in shipped_rows():
        assert row["source"].startswith("skypilot-org/skypilot-catalog@"), row
        assert ":catalogs/" in row["source"], row
        as_of = date.fromisoformat(row["as_of"])
        assert date(2020, 1, 1) <= as_of <= date.today()
        assert 0 < float(row["on_demand_usd_per_hour"]) < 200
        assert int(row["gpus"]) in (1, 2, 4, 8)
        assert row["gpu"]


def test_no_duplicate_keys() -> None:
    keys = [(r["instance_type"], r["region"]) for r in shipped_rows()]
    assert len(keys) == len(set(keys))


def test_known_facts() -> None:
    """Spot checks against the source (and the project's shared price extract, which agrees)."""
    catalog = AwsCatalog.shipped()
    p5 = catalog.price("p5.48xlarge", "us-east-2")
    assert p5 is not None and (p5.usd_per_hour, p5.gpus, p5.gpu) == (98.32, 8, "H100")
    g5 = catalog.price("g5.48xlarge", "us-west-2")
    assert g5 is not None and (g5.usd_per_hour, g5.gpus, g5.gpu) == (16.288, 8, "A10G")
    t4 = catalog.price("g4dn.12xlarge", "us-east-2")
    assert t4 is not None and (t4.usd_per_hour, t4.gpus, t4.gpu) == (3.912, 4, "T4")
    p4de = catalog.price("p4de.24xlarge", "us-east-1")
    assert p4de is not None and p4de.gpu == "A100-80GB"
    # Regions where a family is not offered (in the source) have no row rather than a guess.
    assert catalog.price("g6.xlarge", "eu-west-1") is None
    assert catalog.price("p5e.48xlarge", "us-east-1") is None


def test_within_a_family_regional_premiums_are_consistent() -> None:
    """A transcription slip would show as one size with a different regional premium than its siblings."""
    catalog = AwsCatalog.shipped()
    for fam in ("g4dn", "g5", "g6", "g6e"):
        for region in MAJOR_REGIONS:
            ratios = []
            for t in catalog.instance_types():
                here, base = catalog.price(t, region), catalog.price(t, "us-east-1")
                if family(t) == fam and here is not None and base is not None:
                    ratios.append(here.usd_per_hour / base.usd_per_hour)
            if ratios:
                assert max(ratios) - min(ratios) < 0.01, (fam, region, ratios)


def test_load_without_state_dir_is_the_shipped_catalog(tmp_path: Path) -> None:
    shipped = AwsCatalog.shipped()
    assert AwsCatalog.load(None).as_dict() == shipped.as_dict()
    assert AwsCatalog.load(tmp_path).as_dict() == shipped.as_dict()  # no overlay file yet
    assert shipped.oldest_as_of() == min(date.fromisoformat(r["as_of"]) for r in shipped_rows())


def test_overlay_rows_win_over_shipped_rows(tmp_path: Path) -> None:
    fresh = CatalogPrice(0.9, 1, "A10G", "aws-price-list-api", date(2026, 11, 1))
    new_type = CatalogPrice(2.5, 1, "", "aws-price-list-api", date(2026, 11, 1))
    write_overlay(tmp_path, {("g5.xlarge", "us-east-1"): fresh, ("x9.large", "us-east-1"): new_type})
    catalog = AwsCatalog.load(tmp_path)
    assert catalog.price("g5.xlarge", "us-east-1") == fresh
    assert catalog.price("x9.large", "us-east-1") == new_type
    assert "x9.large" in catalog.instance_types()
    shipped = AwsCatalog.shipped()
    untouched = catalog.price("g5.xlarge", "us-west-2")
    assert untouched is not None and untouched == shipped.price("g5.xlarge", "us-west-2")
    assert len(catalog) == len(shipped) + 1
    assert catalog.oldest_as_of() == shipped.oldest_as_of()


def test_overlay_round_trip_keeps_every_field(tmp_path: Path) -> None:
    prices = {
        ("g6.xlarge", "eu-central-1"): CatalogPrice(1.0064, 1, "L4", "aws-price-list-api", date(2026, 1, 2)),
        ("p5.48xlarge", "us-east-1"): CatalogPrice(55.04, 8, "H100", "aws-price-list-api", date(2026, 1, 2)),
    }
    path = write_overlay(tmp_path, prices)
    assert path == overlay_path(tmp_path) == tmp_path / "prices" / "aws_on_demand.csv"
    assert read_rows(path.read_text(), where="t", strict=True) == prices
    assert [p.name for p in path.parent.iterdir()] == ["aws_on_demand.csv"]  # no temporary file left


def test_a_bad_overlay_row_is_skipped_and_a_bad_overlay_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = CatalogPrice(0.5, 1, "A10G", "aws-price-list-api", date(2026, 11, 1))
    text = format_rows({("g5.xlarge", "us-east-1"): good})
    text += "g5.2xlarge,us-east-1,not-a-number,1,A10G,aws-price-list-api,2026-11-01\n"
    text += "g5.4xlarge,us-east-1,-1,1,A10G,aws-price-list-api,2026-11-01\n"
    path = overlay_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    with caplog.at_level(logging.WARNING):
        catalog = AwsCatalog.load(tmp_path)
    assert catalog.price("g5.xlarge", "us-east-1") == good
    assert catalog.price("g5.2xlarge", "us-east-1") == AwsCatalog.shipped().price("g5.2xlarge", "us-east-1")
    assert "skipped" in caplog.text

    path.write_text("type,price\ng5.xlarge,0.1\n")  # not a catalog at all
    assert AwsCatalog.load(tmp_path).as_dict() == AwsCatalog.shipped().as_dict()


def test_strict_reading_rejects_duplicates_and_gaps() -> None:
    header = ",".join(COLUMNS) + "\n"
    row = "g5.xlarge,us-east-1,1.006,1,A10G,src@abc:path,2025-01-01\n"
    with pytest.raises(CatalogFormatError, match="duplicate"):
        read_rows(header + row + row, where="t", strict=True)
    with pytest.raises(CatalogFormatError, match="source"):
        read_rows(header + "g5.xlarge,us-east-1,1.006,1,A10G,,2025-01-01\n", where="t", strict=True)
    with pytest.raises(CatalogFormatError, match="Invalid isoformat"):
        read_rows(header + "g5.xlarge,us-east-1,1.006,1,A10G,src,yesterday\n", where="t", strict=True)
    with pytest.raises(CatalogFormatError, match="missing columns"):
        read_rows("instance_type,region\n", where="t", strict=True)


def test_regions_age_and_empty_catalog() -> None:
    catalog = AwsCatalog.shipped()
    assert catalog.regions(["p4de.24xlarge"]) == {"us-east-1", "us-west-2"}
    assert catalog.regions() == set(MAJOR_REGIONS)
    price = CatalogPrice(1.0, 1, "L4", "s", date(2026, 1, 1))
    assert price.age_days(date(2026, 1, 31)) == 30
    assert price.age_days(date(2025, 12, 31)) == 0
    with pytest.raises(ValueError):
        AwsCatalog({}).oldest_as_of()
