"""A masked language model (a BERT trained with mlm, alone or with a sentence-pair task): masked-LM loss,
perplexity and accuracy on documents; the likeliest tokens for each ``[MASK]`` in ``generate``;
``/v1/fill-mask`` in ``serve``."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from lmkit.checkpoint import Checkpoint
from lmkit.data.packing import MaskingSettings
from lmkit.evaluation import inputs
from lmkit.evaluation import tasks as outcomes
from lmkit.evaluation.scoring import Inference
from lmkit.generation.fill_mask import fill_mask
from lmkit.progress import reporter
from lmkit.tasks.base import (
    DOCUMENTS,
    EvalPlan,
    Evaluation,
    Generation,
    Inputs,
    Loaded,
    Route,
    TaskSpec,
    load_model,
)
from lmkit.tokenizer import Tokenizer


def _masked_lm(plan: EvalPlan, inference: Inference, tokenizer: Tokenizer, documents: inputs.Documents):
    config = plan.config
    masking = MaskingSettings(config.mask_prob, config.mask_replace, config.mask_random)
    return outcomes.masked_lm(inference, documents, plan.window, plan.checkpoint.model_config.vocab_size, masking,
                              config.seed)


MASKED_LM = Evaluation("lm", ("loss", "ppl", "mlm_accuracy"), DOCUMENTS, _masked_lm, needs="a language model",
                       label="masked-LM evaluation (a BERT checkpoint)",
                       flags=("window", "mask_prob", "mask_replace", "mask_random", "seed"),
                       no_baseline="the n-gram baseline compares bits per byte, which a masked LM ({checkpoint}) does "
                                   "not report; use it with a causal model or a classifier")


def answer(loaded: Loaded, given: Inputs, config, stream=None) -> list[dict[str, Any]]:
    records = [dict(record) for record in given.records]
    found = fill_mask(loaded.model, loaded.tokenizer, given.texts, config.candidates, config.batch_size, given.names)
    for record, per_mask in zip(records, found, strict=True):
        record["candidates"] = [[c.to_dict() for c in candidates] for candidates in per_mask]
    return records


def render(records: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """A table of candidates for each [MASK] of each text."""
    for record in records:
        for index, candidates in enumerate(record["candidates"], 1):
            which = f" ([MASK] {index} of {len(record['candidates'])})" if len(record["candidates"]) > 1 else ""
            table = Table(title=f"{record.get('text', record.get('prompt', ''))}{which}", title_justify="left")
            for column, justify in (("token", "left"), ("probability", "right"), ("text", "left")):
                table.add_column(column, justify=justify, overflow="fold")
            for candidate in candidates:
                table.add_row(candidate["token"], f"{candidate['probability']:.4f}", candidate["text"])
            reporter.out.print(table)


def routes(server) -> list[Route]:
    from pydantic import Field

    from lmkit.serving.engine import BATCH, Batched
    from lmkit.serving.errors import ApiError
    from lmkit.serving.protocol import Body

    class FillMaskRequest(Body):
        input: str | list[str]
        top_k: int = Field(default=5, ge=1, le=100)

    async def fill(body: FillMaskRequest, call) -> dict[str, Any]:
        texts = [body.input] if isinstance(body.input, str) else body.input
        if not texts:
            raise ApiError(400, "input: give at least one text with [MASK]", "input")
        loaded, batch = call.server.model, call.server.engine.max_batch

        def fill_texts(texts: list[str]) -> list:  # one request's texts, or several's of the same top_k
            return fill_mask(loaded.model, loaded.tokenizer, texts, top_k=body.top_k, batch_size=batch)

        results = await call.server.submit(BATCH, Batched(("fill-mask", body.top_k), texts, fill_texts))
        tokens = sum(len(ids) for ids in loaded.tokenizer.encode_batch(texts))
        call.used(tokens)
        return {"object": "list", "model": call.server.options.model_name,
                "data": [{"index": i, "masks": [[c.to_dict() for c in mask] for mask in masks]}
                         for i, masks in enumerate(results)],
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return [Route("/v1/fill-mask", FillMaskRequest, fill)]


FILL = Generation("text", answer, render, flags=("candidates",), other_field="prompt")


def _is_masked_lm(checkpoint: Checkpoint) -> bool:
    return (checkpoint.model_config.arch == "bert" and checkpoint.masked_lm and checkpoint.head is None
            and checkpoint.qa is None)


SPEC = TaskSpec("fill-mask", "masked language model", _is_masked_lm, (MASKED_LM,), load_model, FILL,
               endpoints=("/v1/fill-mask",), routes=routes)
