"""The campaign graph's node names and the stage each is shown as: the one list the graph, the runner and
the CLI share. The names are part of every checkpoint, so they never change (a killed run resumes by them).
"""

from __future__ import annotations

LOAD_SEGMENT = "load_segment"
RETRIEVE = "retrieve"
GENERATE = "generate"  # one task per email, fanned out
GATHER = "gather"  # after the last email task: ends the generate stage
TEMPLATE = "template_controls"  # cpo's own control where the model's is invalid: no model call, part of generate
SCREEN = "screen"
REVIEW = "review"
ASSIGN = "assign"
EXPORT = "export"

# Stage -> label, in the order a run goes through them ("generate" covers its tasks and "gather").
STAGE_LABELS = {
    LOAD_SEGMENT: "load + segment",
    RETRIEVE: "retrieve content",
    GENERATE: "generate emails",
    SCREEN: "screen",
    REVIEW: "review",
    ASSIGN: "assign arms",
    EXPORT: "export",
}
# The nodes that are a stage of their own (generate's tasks, gather and the template controls are counted as one).
STAGE_NODES = frozenset(STAGE_LABELS) - {GENERATE}
