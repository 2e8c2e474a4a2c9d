"""The brand's fixed world: cities, stores, dishes, channels, groups and coupons.

Everything here is data. The generator's behaviour tables (behaviour.py) refer to
these names; other engineers' analyses and journeys refer to the same names through
DEMO_VOCAB, so renaming anything here breaks them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "ARTICLES",
    "CHANNELS",
    "CITIES",
    "CITY_WEIGHTS",
    "DISHES",
    "DISH_INDEX",
    "FAMILY_SETS",
    "GROUPS",
    "HOT_DISHES",
    "KIDS_MEALS",
    "LUNCH_SET",
    "MAIN_DISHES",
    "MENU_CATEGORIES",
    "SEASONAL_DISH",
    "SIDE_DISHES",
    "SLOW_STORES",
    "STORES",
    "STUDENT_COMBO",
    "Dish",
    "Store",
]

GROUPS: tuple[str, ...] = ("family", "white_collar", "student")

# Order matters: behaviour tables index channels by position.
CHANNELS: tuple[str, ...] = ("app", "mini_program", "official_account", "wecom", "kiosk")

CITIES: tuple[str, ...] = ("Shanghai", "Hangzhou", "Suzhou", "Nanjing", "Beijing", "Shenzhen")
# Customers per city, roughly the brand's footprint (Shanghai is home).
CITY_WEIGHTS: tuple[float, ...] = (0.34, 0.18, 0.14, 0.12, 0.12, 0.10)


@dataclass(frozen=True, slots=True)
class Store:
    store_id: str
    city: str


def _stores() -> tuple[Store, ...]:
    per_city = (8, 5, 4, 4, 4, 3)
    out: list[Store] = []
    for city, n in zip(CITIES, per_city, strict=True):
        for _ in range(n):
            out.append(Store(f"S{len(out) + 1:03d}", city))
    return tuple(out)


STORES: tuple[Store, ...] = _stores()

# The breakpoint: these stores run short of kitchen staff in the last weeks of the
# window, so food takes far longer at peak hours (see behaviour.py and docs/demo.md).
SLOW_STORES: frozenset[str] = frozenset({"S004", "S011", "S019"})


@dataclass(frozen=True, slots=True)
class Dish:
    item_id: str
    name: str
    category: str
    price: float
    is_hot: bool


DISHES: tuple[Dish, ...] = (
    Dish("D001", "Kung Pao Chicken Rice", "rice_bowl", 32.0, False),
    Dish("D002", "Braised Pork Rice", "rice_bowl", 36.0, False),
    Dish("D003", "Mapo Tofu Rice", "rice_bowl", 28.0, False),
    Dish("D004", "Black Pepper Beef Rice", "rice_bowl", 39.0, False),
    Dish("D005", "Tomato Egg Rice", "rice_bowl", 24.0, False),
    Dish("D006", "Spicy Beef Noodles", "noodles", 34.0, True),
    Dish("D007", "Dan Dan Noodles", "noodles", 26.0, False),
    Dish("D008", "Wonton Noodle Soup", "noodles", 27.0, False),
    Dish("D009", "Scallion Oil Noodles", "noodles", 22.0, False),
    Dish("D010", "Hot and Sour Rice Noodles", "noodles", 29.0, True),
    Dish("D011", "Crispy Fried Chicken", "snack", 22.0, True),
    Dish("D012", "Pork Dumplings (8)", "snack", 18.0, False),
    Dish("D013", "Spring Rolls", "snack", 14.0, False),
    Dish("D014", "Cheese Corn Cup", "snack", 12.0, True),
    Dish("D015", "Popcorn Chicken", "snack", 16.0, True),
    Dish("D016", "Mango Pomelo Sago", "dessert", 18.0, True),
    Dish("D017", "Red Bean Pudding", "dessert", 12.0, False),
    Dish("D018", "Egg Tart (2)", "dessert", 10.0, False),
    Dish("D019", "Brown Sugar Bubble Milk Tea", "drink", 16.0, True),
    Dish("D020", "Lemon Iced Tea", "drink", 12.0, False),
    Dish("D021", "Soy Milk", "drink", 6.0, False),
    Dish("D022", "Fresh Orange Juice", "drink", 15.0, False),
    Dish("D023", "Americano", "drink", 14.0, False),
    Dish("D024", "Family Set for 3", "set_meal", 168.0, False),
    Dish("D025", "Family Set for 4", "set_meal", 218.0, False),
    Dish("D026", "Business Lunch Set", "set_meal", 42.0, False),
    Dish("D027", "Student Combo", "set_meal", 25.0, True),
    Dish("D028", "Kids Chicken Rice", "kids_meal", 22.0, False),
    Dish("D029", "Kids Noodles and Juice", "kids_meal", 24.0, False),
    Dish("D030", "Steamed Vegetables", "side", 12.0, False),
    Dish("D031", "Seaweed Egg Soup", "side", 8.0, False),
    Dish("D032", "Stir-fried Greens", "side", 16.0, False),
)

# A seasonal dish launched halfway through the window (an item_set update).
SEASONAL_DISH = Dish("D033", "Winter Lamb Hotpot Bowl", "noodles", 45.0, True)

# Dishes each group favours when it fills a basket (indices into DISHES).
DISH_INDEX: dict[str, int] = {d.item_id: i for i, d in enumerate(DISHES)}
MAIN_DISHES: tuple[int, ...] = tuple(
    i for i, d in enumerate(DISHES) if d.category in ("rice_bowl", "noodles"))
SIDE_DISHES: tuple[int, ...] = tuple(
    i for i, d in enumerate(DISHES) if d.category in ("snack", "dessert", "drink", "side"))
HOT_DISHES: tuple[int, ...] = tuple(i for i, d in enumerate(DISHES) if d.is_hot)
FAMILY_SETS: tuple[int, ...] = (DISH_INDEX["D024"], DISH_INDEX["D025"])
KIDS_MEALS: tuple[int, ...] = (DISH_INDEX["D028"], DISH_INDEX["D029"])
LUNCH_SET: int = DISH_INDEX["D026"]
STUDENT_COMBO: int = DISH_INDEX["D027"]

MENU_CATEGORIES: tuple[str, ...] = (
    "rice_bowl", "noodles", "snack", "dessert", "drink", "set_meal", "kids_meal", "side")

ARTICLES: tuple[str, ...] = tuple(f"A{n:03d}" for n in range(1, 25))
