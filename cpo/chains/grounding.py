"""Compatibility: `cpo.chains.grounding` as scripts written before the layered packages import it.

The grounding check lives in `cpo.email.grounding`. Nothing inside cpo imports this module.
"""

from cpo.email.grounding import GroundingProblem, check_grounding, extract_facts

__all__ = ["GroundingProblem", "check_grounding", "extract_facts"]
