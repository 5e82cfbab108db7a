"""Strategy names: registered whether Lightning is imported before or after twist_lightning, lazily."""

import subprocess
import sys

import pytest

CHECK = """
import lightning as L
t = L.Trainer(strategy="{name}", accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
assert type(t.strategy).__name__ == "{cls}", type(t.strategy)
assert t.strategy._start_method == "{start}", t.strategy._start_method
"""


@pytest.mark.parametrize("lightning_first", [False, True])
@pytest.mark.parametrize("name, cls, start", [("twist", "TwISTStrategy", "popen"),
                                              ("twist_spawn", "TwISTStrategy", "spawn"),
                                              ("ddp_counting", "CountingDDPStrategy", "popen")])
def test_strategy_names_resolve(lightning_first, name, cls, start):
    first = "import lightning.pytorch\nimport twist_lightning\n" if lightning_first else \
        "import sys, twist_lightning\nassert 'lightning' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", first + CHECK.format(name=name, cls=cls, start=start)], check=True)


def test_unknown_name_is_still_lightnings_error():
    code = ("import twist_lightning, lightning as L\n"
            "try:\n    L.Trainer(strategy='twist_typo', accelerator='cpu', devices=1)\n"
            "except ValueError as e:\n    assert 'twist_typo' in str(e), e\nelse:\n    raise SystemExit(1)\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_package_exports_load_lazily():
    code = ("import sys, twist_lightning as t\nassert 'lightning' not in sys.modules\n"
            "assert t.GPTConfig.__module__ == 'twist_lightning.model'\nassert 'lightning' not in sys.modules\n"
            "assert t.TwISTStrategy.__name__ == 'TwISTStrategy' and 'lightning' in sys.modules\n"
            "assert sorted(t.__all__) == t.__all__ and 'TwISTCore' in t.__all__\n"
            "try:\n    t.Nope\nexcept AttributeError:\n    pass\nelse:\n    raise SystemExit(1)\n")
    subprocess.run([sys.executable, "-c", code], check=True)
