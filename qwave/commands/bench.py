"""``qwave bench``: the cross-validated benchmark, configured with Hydra (overrides, multirun, launchers).

The overrides are checked before Hydra runs: a key the schema does not have is refused with the closest known key
(``+key=value`` too, which Hydra would silently add and the run would ignore; ``hydra.*`` keys are Hydra's own),
the tag is a plain name (no ``${...}`` interpolation), and every job's configuration is composed and validated
(``qwave.bench.config.validate``: ranges, NaN, signs, model names) before the first job trains, so a bad value in
any job of a sweep or an unreadable override is one ``qwave bench: error:`` line and exit code 2 like qwave's own
errors.
"""

from __future__ import annotations

import difflib
import logging
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_module
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from qwave.bench.config import BenchConfig, config_keys, validate
from qwave.bench.gather import PLAN
from qwave.errors import ConfigError, QwaveError

# Flags after which Hydra prints something instead of running (nothing to check then).
INFO_FLAGS = ("-h", "--help", "--hydra-help", "-c", "--cfg", "-i", "--info", "--shell-completion", "--version",
              "--resolve", "-p", "--package", "-sc")
# Flags that take a value: the next argument is not an override.
VALUE_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir", "--experimental-rerun")

ConfigStore.instance().store(name="bench_schema", node=BenchConfig)


@hydra.main(version_base=None, config_path="../conf", config_name="bench")
def _bench(config: DictConfig) -> None:
    from qwave.bench.runner import run_benchmark
    from qwave.bench.summary import print_table

    cfg: BenchConfig = OmegaConf.to_object(config)
    logging.getLogger("qwave").setLevel(logging.WARNING if cfg.quiet else logging.INFO)
    hydra_cfg = HydraConfig.get()
    sweep_plan = Path(hydra_cfg.runtime.output_dir) / PLAN if hydra_cfg.mode == RunMode.MULTIRUN else None
    try:
        rows = run_benchmark(cfg, sweep_plan)
    except (QwaveError, OSError) as err:
        print(f"qwave bench: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print_table(rows, f"qwave bench: {cfg.output_dir}/{cfg.tag}")
    print(f"report: {cfg.output_dir}/{cfg.tag}/report.md and pareto.png (macro-F1 against size and latency)")


def _override_texts(argv: list[str]) -> tuple[list[str], bool] | None:
    """The override arguments and whether this is a multirun; None when Hydra is asked for information only."""
    texts, multirun, skip = [], False, False
    for arg in argv:
        if skip:
            skip = False
        elif arg in INFO_FLAGS or arg.startswith(("--cfg=", "--shell-completion=")):
            return None
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg in VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-"):
            texts.append(arg)
    return texts, multirun


def _unreadable(text: str, err: Exception) -> ConfigError:
    hint = ""
    if any(ord(c) > 127 for c in text):
        key, _, value = text.partition("=")
        hint = f"; a value with non-ASCII characters must be quoted for Hydra: '{key}=\"{value}\"'"
    detail = " ".join(str(err).split())[:160]
    return ConfigError(f"cannot read the override {text!r} ({detail}){hint}")


def check_overrides(argv: list[str]) -> None:
    """Refuse unknown keys (with a "did you mean" hint) and compose every job's configuration once."""
    found = _override_texts(argv)
    if found is None:
        return
    texts, multirun = found
    parser = OverridesParser.create()
    parsed = []
    for text in texts:
        try:
            parsed += parser.parse_overrides([text])
        except HydraException as err:
            raise _unreadable(text, err) from None
    known = config_keys()
    for override in parsed:
        key = override.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or "/" in key or key in known:
            continue
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]}?" if close else "; see qwave bench --help for the keys"
        raise ConfigError(f"unknown option {key!r} in {override.input_line!r}{hint}")
    jobs = BasicSweeper.split_arguments(parsed, None)[0] if multirun else [texts]
    with initialize_config_module(config_module="qwave.conf", version_base=None):
        for job in jobs:
            try:
                composed = compose(config_name="bench", overrides=list(job))
                tag = OmegaConf.to_container(composed, resolve=False).get("tag")
                if isinstance(tag, str) and "${" in tag:
                    raise ConfigError(f"tag={tag!r} must be a plain name, not an interpolation")
                cfg = OmegaConf.to_object(composed)
            except (HydraException, OmegaConfBaseException) as err:
                cause = f": {str(err.__cause__).splitlines()[0]}" if err.__cause__ is not None else ""
                raise ConfigError(f"{' '.join(str(err).split())}{cause}") from None
            try:
                validate(cfg)
            except ConfigError as err:
                where = f" (job {' '.join(job)})" if multirun else ""
                raise ConfigError(f"{err}{where}") from None


def run(argv: list[str]) -> int:
    """Check the overrides, then hand the arguments to Hydra exactly as if ``qwave bench`` were its own script."""
    check_overrides(argv)
    sys.argv = ["qwave bench", *argv]
    _bench()
    return 0
