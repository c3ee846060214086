"""Stock keeping for a small warehouse: items, locations, movements and reports.

The benchmark in ``lsp_bench.rs`` opens this module in a language server and types new code
into its middle, the way a developer would. It is ordinary Python, not run by anything.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from typing import Iterable, Iterator, Mapping, Optional

log = logging.getLogger(__name__)

CENTS = Decimal("0.01")
DEFAULT_REORDER_DAYS = 14


class InventoryError(Exception):
    """Base class of the errors this module raises."""


class UnknownItem(InventoryError):
    def __init__(self, sku: str) -> None:
        super().__init__(f"no item with SKU {sku!r}")
        self.sku = sku


class NotEnoughStock(InventoryError):
    def __init__(self, sku: str, wanted: int, available: int) -> None:
        super().__init__(f"{sku}: wanted {wanted}, only {available} available")
        self.sku = sku
        self.wanted = wanted
        self.available = available


class MovementKind(enum.Enum):
    RECEIPT = "receipt"
    SHIPMENT = "shipment"
    TRANSFER = "transfer"
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True)
class Location:
    warehouse: str
    aisle: int
    shelf: int

    def label(self) -> str:
        return f"{self.warehouse}-{self.aisle:02d}-{self.shelf:02d}"

    @classmethod
    def parse(cls, text: str) -> "Location":
        warehouse, aisle, shelf = text.strip().split("-")
        return cls(warehouse, int(aisle), int(shelf))


@dataclass
class Item:
    sku: str
    name: str
    category: str
    unit_price: Decimal
    quantity: int = 0
    reorder_level: int = 10
    location: Optional[Location] = None
    tags: set[str] = field(default_factory=set)

    def value(self) -> Decimal:
        return (self.unit_price * self.quantity).quantize(CENTS, ROUND_HALF_UP)

    def needs_reorder(self) -> bool:
        return self.quantity <= self.reorder_level


@dataclass(frozen=True)
class Movement:
    sku: str
    kind: MovementKind
    quantity: int
    at: dt.datetime
    note: str = ""

    def signed_quantity(self) -> int:
        if self.kind is MovementKind.SHIPMENT:
            return -self.quantity
        return self.quantity


class Inventory:
    """Items by SKU and the movements that changed them, oldest first."""

    def __init__(self, items: Iterable[Item] = ()) -> None:
        self._items: dict[str, Item] = {}
        self._movements: list[Movement] = []
        for item in items:
            self.add(item)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sku: object) -> bool:
        return sku in self._items

    def __iter__(self) -> Iterator[Item]:
        return iter(sorted(self._items.values(), key=lambda item: item.sku))

    def add(self, item: Item) -> None:
        if item.sku in self._items:
            raise InventoryError(f"duplicate SKU {item.sku!r}")
        self._items[item.sku] = item

    def get(self, sku: str) -> Item:
        try:
            return self._items[sku]
        except KeyError:
            raise UnknownItem(sku) from None

    def receive(self, sku: str, quantity: int, note: str = "") -> Movement:
        if quantity <= 0:
            raise ValueError("a receipt needs a positive quantity")
        item = self.get(sku)
        item.quantity += quantity
        return self._record(sku, MovementKind.RECEIPT, quantity, note)

    def ship(self, sku: str, quantity: int, note: str = "") -> Movement:
        item = self.get(sku)
        if quantity > item.quantity:
            raise NotEnoughStock(sku, quantity, item.quantity)
        item.quantity -= quantity
        return self._record(sku, MovementKind.SHIPMENT, quantity, note)

    def adjust(self, sku: str, counted: int, note: str = "stock count") -> Optional[Movement]:
        item = self.get(sku)
        difference = counted - item.quantity
        if difference == 0:
            return None
        item.quantity = counted
        return self._record(sku, MovementKind.ADJUSTMENT, difference, note)

    def move(self, sku: str, to: Location) -> Movement:
        item = self.get(sku)
        previous = item.location.label() if item.location else "nowhere"
        item.location = to
        return self._record(sku, MovementKind.TRANSFER, 0, f"{previous} -> {to.label()}")

    def movements(self, sku: Optional[str] = None) -> list[Movement]:
        if sku is None:
            return list(self._movements)
        return [m for m in self._movements if m.sku == sku]

    def _record(self, sku: str, kind: MovementKind, quantity: int, note: str) -> Movement:
        movement = Movement(sku, kind, quantity, dt.datetime.now(dt.timezone.utc), note)
        self._movements.append(movement)
        log.debug("%s %s %d (%s)", kind.value, sku, quantity, note)
        return movement


def total_value(inventory: Inventory) -> Decimal:
    return sum((item.value() for item in inventory), Decimal("0.00"))


def items_to_reorder(inventory: Inventory) -> list[Item]:
    return [item for item in inventory if item.needs_reorder()]


def value_by_category(inventory: Inventory) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = defaultdict(lambda: Decimal("0.00"))
    for item in inventory:
        totals[item.category] += item.value()
    return dict(sorted(totals.items()))


def daily_usage(movements: Iterable[Movement], days: int = 30) -> dict[str, float]:
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days)
    shipped: dict[str, int] = defaultdict(int)
    for movement in movements:
        if movement.kind is MovementKind.SHIPMENT and movement.at >= since:
            shipped[movement.sku] += movement.quantity
    return {sku: count / days for sku, count in shipped.items()}


def days_of_stock(inventory: Inventory, usage: Mapping[str, float]) -> dict[str, Optional[float]]:
    result: dict[str, Optional[float]] = {}
    for item in inventory:
        per_day = usage.get(item.sku, 0.0)
        result[item.sku] = item.quantity / per_day if per_day > 0 else None
    return result


def reorder_quantity(item: Item, per_day: float, lead_days: int = DEFAULT_REORDER_DAYS) -> int:
    needed = per_day * lead_days + item.reorder_level - item.quantity
    return max(0, round(needed))


def apply_discount(price: Decimal, percent: Decimal) -> Decimal:
    if not Decimal(0) <= percent <= Decimal(100):
        raise ValueError(f"discount must be between 0 and 100, got {percent}")
    return (price * (Decimal(100) - percent) / Decimal(100)).quantize(CENTS, ROUND_HALF_UP)


def price_list(inventory: Inventory, discounts: Mapping[str, Decimal]) -> list[tuple[str, Decimal]]:
    rows = []
    for item in inventory:
        discount = discounts.get(item.category, Decimal(0))
        rows.append((item.sku, apply_discount(item.unit_price, discount)))
    return rows


CSV_FIELDS = ["sku", "name", "category", "unit_price", "quantity", "reorder_level", "location"]


def read_items(text: str) -> list[Item]:
    items = []
    for line, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            location = Location.parse(row["location"]) if row.get("location") else None
            items.append(
                Item(
                    sku=row["sku"].strip(),
                    name=row["name"].strip(),
                    category=row.get("category", "").strip() or "misc",
                    unit_price=Decimal(row["unit_price"]),
                    quantity=int(row.get("quantity") or 0),
                    reorder_level=int(row.get("reorder_level") or 10),
                    location=location,
                )
            )
        except (KeyError, ValueError, ArithmeticError) as error:
            raise InventoryError(f"line {line}: {error}") from error
    return items


def write_items(items: Iterable[Item]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for item in items:
        writer.writerow(
            {
                "sku": item.sku,
                "name": item.name,
                "category": item.category,
                "unit_price": str(item.unit_price),
                "quantity": item.quantity,
                "reorder_level": item.reorder_level,
                "location": item.location.label() if item.location else "",
            }
        )
    return out.getvalue()


def movements_report(movements: Iterable[Movement]) -> str:
    lines = [f"{'when':<20} {'kind':<10} {'sku':<12} {'qty':>6}  note"]
    for m in movements:
        when = m.at.strftime("%Y-%m-%d %H:%M")
        lines.append(f"{when:<20} {m.kind.value:<10} {m.sku:<12} {m.signed_quantity():>6}  {m.note}")
    return "\n".join(lines)


def stock_report(inventory: Inventory) -> str:
    lines = []
    for category, value in value_by_category(inventory).items():
        lines.append(f"{category}: {value}")
        for item in inventory:
            if item.category != category:
                continue
            flag = " (reorder)" if item.needs_reorder() else ""
            lines.append(f"  {item.sku:<12} {item.quantity:>6} x {item.unit_price:>8}{flag}")
    lines.append(f"total: {total_value(inventory)}")
    return "\n".join(lines)


def find_items(inventory: Inventory, text: str, tags: Iterable[str] = ()) -> list[Item]:
    needle = text.casefold()
    wanted = set(tags)
    found = []
    for item in inventory:
        if needle and needle not in item.name.casefold() and needle not in item.sku.casefold():
            continue
        if wanted and not wanted <= item.tags:
            continue
        found.append(item)
    return found


def merge(first: Inventory, second: Inventory) -> Inventory:
    merged = Inventory()
    for source in (first, second):
        for item in source:
            if item.sku in merged:
                merged.get(item.sku).quantity += item.quantity
            else:
                merged.add(
                    Item(
                        item.sku,
                        item.name,
                        item.category,
                        item.unit_price,
                        item.quantity,
                        item.reorder_level,
                        item.location,
                        set(item.tags),
                    )
                )
    return merged


def sample_inventory() -> Inventory:
    return Inventory(
        [
            Item("BOLT-M6", "Hex bolt M6x30", "fasteners", Decimal("0.12"), 1200, 200),
            Item("NUT-M6", "Hex nut M6", "fasteners", Decimal("0.04"), 800, 300),
            Item("WASH-M6", "Washer M6", "fasteners", Decimal("0.02"), 150, 300),
            Item("DRILL-8", "Drill bit 8 mm", "tools", Decimal("4.90"), 25, 10),
            Item("SAW-JIG", "Jigsaw blade set", "tools", Decimal("12.50"), 4, 5),
            Item("GLUE-PU", "Polyurethane glue 250 ml", "adhesives", Decimal("8.75"), 40, 12),
        ]
    )


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    inventory = sample_inventory()
    inventory.ship("NUT-M6", 120, "order 1042")
    inventory.receive("WASH-M6", 500, "supplier delivery")
    print(stock_report(inventory))
    print(movements_report(inventory.movements()))
