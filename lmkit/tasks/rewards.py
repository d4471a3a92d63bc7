"""``evaluate --task pass-at-k``: a causal model's replies to prompts scored by a reward a program checks
(lmkit.evaluation.rewards), for text, SFT and chat models.

Each prompt is answered ``--samples`` (n) times, sampled at ``--sampling-temperature`` with a random stream of its
own seeded by (--seed, the prompt, the sample's number), so a prompt's replies do not depend on the other prompts
or on ``--limit``; pass@k for each ``--k`` is the unbiased estimator of Chen et al. (2021), 1 - C(n-c, k) / C(n, k)
with c of the n replies passing, averaged over the prompts. Beside it: the mean reward of the sampled replies and
the pass rate of one greedy reply per prompt.
"""

from __future__ import annotations

import json
import time
from typing import Any

from lmkit.evaluation.rewards import Reward, pass_at_k
from lmkit.evaluation.scoring import Inference
from lmkit.evaluation.tasks import TaskOutcome
from lmkit.generation.generator import Generator
from lmkit.generation.prompts import PromptFormat
from lmkit.generation.records import RewardPrompt, read_reward_prompts, score_reply
from lmkit.generation.sampling import prompt_key, row_generators
from lmkit.generation.settings import SamplingSettings
from lmkit.progress import reporter
from lmkit.tasks.base import JSONL, EvalPlan, Evaluation, read_examples

FIXED_METRICS = ("mean_reward", "greedy_pass_rate")


def _metrics_for(config) -> tuple[str, ...]:
    """pass_at_K for each --k (none when --k does not parse: the config refuses it)."""
    try:
        return tuple(f"pass_at_{k}" for k in config.pass_k())
    except ValueError:
        return ()


def _load(plan: EvalPlan, tokenizer) -> list[RewardPrompt]:
    config = plan.config
    reward = Reward(config.reward, config.answer_field)
    prompts = PromptFormat(plan.checkpoint, truncate="error")
    return read_examples(plan, lambda path, left: read_reward_prompts(path, prompts, reward, config.prompt_field,
                                                                      limit=left))


def _replies(generator: Generator, items: list[RewardPrompt], settings: SamplingSettings, copies: int,
             batch_size: int, task) -> list[list[tuple[str, list[int]]]]:
    """``copies`` replies (text, ids) to each item, the j-th seeded by (--seed, the prompt, j)."""
    rows = [(i, j) for i in range(len(items)) for j in range(copies)]
    keys = [prompt_key(json.dumps(item.prompt)) for item in items]
    generators = row_generators(settings.seed, [(keys[i], j) for i, j in rows])
    found: list[list[tuple[str, list[int]]]] = [[] for _ in items]
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        answers = generator.generate_encoded([items[i].ids for i, _ in chunk], settings,
                                             generators[start:start + batch_size], None)
        for (i, _j), (text, _reason, ids) in zip(chunk, answers, strict=True):
            found[i].append((text, ids))
        task.advance(len(chunk))
    return found


def _run(plan: EvalPlan, inference: Inference, tokenizer, items: list[RewardPrompt]) -> TaskOutcome:
    config = plan.config
    reward = Reward(config.reward, config.answer_field)
    generator = Generator(plan.checkpoint, inference.device, inference.precision, batch_size=inference.batch_size)
    n, ks = config.samples, config.pass_k()
    sampled = SamplingSettings(max_new_tokens=config.max_new_tokens, temperature=config.sampling_temperature,
                               seed=config.seed)
    greedy = SamplingSettings(max_new_tokens=config.max_new_tokens, temperature=0.0)
    started = time.perf_counter()
    with reporter.task("sampling", total=len(items) * (n + 1), unit="replies") as task:
        samples = _replies(generator, items, sampled, n, config.batch_size, task)
        greedy_replies = _replies(generator, items, greedy, 1, config.batch_size, task)
    seconds = time.perf_counter() - started
    predictions: list[dict[str, Any]] = []
    passing, rewards, greedy_passed, generated = [], [], 0, 0
    for item, replies, ((greedy_text, greedy_ids),) in zip(items, samples, greedy_replies, strict=True):
        scores = [score_reply(generator, reward, item, ids) for _text, ids in replies]
        best = score_reply(generator, reward, item, greedy_ids)
        passing.append(sum(s.passed for s in scores))
        rewards += [s.value for s in scores]
        greedy_passed += best.passed
        generated += sum(len(ids) for _text, ids in replies) + len(greedy_ids)
        predictions.append({"id": item.where, "prompt": item.prompt, "answer": item.record.get(config.answer_field),
                            "passed": passing[-1], "samples": n, "replies": [text for text, _ids in replies],
                            "rewards": [s.value for s in scores], "greedy": greedy_text,
                            "greedy_passed": best.passed})
    metrics = {f"pass_at_{k}": sum(pass_at_k(n, c, k) for c in passing) / len(items) for k in ks}
    metrics["mean_reward"] = sum(rewards) / len(rewards)
    metrics["greedy_pass_rate"] = greedy_passed / len(items)
    method = {"method": f"{n} sampled replies per prompt, scored by --reward {config.reward}",
              "estimator": "unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), averaged over prompts",
              "passes": "every term of the reward but length scores above 0",
              "temperature": config.sampling_temperature, "max_new_tokens": config.max_new_tokens,
              "seed": config.seed, "k": ks, "samples": n,
              "prompt": "as the checkpoint frames it (its template or chat template)"}
    return TaskOutcome(len(items), metrics, method, {"prompts": len(items), "replies": len(items) * (n + 1),
                                                     "generated_tokens": generated},
                       predictions, generated_tokens=generated, generation_seconds=seconds)


PASS_AT_K = Evaluation("pass-at-k", FIXED_METRICS, JSONL, _run, needs="a causal language model", load=_load,
                       own_model=True, metrics_for=_metrics_for,
                       flags=("prompt_field", "answer_field", "reward", "samples", "k", "sampling_temperature",
                              "max_new_tokens", "seed"))
