"""Write the sample customer file `data/customers.csv`: fictional customers from a seeded generator.

Every value is made up for this project (names from a short list, features drawn around per-tier
means), so the file can be regenerated bit for bit: `python scripts/make_customers.py`.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

FIRST_NAMES = (
    "Ana", "Ben", "Chloe", "Dev", "Elif", "Femi", "Grace", "Hiro", "Ines", "Jonas", "Kira", "Liam", "Maya",
    "Nico", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tariq", "Uma", "Victor", "Wen", "Yusuf", "Zoe",
)  # fmt: skip
LOCATIONS = ("Seattle", "Austin", "Chicago", "Denver", "Boston", "Atlanta", "Portland", "Phoenix")
TIERS = {  # tier: (share, purchases per year, average order USD, days since engagement)
    "Bronze": (0.40, 3, 45, 60),
    "Silver": (0.30, 6, 80, 45),
    "Gold": (0.20, 14, 220, 20),
    "Platinum": (0.10, 30, 900, 10),
}
COLUMNS = (
    "customer_id", "first_name", "age", "location", "tier", "purchase_frequency", "avg_order_value",
    "last_engagement_days", "historical_open_rate", "historical_click_rate", "email_opt_in", "email",
)  # fmt: skip


def customers(count: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    tiers = list(TIERS)
    weights = [TIERS[t][0] for t in tiers]
    rows = []
    for i in range(1, count + 1):
        tier = rng.choices(tiers, weights)[0]
        customer_id = f"C{i:06d}"
        _, frequency, order_value, engagement = TIERS[tier]
        open_rate = min(0.95, max(0.02, rng.gauss(0.18 + 0.05 * tiers.index(tier), 0.06)))
        rows.append(
            {
                "customer_id": customer_id,
                "first_name": rng.choice(FIRST_NAMES),
                "age": rng.randint(19, 78),
                "location": rng.choice(LOCATIONS),
                "tier": tier,
                "purchase_frequency": max(0, round(rng.gauss(frequency, frequency / 3))),
                "avg_order_value": round(max(5.0, rng.gauss(order_value, order_value / 4)), 2),
                "last_engagement_days": max(0, round(rng.expovariate(1 / engagement))),
                "historical_open_rate": round(open_rate, 3),
                "historical_click_rate": round(open_rate * rng.uniform(0.08, 0.3), 3),
                "email_opt_in": "true" if rng.random() > 0.04 else "false",
            }
        )
        # a fictional address on the reserved example.com domain (RFC 2606), drawn after every other field so
        # the sample's other columns are what they were before it had addresses
        rows[-1]["email"] = f"{str(rows[-1]['first_name']).lower()}.{customer_id.lower()}@example.com"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=250)
    parser.add_argument("--seed", type=int, default=2027)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "customers.csv")
    args = parser.parse_args()
    with args.out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(customers(args.count, args.seed))
    print(f"wrote {args.count} customers to {args.out}")


if __name__ == "__main__":
    main()
