"""A causal language model (a GPT or an LSTM trained with clm): perplexity and bits per byte on documents,
zero-shot multiple choice, greedy answers scored against references and preference pairs ranked (preferences.py);
continued text in ``generate``;
``/v1/completions`` in ``serve``. The evaluations and the text generation here serve instruction-tuned
models too (sft.py)."""

from __future__ import annotations

from typing import Any, Callable

from rich.rule import Rule

from lmkit.checkpoint import Checkpoint
from lmkit.evaluation import baselines, choice, generation_tasks, inputs
from lmkit.evaluation import tasks as outcomes
from lmkit.evaluation.scoring import Inference
from lmkit.generation.generator import Generator
from lmkit.generation.model import compile_choice
from lmkit.generation.settings import SamplingSettings
from lmkit.models import CAUSAL_ARCHS
from lmkit.progress import reporter
from lmkit.tasks.base import (
    DOCUMENTS,
    JSONL,
    Baseline,
    EvalPlan,
    Evaluation,
    Generation,
    Inputs,
    LoadOptions,
    Route,
    TaskSpec,
    read_examples,
)
from lmkit.tasks.preferences import PREFERENCE
from lmkit.tasks.rewards import PASS_AT_K
from lmkit.tokenizer import Tokenizer

CAUSAL = "a causal language model"
# The generate flags only text generation reads: given for another kind of checkpoint, they have no effect.
SAMPLING_FLAGS = ("max_new_tokens", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "stop", "seed",
                  "num_samples", "echo", "truncate", "start_token")


# -- evaluate ------------------------------------------------------------------------------------------------

def _perplexity(plan: EvalPlan, inference: Inference, tokenizer: Tokenizer, documents: inputs.Documents):
    return outcomes.causal_lm(inference, documents, plan.window, plan.stride)


def _ngram(plan: EvalPlan, tokenizer: Tokenizer, documents: inputs.Documents, predictions: list[dict[str, Any]]):
    train = inputs.from_dataset(plan.dataset, "train")
    return baselines.ngram_bits_per_byte(train.tokens, documents.tokens, documents.n_bytes, tokenizer.vocab_size)


def _choices(plan: EvalPlan, tokenizer: Tokenizer) -> list[choice.ChoiceItem]:
    return read_examples(plan, choice.read_choice_file)


def _choose(plan: EvalPlan, inference: Inference, tokenizer: Tokenizer, items: list[choice.ChoiceItem]):
    return outcomes.multiple_choice(inference, tokenizer, items, plan.window)


def _prompts(plan: EvalPlan, tokenizer: Tokenizer) -> list[generation_tasks.GenerationItem]:
    config = plan.config
    return read_examples(plan, lambda path, left: generation_tasks.read_generation_file(
        path, config.prompt_field, config.response_field, left))


def greedy(checkpoint: Checkpoint, inference: Inference, max_new_tokens: int, stop: tuple[str, ...]
           ) -> Callable[..., list[str]]:
    """Greedy answers to a batch of prompts (an SFT model's template applied), from a Generator of its own."""
    generator = Generator(checkpoint, inference.device, inference.precision, batch_size=inference.batch_size)

    def generate(prompts: list[str], max_tokens: int = max_new_tokens, stops=stop) -> list[str]:
        settings = SamplingSettings(temperature=0.0, max_new_tokens=max_tokens, stop=tuple(stops))
        return generator.generate(prompts, settings)

    return generate


def _answer_prompts(plan: EvalPlan, inference: Inference, tokenizer: Tokenizer,
                    items: list[generation_tasks.GenerationItem]):
    config, stop = plan.config, plan.config.stop_strings()
    settings = {"temperature": 0.0, "max_new_tokens": config.max_new_tokens, "stop": list(stop),
                "prompt": "the checkpoint's SFT template" if plan.checkpoint.template else "after </s>, as is"}
    generate = greedy(plan.checkpoint, inference, config.max_new_tokens, stop)
    return outcomes.generate(generate, tokenizer, items, plan.metrics, config.batch_size, settings)


PERPLEXITY = Evaluation("lm", ("loss", "ppl", "bpb"), DOCUMENTS, _perplexity, needs="a language model",
                        baseline=Baseline(_ngram), flags=("window", "stride"))
CHOICE = Evaluation("choice", ("accuracy", "acc_norm"), JSONL, _choose, needs=CAUSAL, load=_choices,
                    flags=("window",))
GENERATE = Evaluation("generate", generation_tasks.GENERATION_METRICS, JSONL, _answer_prompts, needs=CAUSAL,
                      load=_prompts, own_model=True,
                      flags=("prompt_field", "response_field", "max_new_tokens", "stop"))


# -- generate and serve ----------------------------------------------------------------------------------------

def load(checkpoint: Checkpoint, options: LoadOptions) -> Generator:
    compiled = compile_choice(options.compile, checkpoint, options.device, options.quantize, options.new_tokens)
    if compiled and options.new_tokens != float("inf"):
        reporter.info("torch.compile: the first tokens compile the model (seconds; cached for next time)")
    return Generator(checkpoint, options.device, options.precision, options.quantize, batch_size=options.batch_size,
                     truncate=options.truncate, compile=compiled, start_token=options.start_token)


def answer(generator: Generator, given: Inputs, config, stream: Callable[[str], None] | None) -> list[dict[str, Any]]:
    """Completions of each prompt (``--num-samples`` of each); ``stream`` receives a lone completion as it grows."""
    n, records = config.num_samples, [dict(record) for record in given.records]
    prompts = [text for text in given.texts for _ in range(n)]  # copy j: its own random stream
    names = [name for name in given.names for _ in range(n)]
    on_token = None if stream is None else (lambda _index, text: stream(text))
    completions = generator.generate(prompts, config.sampling(), on_token, names=names)
    for i, record in enumerate(records):
        if n == 1:
            record["completion"] = completions[i]
        else:
            record["completions"] = completions[i * n:(i + 1) * n]
    return records


def render(records: list[dict[str, Any]], settings: dict[str, Any]) -> None:
    """Completions as plain text, a rule naming the prompt and sample between several."""
    for number, record in enumerate(records, 1):
        text = record.get("prompt", record.get("text", ""))
        completions = record["completions"] if "completions" in record else [record["completion"]]
        for sample, completion in enumerate(completions, 1):
            if len(completions) > 1 or len(records) > 1:
                label = f"prompt {number}, " if len(records) > 1 else ""
                reporter.out.print(Rule(f"{label}sample {sample}", align="left"))
            reporter.write((text if settings["echo"] else "") + completion + "\n")


def routes(server) -> list[Route]:
    from lmkit.serving import completions

    return [Route("/v1/completions", completions.CompletionRequest, completions.completions)]


TEXT = Generation("prompt", answer, render, flags=SAMPLING_FLAGS, other_field="text", whole_file=True,
                  streams=True)


# A causal LM pretrained on text (clm), or preference-tuned or trained with RL from one.
TEXT_OBJECTIVES = ("clm", "dpo", "orpo", "grpo")


def _is_text_model(checkpoint: Checkpoint) -> bool:
    return (checkpoint.objective in TEXT_OBJECTIVES and checkpoint.task == "lm"
            and checkpoint.model_config.arch in CAUSAL_ARCHS)


SPEC = TaskSpec("text", "causal language model", _is_text_model,
               (PERPLEXITY, CHOICE, GENERATE, PREFERENCE, PASS_AT_K), load, TEXT, endpoints=("/v1/completions",),
               routes=routes, harness=True, decodes=True)
