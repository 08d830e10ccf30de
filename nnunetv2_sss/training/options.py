"""Every option of a plugin trainer, resolved through one path (``resolve_options``).

An option is a setting with a default that a trainer may override. Defaults are declared by
layers, lowest first; a later layer's default replaces an earlier one's:

1. nnU-Net (``nnUNetTrainer.__init__``: ``initial_lr``, ``weight_decay``, ``num_epochs``, ...);
2. the plugin's trainer bases (``option_defaults`` of a class, e.g. ``save_every = 1``);
3. the network recipe (``defaults`` of ``PlainRecipe`` / ``SAM2Recipe`` / ``SSSRecipe``);
4. the objective (``defaults`` of the method, e.g. ``confidence_threshold = 0.95``).

Overrides, in increasing precedence:

- a class attribute of the trainer or of a base between it and ``nnUNetTrainerPlugin``
  (``class MyTrainer(nnUNetTrainerSAM2): initial_lr = 3e-4``);
- an instance attribute set after nnU-Net's ``__init__`` (nnU-Net's own style,
  ``self.num_epochs = 50`` in a subclass's ``__init__``, or ``nnUNetv2_train --disable_checkpointing``);
- an ``nnUNet_sss_*`` environment variable (``settings.OPTION_VARIABLES``).

The log lists every value that differs from its first declaration (nnU-Net's default for
nnU-Net's options), with where it came from, and every ``nnUNet_sss_*`` variable that is set but
empty (an undefined shell variable), which leaves the default.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Mapping, Tuple

from nnunetv2_sss import settings
from nnunetv2_sss.errors import UserValueError

# what nnU-Net's nnUNetTrainer.__init__ sets and a trainer may change (checked against 2.8.1)
NNUNET_OPTIONS = ('initial_lr', 'weight_decay', 'oversample_foreground_percent', 'probabilistic_oversampling',
                  'num_iterations_per_epoch', 'num_val_iterations_per_epoch', 'num_epochs',
                  'enable_deep_supervision', 'save_every', 'disable_checkpointing')
NNUNET = "nnU-Net"


@dataclass(frozen=True)
class Option:
    """One resolved option: its value and source, and its first declaration (``default``)."""
    name: str
    value: Any
    source: str
    default: Any
    default_source: str

    def describe(self) -> str:
        return f"{self.name} = {self.value!r} ({self.source}; default {self.default!r} from {self.default_source})"


def declared_defaults(cls: type, attribute: str = 'defaults') -> Dict[str, Tuple[Any, str]]:
    """``name -> (default, declaring class name)`` from the ``attribute`` dicts along ``cls``'s MRO
    (a subclass's entry replaces its base's)."""
    merged: Dict[str, Tuple[Any, str]] = {}
    for klass in reversed(cls.__mro__):
        merged.update({name: (value, klass.__name__) for name, value in klass.__dict__.get(attribute, {}).items()})
    return merged


def _check_type(name: str, value, default, source: str) -> None:
    """A value of another kind than the default's (a string for a number, ...) is a user error."""
    if default is None or value is None:
        return
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, (int, float)):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list)) and len(value) == len(default)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserValueError(f"option {name}={value!r} ({source}) is not of the kind of its default {default!r}: "
                             f"give a value like the default")


def class_overrides(trainer_class: type, names: Iterable[str], stop: type) -> Dict[str, Tuple[Any, str]]:
    """``name -> (value, 'class attribute of X')`` for the options that a class of ``trainer_class``'s
    MRO below ``stop`` sets as a class attribute; the most derived class wins."""
    found = {}
    for klass in trainer_class.__mro__:
        if klass is stop:
            break
        for name in names:
            if name in klass.__dict__ and name not in found:
                found[name] = (klass.__dict__[name], f"class attribute of {klass.__name__}")
    return found


def class_option(trainer_class: type, name: str):
    """An option of the trainer bases' ``option_defaults`` as the class alone gives it: its class attribute
    (the most derived), else its declared default (``KeyError`` if the class has no such option)."""
    for klass in trainer_class.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return declared_defaults(trainer_class, 'option_defaults')[name][0]


def unknown_class_attributes(trainer_class: type, names: Iterable[str]) -> List[str]:
    """Plain (non-callable, non-underscore) class attributes of the trainer classes below the first
    base that declares ``option_defaults`` which are no option of the trainer: most likely misspelt."""
    known = set(names) | {'recipe', 'objective'}
    unknown = []
    for klass in trainer_class.__mro__:
        if 'option_defaults' in klass.__dict__:
            break
        unknown += [f"{klass.__name__}.{name}" for name, value in klass.__dict__.items()
                    if not name.startswith('_') and name not in known and not callable(value)
                    and not isinstance(value, (classmethod, staticmethod, property))]
    return unknown


def resolve_options(declarations: List[Mapping[str, Tuple[Any, str]]],
                    overrides: List[Mapping[str, Tuple[Any, str]]]) -> Dict[str, Option]:
    """Options from ``declarations`` and ``overrides``, each a list (lowest precedence first) of
    ``{name: (value, source)}``. The first declaration of a name is its default; an override of an
    undeclared name is ignored, one of another kind than the default is a user error."""
    first: Dict[str, Tuple[Any, str]] = {}
    current: Dict[str, Tuple[Any, str]] = {}
    for layer in declarations:
        for name, entry in layer.items():
            first.setdefault(name, entry)
            current[name] = entry
    for layer in overrides:
        for name, (value, source) in layer.items():
            if name in current:
                _check_type(name, value, first[name][0], source)
                current[name] = (value, source)
    return {name: Option(name, value, source, *first[name]) for name, (value, source) in current.items()}


def environment_overrides() -> Tuple[Dict[str, Tuple[Any, str]], List[str]]:
    """``name -> (value, variable)`` of the ``nnUNet_sss_*`` option variables that are set, and the
    names of those set but empty."""
    overrides, empty = {}, []
    for variable, name in settings.OPTION_VARIABLES.items():
        value = settings.option_variable(variable)
        if value is settings.EMPTY:
            empty.append(variable)
        elif value is not None:
            overrides[name] = (value, variable)
    return overrides, empty


def log_lines(options: Mapping[str, Option], empty_variables: Iterable[str] = ()) -> List[str]:
    """One line per option whose value differs from its first declaration, and per empty variable."""
    lines = [option.describe() for option in options.values() if option.value != option.default]
    for variable in empty_variables:
        name = settings.OPTION_VARIABLES[variable]
        option = options.get(name)
        lines.append(f"{variable} is set but empty (an undefined shell variable?): it is ignored, "
                     f"{name} = {option.value!r} ({option.source})" if option else f"{variable} is set but empty")
    return lines
