"""An extractive question-answering (span) model: SQuAD v1.1's exact match and F1 on question/context/answer
records, with the context's first sentence as the baseline; answers to ``--question`` from ``--context`` in
``generate``; ``/v1/qa`` in ``serve``. Contexts are read in windows exactly as finetuning read them, with the
settings the checkpoint recorded."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from lmkit.checkpoint import Checkpoint
from lmkit.data.qa import QAExample, read_qa
from lmkit.data.qa_windows import QASettings
from lmkit.errors import UserError
from lmkit.evaluation import question_answering
from lmkit.evaluation.scoring import Inference
from lmkit.generation.qa import answer_questions, one_question, questions_of_jsonl
from lmkit.progress import reporter
from lmkit.tasks.base import (
    JSONL,
    Baseline,
    EvalPlan,
    Evaluation,
    Generation,
    Inputs,
    Loaded,
    Route,
    TaskSpec,
    load_model,
    read_examples,
)
from lmkit.tasks.inputs import text_of
from lmkit.tokenizer import Tokenizer


def _examples(plan: EvalPlan, tokenizer: Tokenizer) -> list[QAExample]:
    return read_examples(plan, lambda path, left: read_qa(path, with_answers=True, limit=left))


def _answer(plan: EvalPlan, inference: Inference, tokenizer: Tokenizer, examples: list[QAExample]):
    return question_answering.question_answering(inference, tokenizer, examples,
                                                 QASettings.from_head(plan.checkpoint.qa))


def _first_sentence(plan: EvalPlan, tokenizer: Tokenizer, examples: list[QAExample],
                    predictions: list[dict[str, Any]]):
    return question_answering.first_sentence_baseline(examples, predictions)


QUESTIONS = Evaluation("qa", ("exact_match", "f1"), JSONL, _answer, needs="a question-answering (span) model",
                       make="`lmkit finetune BASE QA.jsonl --task qa`", load=_examples,
                       baseline=Baseline(_first_sentence, trains=False))


def _read(config, checkpoint: Checkpoint) -> Inputs:
    """--question with --context or --context-file, or --input JSONL records with a question and a context."""
    if config.question is not None:
        if config.context_file is not None:
            where = "stdin" if config.context_file == "-" else config.context_file
            found = one_question(config.question, text_of(config.context_file), where)
        else:
            found = one_question(config.question, config.context, "--context")
    elif config.input is not None:
        found = questions_of_jsonl(text_of(config.input), config.input)
    else:
        given = "PROMPT" if config.prompt is not None else ("--prompt-file" if config.prompt_file else "no question")
        raise UserError(f"{given}: {config.checkpoint} answers questions from a context; give --question with "
                        "--context or --context-file, or --input JSONL records with \"question\" and \"context\"")
    return Inputs(found.questions, found.records, found.names, jsonl=config.input is not None,
                  contexts=found.contexts)


def _interactive(checkpoint: Checkpoint) -> str:
    return "answers a question from a context; give --question with --context or --context-file, or --input " \
           "JSONL records"


def answer(loaded: Loaded, given: Inputs, config, stream=None) -> list[dict[str, Any]]:
    records = [dict(record) for record in given.records]
    found = answer_questions(loaded.model, loaded.tokenizer, QASettings.from_head(loaded.checkpoint.qa), given.texts,
                             given.contexts, config.batch_size)
    for record, extracted in zip(records, found, strict=True):
        record.update(extracted.to_dict())
    return records


def render(records: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """The answer alone for one question; a table for several."""
    if len(records) == 1:
        reporter.write(records[0]["answer"] + "\n")
        return
    table = Table(title_justify="left")
    for column, justify in (("question", "left"), ("answer", "left"), ("score", "right")):
        table.add_column(column, justify=justify, overflow="fold")
    for record in records:
        table.add_row(record["question"], record["answer"], "" if record["score"] is None else f"{record['score']:.2f}")
    reporter.out.print(table)


def routes(server) -> list[Route]:
    from lmkit.serving.engine import BATCH, Batched
    from lmkit.serving.errors import ApiError
    from lmkit.serving.protocol import Body

    class QARequest(Body):
        question: str
        context: str

    loaded = server.model
    settings = QASettings.from_head(loaded.checkpoint.qa)

    def answer_items(items: list[tuple[str, str]]) -> list:
        """The answers of (question, context) items, of one request or several."""
        return answer_questions(loaded.model, loaded.tokenizer, settings, [q for q, _ in items], [c for _, c in items],
                                server.engine.max_batch)

    async def answer_question(body: QARequest, call) -> dict[str, Any]:
        for name in ("question", "context"):
            if not getattr(body, name).strip():
                raise ApiError(400, f"{name}: must be non-empty", name)
        found = (await server.submit(BATCH, Batched("qa", [(body.question, body.context)], answer_items)))[0]
        tokens = sum(len(ids) for ids in loaded.tokenizer.encode_batch([body.question, body.context]))
        call.used(tokens)
        return {"object": "answer", "model": server.options.model_name, **found.to_dict(),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return [Route("/v1/qa", QARequest, answer_question)]


ANSWERS = Generation("question", answer, render, read=_read, interactive=_interactive)


def _is_span_model(checkpoint: Checkpoint) -> bool:
    return checkpoint.qa is not None


SPEC = TaskSpec("qa", "question-answering (span) model", _is_span_model, (QUESTIONS,), load_model, ANSWERS,
               endpoints=("/v1/qa",), routes=routes, lm_head=False)
