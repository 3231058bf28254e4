"""`preview.html`: a campaign's variants side by side, to look at before sending.

Per segment, one column per arm: the subject and preheader, the email as its HTML part renders (in a sandboxed frame, no
script runs), the citations, whether it is sendable (valid, not blocked by screening, not rejected in
review) and, when not, why, its source, and how many customers the arm has. One self-contained file (inline
CSS, no script, nothing fetched), so it opens offline and can be attached to a sign-off email. Everything
shown comes from a user file or a model: it is escaped, never markup.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cpo.campaign.agents.export import rendered_message, template_of
from cpo.campaign.campaign_file import Campaign
from cpo.core.files import write_atomically
from cpo.core.models import EmailVariant

PREVIEW_FILE = "preview.html"
STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1d2330;background:#f4f5f7}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}p.meta{color:#556;margin:0 0 16px}
.arms{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:14px}
.arm{background:#fff;border:1px solid #d5d9e0;border-radius:8px;padding:12px}
.arm h3{font-size:15px;margin:0 0 6px}.subject{font-weight:600;margin:6px 0}
.ok{color:#12632b}.no{color:#a11d1d}.small{font-size:12px;color:#556}
iframe{width:100%;height:420px;border:1px solid #e3e6ea;border-radius:4px;background:#fff}
ul{margin:4px 0 0 18px;padding:0}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def email_html(variant: EmailVariant, campaign: Campaign) -> str:
    """The variant's HTML part, as `--render` writes it, with the merge fields' defaults ("there")."""
    message = rendered_message(
        template_of(variant, campaign, {}), campaign, {"unsubscribe_url": campaign.unsubscribe_url}
    )
    part = message.get_body(("html",))
    return str(part.get_content()) if part is not None else ""


def status_of(variant: EmailVariant, withheld: Mapping[str, str]) -> tuple[bool, str]:
    if not variant.valid:
        return False, "invalid: " + "; ".join(variant.validation.reasons)
    if variant.variant_id in withheld:
        return False, f"withheld: {withheld[variant.variant_id]}"
    return True, "sendable"


def write_preview(
    run_dir: Path,
    segments: Sequence[str],
    arms: Sequence[str],
    variants: Sequence[EmailVariant],
    plan: Mapping[tuple[str, str], str],
    customers: Mapping[tuple[str, str], int],
    withheld: Mapping[str, str],
    campaign: Campaign,
) -> Path:
    """Write `preview.html` into the run directory. `plan` is what each segment x arm is sent (a variant id,
    "" for nothing); with no plan (`--per-customer`) every generated variant is shown under its segment."""
    by_id = {v.variant_id: v for v in variants}
    sections: list[str] = []
    for segment in segments:
        cards: list[str] = []
        if plan:
            cells = [(arm, by_id.get(plan.get((segment, arm), ""))) for arm in arms]
        else:
            cells = [(v.tone, v) for v in variants if v.segment == segment]
        for arm, variant in cells:
            cards.append(_card(arm, variant, customers.get((segment, arm)), withheld, campaign))
        held_out = customers.get((segment, "holdout"))
        extra = f" · holdout: {held_out} customer(s), no email" if held_out else ""
        sections.append(
            f'<section data-segment="{_e(segment)}"><h2>{_e(segment)}</h2>'
            f'<p class="meta">{sum(n for (s, a), n in customers.items() if s == segment)} customer(s){_e(extra)}</p>'
            f'<div class="arms">{"".join(cards)}</div></section>'
        )
    page = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>Campaign preview: {_e(run_dir.name)}</title><style>{STYLE}</style></head><body>"
        f'<h1>Campaign preview</h1><p class="meta">{_e(run_dir.name)} · {len(variants)} variant(s) · sender '
        f"{_e(campaign.sender.brand)}</p>{''.join(sections)}</body></html>"
    )
    path = run_dir / PREVIEW_FILE
    write_atomically(path, page.encode("utf-8"))
    return path


def _card(
    arm: str, variant: EmailVariant | None, customers: int | None, withheld: Mapping[str, str], campaign: Campaign
) -> str:
    count = f"{customers} customer(s)" if customers is not None else "customers per email"
    if variant is None:
        return (
            f'<div class="arm" data-arm="{_e(arm)}"><h3>{_e(arm)}</h3>'
            f'<p class="no">nothing sendable: these customers get no email</p><p class="small">{_e(count)}</p></div>'
        )
    sendable, status = status_of(variant, withheld)
    citations = "".join(f"<li>{_e(c.id)}: {_e(c.title)}</li>" for c in variant.citations) or "<li>none</li>"
    source = "cpo's own control (no model call)" if variant.source == "template" else f"model: {variant.model}"
    frame: Any = _e(email_html(variant, campaign))
    return (
        f'<div class="arm" data-arm="{_e(arm)}" data-variant="{_e(variant.variant_id)}">'
        f'<h3>{_e(arm)} <span class="small">{_e(variant.variant_id)}</span></h3>'
        f'<p class="subject">{_e(variant.subject)}</p>'
        f'<p class="small preheader">{_e(variant.preheader or "(no preheader: the inbox shows the first line)")}</p>'
        f'<p class="{"ok" if sendable else "no"}">{_e(status)}</p>'
        f'<iframe sandbox="" title="{_e(variant.subject)}" srcdoc="{frame}"></iframe>'
        f'<p class="small">{_e(count)} · tone {_e(variant.tone)} · {_e(source)}</p>'
        f'<p class="small">citations:</p><ul class="small">{citations}</ul></div>'
    )
