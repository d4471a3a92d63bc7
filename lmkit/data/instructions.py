"""Instruction/response records for supervised finetuning (SFT), and the prompt template.

A template is a string with one ``{prompt}`` placeholder. Finetuning stores it in the checkpoint
(model.json "template") so that generation wraps a user's prompt exactly as training did: the model
reads ``encode(render_prompt(template, prompt))`` and continues with the response, then ``</s>``.
"""

from __future__ import annotations

# Alpaca's layout (Taori et al. 2023), without its preamble: short, and plain text for any tokenizer.
DEFAULT_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


def render_prompt(template: str, prompt: str) -> str:
    """The model's input for ``prompt``: the template with ``{prompt}`` replaced (other braces stay)."""
    return template.replace("{prompt}", prompt)
