"""Does the LLM grounding judge catch a wrong fact? Three labelled sentence pairs against the local model.

Sends cpo's judge prompt (prompts/judge.txt, through `PromptSet.judge`) for a correct pair, a wrong
period ("$99 per month"; the snippet says $99 a year) and an invented promise ("lifetime guarantee"),
and prints each verdict. Uses the local llama.cpp server of local_llm.py (not run in CI).

Usage: CPO_BENCH_CACHE=~/.cache/cpo-bench python benchmarks/judge_probe.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import local_llm

CASES = {
    "correct": ["Northwind Plus costs $9.99 a month or $99 a year.", "Plus members get free 2-day delivery."],
    "wrong period": ["Northwind Plus costs $99 per month.", "Plus members get free 2-day delivery."],
    "invented promise": [
        "Northwind Plus members get a lifetime guarantee on every order.",
        "Plus costs $9.99 a month.",
    ],
}


def main() -> int:
    with local_llm.LlamaServer(local_llm.ensure_model(), local_llm.ensure_server_python(), threads=2) as server:
        for key in [k for k in os.environ if k.startswith(("AZURE_OPENAI_", "OPENAI_", "CPO_"))]:
            del os.environ[key]
        os.environ.update(local_llm.environment_for(server))
        from cpo import ContentBundle, Settings, build_chat_model
        from cpo.email.prompts import PromptSet

        model = build_chat_model(Settings(), temperature=0.2, seed=7)
        request = ContentBundle.load().request("New Customer", "informational")
        cited = [s.id for s in request.snippets]
        for name, sentences in CASES.items():
            messages = PromptSet.load().judge(request, cited, sentences)
            reply = model.bind(response_format={"type": "json_object"}, max_tokens=300).invoke(messages)
            print(f"{name}: {' '.join(str(reply.content).split())[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
