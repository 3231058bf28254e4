"""The campaign graph: LangGraph wiring of the nodes in `cpo.campaign.nodes`, and nothing else.

    load_segment -> retrieve -> generate (one task per segment x arm, fanned out) -> gather
      -> template_controls (cpo's own control where the model's ended invalid; no model call)
      -> screen -> review -> assign -> export

Durable: compiled with a checkpointer (`cpo.campaign.checkpoints`), the run id is the thread id, and
resuming a thread re-runs only the tasks that had not finished; emails already generated are not paid
for twice (`cpo.campaign.kept`). The chain and the cost tracker are passed in when the graph is built
and invoked, never created inside a node.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from langgraph.graph import END, START, StateGraph

from cpo.campaign import nodes, stages
from cpo.campaign.nodes import Tools
from cpo.campaign.state import CampaignState

__all__ = ["Tools", "build_pipeline"]


def build_pipeline(tools: Tools, checkpointer: Any = None) -> Any:
    """The compiled graph; invoke it with `{"inputs": Inputs}` and `{"configurable": {"thread_id": run_id}}`."""
    graph = StateGraph(CampaignState)
    graph.add_node(stages.LOAD_SEGMENT, partial(nodes.load_segment, tools=tools))
    graph.add_node(stages.RETRIEVE, partial(nodes.retrieve_content, tools=tools))
    graph.add_node(stages.GENERATE, partial(nodes.generate, tools=tools))
    graph.add_node(stages.GATHER, nodes.gather)
    graph.add_node(stages.TEMPLATE, partial(nodes.write_templates, tools=tools))
    graph.add_node(stages.SCREEN, partial(nodes.screen, tools=tools))
    graph.add_node(stages.REVIEW, nodes.review)
    graph.add_node(stages.ASSIGN, nodes.assign)
    graph.add_node(stages.EXPORT, partial(nodes.export, tools=tools))
    graph.add_edge(START, stages.LOAD_SEGMENT)
    graph.add_edge(stages.LOAD_SEGMENT, stages.RETRIEVE)
    graph.add_conditional_edges(stages.RETRIEVE, nodes.fan_out, [stages.GENERATE])
    graph.add_edge(stages.GENERATE, stages.GATHER)
    graph.add_conditional_edges(stages.GATHER, nodes.go_on, [stages.TEMPLATE, END])
    graph.add_edge(stages.TEMPLATE, stages.SCREEN)
    graph.add_edge(stages.SCREEN, stages.REVIEW)
    graph.add_edge(stages.REVIEW, stages.ASSIGN)
    graph.add_edge(stages.ASSIGN, stages.EXPORT)
    graph.add_edge(stages.EXPORT, END)
    return graph.compile(checkpointer=checkpointer)
