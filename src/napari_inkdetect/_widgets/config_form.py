"""Dock form fields made from a config field's declaration (:mod:`napari_inkdetect.options`).

The field's annotation picks the magicgui widget and its :class:`~napari_inkdetect.options.
Option` fills it in, so a limit, a unit or a help text written once in the config is the
command line's flag and the dock's control alike:

========================  ====================================================================
annotation                widget
========================  ====================================================================
``int``, ``float``        ``FloatSpinBox``: ``lo``..``hi``, ``step``, ``unit`` as its suffix
``bool``                  ``CheckBox`` whose text is the label
``bool | None``           ``ComboBox``: auto / yes / no
``str`` with ``choices``  ``ComboBox`` of the choices
``str``                   ``LineEdit``
anything with ``parse``   ``LineEdit`` holding the flag's text (``LO,HI``), read by ``parse``
========================  ====================================================================

The tooltip is the option's help (``{preset:FIELD}`` filled from the device presets, as the
command line's ``--help`` does), then a number's range and unit; the label is
``Option.label`` or the field name made readable.

**Auto.** A field that may be ``None`` (``steps: int | None``) gets an explicit state for it,
"auto" unless the dock names it otherwise ("tile / 2", "full size"): a number goes one step
below its range, where the spin box shows the word instead of a number (Qt's special value
text); the last step down is "auto", the first step up a number again, and a restored or
typed value is just a number. A combo box lists the word first; a line edit is empty, the
word its placeholder. The value is then ``None``, which :meth:`ConfigForm.values` leaves out,
so the config's own default applies. One spin box per number keeps the dock's attributes the
Qt widgets they were, and the lowest value already meant "auto" (learning rate), "tile / 2"
(stride) or "off" (preview) in these docks; an extra check box per field would double the
rows of the Advanced section.

**Where magicgui cannot express a control** (documented exceptions, set on ``.native``):

* an ``int`` is a ``FloatSpinBox`` showing no decimals, not magicgui's ``SpinBox``: that one
  is superqt's ``QLargeIntSpinBox``, which has no suffix and no special value text, so it can
  show neither the unit nor "auto". Values come back as ``int``;
* the suffix, the special value text, the decimals (enough for ``lo``, ``step`` and the
  default: a width of 0.0625, a learning rate of 1e-7) and a line edit's placeholder are not
  magicgui options;
* a nested config (``TrainConfig.augment``) has no widget of its own: its fields are dotted
  names (``augment.flips``) that :meth:`ConfigForm.values` builds back into an
  ``AugmentConfig``.
"""

from __future__ import annotations

import dataclasses
import decimal
import math
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import MISSING
from typing import Any

from magicgui import widgets
from qtpy.QtWidgets import QFormLayout, QWidget

from napari_inkdetect.errors import ConfigError
from napari_inkdetect.options import OPTION_KEY, Option, field_type, is_config

__all__ = [
    "AUTO",
    "ConfigForm",
    "FieldWidget",
    "field_widget",
    "form_fields",
    "option_help",
    "section_title",
]

AUTO = "auto"
_YES_NO = (("yes", True), ("no", False))
_INVALID = "color: #e04040"  # a line edit whose text its parse refuses


def option_help(option: Option) -> str:
    """The option's help with ``{preset:FIELD}`` filled from the device presets table."""
    if "{preset:" not in option.help:
        return option.help
    from napari_inkdetect.training.presets import preset_help

    return re.sub(r"\{preset:(\w+)\}", lambda m: preset_help(m.group(1)), option.help)


def _field(cls: type, name: str) -> tuple[type, dataclasses.Field, Option, Any]:
    """(the dataclass that declares it, its field, its option, its type) of a dotted name."""
    *outer, last = name.split(".")
    for part in outer:
        cls = field_type(cls, part)
        if not is_config(cls):
            raise KeyError(f"{part!r} in {name!r} is not a nested config")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if last not in fields:
        raise KeyError(f"{cls.__name__} has no field {last!r}")
    f = fields[last]
    return cls, f, f.metadata.get(OPTION_KEY, Option()), field_type(cls, last)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def _optional(cls: type, name: str) -> bool:
    """Whether the annotation admits None (``int | None``)."""
    kind = typing.get_type_hints(cls)[name]
    return type(None) in typing.get_args(kind)


def _readable(name: str) -> str:
    """``"batch_size"`` -> ``"Batch size"``."""
    return name.split(".")[-1].replace("_", " ").capitalize()


def _decimals(*values: float | None) -> int:
    """Decimals that show each of ``values`` exactly (0.0625: 4, 1e-07: 7), at least 1."""
    places = [1]
    for value in values:
        if value is not None and isinstance(value, float) and math.isfinite(value):
            exponent = decimal.Decimal(repr(value)).normalize().as_tuple().exponent
            places.append(-int(exponent) if isinstance(exponent, int) else 0)
    return min(10, max(places))


def _number_text(value: float, kind: type) -> str:
    return str(int(value)) if kind is int else f"{value:g}"


def _as_text(value: Any) -> str:
    """A parsed field's value as its flag's text: items or values joined by commas."""
    if value is None:
        return ""
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return ",".join(_as_text(v) for v in value)
    return str(value)


def _nest(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``cls`` from dotted names: ``{"augment.flips": False}`` ->
    ``{"augment": AugmentConfig(flips=False)}`` (the nested config's other fields default)."""
    out: dict[str, Any] = {}
    inner: dict[str, dict[str, Any]] = {}
    for name, value in values.items():
        outer, _, rest = name.partition(".")
        if rest:
            inner.setdefault(outer, {})[rest] = value
        else:
            out[name] = value
    for outer, sub in inner.items():
        kind = field_type(cls, outer)
        out[outer] = kind(**_nest(kind, sub))
    return out


class FieldWidget:
    """One config field's control: the magicgui ``widget`` (its Qt widget: ``native``), and
    the field's ``value`` read from it (``None`` in the "auto" state)."""

    def __init__(
        self,
        cls: type,
        name: str,
        *,
        value: Any = MISSING,
        auto: bool = True,
        none_text: str = AUTO,
        decimals: int | None = None,
    ) -> None:
        owner, f, self.option, self.kind = _field(cls, name)
        self.name, self.default = name, _default(f)
        self.label = self.option.label or _readable(name)
        #: the word the "auto" state shows, or None: this field always has a value
        self.none_text: str | None = none_text if auto and _optional(owner, f.name) else None
        if self.none_text is None and self.default is None and value is MISSING:
            raise ValueError(f"{name}: a field without an auto state needs a starting value")
        self._bottom: float | None = None
        self.widget = self._make(decimals)
        self.set_value(self.default if value is MISSING else value)

    # ------------------------------------------------------------------ making it

    @property
    def number(self) -> bool:
        return self.kind in (int, float) and self.option.choices is None

    @property
    def parsed(self) -> bool:
        """Typed as the flag's text (a tuple, a dict: anything a spin box or a combo is not)."""
        return self.option.parse is not None and not self.number and self.kind is not bool

    def _make(self, decimals: int | None) -> widgets.ValueWidget:
        common = {"name": self.name.replace(".", "_"), "tooltip": self._tooltip()}
        if self.number:
            return self._spin_box(common, decimals)
        if self.kind is bool and self.none_text is None:
            return widgets.CheckBox(text=self.label, **common)
        if self.kind is bool:
            return widgets.ComboBox(choices=[(self.none_text, None), *_YES_NO], **common)
        if self.option.choices is not None:
            choices = [(str(c), c) for c in self.option.choices]
            if self.none_text is not None:
                choices.insert(0, (self.none_text, None))
            return widgets.ComboBox(choices=choices, **common)
        edit = widgets.LineEdit(**common)
        shown = self.none_text if self.default is None else _as_text(self.default)
        edit.native.setPlaceholderText(shown or "")
        if self.parsed:
            edit.native.textChanged.connect(self._check_text)
        return edit

    def _spin_box(self, common: dict[str, Any], decimals: int | None) -> widgets.FloatSpinBox:
        opt, integer = self.option, self.kind is int
        lo = opt.lo if opt.lo is not None else 0
        hi = opt.hi if opt.hi is not None else 1e9
        step = opt.step or (1 if integer or hi - lo >= 10 else 0.1)
        box = widgets.FloatSpinBox(**common)
        native = box.native
        default = self.default if isinstance(self.default, float) else None
        native.setDecimals(0 if integer else decimals or _decimals(opt.lo, opt.step, default))
        bottom = lo
        if self.none_text is not None:  # one step below the range: the "auto" state
            bottom = lo - step if lo - step >= 0 or lo <= 0 else 0
            self._bottom = bottom
            native.setSpecialValueText(self.none_text)
        native.setRange(bottom, hi)
        native.setSingleStep(step)
        if opt.unit:
            native.setSuffix(f" {opt.unit}")
        return box

    def _tooltip(self) -> str:
        text = option_help(self.option)
        notes = []
        if self.number:
            lo, hi = self.option.lo, self.option.hi
            if lo is not None and hi is not None:
                unit = f" {self.option.unit}" if self.option.unit else ""
                notes.append(
                    f"range {_number_text(lo, self.kind)}..{_number_text(hi, self.kind)}{unit}"
                )
        elif self.parsed and self.option.metavar:
            notes.append(f"typed as {self.option.metavar}")
        if self.none_text is not None:
            text_field = not self.number and self.kind is not bool and not self.option.choices
            where = "left empty" if text_field else "the lowest value" if self.number else None
            default = ": the default" if self.default is None else ""
            notes.append(f"{self.none_text} ({where or 'the first choice'}){default}")
        return "; ".join([text, *notes]) if notes else text

    # ------------------------------------------------------------------ its value

    @property
    def native(self) -> QWidget:
        """The Qt widget the dock shows (and its settings keep)."""
        return self.widget.native

    @property
    def is_auto(self) -> bool:
        """Whether the control is in its "auto" state (the value is None)."""
        return self.none_text is not None and self.value is None

    @property
    def value(self) -> Any:
        """The field's value; ``ConfigError`` for text its ``parse`` refuses."""
        if self.number:
            number = self.native.value()
            if self._bottom is not None and number <= self._bottom:
                return None
            lo = self.option.lo
            number = max(number, lo) if lo is not None else number
            return round(number) if self.kind is int else float(number)
        if isinstance(self.widget, widgets.LineEdit):
            return self._text_value()
        return self.widget.value

    def _text_value(self) -> Any:
        text = self.native.text().strip()
        if not text:
            return None if self.none_text is not None else self.default
        if not self.parsed:
            return text
        try:
            return self.option.parse(text)
        except (ConfigError, ValueError, TypeError) as exc:
            raise ConfigError(f"{self.label}: {exc}") from None

    def _check_text(self, *_: Any) -> None:
        """Mark text its parse refuses (the reason comes when the dock builds its config)."""
        try:
            self._text_value()
        except ConfigError:
            self.native.setStyleSheet(_INVALID)
        else:
            self.native.setStyleSheet("")

    def set_value(self, value: Any) -> None:
        """Show ``value`` (``None``: the "auto" state); a number is clamped to the range."""
        if self.number:
            if value is None:
                if self._bottom is None:
                    raise ValueError(f"{self.name} has no auto state")
                self.native.setValue(self._bottom)
            else:
                self.native.setValue(float(value))
        elif isinstance(self.widget, widgets.LineEdit):
            self.native.setText(_as_text(value) if self.parsed else (value or ""))
        else:
            self.widget.value = value

    def show_auto(self, text: str | None = None) -> None:
        """What a number's "auto" state says (e.g. ``auto (3e-05)`` once a run resolved it);
        no ``text``: its word again."""
        if self.number and self.none_text is not None:
            self.native.setSpecialValueText(text or self.none_text)


def field_widget(cls: type, name: str, **settings: Any) -> FieldWidget:
    """The control of field ``name`` (dotted for a nested config: ``augment.flips``) of the
    config dataclass ``cls``; ``settings``: ``value`` (the starting value, default the
    field's), ``auto=False`` (no auto state: the dock always gives a value), ``none_text``
    (what the auto state says) and ``decimals``."""
    return FieldWidget(cls, name, **settings)


class ConfigForm:
    """The controls of some fields of a config: ``fields`` (name -> :class:`FieldWidget`),
    ``widgets`` (name -> its Qt widget), :meth:`values` for the config and :meth:`add_rows`
    to lay them out. ``settings`` maps a name to :func:`field_widget`'s keywords."""

    def __init__(
        self,
        cls: type,
        names: Iterable[str],
        settings: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        self.cls = cls
        settings = settings or {}
        self.fields = {n: field_widget(cls, n, **settings.get(n, {})) for n in names}

    def __getitem__(self, name: str) -> FieldWidget:
        return self.fields[name]

    @property
    def widgets(self) -> dict[str, QWidget]:
        """Field name -> the Qt widget that edits it."""
        return {name: f.native for name, f in self.fields.items()}

    def values(self) -> dict[str, Any]:
        """Keyword arguments for the config: every field's value, less those in their "auto"
        state whose default is None (the config's default applies); dotted names are built
        into their nested config (over its defaults)."""
        given = {}
        for name, f in self.fields.items():
            value = f.value
            if value is not None or f.default is not None:
                given[name] = value
        return _nest(self.cls, given)

    def set_values(self, mapping: Mapping[str, Any], prefix: str = "") -> None:
        """Show the values of ``mapping`` (field names, dotted or not; a nested config or
        dict is shown field by field); names this form does not hold are ignored."""
        for key, value in mapping.items():
            name = prefix + key
            if name in self.fields:
                self.fields[name].set_value(value)
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                self.set_values(dataclasses.asdict(value), prefix=f"{name}.")
            elif isinstance(value, Mapping):
                self.set_values(value, prefix=f"{name}.")

    def add_rows(self, form: QFormLayout, names: Iterable[str] | None = None) -> None:
        """A row per field of ``names`` (default: all, in order): its label and its widget; a
        check box carries its label itself."""
        for name in self.fields if names is None else names:
            f = self.fields[name]
            label = "" if isinstance(f.widget, widgets.CheckBox) else f.label
            form.addRow(label, f.native)


def form_fields(cls: type, prefix: str = "") -> list[str]:
    """The names (dotted inside nested configs) of every field of ``cls`` a form may ask
    for (``Option.form``), in declaration order: what a dock shows, or says why not."""
    names: list[str] = []
    for f in dataclasses.fields(cls):
        option = f.metadata.get(OPTION_KEY, Option())
        kind = field_type(cls, f.name)
        if not option.form:
            continue
        if is_config(kind):
            names += form_fields(kind, prefix=f"{prefix}{f.name}.")
        else:
            names.append(prefix + f.name)
    return names


def section_title(cls: type, outer: str) -> str:
    """The title of a nested config's sub-section: its option's help (``"augmentation"``)."""
    _, _, option, _ = _field(cls, outer)
    return (option.help or outer).capitalize()
