"""A deterministic synthetic CRM data set: accounts, contacts, opportunities and notes.

The demo, the benchmarks and the daemon's tests need CRM-shaped text without real customer
data. Names, e-mail addresses and phone numbers look real on purpose, so that redaction has
something to find. The same seed always gives the same records, byte for byte.

Every record is a document with ``id``, ``tenant``, ``type``, ``text`` and type-specific
fields (which become metadata in an index).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pai.errors import UsageError

TENANTS = ("northwind", "contoso", "fabrikam")
FIRST = [
    "Anna",
    "Ben",
    "Carla",
    "David",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Katrin",
    "Luca",
    "Maria",
    "Nils",
    "Olga",
    "Pavel",
    "Quentin",
    "Rosa",
    "Sven",
    "Tara",
    "Umar",
    "Vera",
    "Walter",
    "Xenia",
    "Yusuf",
    "Zoe",
    "Amelie",
    "Bruno",
    "Chiara",
    "Dmitri",
    "Emma",
    "Felix",
    "Hannah",
    "Ivan",
    "Julia",
    "Karim",
    "Lena",
    "Marco",
    "Nora",
    "Oskar",
    "Priya",
    "Rafael",
    "Sofia",
    "Tomas",
    "Ulla",
    "Viktor",
]
LAST = [
    "Schmidt",
    "Müller",
    "Rossi",
    "García",
    "Novak",
    "Jensen",
    "Dubois",
    "Kowalski",
    "Andersson",
    "Silva",
    "Martin",
    "Weber",
    "Fischer",
    "Bauer",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Koch",
    "Richter",
    "Klein",
    "Wolf",
    "Schröder",
    "Neumann",
    "Schwarz",
    "Zimmermann",
    "Braun",
    "Krüger",
    "Hofmann",
    "Hartmann",
    "Lange",
    "Schmitt",
    "Werner",
    "Krause",
    "Meier",
    "Lehmann",
]
COMPANY_A = [
    "Alpine",
    "Nordic",
    "Atlas",
    "Blue",
    "Cedar",
    "Delta",
    "Ember",
    "Falcon",
    "Granite",
    "Harbor",
    "Iron",
    "Juniper",
    "Keystone",
    "Lumen",
    "Meridian",
    "Northstar",
    "Orbit",
    "Pioneer",
    "Quartz",
    "Riverside",
    "Summit",
    "Titan",
    "Unity",
    "Vertex",
    "Willow",
]
COMPANY_B = [
    "Logistics",
    "Analytics",
    "Foods",
    "Energy",
    "Robotics",
    "Insurance",
    "Pharma",
    "Textiles",
    "Media",
    "Systems",
    "Telecom",
    "Retail",
    "Mobility",
    "Health",
    "Software",
    "Capital",
    "Materials",
    "Engineering",
    "Labs",
    "Partners",
]
SUFFIX = ("GmbH", "AG", "Ltd", "Inc", "S.A.", "B.V.", "Oy", "AB", "S.p.A.", "SE")
CITIES = [
    "Hamburg",
    "Berlin",
    "Munich",
    "Vienna",
    "Zurich",
    "Amsterdam",
    "Rotterdam",
    "Paris",
    "Lyon",
    "Milan",
    "Madrid",
    "Lisbon",
    "Warsaw",
    "Prague",
    "Copenhagen",
    "Stockholm",
    "Oslo",
    "Helsinki",
    "Dublin",
    "London",
    "Manchester",
    "Brussels",
]
INDUSTRIES = (
    "manufacturing",
    "logistics",
    "healthcare",
    "retail",
    "financial services",
    "energy",
    "public sector",
    "software",
)
TITLES = (
    "Head of IT",
    "CFO",
    "Procurement Manager",
    "VP Sales",
    "CISO",
    "Data Protection Officer",
    "Operations Director",
    "CTO",
    "Project Lead",
    "Office Manager",
)
PRODUCTS = (
    "analytics add-on",
    "on-premise search",
    "CRM assistant",
    "audit module",
    "support plan Gold",
    "offline deployment kit",
    "data residency package",
)
STAGES = ("prospecting", "qualification", "proposal", "negotiation", "closed won", "closed lost")
NOTE_TEMPLATES = (
    "Call with {contact} ({title}) about the {product}. They want a quote before {month}.",
    "{contact} reported that the {product} pilot went well; next step is a rollout in {city}.",
    "Meeting in {city}: discussed pricing for {seats} seats, SSO and data residency. "
    "Follow up by e-mail to {email}.",
    "Invoice dispute on order {order}: {contact} says the discount was not applied. "
    "Call back on {phone}.",
    "Security review for the {product} is blocked until we send the SOC 2 report to {contact}.",
    "{contact} is leaving {account}; ask for an introduction to the new {title}.",
    "Renewal risk: {account} missed two quarterly reviews and asked about cancelling.",
    "Demo of the {product} for {seats} users scheduled; {contact} will invite procurement.",
    "Competitor offered a lower price, but {account} needs an air-gapped installation.",
    "Signed the statement of work for the {product}; kick-off in {city} on {month} 3rd.",
)
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def _phone(rng: random.Random) -> str:
    country = rng.choice(("+49", "+43", "+41", "+31", "+33", "+44", "+46"))
    return f"{country} {rng.randint(30, 999)} {rng.randint(1000000, 9999999)}"


def _slug(text: str) -> str:
    table = str.maketrans({"ü": "ue", "ö": "oe", "ä": "ae", "í": "i", "é": "e", " ": ""})
    return "".join(ch for ch in text.lower().translate(table) if ch.isalnum() or ch == "-")


def generate(total: int = 10_000, seed: int = 42) -> Iterator[dict[str, Any]]:
    """``total`` documents: 10% accounts, 30% contacts, 20% opportunities, 40% notes."""
    if total < 10:
        raise UsageError("the synthetic data set needs at least 10 documents")
    rng = random.Random(seed)
    n_accounts = max(1, total // 10)
    n_contacts = total * 3 // 10
    n_opps = total * 2 // 10
    n_notes = total - n_accounts - n_contacts - n_opps
    accounts: list[dict[str, Any]] = []
    for i in range(n_accounts):
        name = f"{rng.choice(COMPANY_A)} {rng.choice(COMPANY_B)} {rng.choice(SUFFIX)}"
        city = rng.choice(CITIES)
        industry = rng.choice(INDUSTRIES)
        employees = rng.choice((40, 120, 350, 800, 2500, 9000))
        account = {
            "id": f"acc-{i:05d}",
            "tenant": TENANTS[i % len(TENANTS)],
            "type": "account",
            "name": name,
            "city": city,
            "industry": industry,
            "domain": f"{_slug(name.split()[0] + name.split()[1])}.example",
            "text": f"{name} is a {industry} company in {city} with about {employees} "
            f"employees. Main phone {_phone(rng)}.",
        }
        accounts.append(account)
        yield account
    contacts: list[dict[str, Any]] = []
    for i in range(n_contacts):
        acc = accounts[rng.randrange(n_accounts)]
        first, last = rng.choice(FIRST), rng.choice(LAST)
        title = rng.choice(TITLES)
        email = f"{_slug(first)}.{_slug(last)}@{acc['domain']}"
        contact = {
            "id": f"con-{i:05d}",
            "tenant": acc["tenant"],
            "type": "contact",
            "account_id": acc["id"],
            "name": f"{first} {last}",
            "email": email,
            "phone": _phone(rng),
            "title": title,
        }
        contact["text"] = (
            f"{first} {last}, {title} at {acc['name']} ({acc['city']}). "
            f"E-mail {email}, phone {contact['phone']}."
        )
        contacts.append(contact)
        yield contact
    for i in range(n_opps):
        acc = accounts[rng.randrange(n_accounts)]
        product = rng.choice(PRODUCTS)
        amount = rng.randrange(5, 500) * 1000
        stage = rng.choice(STAGES)
        month = rng.choice(MONTHS)
        yield {
            "id": f"opp-{i:05d}",
            "tenant": acc["tenant"],
            "type": "opportunity",
            "account_id": acc["id"],
            "stage": stage,
            "amount_eur": amount,
            "text": f"Opportunity: {product} for {acc['name']}, EUR {amount:,}, stage {stage}, "
            f"expected close in {month}.",
        }
    by_id = {a["id"]: a for a in accounts}
    for i in range(n_notes):
        con = contacts[rng.randrange(n_contacts)]
        acc = by_id[con["account_id"]]
        sentences = [
            rng.choice(NOTE_TEMPLATES).format(
                contact=con["name"],
                title=con["title"],
                product=rng.choice(PRODUCTS),
                month=rng.choice(MONTHS),
                city=acc["city"],
                seats=rng.choice((25, 50, 120, 300, 1000)),
                email=con["email"],
                phone=con["phone"],
                order=rng.randint(1000, 99999),
                account=acc["name"],
            )
            for _ in range(rng.choice((1, 1, 2, 3)))
        ]
        yield {
            "id": f"note-{i:05d}",
            "tenant": con["tenant"],
            "type": "note",
            "account_id": acc["id"],
            "contact_id": con["id"],
            "text": " ".join(sentences),
        }


def write(out: Path, *, total: int = 10_000, seed: int = 42, fmt: str = "jsonl") -> Path:
    """Write the data set as ``crm.jsonl``, ``crm.csv`` or ``crm.parquet`` in ``out``."""
    from pai.fsutil import atomic_write_bytes

    if fmt not in ("jsonl", "csv", "parquet"):
        raise UsageError("format must be jsonl, csv or parquet")
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(doc, ensure_ascii=False, sort_keys=True) for doc in generate(total, seed)]
    jsonl = out / "crm.jsonl"
    atomic_write_bytes(jsonl, ("\n".join(lines) + "\n").encode("utf-8"))
    if fmt == "jsonl":
        return jsonl
    import duckdb

    target = out / f"crm.{fmt}"
    db = duckdb.connect(":memory:")
    db.execute("SET threads=1")
    option = "(FORMAT parquet)" if fmt == "parquet" else "(HEADER, DELIMITER ',')"
    path = str(target).replace("'", "''")
    db.execute(
        f"COPY (SELECT * FROM read_json_auto(?, format='newline_delimited') ORDER BY id) "
        f"TO '{path}' {option}",
        [str(jsonl)],
    )
    jsonl.unlink()
    return target
