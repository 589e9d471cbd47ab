"""The demo data in deploy/demo: the fulfillment network, the stock per (sku, source) and the catalogue.

Each file is validated against the contracts before anything is sent, and errors name the file and the field."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from oms_contracts.routing import Source
from oms_contracts.types import CurrencyCode, Money, NonEmptyStr, Quantity, Sku, SourceCode

from .errors import INVALID, ToolError

NETWORK_FILE = "network.json"
STOCK_FILE = "stock.json"
CATALOGUE_FILE = "catalogue.json"

# Shown in --help; resolved by demo_file().
DEFAULT_DIR_SHOWN = "deploy/demo"


def demo_dir() -> Path:
    """deploy/demo: $OMS_DEMO_DIR, else under the current directory, else in the checkout this package lives in."""
    if env := os.environ.get("OMS_DEMO_DIR"):
        return Path(env)
    local = Path.cwd() / "deploy" / "demo"
    if local.is_dir():
        return local
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "deploy" / "demo"
        if (candidate / NETWORK_FILE).is_file():
            return candidate
    return local


def demo_file(name: str, given: Path | None = None) -> Path:
    return given if given is not None else demo_dir() / name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NetworkFile(_Strict):
    """The body of PUT /network on the routing service."""

    sources: list[Source] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_source_fields(cls, value: Any) -> Any:
        # Source ignores unknown fields (readers must tolerate additions); a file we write should not carry typos.
        if isinstance(value, dict) and isinstance(value.get("sources"), list):
            known = set(Source.model_fields)
            for i, source in enumerate(value["sources"]):
                if isinstance(source, dict) and (unknown := sorted(set(source) - known)):
                    raise ValueError(f"sources[{i}] has unknown field(s) {', '.join(unknown)}")
        return value

    @model_validator(mode="after")
    def _unique(self) -> Self:
        _unique_or_fail((s.code for s in self.sources), "source code")
        return self

    @property
    def codes(self) -> list[str]:
        return [s.code for s in self.sources]

    def body(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class StockLine(_Strict):
    sku: Sku
    source_code: SourceCode
    quantity: Quantity


class StockFile(_Strict):
    description: str | None = None
    stock: list[StockLine] = Field(min_length=1)
    nowhere_in_stock: list[Sku] = Field(
        default_factory=list, description="SKUs deliberately stocked nowhere, so that an order of them is backordered"
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        _unique_or_fail((f"{line.sku}@{line.source_code}" for line in self.stock), "stock line (sku@source)")
        stocked = {line.sku for line in self.stock}
        if clash := sorted(stocked & set(self.nowhere_in_stock)):
            raise ValueError(f"listed as nowhere in stock yet stocked: {', '.join(clash)}")
        return self

    def check_sources(self, network: NetworkFile, network_path: Path) -> None:
        codes = set(network.codes)
        unknown = sorted({line.source_code for line in self.stock} - codes)
        if unknown:
            raise ToolError(
                f"stock for source(s) {', '.join(unknown)} not in the network {network_path} "
                f"(it has {', '.join(sorted(codes))}); inventory dead-letters receipts for sources the network "
                "never announces",
                INVALID,
            )


class CatalogueItem(_Strict):
    name: NonEmptyStr
    unit_price: Money


class Catalogue(_Strict):
    description: str | None = None
    currency: CurrencyCode
    skus: dict[Sku, CatalogueItem] = Field(min_length=1)
    default_order: list[str] = Field(
        default_factory=list, description="Lines of `oms demo order` without --sku, each SKU or SKU:QTY"
    )

    @model_validator(mode="after")
    def _default_order_in_catalogue(self) -> Self:
        unknown = [line for line in self.default_order if line.partition(":")[0] not in self.skus]
        if unknown:
            raise ValueError(f"default_order names SKUs not in the catalogue: {', '.join(unknown)}")
        return self

    def price(self, sku: str) -> Decimal:
        return self.skus[sku].unit_price


M = TypeVar("M", bound=BaseModel)


def _unique_or_fail(values: Iterable[str], what: str) -> None:
    seen: set[str] = set()
    duplicates: set[str] = set()
    for value in values:
        (duplicates if value in seen else seen).add(value)
    if duplicates:
        raise ValueError(f"duplicate {what} {', '.join(sorted(duplicates))}")


def describe(error: ValidationError) -> str:
    """Every field error on its own line: `sources[2].cost_per_unit: money must be a decimal string ...`."""
    lines = []
    for item in error.errors(include_url=False):
        where = ""
        for part in item["loc"]:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {where or '(file)'}: {message}")
    return "\n".join(lines)


def load(model: type[M], path: Path) -> M:
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ToolError(f"no such file: {path}", INVALID) from None
    except OSError as error:
        raise ToolError(f"cannot read {path}: {error.strerror or error}", INVALID) from None
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ToolError(f"{path} is not valid JSON: {error}", INVALID) from None
    try:
        return model.model_validate(parsed)
    except ValidationError as error:
        raise ToolError(f"{path} is not a valid {model.__name__}:\n{describe(error)}", INVALID) from None


def load_network(path: Path | None = None) -> tuple[NetworkFile, Path]:
    path = demo_file(NETWORK_FILE, path)
    return load(NetworkFile, path), path


def load_stock(path: Path | None = None) -> tuple[StockFile, Path]:
    path = demo_file(STOCK_FILE, path)
    return load(StockFile, path), path


def load_catalogue(path: Path | None = None) -> tuple[Catalogue, Path]:
    path = demo_file(CATALOGUE_FILE, path)
    return load(Catalogue, path), path
