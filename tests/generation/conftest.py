"""Checkpoints of every kind, made once per session (read-only for tests)."""

import pytest

from tests.generation import checkpoints


@pytest.fixture(scope="session")
def gpt(dataset, tmp_path_factory):
    return checkpoints.language_model(dataset, tmp_path_factory.mktemp("gpt") / "run")


@pytest.fixture(scope="session")
def lstm(dataset, tmp_path_factory):
    return checkpoints.lstm_model(dataset, tmp_path_factory.mktemp("lstm") / "run")


@pytest.fixture(scope="session")
def bert(dataset, tmp_path_factory):
    return checkpoints.language_model(dataset, tmp_path_factory.mktemp("bert") / "run", model="bert-tiny")
