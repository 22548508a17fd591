"""What ``vitquant compare`` runs: variants = recipes (with options) × bit widths.

A variant is written like a benchmark row: a recipe name, optionally followed by options that replace
parts of it, ``bitlog2-half-17+post_gelu=adalog`` or ``repq-vit+attn_quant=twin-uniform+nonlinear=ibert``
(``-`` and ``_`` are the same in option names; recipe names are normalised and options put in one order,
so one configuration has one name). The options are the ``vitquant quantize`` flags of the
same names; each variant runs at every ``W/A`` of ``--bits``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vitquant.errors import ConfigError

__all__ = ["OPTIONS", "Variant", "parse_variant", "plan_variants"]

#: option name -> its type (the QuantizeJob field of the same name)
OPTIONS: dict[str, type] = {
    "attn_quant": str, "attn_bits": int, "post_gelu": str, "ends_bits": int, "search": str, "metric": str,
    "nonlinear": str, "mixed_rule": str, "nonlinear_bits": int, "softmax_bits": int,
}


@dataclass(frozen=True)
class Variant:
    """One configuration of the comparison."""

    recipe: str
    w_bits: int
    a_bits: int
    options: tuple[tuple[str, str | int], ...] = ()

    @property
    def label(self) -> str:
        """The recipe with its options, without the bits: ``bitlog2-half-17+post_gelu=adalog``."""
        return "+".join([self.recipe, *(f"{k}={v}" for k, v in self.options)])

    @property
    def name(self) -> str:
        return f"{self.label} W{self.w_bits}A{self.a_bits}"

    def job_fields(self) -> dict[str, str | int]:
        """The QuantizeJob fields this variant sets."""
        return {"recipe": self.recipe, "w_bits": self.w_bits, "a_bits": self.a_bits, **dict(self.options)}


def parse_variant(text: str) -> tuple[str, tuple[tuple[str, str | int], ...]]:
    """``recipe+key=value+...`` -> (recipe, options); :class:`ConfigError` for an unknown or malformed option."""
    recipe, *items = [part.strip() for part in text.split("+")]
    if not recipe:
        raise ConfigError(f"variant {text!r} has no recipe name")
    options: dict[str, str | int] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not value.strip():
            raise ConfigError(f"variant {text!r}: option {item!r} is not name=value")
        if key not in OPTIONS:
            raise ConfigError(f"variant {text!r}: unknown option {key!r}; choose from {', '.join(OPTIONS)}")
        if key in options:
            raise ConfigError(f"variant {text!r}: option {key!r} given twice")
        try:
            options[key] = OPTIONS[key](value.strip())
        except ValueError:
            raise ConfigError(f"variant {text!r}: option {key} needs an integer, got {value!r}") from None
    from vitquant.recipes import normalize_recipe_name

    canonical = sorted(options.items(), key=lambda kv: list(OPTIONS).index(kv[0]))  # one spelling per variant
    return normalize_recipe_name(recipe), tuple(canonical)


def plan_variants(variants: Sequence[str], bits: Sequence[tuple[int, int]]) -> list[Variant]:
    """Every variant at every bit width, bits outermost (so each width's rows sit together)."""
    if not variants:
        raise ConfigError("nothing to compare: give at least one recipe")
    if not bits:
        raise ConfigError("nothing to compare: give at least one W/A bit width")
    parsed = [parse_variant(v) for v in variants]
    plan = [Variant(recipe, w, a, options) for w, a in bits for recipe, options in parsed]
    names = [v.name for v in plan]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"variants listed twice: {', '.join(repeated)}")
    return plan
