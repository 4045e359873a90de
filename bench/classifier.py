"""The classifier on the labelled set (tests/data): what the rules decide, how often they are
right, and how long a classification takes with the model fake answering at a fixed latency.

Run: `make bench` or `.venv/bin/python -m bench.classifier [--model-latency 0.3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from collections import Counter
from pathlib import Path

import yaml

from bench.mention_latency import pct
from bot.agent.model import make_client
from bot.config import load_settings
from bot.repos import load_repos
from classifier.classify import Classifier, RequestContext
from classifier.model import ModelClassifier
from tests.fakes.openai import FakeOpenAI, Reply

DATA = Path(__file__).parents[1] / "tests" / "data"


async def main(model_latency: float) -> None:
    catalog = load_repos(DATA / "acme_repos.yml", "https://github.com/{repo}.git")
    requests = yaml.safe_load((DATA / "requests.yml").read_text())["requests"]
    contexts = [RequestContext(r["text"], r.get("thread", []), r["channel"]) for r in requests]

    rules = Classifier(catalog, None)
    decided = [(r, rules.decide_by_rules(c)) for r, c in zip(requests, contexts, strict=True)]
    by_rules = [(r, d) for r, d in decided if d is not None]
    right = sum(d.repo == r["repo"] for r, d in by_rules)
    sources = Counter(d.source for _, d in by_rules)

    model = FakeOpenAI()
    await model.start()
    model.default = lambda req: Reply(ttft=model_latency, text=json.dumps(
        {"repo": "unknown", "confidence": 0.3, "alternatives": [], "reason": "fixed-latency fake"}))
    settings = load_settings(_env_file=None, openai_base_url=model.base_url, openai_api_key="sk-bench", model_max_retries=0)
    client = make_client(settings)
    full = Classifier(catalog, ModelClassifier(lambda: client, "fast", catalog, timeout=3.0))
    for ctx in contexts[:3]:
        await full.classify(ctx)  # warm the connection pool
    timings: dict[str, list[float]] = {"rules": [], "model": []}
    for ctx in contexts:
        result = await full.classify(ctx)
        timings["model" if result.source == "ask" else "rules"].append(result.elapsed_ms)
    await client.close()
    await model.stop()

    n = len(requests)
    print(f"labelled set: {n} requests over {len(catalog)} repos")
    print(f"rules decide {len(by_rules)} ({len(by_rules) / n:.0%}); right {right} of {len(by_rules)} "
          f"({right / max(1, len(by_rules)):.0%}); the other {n - len(by_rules)} go to the model or the person")
    print("  by rule: " + ", ".join(f"{k} {v}" for k, v in sources.most_common()))
    every = timings["rules"] + timings["model"]
    print(f"classification latency, model fake at {model_latency * 1000:.0f} ms:")
    print(f"  all      p50 {statistics.median(every):7.2f} ms   p95 {pct(every, 95):7.2f} ms")
    for source in ("rules", "model"):
        ms = timings[source]
        print(f"  {source:8} p50 {statistics.median(ms):7.2f} ms   p95 {pct(ms, 95):7.2f} ms   ({len(ms)})")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-latency", type=float, default=0.3)
    asyncio.run(main(parser.parse_args().model_latency))
