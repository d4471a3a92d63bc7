"""An lm-evaluation-harness adapter (Gao et al., EleutherAI): lmkit checkpoints as an ``lm_eval`` LM,
and running harness tasks offline, from local task files (``--harness-include DIR``).

Needs the ``lmkit[harness]`` extra. Requests are served by lmkit's own scoring: ``loglikelihood`` by
the continuation spans of zero-shot choice, ``loglikelihood_rolling`` by the sliding window of the
language-model evaluation (with ``stride == window`` exactly the harness's rolling windows), and
``generate_until`` by greedy decoding with the generation API. Standard errors are not computed
(``bootstrap_iters=0``): the harness would bootstrap some metrics in a process pool.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable

from lmkit.errors import UserError
from lmkit.evaluation.choice import context_start, continuation_span, encode_pair
from lmkit.evaluation.language_modeling import score_documents
from lmkit.evaluation.scoring import Inference, score_spans
from lmkit.tokenizer import Tokenizer

HARNESS_EXTRA = "lmkit[harness]"
_DEFAULT_MAX_GEN_TOKENS = 256


def _offline() -> None:
    """Nothing is downloaded: task datasets come from local files or the existing Hugging Face cache."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"


def task_manager(include: str | None, flag: str = "--harness-tasks"):
    """The harness's task index: only the tasks of ``include`` when given (fast, and no built-in task
    could run offline without its dataset cached), else the built-in tasks. ``flag``: the option the errors name."""
    _offline()
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise UserError(f"{flag}: the lm-evaluation-harness is not installed; install {HARNESS_EXTRA}") \
            from None
    if include is not None and not Path(include).is_dir():
        raise UserError(f"--harness-include {include}: not a directory of task files")
    # The harness logs every default it fills in; its warnings and errors are enough here.
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    return TaskManager(include_path=include, include_defaults=include is None)


def check_tasks(manager, tasks: list[str], include: str | None, flag: str = "--harness-tasks") -> None:
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        where = f"in {include}" if include else "among the harness's built-in tasks (pass --harness-include DIR)"
        known = sorted(manager.all_tasks)
        shown = ", ".join(known[:20]) + (f", ... ({len(known)} in all)" if len(known) > 20 else "")
        raise UserError(f"{flag}: no task {', '.join(repr(t) for t in unknown)} {where}; "
                        f"known: {shown or 'none'}")


def output_types(manager, tasks: list[str]) -> dict[str, str]:
    """Each task's kind of request (loglikelihood, loglikelihood_rolling, generate_until, ...), its data loaded
    once: a missing local file is an error here, not at the first evaluation."""
    try:
        if hasattr(manager, "load"):  # lm_eval 0.4.10 on: a flat dict of the leaf tasks
            leaves = manager.load(tasks)["tasks"]
        else:
            from lm_eval.tasks import get_task_dict

            leaves = _leaves(get_task_dict(tasks, manager))
    except Exception as exc:  # noqa: BLE001 -- the harness raises many kinds; the user needs its message
        text = str(exc).strip().splitlines()
        raise UserError(f"--eval-tasks {','.join(tasks)}: the harness could not load it "
                        f"({text[0][:200] if text else type(exc).__name__})") from None
    return {name: task.OUTPUT_TYPE for name, task in leaves.items()}


def _leaves(entries: dict) -> dict:
    """The tasks of get_task_dict's nested groups, by name."""
    leaves = {}
    for name, entry in entries.items():
        if isinstance(entry, dict):
            leaves.update(_leaves(entry))
        else:
            leaves[getattr(entry, "task_name", None) or str(name)] = entry
    return leaves


def make_lm(inference: Inference, tokenizer: Tokenizer, window: int, stride: int,
            generate: Callable[[list[str], int, list[str]], list[str]] | None):
    """An ``lm_eval.api.model.LM`` over an lmkit causal model. ``generate(prompts, max_new_tokens, stop)``
    serves generate_until; None refuses generation tasks."""
    from lm_eval.api.model import LM

    class LmkitLM(LM):
        def __init__(self) -> None:
            super().__init__()
            self._device = inference.device

        def loglikelihood(self, requests) -> list[tuple[float, bool]]:
            pairs = [encode_pair(tokenizer, *request.args[:2]) for request in requests]
            # An empty continuation (the harness may send one) has probability 1.
            scored = [i for i, (_, continuation) in enumerate(pairs) if continuation]
            results = [(0.0, True)] * len(pairs)
            start = context_start(inference.specials)
            scores = score_spans(inference, [continuation_span(*pairs[i], window, start) for i in scored])
            for i, score in zip(scored, scores):
                results[i] = (score.logprob, score.greedy)
            return results

        def loglikelihood_rolling(self, requests) -> list[float]:
            documents = [tokenizer.encode(request.args[0]) for request in requests]
            return score_documents(inference, documents, window, stride)

        def generate_until(self, requests) -> list[str]:
            if generate is None:
                raise UserError("--harness-tasks: a generation task needs lmkit.generation, which this lmkit "
                                "does not have")
            answers = []
            for request in requests:  # each request has its own stop strings and length
                context, settings = request.args[0], dict(request.args[1])
                stop = settings.get("until") or []
                stop = [stop] if isinstance(stop, str) else list(stop)
                answers += generate([context], int(settings.get("max_gen_toks", _DEFAULT_MAX_GEN_TOKENS)), stop)
            return answers

    return LmkitLM()


def flatten_results(results: dict[str, Any]) -> dict[str, float]:
    """{"task/metric": value} from the harness's results (a filter other than "none" is appended:
    "task/metric/filter"); standard errors and non-numbers are left out."""
    flat = {}
    for task, values in results.items():
        for key, value in values.items():
            if "," not in key or "_stderr" in key or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            metric, filter_name = key.split(",", 1)
            name = f"{task}/{metric}" + ("" if filter_name == "none" else f"/{filter_name}")
            flat[name] = float(value) if math.isfinite(value) else value
    return flat


def run_tasks(lm, manager, tasks: list[str], limit: int, seed: int) -> dict[str, Any]:
    """Run the tasks; returns {"metrics": flat metrics, "results": the harness's results, "versions": ...}."""
    import lm_eval

    output = lm_eval.simple_evaluate(
        model=lm, tasks=tasks, task_manager=manager, limit=limit or None, bootstrap_iters=0, log_samples=False,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    results = output["results"]
    return {"metrics": flatten_results(results), "results": results,
            "versions": {k: str(v) for k, v in output.get("versions", {}).items()},
            "n_shot": output.get("n-shot", {})}
