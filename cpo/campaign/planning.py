"""A campaign's first stages as plain functions: load and segment the customers, retrieve each segment's
approved content, and list the emails to write. The graph's first nodes and `cpo run --dry-run` share them,
so a bad file fails a dry run with the same one-line error as a real run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from cpo.campaign.agents.assignment import DEFAULT_ARMS, assign_customers
from cpo.campaign.agents.export import RENDER_LIMIT
from cpo.campaign.agents.generation import PER_CUSTOMER_LIMIT, email_requests, personal_requests
from cpo.campaign.agents.load import LoadedCustomers, load_customers
from cpo.campaign.agents.retrieval import SegmentRetrieval, retrieve
from cpo.campaign.agents.safety import footer_problems, load_policy
from cpo.campaign.agents.segmentation import Segment, segment_customers
from cpo.campaign.backends import uses_azure_content_safety
from cpo.campaign.backends.content_index import ContentIndex
from cpo.campaign.campaign_file import Campaign, default_campaign_file, load_campaign
from cpo.campaign.kept import request_key
from cpo.campaign.mail.message import Frame
from cpo.campaign.rundir import DATABASE
from cpo.campaign.state import Inputs
from cpo.core.errors import InputError
from cpo.core.models import EmailRequest, Snippet
from cpo.email.content import load_snippets
from cpo.email.grounding.audience import audience_problems


def campaign_of(inputs: Inputs, snippets: dict[str, Snippet] | None = None) -> Campaign:
    """The run's campaign file (the sample's when none was given), checked."""
    return load_campaign(Path(inputs["campaign"]) if inputs["campaign"] else None, snippets)


def connect(inputs: Inputs) -> Any:
    """The run's customer database (DuckDB, in the run directory)."""
    import duckdb

    return duckdb.connect(str(Path(inputs["run_dir"]) / DATABASE))


def reopened(con: Any, inputs: Inputs, counts: dict[str, int]) -> LoadedCustomers:
    """The customers an earlier node loaded into `con`, as the agents take them."""
    columns = tuple(r[0] for r in con.execute("DESCRIBE customers").fetchall())
    return LoadedCustomers(
        connection=con,
        path=Path(inputs["customers"]),
        fingerprint="",
        columns=columns,
        total=counts["total"],
        no_consent=counts["no_consent"],
        suppressed=counts["suppressed"],
        no_consent_recorded=counts.get("no_consent_recorded", 0),  # absent from runs of cpo before 0.x
        suppress_unmatched=counts.get("suppress_unmatched", 0),
    )


def load_and_segment(
    inputs: Inputs, con: Any, on_excluded: Callable[[list[tuple[str, str]]], None] | None = None
) -> tuple[LoadedCustomers, list[Segment]]:
    """Load the customers into `con` and segment them: the run's first stage (and a dry run's)."""
    campaign = campaign_of(inputs)
    policy, local = load_policy(), not uses_azure_content_safety()
    where = inputs["campaign"] or default_campaign_file()
    blocking = footer_problems(Frame(footer=campaign.unsubscribe), policy, local_terms=local)
    if blocking:
        raise InputError(f"campaign file {where}: unsubscribe: the footer would block every email ({blocking[0]})")
    blocking = footer_problems(campaign.frame, policy, local_terms=local)
    if blocking:
        raise InputError(
            f"campaign file {where}: cta / sender.postal_address: a line cpo adds to every email would block it "
            f"({blocking[0]})"
        )
    suppress = Path(inputs["suppress"]) if inputs["suppress"] else None
    loaded = load_customers(
        Path(inputs["customers"]),
        suppress=suppress,
        connection=con,
        tiers=campaign.tiers,
        consent_required=campaign.consent == "required",
        passed=campaign.audience_columns,
    )
    if inputs.get("render") and loaded.eligible > RENDER_LIMIT:
        raise InputError(
            f"--render writes a file per customer and {loaded.eligible} customers are more than "
            f"{RENDER_LIMIT}; leave it out (templates.json and send_list.csv hold the same emails)"
        )
    if inputs.get("per_customer") and loaded.eligible > PER_CUSTOMER_LIMIT:
        raise InputError(
            f"--per-customer writes an email per customer and {loaded.eligible} customers are more than "
            f"{PER_CUSTOMER_LIMIT}; leave it out, or pass a smaller list"
        )
    segments = segment_customers(loaded, campaign.rules)
    check_offers_fit(campaign, segments, inputs["campaign"] or default_campaign_file())
    if on_excluded is not None:
        on_excluded([(str(i), str(r)) for i, r in con.execute("SELECT * FROM excluded").fetchall()])
    return loaded, segments


def check_offers_fit(campaign: Campaign, segments: list[Segment], where: Path | str) -> None:
    """Before paying: an offer that calls a segment's readers by a tier some of them do not hold would make
    every email that repeats it invalid, so it is the campaign file's error, not the model's."""
    for segment in segments:
        offer = campaign.offer_for(segment.name)
        if segment.size == 0 or offer is None:
            continue
        problems = audience_problems(offer.offer, segment.tiers, [offer.offer], campaign.vocabulary)
        if problems:
            raise InputError(
                f"campaign file {where}: offers: {segment.name}: {problems[0][1]} "
                "(or give the segment's tiers their own rules and offers)"
            )


def personal_requests_for(
    loaded: LoadedCustomers,
    segments: list[Segment],
    campaign: Campaign,
    snippets: dict[str, Snippet],
    inputs: Inputs,
    chosen: dict[str, list[str]] | None = None,
) -> list[EmailRequest]:
    """--per-customer: assign first (the tone is the customer's arm), then one request per distinct profile."""
    assign_customers(
        loaded,
        seed=inputs["seed"],
        weights=campaign.allocation or None,
        holdout=campaign.holdout,
        mode=campaign.assignment,
    )
    pairs = personal_requests(loaded, segments, campaign, snippets, chosen)
    con: Any = loaded.connection
    con.execute("CREATE OR REPLACE TABLE personal (customer_id VARCHAR, request_key VARCHAR)")
    if pairs:
        con.executemany("INSERT INTO personal VALUES (?, ?)", [(c, request_key(r)) for c, r in pairs])
    return list({request_key(r): r for _, r in pairs}.values())


def plan_emails(
    inputs: Inputs, loaded: LoadedCustomers, segments: list[Segment], index: ContentIndex
) -> tuple[dict[str, SegmentRetrieval], list[EmailRequest]]:
    """Retrieve each segment's approved content and list the emails to write (per segment x arm, or per
    customer), each citing only what its segment's retrieval chose."""
    snippets = load_snippets()
    campaign = campaign_of(inputs, snippets)
    found = retrieve(segments, campaign, snippets, index)
    chosen = {name: r.used for name, r in found.items()}
    if inputs.get("per_customer"):
        return found, personal_requests_for(loaded, segments, campaign, snippets, inputs, chosen)
    return found, email_requests(segments, campaign, snippets, DEFAULT_ARMS, chosen)


def plan_campaign(
    inputs: Inputs, con: Any, index: ContentIndex
) -> tuple[LoadedCustomers, list[Segment], dict[str, SegmentRetrieval], list[EmailRequest]]:
    """All of a dry run: load, segment, retrieve and list the emails, as a run's first stages do."""
    loaded, segments = load_and_segment(inputs, con)
    found, requests = plan_emails(inputs, loaded, segments, index)
    return loaded, segments, found, requests
