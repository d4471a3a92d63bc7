"""How close lmkit's imported models are to transformers': the largest logit difference per family.

For each family lmkit imports, a tiny random transformers model (tests/interop/hf_models.py: norm gains
and biases moved off 1 and 0, so a mapping mistake shows) is imported, compared with transformers in
fp32 on a right-padded batch of 4 x 48 random ids (rows of 48, 30, 10 and 48 real tokens), then
exported; the import's own check, this comparison and the export's check are printed.

    python benchmarks/interop_parity.py        # about a minute; nothing is downloaded
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import transformers  # noqa: E402

from lmkit.checkpoint import read_checkpoint  # noqa: E402
from lmkit.config import resolve  # noqa: E402
from lmkit.interop import export_stage, import_stage  # noqa: E402
from lmkit.interop.export_config import ExportConfig  # noqa: E402
from lmkit.interop.import_config import ImportConfig  # noqa: E402
from lmkit.progress import reporter  # noqa: E402
from tests.interop.hf_models import FAMILIES, make_hf_model  # noqa: E402


def main() -> None:
    reporter.configure(quiet=True, verbose=False)
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    root = Path(tempfile.mkdtemp(prefix="lmkit-parity-"))
    print(f"{'family':8s} {'import check':>13s} {'padded batch':>13s} {'export check':>13s}  architecture")
    for family in FAMILIES:
        source = make_hf_model(family, root / family)
        imported = import_stage.run(resolve(ImportConfig, {}, {"source": str(source),
                                                               "out": str(root / f"ck-{family}")}))
        exported = export_stage.run(resolve(ExportConfig, {}, {"checkpoint": str(imported.path),
                                                              "out": str(root / f"hf-{family}")}))
        checkpoint = read_checkpoint(imported.path)
        ours = checkpoint.inference_model()
        auto = transformers.AutoModelForMaskedLM if family == "bert" else transformers.AutoModelForCausalLM
        theirs = auto.from_pretrained(source, dtype=torch.float32).eval()
        idx = torch.randint(0, checkpoint.model_config.vocab_size, (4, 48), generator=torch.Generator().manual_seed(1))
        mask = torch.ones(4, 48, dtype=torch.bool)
        mask[1, 30:], mask[2, 10:] = False, False
        idx[~mask] = checkpoint.specials.pad
        with torch.no_grad():
            got = ours(idx, attention_mask=mask)[0] if family == "bert" else ours(idx)[0]
            expected = theirs(input_ids=idx, attention_mask=mask.long()).logits
        padded = float((got - expected)[mask].abs().max())
        print(f"{family:8s} {imported.stats['max_abs_logit_difference']:13.2e} {padded:13.2e} "
              f"{exported.stats['max_abs_logit_difference']:13.2e}  {imported.stats['architecture']}")


if __name__ == "__main__":
    main()
