"""Mutation check: break one promise at a time in a copy of cpo and see whether the tests notice.

Each mutation replaces one piece of code (it must occur exactly once) in a temporary copy of the
repository, then runs the test files that should catch it. A mutation the tests do not catch is a promise
that can break silently: add the test that fails for it. The working tree is never touched.

Usage: python scripts/mutate.py [--list] [NAME ...]   (default: every mutation; exit 1 if any survives)
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_SECONDS = 600
COPIED = ("cpo", "tests", "data", "prompts", "cassettes", "notebooks", "scripts", "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = (
    Mutation(
        "ledger-flush-removed",
        "cpo/campaign/nodes.py",
        "                await tracker.ledger.aflush()\n",
        "                pass\n",
        ("tests/test_nodes.py",),
    ),
    Mutation(
        "email-kept-before-flush",
        "cpo/campaign/nodes.py",
        "        # Ledger before file: an email is kept only once its calls are committed to the cost ledger.\n",
        "        kept.keep(key, data)\n",
        ("tests/test_nodes.py",),
    ),
    Mutation(
        "audit-last-row-hash-skipped",
        "cpo/campaign/audit.py",
        '        if row_hash(row) != row["row_hash"]:',
        '        if number - 2 < len(rows) - 1 and row_hash(row) != row["row_hash"]:',
        ("tests/test_oversight.py",),
    ),
    Mutation(
        "audit-previous-hash-unchecked",
        "cpo/campaign/audit.py",
        '        if row["prev_hash"] != previous:',
        "        if False:",
        ("tests/test_oversight.py",),
    ),
    Mutation(
        "arms-by-row-order",
        "cpo/campaign/agents/assignment.py",
        "PARTITION BY segment ORDER BY md5(? || ':' || customer_id), customer_id) - 1 AS p FROM customers)",
        "PARTITION BY segment ORDER BY md5(?) IS NULL) - 1 AS p FROM customers)",  # dealt in the file's row order
        ("tests/test_agents.py",),
    ),
    Mutation(
        "hash-arms-by-row-order",
        "cpo/campaign/agents/assignment.py",
        "CAST(('0x' || substr(md5(? || ':' || customer_id), 1, 8)) AS UBIGINT) / 4294967296.0\"",
        '((row_number() OVER () - 1 + 0 * CAST(? AS BIGINT)) % 4) / 4.0"',  # dealt round-robin by row
        ("tests/test_agents.py",),
    ),
    Mutation(
        "no-reservation-for-outside-models",
        "cpo/accounting/tracker.py",
        "        if not reserved and self.budget is not None:",
        "        if False:",
        ("tests/test_budget_models.py",),
    ),
    Mutation(
        "sync-reservation-removed",
        "cpo/llm/resilient.py",
        "                        tracker.reserve(attempt_id, attempts.prompt, attempts.params(target))\n",
        "                        pass\n",
        ("tests/test_budget_models.py", "tests/test_budget.py"),
    ),
    Mutation(
        "unknown-cost-settled-as-zero",
        "cpo/accounting/budget.py",
        "                self.settled += held or Decimal(0)",
        "                pass",
        ("tests/test_deadlines.py", "tests/test_budget.py"),
    ),
    Mutation(
        "budget-cap-not-checked",
        "cpo/accounting/budget.py",
        "        if self.settled + amount > self.max_usd:",
        "        if False:",
        ("tests/test_budget.py",),
    ),
    Mutation(
        "a-400-is-retried",
        "cpo/net/faults.py",
        "    return exc.status_code in (408, 409, 429)",
        "    return exc.status_code in (400, 408, 409, 429)",
        ("tests/test_model_layer.py", "tests/test_legacy_api.py"),
    ),
    Mutation(
        "retry-after-cap-ignored",
        "cpo/net/retries.py",
        "        if hinted is not None and hinted > self.max_wait_s:",
        "        if False:",
        ("tests/test_deadlines.py",),
    ),
    Mutation(
        "attempt-not-bounded-by-wall-clock",
        "cpo/net/transport.py",
        "    deadline = _request_deadline.get()\n    if deadline is None:",
        "    deadline = _request_deadline.get()\n    if True:",
        ("tests/test_deadlines.py",),
    ),
    Mutation(
        "fallback-on-any-error",
        "cpo/email/loop.py",
        'call.kind != "judge" and is_transient(exc):',
        'call.kind != "judge":',
        ("tests/test_runner.py", "tests/test_email_loop.py"),
    ),
    Mutation(
        "grounding-ignores-the-period",
        "cpo/email/grounding/check.py",
        "    periods = [(s, f) for s, f in units if not claim.period or f.period == claim.period]",
        "    periods = units",
        ("tests/test_grounding.py",),
    ),
    Mutation(
        "placeholders-allowed",
        "cpo/email/validation.py",
        "    placeholders = sorted(set(PLACEHOLDER.findall(shown)))",
        "    placeholders: list[str] = []",
        ("tests/test_validation.py",),
    ),
    Mutation(
        "kept-email-not-reused",
        "cpo/campaign/nodes.py",
        "    if earlier is not None:  # generated before an interruption: not paid for again, but checked again",
        "    if False:",
        ("tests/test_pipeline.py", "tests/test_legacy_runs.py"),
    ),
    Mutation(
        "screening-fails-open",
        "cpo/campaign/agents/safety.py",
        '        return SafetyDecision(**decision, blocked=True, reasons=[f"{UNAVAILABLE}: {brief}"], severities={})',
        "        return SafetyDecision(**decision, blocked=False, reasons=[], severities={})",
        ("tests/test_oversight.py", "tests/test_nodes.py"),
    ),
    Mutation(
        "footer-link-not-required",
        "cpo/campaign/agents/safety.py",
        "    if policy.footer_required and not UNSUBSCRIBE_TAG.search(frame.footer):",
        "    if False:",
        ("tests/test_oversight.py",),
    ),
    Mutation(
        "platform-template-not-escaped-unnoticed",
        "cpo/campaign/mail/platforms.py",
        '            if as_html and reader == HOSTILE_NAME and "<b>Ada</b>" in got:',
        "            if False:",
        ("tests/test_platform_exports.py",),
    ),
    Mutation(
        "cta-link-names-no-variant",
        "cpo/campaign/mail/message.py",
        '            "utm_content": variant_id,',
        '            "utm_content": segment,',
        ("tests/test_platform_exports.py",),
    ),
    Mutation(
        "consent-ignored",
        "cpo/campaign/agents/load.py",
        "            f\"WHEN {value} IN ({_literals(YES)}) THEN NULL ELSE '{NO_CONSENT}' END\"",
        "            f\"WHEN {value} IN ({_literals((*YES, *NO))}) THEN NULL ELSE '{NO_CONSENT}' END\"",
        ("tests/test_agents.py",),
    ),
    Mutation(
        "suppression-ignored",
        "cpo/campaign/agents/load.py",
        '    suppressed = f"lower({ID}) IN (SELECT id FROM suppressed)" if suppress is not None else "false"',
        '    suppressed = "false"',
        ("tests/test_agents.py",),
    ),
    Mutation(
        "withheld-variant-sendable",
        "cpo/campaign/agents/export.py",
        "    return variant.valid and variant.variant_id not in withheld",
        "    return variant.valid",
        ("tests/test_nodes.py", "tests/test_oversight.py"),
    ),
    Mutation(
        "export-send-list-unbound",
        "cpo/campaign/file_binding.py",
        '            problems.append(f"{name} is not the file the run wrote and its audit binds (edited?)")',
        "            pass",
        ("tests/test_platform_exports.py",),
    ),
    Mutation(
        "merge-values-not-escaped-in-html",
        "cpo/campaign/mail/layout.py",
        """    first_name_html='{{ first_name | default: "there" | escape }}',""",
        """    first_name_html='{{ first_name | default: "there" }}',""",
        ("tests/test_campaign_run.py",),
    ),
    Mutation(
        "customer-ids-logged-raw",
        "cpo/campaign/runlog.py",
        '            self.event("excluded", customer=self.hash_id(customer_id), reason=reason)',
        '            self.event("excluded", customer=customer_id, reason=reason)',
        ("tests/test_campaign_run.py", "tests/test_privacy.py"),
    ),
    Mutation(
        "budget-stop-exits-0",
        "cpo/campaign/runner.py",
        '            "budget": ExitCode.BUDGET,',
        '            "budget": ExitCode.OK,',
        ("tests/test_budget.py", "tests/test_campaign_run.py"),
    ),
    Mutation(
        "blank-consent-assumed",
        "cpo/campaign/agents/load.py",
        "            f\"CASE WHEN {CONSENT} IS NULL OR trim({CONSENT}) = '' THEN '{NOT_RECORDED}' \"",
        "            f\"CASE WHEN {CONSENT} IS NULL OR trim({CONSENT}) = '' THEN NULL \"",
        ("tests/test_who_gets_emailed.py",),
    ),
    Mutation(
        "no-one-left-out-exits-0",
        "cpo/campaign/runner.py",
        "        return ExitCode.FAILED if self.failures or self.unsent_customers else ExitCode.OK",
        "        return ExitCode.FAILED if self.failures else ExitCode.OK",
        ("tests/test_who_gets_emailed.py",),
    ),
    Mutation(
        "offer-numbers-unchecked",
        "cpo/campaign/campaign_file.py",
        "        _check_offer(path, name, offer, [known[s] for s in offer.snippets], campaign.vocabulary)",
        "        pass",
        ("tests/test_who_gets_emailed.py",),
    ),
    Mutation(
        "rules-keep-file-access",
        "cpo/campaign/agents/segmentation.py",
        '        sandbox.execute("SET enable_external_access = false")',
        "        pass",
        ("tests/test_rules_sandbox.py",),
    ),
    Mutation(
        "formulas-left-in-csv",
        "cpo/core/csvsafe.py",
        '    return "\'" + value if value.startswith(FORMULA_STARTS) else value',
        "    return value",
        ("tests/test_safe_exports.py",),
    ),
    Mutation(
        "open-key-file-accepted",
        "cpo/core/privacy.py",
        '    if os.name == "nt" or not mode & PRIVATE_UMASK:',
        "    if True:",
        ("tests/test_private_by_default.py", "tests/test_privacy.py"),
    ),
    Mutation(
        "repair-answer-junk-spliced-in",
        "cpo/email/loop.py",
        '                text = ""  # never spliced in: the draft stays as it was, and the next call is varied',
        "                pass",
        ("tests/test_sendable_rules.py",),
    ),
    Mutation(
        "rubric-rules-skipped",
        "cpo/email/validation.py",
        "    for code, message, excerpts in rubric_problems(subject, body, request):",
        "    for code, message, excerpts in rubric_problems(subject, body, request)[:0]:",
        ("tests/test_sendable_rules.py", "tests/test_sendable_set.py"),
    ),
    Mutation(
        "number-role-ignored",
        "cpo/email/grounding/roles.py",
        '    return kinds and (claim.limit == source.limit or (claim.limit == "cap" and not source.limit))',
        "    return True",
        ("tests/test_number_roles.py",),
    ),
    Mutation(
        "offer-condition-unchecked",
        "cpo/email/validation.py",
        "    for field, message, excerpts in offer_terms.problems(subject, body, request):",
        "    for field, message, excerpts in offer_terms.problems(subject, body, request)[:0]:",
        ("tests/test_sendable_rules.py",),
    ),
    Mutation(
        "template-control-never-written",
        "cpo/campaign/agents/generation.py",
        '        if own is not None and not own["validation"]["valid"]:',
        "        if False:",
        ("tests/test_template_control.py",),
    ),
    Mutation(
        "holm-dropped",
        "cpo/campaign/agents/experiment.py",
        '        row["p_holm"] = adjusted',
        '        row["p_holm"] = row["p_value"]',
        ("tests/test_results_statistics.py",),
    ),
    Mutation(
        "unpooled-z-test",
        "cpo/campaign/agents/experiment_stats.py",
        'value=0, alternative="two-sided", prop_var=False)',
        'value=0, alternative="two-sided", prop_var=s1 / n1)',
        ("tests/test_results_statistics.py",),
    ),
    Mutation(
        "srm-on-assigned-not-present",
        "cpo/campaign/agents/experiment.py",
        '    present = frame[frame["present"]]',
        "    present = frame",
        ("tests/test_results_analysis.py",),
    ),
    Mutation(
        "unknown-outcome-ids-not-counted",
        "cpo/campaign/agents/outcomes.py",
        "            unknown.add(raw.casefold())\n",
        "",
        ("tests/test_results_analysis.py",),
    ),
    Mutation(
        "quota-not-paced",
        "cpo/net/transport.py",
        "            await pacer.aacquire(tokens, work_deadline())",
        "            pass",
        ("tests/test_pacing.py",),
    ),
    Mutation(
        "pool-ignores-quotas",
        "cpo/llm/pool.py",
        "            rates = {id(m): m.rate() for m in free}",
        "            rates = {id(m): None for m in free}",
        ("tests/test_deployments.py",),
    ),
    Mutation(
        "pool-never-fails-over",
        "cpo/llm/pool.py",
        "                member.out_until = now + out_for",
        "                pass",
        ("tests/test_deployments.py",),
    ),
    Mutation(
        "pool-retries-wait-for-the-failing-deployment",
        "cpo/llm/pool.py",
        "        return bool(attempts.failed_on) and self.router.healthy_besides(attempts.failed_on)",
        "        return False",
        ("tests/test_deployments.py",),
    ),
    Mutation(
        "parallelism-timed-through-the-quota",
        "cpo/llm/parallelism.py",
        "    await _room_for(model, 2)\n",
        "",
        ("tests/test_checks.py",),
    ),
    Mutation(
        "pool-prices-every-deployment-alike",
        "cpo/accounting/pricing.py",
        '    named = params.get(DEPLOYMENT_PARAM) or params.get("azure_deployment")',
        '    named = params.get("azure_deployment")',
        ("tests/test_deployments.py",),
    ),
)


def apply(root: Path, mutation: Mutation) -> None:
    path = root / mutation.path
    text = path.read_text(encoding="utf-8")
    count = text.count(mutation.old)
    if count != 1:
        raise SystemExit(f"{mutation.name}: the code to mutate occurs {count} times in {mutation.path}, not once")
    path.write_text(text.replace(mutation.old, mutation.new), encoding="utf-8")


def run(mutation: Mutation) -> tuple[bool, float, str]:
    """(caught, seconds, the last line pytest printed) for one mutation, in a fresh copy of the repository."""
    with tempfile.TemporaryDirectory(prefix="cpo-mutant-") as tmp:
        root = Path(tmp)
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, root / name)
        apply(root, mutation)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        started = time.perf_counter()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-v", "-x", "-p", "no:cacheprovider", *mutation.tests],
                cwd=root,
                env=env,
                capture_output=True,
                text=True,
                timeout=MAX_SECONDS,
            )
        except subprocess.TimeoutExpired:  # the suite's own timeouts should end it first: say so if not
            return True, time.perf_counter() - started, f"the tests ran past {MAX_SECONDS} s (hung)"
        return done.returncode != 0, time.perf_counter() - started, _verdict(done.stdout + done.stderr)


def _verdict(output: str) -> str:
    """The test that failed (what caught the mutation), a timeout, or pytest's last line."""
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in output.splitlines() if line.startswith("FAILED ")]
    if failed:
        return f"caught by {failed[0]}"
    if "+ Timeout +" in output:
        hung = [line for line in output.splitlines() if line.startswith("tests/") and "::" in line]
        return "a test hung past its timeout" + (f" ({hung[-1].split()[0]})" if hung else "")
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="mutations to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutations and the tests that should catch them")
    args = parser.parse_args()
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]
    if args.names and len(chosen) != len(set(args.names)):
        known = ", ".join(m.name for m in MUTATIONS)
        parser.error(f"unknown mutation among {', '.join(args.names)}; known: {known}")
    if args.list:
        for m in chosen:
            print(f"{m.name:36} {m.path:38} {' '.join(m.tests)}")
        return 0
    survived = []
    for m in chosen:
        caught, seconds, last = run(m)
        print(f"{'caught  ' if caught else 'SURVIVED'} {m.name:36} {seconds:5.1f} s  {last}", flush=True)
        if not caught:
            survived.append(m.name)
    print(f"{len(chosen) - len(survived)} of {len(chosen)} mutations caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
