"""Loading LazyConfig files with strict, typed command-line overrides.

Detectron2's ``LazyConfig.apply_overrides`` silently adds unknown keys and accepts any value
type, so a typo (``model.backbone.net.embeddim=384``) or a wrong type (``train.max_iter=1.5``)
only surfaces deep inside instantiation. :func:`load_config` rejects both up front with a
:class:`~tokenprune.errors.ConfigError` naming the key. Two relaxations follow the ``_target_``
of the node a key belongs to: one number is accepted for a list when the target's parameter
takes a float too (``model.backbone.net.keep_ratios=0.5``), and an override of one of the
target's ``config_alternatives`` (``keep_ratios`` / ``keep_base``) clears the others.

:func:`project_config` finds one of the project's own config files (the top-level
``configs/`` folder): shipped in a wheel as the package resource ``tokenprune/configs``
(setup.cfg maps the folder there), or in a source checkout next to ``setup.cfg``.
"""
from __future__ import annotations

import difflib
import importlib.resources
import inspect
import os
import typing
from typing import Any, Callable, Iterable, List, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf

from detectron2.config import LazyConfig
from detectron2.utils.registry import locate

from .errors import ConfigError

__all__ = ["load_config", "apply_overrides", "configs_dir", "project_config", "did_you_mean"]

_MISSING = object()


def configs_dir() -> str:
    """The folder of the project's LazyConfig files: the installed resource
    ``tokenprune/configs``, else the ``configs/`` folder of the source checkout the package
    is imported from. ConfigError when neither exists."""
    resource = importlib.resources.files("tokenprune").joinpath("configs")
    if resource.is_dir():
        return os.fspath(resource)
    package = os.path.dirname(os.path.abspath(__file__))
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(package)))  # projects/TokenPrune/..
    if os.path.isfile(os.path.join(checkout, "setup.cfg")) \
            and os.path.isdir(os.path.join(checkout, "configs")):
        return os.path.join(checkout, "configs")
    raise ConfigError(f"the project's configs are neither installed with the package nor in a "
                      f"source checkout around {package}; give the config files explicitly")


def project_config(name: str) -> str:
    """The path of the project's config ``name`` (e.g. ``"Synthetic/mask_rcnn_vitdet_t_dense.py"``,
    relative to :func:`configs_dir`)."""
    return os.path.join(configs_dir(), *name.split("/"))


def load_config(path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a LazyConfig python/yaml file and apply ``key=value`` overrides strictly."""
    if not path:
        raise ConfigError("no config file given (use --config-file PATH)")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = LazyConfig.load(path)
    except Exception as e:  # a config file is user code: any failure is a config error
        raise ConfigError(f"cannot load config {path}: {type(e).__name__}: {e}") from e
    return apply_overrides(cfg, overrides)


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply hydra-syntax overrides in place; each key must exist and keep its value type.

    A key absent from the file is accepted when it names a parameter of the ``_target_``
    of the node it belongs to (a default the file did not spell out).
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    done: List[str] = []
    for text in overrides:
        try:
            (override,) = OverridesParser.create().parse_overrides([text])
        except HydraException as e:
            raise ConfigError(f"malformed override '{text}': expected key=value") from e
        key = override.key_or_group
        if override.is_delete():
            raise ConfigError(f"override '{text}': deleting keys is not supported")
        value = _check_override(cfg, key, override.value())
        OmegaConf.update(cfg, key, value, merge=False)  # key={...} replaces, not merges
        _clear_alternatives(cfg, key, done)
        done.append(key)
    return cfg


def did_you_mean(name: str, choices: Iterable[str], prefix: str = "") -> str:
    """`` (did you mean a, b?)`` with up to 3 of ``choices`` close to ``name`` (each written
    with ``prefix``), or ``""`` when none is."""
    close = difflib.get_close_matches(name, [str(c) for c in choices], n=3)
    return f" (did you mean {', '.join(prefix + c for c in close)}?)" if close else ""


def _check_override(cfg: DictConfig, key: str, value: Any) -> Any:
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=_MISSING) if parent_key else cfg
    if parent is _MISSING or not isinstance(parent, DictConfig):
        raise ConfigError(f"override '{key}': no such config key '{parent_key}'")
    if leaf not in parent:
        if _target_accepts(parent, leaf):
            return value
        hint = did_you_mean(leaf, parent.keys(), f"{parent_key}." if parent_key else "")
        raise ConfigError(f"override '{key}': no such config key{hint}")
    old = parent._get_node(leaf)._value()  # raw value: interpolations stay strings
    if isinstance(old, str) and old.startswith("${"):
        return value
    if isinstance(old, (list, tuple, ListConfig)) and _is_number(value) \
            and _target_takes_float(parent, leaf):
        return value  # one number for every entry (keep_ratios=0.5)
    return _coerce(key, old, value)


def _clear_alternatives(cfg: DictConfig, key: str, done: Sequence[str]) -> None:
    """After ``key`` was set: set to None the other keys of its ``config_alternatives``
    group (see the module docstring); ConfigError if one of them was overridden too."""
    parent_key, _, leaf = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
    target = _target(parent)
    for group in getattr(target, "config_alternatives", ()):
        if leaf not in group:
            continue
        for other in (g for g in group if g != leaf):
            other_key = f"{parent_key}.{other}" if parent_key else other
            if other_key in done:
                raise ConfigError(f"overrides '{other_key}' and '{key}': give one of "
                                  f"{' or '.join(group)}, not both")
            if other in parent:
                parent[other] = None


def _target(node: DictConfig) -> Optional[Callable]:
    """The node's ``_target_`` as a class or function (None when it has none)."""
    target = node.get("_target_", None)
    return locate(target) if isinstance(target, str) else target


def _target_functions(node: DictConfig) -> List[Callable]:
    """The functions that take the node's keywords: a class's ``__init__`` methods along
    its MRO (``**kwargs`` are passed up to base classes), or the function itself."""
    fn = _target(node)
    if fn is None:
        return []
    return [c.__dict__["__init__"] for c in fn.__mro__ if "__init__" in c.__dict__] \
        if isinstance(fn, type) else [fn]


def _target_accepts(node: DictConfig, name: str) -> bool:
    """Whether the node's ``_target_`` takes a keyword ``name`` (a function: ``**kwargs``
    too)."""
    fn = _target(node)
    for init in _target_functions(node):
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            continue
        if name in params:
            return True
    if fn is None or isinstance(fn, type):
        return False
    params = inspect.signature(fn).parameters
    return any(p.kind is p.VAR_KEYWORD for p in params.values())


def _target_takes_float(node: DictConfig, name: str) -> bool:
    """Whether the type hint of the target's parameter ``name`` admits a float."""
    for init in _target_functions(node):
        try:
            hint = typing.get_type_hints(init).get(name)
        except Exception:  # an annotation that does not resolve: no evidence
            continue
        if hint is not None:
            return hint is float or float in typing.get_args(hint)
    return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _coerce(key: str, old: Any, value: Any) -> Any:
    """Return ``value`` if it fits the type of ``old``; raise ConfigError otherwise."""
    if old is None or value is None:
        return value
    expected: tuple[type, ...]
    if isinstance(old, bool):
        expected = (bool,)
    elif isinstance(old, int):
        expected = (int,)
    elif isinstance(old, float):
        expected = (int, float)
    elif isinstance(old, str):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        expected = (str,)
    elif isinstance(old, (list, tuple, ListConfig)):
        expected = (list, tuple, ListConfig)
    elif isinstance(old, (dict, DictConfig)):
        expected = (dict, DictConfig)
    else:
        return value
    if isinstance(value, bool) and bool not in expected:
        ok = False
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"override '{key}={value}': expected {_type_name(old)} "
            f"(current value {old!r}), got {_type_name(value)}"
        )
    return value


def _type_name(v: Any) -> str:
    if isinstance(v, (ListConfig, tuple)):
        return "list"
    if isinstance(v, DictConfig):
        return "dict"
    return type(v).__name__
