"""Fact-level grounding: each number and strong claim in an email must match a fact of a cited snippet or the offer."""

from cpo.email.grounding.check import GroundingProblem, check_grounding, extract_facts

__all__ = ["GroundingProblem", "check_grounding", "extract_facts"]
