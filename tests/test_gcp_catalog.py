"""The shipped GCE catalog: every row sourced and dated, host and GPU prices added up, composite type names."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from autoscaler.model import Market
from providers.gcp_catalog import (
    ACCELERATOR_COLUMNS,
    MACHINE_COLUMNS,
    CatalogFormatError,
    GcpCatalog,
    GcpType,
    format_machines,
    parse_machine_row,
    parse_type,
    read_rows,
    type_of_instance,
)

OD, SPOT = Market.ON_DEMAND, Market.SPOT
MAJOR_REGIONS = ("us-central1", "us-east1", "us-west1", "europe-west4", "asia-east1")


def test_every_shipped_row_has_a_source_and_a_date() -> None:
    catalog = GcpCatalog.shipped()
    parts = [r.price for r in catalog.machines.values()] + list(catalog.accelerators.values())
    assert len(parts) > 100
    assert all(
        p.source.startswith("skypilot-org/skypilot-catalog@") and p.as_of == date(2024, 5, 7) for p in parts
    )
    assert all(p.spot is not None and 0 < p.spot < p.on_demand for p in parts)


@pytest.mark.parametrize(
    ("itype", "region", "market", "usd", "gpus"),
    [
        ("g2-standard-4", "us-central1", OD, 0.14679 + 0.56004, 1),  # host + one L4: GCE's $0.7068
        ("g2-standard-24", "europe-west4", SPOT, 0.37042 + 2 * 0.2106, 2),
        ("a2-highgpu-1g", "us-central1", OD, 0.73948 + 2.93391, 1),  # host + one A100: GCE's $3.6734
        ("a2-highgpu-8g", "us-east1", SPOT, 2.36604 + 8 * 1.1472, 8),
        ("a3-highgpu-8g", "us-east4", OD, 9.46006 + 8 * 9.79655, 8),
        ("n1-standard-8+nvidia-tesla-t4", "us-west1", OD, 0.38 + 0.35, 1),
        ("n1-standard-8+nvidia-tesla-t4x2", "asia-east1", SPOT, 0.08447 + 2 * 0.14, 2),
        ("n1-standard-64+nvidia-tesla-v100x8", "europe-west4", OD, 3.34669 + 8 * 2.604, 8),
        ("n1-standard-4+nvidia-l4", "us-central1", OD, 0.19 + 0.56004, 1),
    ],
)
def test_price_adds_the_gpus_to_the_host(itype: str, region: str, market: Market, usd: float, gpus: int) -> None:
    price = GcpCatalog.shipped().price(itype, region, market)
    assert price is not None
    assert price.usd_per_hour == pytest.approx(usd)
    assert price.gpus == gpus


def test_no_price_without_every_part() -> None:
    catalog = GcpCatalog.shipped()
    assert catalog.price("a2-highgpu-1g", "asia-east1", OD) is None  # no A2 there in the source
    assert catalog.price("n1-standard-8+nvidia-tesla-v100", "us-east4", OD) is None  # no V100 price there
    assert catalog.price("n1-standard-8+nvidia-made-up", "us-central1", OD) is None
    assert catalog.price("not a type!", "us-central1", OD) is None


def test_coverage_of_the_major_regions() -> None:
    catalog = GcpCatalog.shipped()
    for region in MAJOR_REGIONS:
        for itype in ("g2-standard-8", "n1-standard-8+nvidia-tesla-t4", "n1-standard-8+nvidia-tesla-v100"):
            for market in (OD, SPOT):
                assert catalog.price(itype, region, market) is not None, (itype, region, market)
    for itype in ("a2-highgpu-1g", "a2-highgpu-8g"):
        assert all(catalog.price(itype, r, OD) for r in ("us-central1", "us-east1", "us-west1", "europe-west4"))
    assert all(catalog.price("a3-highgpu-8g", r, SPOT) for r in ("us-central1", "europe-west4", "asia-east1"))


def test_type_names() -> None:
    assert parse_type("g2-standard-8") == GcpType("g2-standard-8")
    assert parse_type("n1-standard-8+nvidia-tesla-t4") == GcpType("n1-standard-8", "nvidia-tesla-t4", 1)
    assert parse_type("n1-standard-16+nvidia-tesla-v100x2") == GcpType("n1-standard-16", "nvidia-tesla-v100", 2)
    assert parse_type("n1-standard-8+nvidia-tesla-t4x1").name == "n1-standard-8+nvidia-tesla-t4"
    for bad in ("", "G2-standard-8", "n1-standard-8+", "n1-standard-8+nvidia-tesla-t4x0", "p4d.24xlarge"):
        with pytest.raises(ValueError):
            parse_type(bad)
    # an instance's type from its machine type and guestAccelerators: bundled GPUs are not named
    assert type_of_instance("a2-highgpu-1g", [("nvidia-tesla-a100", 1)]).name == "a2-highgpu-1g"
    assert type_of_instance("n1-standard-8", [("nvidia-tesla-t4", 2)]).name == "n1-standard-8+nvidia-tesla-t4x2"
    assert type_of_instance("n1-standard-8", []).name == "n1-standard-8"


def test_overlay_rows_win_and_bad_overlay_rows_are_skipped(tmp_path: Path) -> None:
    shipped = GcpCatalog.shipped()
    row = shipped.machines[("g2-standard-8", "us-central1")]
    text = format_machines({("g2-standard-8", "us-central1"): row})
    text = text.replace("0.29358", "0.5").replace("2024-05-07", "2026-01-02")
    text += "g2-standard-4,us-central1,4,16,1,nvidia-l4,host,-1,,x,2026-01-02\n"  # a bad row: skipped
    (tmp_path / "prices").mkdir()
    (tmp_path / "prices" / "gcp_machine_types.csv").write_text(text)
    loaded = GcpCatalog.load(tmp_path)
    assert loaded.machines[("g2-standard-8", "us-central1")].price.on_demand == 0.5
    assert loaded.machines[("g2-standard-4", "us-central1")] == shipped.machines[("g2-standard-4", "us-central1")]
    price = loaded.price("g2-standard-8", "us-central1", OD)
    assert price is not None and price.as_of == date(2024, 5, 7), "as old as its older part (the GPU)"


def test_a_bad_shipped_row_raises() -> None:
    header = ",".join(MACHINE_COLUMNS)
    with pytest.raises(CatalogFormatError, match="price_covers"):
        read_rows(f"{header}\nn1-standard-8,us-central1,8,30,0,,all,0.38,,s,2024-05-07\n", MACHINE_COLUMNS,
                  parse_machine_row, where="x", strict=True)  # fmt: skip
    with pytest.raises(CatalogFormatError, match="missing columns"):
        read_rows("machine_type,region\n", ACCELERATOR_COLUMNS, parse_machine_row, where="x", strict=True)
