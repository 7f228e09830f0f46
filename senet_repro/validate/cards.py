"""Model cards: what a released Caffe classifier expects and what its authors published.

One record per release in `cards.json` (shipped with the package) or in a user's own
JSON file of the same form: file names, label set, the preprocessing as keyword
arguments of `CaffePreprocess` (the one preprocessing description), where that
preprocessing is stated, and each published figure with its protocol and the place it
is published (a quote from it beside the numbers). A figure that could not be sourced
is left out; `senet-validate --check` then refuses instead of comparing with a guess.

    card = find_card("bvlc_alexnet")
    preprocess = card.transforms(mean_file="imagenet_mean.binaryproto")
    figure = card.published_for(preprocess)   # None: no figure for this protocol
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from senet_repro import imagenet
from senet_repro.transforms import CaffePreprocess

from .errors import ValidateError

CARDS_FILE = Path(__file__).with_name("cards.json")
IMAGENET_1K = "imagenet-1k"
PROTOCOLS = {"center-crop": False, "10-crop": True}
"""Protocols senet-validate runs, and whether each is `ten_crop`; other published protocols
(e.g. VGG's dense evaluation) are recorded but never compared with."""


@dataclass(frozen=True)
class Published:
    """One published pair of figures, as errors in percent (None: not published)."""

    top1_error: float | None
    top5_error: float | None
    protocol: str = "center-crop"
    source: str = ""
    quote: str = ""

    @classmethod
    def from_record(cls, record: dict[str, Any], where: str) -> Published:
        metric = record.get("metric")
        if metric not in ("accuracy", "error"):
            raise ValidateError(f"{where}: 'metric' must be 'accuracy' or 'error', got {metric!r}")
        if not record.get("source"):
            raise ValidateError(f"{where}: every published figure needs its 'source'")

        def error(key: str) -> float | None:
            value = record.get(key)
            if value is None:
                return None
            if not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise ValidateError(f"{where}: {key} must be a percentage, got {value!r}")
            return round(100.0 - value, 6) if metric == "accuracy" else float(value)

        return cls(
            error("top1"),
            error("top5"),
            record.get("protocol", ""),
            record["source"],
            record.get("quote", ""),
        )


@dataclass(frozen=True)
class ModelCard:
    """One released classifier: its files, label set, preprocessing and published figures."""

    name: str
    title: str
    prototxt: str  # repository@commit:path of the released deploy prototxt
    caffemodel: str
    num_classes: int
    label_set: str  # IMAGENET_1K or the name of another label set
    class_order: str | None  # ImageNet class order of the outputs; None for other label sets
    class_names: str | None  # the release's file naming the classes in output order
    preprocess: dict[str, Any]  # keyword arguments of CaffePreprocess
    preprocess_source: str
    published: tuple[Published, ...]

    @property
    def mean_file(self) -> str | None:
        """The file name of the release's mean image, if it subtracts one."""
        return self.preprocess.get("mean_file")

    def transforms(self, mean_file: str | Path | None = None, **overrides: Any) -> CaffePreprocess:
        """The card's preprocessing, with its mean file found at `mean_file` and `overrides` applied."""
        arguments: dict[str, Any] = {
            key: tuple(value) if isinstance(value, list) else value
            for key, value in {**self.preprocess, **overrides}.items()
        }
        if arguments.get("mean_file") is not None:
            if mean_file is None:
                raise ValidateError(
                    f"{self.name} subtracts the mean image {self.mean_file}: pass --mean-file with its path"
                )
            arguments["mean_file"] = str(mean_file)
        try:
            return CaffePreprocess(**arguments)
        except TypeError as exc:
            raise ValidateError(f"card {self.name}: bad preprocessing ({exc})") from None

    def published_for(self, preprocess: CaffePreprocess) -> Published | None:
        """The published figure comparable with a run under `preprocess`, if any.

        Comparable means the card's own preprocessing (mean file wherever it lies), with
        `ten_crop` matching the figure's protocol.
        """
        for figure in self.published:
            if figure.protocol not in PROTOCOLS:
                continue
            own = self.transforms(preprocess.mean_file, ten_crop=PROTOCOLS[figure.protocol])
            if own == preprocess:
                return figure
        return None


def _card(record: dict[str, Any], where: str) -> ModelCard:
    try:
        name = record["name"]
        where = f"{where}: card {name}"
        labels = record["labels"]
        card = ModelCard(
            name=name,
            title=record["title"],
            prototxt=record["prototxt"],
            caffemodel=record["caffemodel"],
            num_classes=int(labels["classes"]),
            label_set=labels["set"],
            class_order=labels.get("class_order"),
            class_names=labels.get("names"),
            preprocess=dict(record["preprocess"]),
            preprocess_source=record["preprocess_source"],
            published=tuple(Published.from_record(item, where) for item in record.get("published", [])),
        )
    except (KeyError, TypeError) as exc:
        raise ValidateError(f"{where}: missing or malformed field {exc}") from None
    if (card.label_set == IMAGENET_1K) != (card.class_order is not None):
        raise ValidateError(f"{where}: an ImageNet-1k card names its class order, other label sets do not")
    if card.class_order is not None:
        imagenet.class_order(card.class_order)  # raises for an unknown order
    return card


def read_cards(path: str | Path) -> dict[str, ModelCard]:
    """Cards of a JSON file (a list of records, or one record), by name."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValidateError(f"{path}: not a readable JSON model card file ({exc})") from None
    records = data if isinstance(data, list) else [data]
    cards: dict[str, ModelCard] = {}
    for record in records:
        if not isinstance(record, dict):
            raise ValidateError(f"{path}: each card is a JSON object")
        card = _card(record, str(path))
        if card.name in cards:
            raise ValidateError(f"{path}: two cards named {card.name}")
        cards[card.name] = card
    return cards


@functools.cache
def shipped_cards() -> dict[str, ModelCard]:
    """The cards that ship with senet-repro."""
    return read_cards(CARDS_FILE)


def find_card(spec: str) -> ModelCard:
    """A shipped card by name, or the only card of a JSON file (`NAME` picks one: FILE.json:NAME)."""
    if spec in shipped_cards():
        return shipped_cards()[spec]
    path, _, name = spec.partition(".json:")
    path = path + ".json" if name else spec
    if not Path(path).is_file():
        raise ValidateError(f"no model card {spec!r}; shipped cards: {', '.join(shipped_cards())}")
    cards = read_cards(path)
    if name:
        if name not in cards:
            raise ValidateError(f"{path} has no card {name!r}; it has {', '.join(cards)}")
        return cards[name]
    if len(cards) != 1:
        raise ValidateError(f"{path} holds {len(cards)} cards; pick one as {path}:NAME")
    return next(iter(cards.values()))
