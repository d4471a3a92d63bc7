import pytest
import torch

from lmkit.models import build_model
from lmkit.models.presets import model_config
from lmkit.training.optim import build_optimizer


def trained(name):
    torch.manual_seed(0)
    model = build_model(model_config("gpt-tiny", 100))
    opt = build_optimizer(model, name, 1e-3, 0.1, (0.9, 0.95))
    idx = torch.randint(0, 100, (2, 16))
    for _ in range(2):
        _, loss = model(idx, idx)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt, idx


def test_weight_decay_only_on_matrices():
    model, opt, _ = trained("adamw")
    for group in opt.param_groups:
        assert all(p.dim() >= 2 for p in group["params"]) == (group["weight_decay"] > 0)


def test_state_round_trip_continues_identically():
    for name in ("adamw", "muon"):
        model, opt, idx = trained(name)
        tensors, meta = opt.state_tensors()
        twin = build_model(model_config("gpt-tiny", 100))
        twin.load_state_dict(model.state_dict())
        twin_opt = build_optimizer(twin, name, 1e-3, 0.1, (0.9, 0.95))
        twin_opt.load_state_tensors(tensors, meta)
        for m, o in ((model, opt), (twin, twin_opt)):
            _, loss = m(idx, idx)
            loss.backward()
            o.step()
        for a, b in zip(model.parameters(), twin.parameters()):
            assert torch.equal(a, b), name


def test_config_choices_match_the_optimizers():
    from lmkit.training.optim import OPTIMIZERS
    from lmkit.training.options import OPTIMIZERS as CHOICES

    assert CHOICES == OPTIMIZERS


def test_muon_takes_hidden_matrices_only():
    for preset in ("gpt-tiny", "bert-tiny"):
        model = build_model(model_config(preset, 100))
        adamw, muon = build_optimizer(model, "muon", 1e-3, 0.1, (0.9, 0.95)).optimizers
        in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
        assert id(model.tok_emb.weight) not in in_muon  # the embedding (tied to the output head)
        assert id(model.lm_head.weight) not in in_muon
        names = {name for name, p in model.named_parameters() if id(p) in in_muon}
        assert names and all(p.dim() == 2 for p in muon.param_groups[0]["params"])
        assert any("attn" in name for name in names)
        if preset == "bert-tiny":
            assert "mlm_head.dense.weight" in names  # a hidden matrix, despite its name


def test_muon_on_a_torch_without_it_is_refused_naming_the_version(monkeypatch):
    from lmkit.errors import UserError
    from lmkit.models import build_model
    from lmkit.models.presets import model_config
    from lmkit.training.optim import build_optimizer

    monkeypatch.delattr(torch.optim, "Muon", raising=False)
    model = build_model(model_config("gpt-tiny", 64))
    with pytest.raises(UserError, match=r"--optimizer muon: needs torch.optim.Muon \(torch 2.9 or newer\)"):
        build_optimizer(model, "muon", 1e-3, 0.1, (0.9, 0.95))
    build_optimizer(model, "adamw", 1e-3, 0.1, (0.9, 0.95))  # adamw is unaffected
