"""How a model kind is defined: its parameter-constraints table (checked once at ``fit``), the
hooks it must define (refused when the class is defined or instantiated), and GMM's
convergence warning. The contract of fitted models is ``tests/test_models.py``."""

from __future__ import annotations

import warnings
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from sklearn.exceptions import ConvergenceWarning

from anomaly import models
from anomaly.models import KINDS, DensityModel, InvalidParameterError
from anomaly.models.constraints import (
    Interval,
    Options,
    SequenceOf,
    Table,
    allows,
    check_parameters,
    describe,
)
from anomaly.models.torch_density import TorchDensity

REPO = Path(__file__).resolve().parents[1]
X = np.random.default_rng(0).normal(size=(50, 2))

# Values probed against every parameter: those its table refuses must make fit raise.
PROBES: list[Any] = [
    "text", float("nan"), float("inf"), -1, 0, 0.5, 1.0, 1, 2, 3, 1.5, True,
    None, [], (0,), ("text",), {},
]  # fmt: skip


def refused(kind: str) -> list[Any]:
    """(kind, parameter, value) for every probe the kind's table refuses."""
    out = []
    for name, constraints in KINDS[kind].parameter_table().items():
        bad = [v for v in PROBES if not any(allows(c, v) for c in constraints)]
        assert bad, f"{kind}.{name}: no probe is refused; add one to PROBES"
        out += [pytest.param(kind, name, v, id=f"{kind}-{name}-{v!r}") for v in bad]
    return out


@pytest.mark.parametrize(("kind", "name", "value"), [p for k in KINDS for p in refused(k)])
def test_fit_refuses_each_value_the_table_refuses(kind, name, value):
    model = models.create(kind, **{name: value})
    with pytest.raises(InvalidParameterError) as info:
        model.fit(X)
    assert str(info.value).startswith(f"{kind}: {name} must be ")
    assert str(info.value).endswith(f", got {value!r}")


# Hand-written: values a reader knows are wrong, and what the message must say is allowed.
BAD: list[tuple[str, dict[str, Any], str]] = [
    ("gaussian", {"min_variance": -1e-6}, "min_variance must be a number ≥ 0, got -1e-06"),
    ("gaussian", {"seed": -1}, "seed must be an integer ≥ 0"),
    ("gaussian", {"seed": 1.5}, "seed must be an integer ≥ 0"),
    ("gmm", {"max_components": 2.0}, "max_components must be an integer ≥ 1, got 2.0"),
    ("gmm", {"reg_covar": -0.1}, "reg_covar must be a number ≥ 0"),
    ("gmm", {"max_iter": 0}, "max_iter must be an integer ≥ 1"),
    ("kde", {"max_points": 0}, "max_points must be an integer ≥ 1 or None, got 0"),
    ("kde", {"min_bandwidth": 0.0}, "min_bandwidth must be a number > 0, got 0.0"),
    ("kde", {"bandwidth": float("inf")}, "bandwidth must be a number > 0 or None, got inf"),
    ("knn", {"max_points": -5}, "max_points must be an integer ≥ 1 or None"),
    ("knn", {"min_bandwidth": -1.0}, "min_bandwidth must be a number > 0"),
    ("knn", {"k_grid": ()}, "k_grid must be a non-empty list, each an integer ≥ 1, got ()"),
    ("knn", {"k_grid": (5, 0)}, "k_grid must be a non-empty list, each an integer ≥ 1"),
    ("knn", {"k": 2.5}, "k must be an integer ≥ 1 or None, got 2.5"),
    ("flow", {"flow_type": "MAF"}, "flow_type must be one of 'maf', 'nsf', got 'MAF'"),
    ("flow", {"transforms": 0}, "transforms must be an integer ≥ 1"),
    ("flow", {"hidden": (32, 0)}, "hidden must be a list, each an integer ≥ 1"),
    ("flow", {"weight_decay": -1e-5}, "weight_decay must be a number ≥ 0"),
    ("flow", {"n_threads": 0}, "n_threads must be an integer ≥ 1 or None"),
    ("flow", {"progress": "no"}, "progress must be a bool, got 'no'"),
    ("vae", {"noise": -0.1}, "noise must be a number ≥ 0"),
    ("vae", {"latent": 0}, "latent must be an integer ≥ 1 or None"),
    ("vae", {"importance_samples": 0}, "importance_samples must be an even integer ≥ 2"),
    ("vae", {"validation_fraction": 0.0}, "validation_fraction must be a number in (0, 1)"),
    ("vae", {"max_steps": 0}, "max_steps must be an integer ≥ 1"),
    ("vae", {"patience": 0}, "patience must be an integer ≥ 1"),
    ("auto", {"heldout_fraction": 1.0}, "heldout_fraction must be a number in (0, 1)"),
    ("auto", {"min_weight": 1.0}, "min_weight must be a number in [0, 1)"),
    ("auto", {"candidate_params": "kde"}, "candidate_params must be a dict or None"),
    ("auto", {"candidates": "kde"}, "candidates must be a non-empty list, each one of 'gaussian'"),
    ("independent", {"bins": 10.0}, "bins must be an integer ≥ 2, got 10.0"),
    ("independent", {"heldout_fraction": 0}, "heldout_fraction must be a number in (0, 1)"),
    ("autoregressive", {"hidden": ()}, "hidden must be a non-empty list, each an integer ≥ 1"),
    ("autoregressive", {"smoothing": float("nan")}, "smoothing must be a number ≥ 0, got nan"),
    ("autoregressive", {"components": True}, "components must be an integer ≥ 1, got True"),
]


@pytest.mark.parametrize(("kind", "params", "message"), BAD, ids=[b[2][:40] for b in BAD])
def test_fit_names_the_parameter_its_value_and_what_is_allowed(kind, params, message):
    with pytest.raises(InvalidParameterError) as info:
        models.create(kind, **params).fit(X)
    assert str(info.value).startswith(f"{kind}: {message}")
    # a ValueError (the flows report it as the user's to fix) and a TypeError
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, TypeError)


def test_every_kind_has_hand_written_bad_values():
    assert {kind for kind, _, _ in BAD} == set(KINDS)


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_and_parameters_in_use_are_allowed(kind):
    """The defaults, the shipped configs' parameters (YAML lists, not tuples) and the JSON a
    saved model stores pass the check: valid parameters behave as before."""
    cls = KINDS[kind]
    table = cls.parameter_table()
    check_parameters(table, cls().get_params(), kind)
    for path in [*REPO.glob("configs/*.yaml"), REPO / "anomaly" / "demo.yaml"]:
        spec = yaml.safe_load(path.read_text())["model"]
        if spec["kind"] == kind:
            check_parameters(table, {"seed": spec["seed"], **spec["params"]}, kind)
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in cls().get_params().items()}
    check_parameters(table, as_json, kind)


@pytest.mark.parametrize("kind", KINDS)
def test_every_constructor_parameter_has_a_constraint(kind):
    cls = KINDS[kind]
    assert set(cls.parameter_table()) == set(cls().get_params())


def test_parameters_are_checked_before_the_data():
    with pytest.raises(InvalidParameterError, match="max_components"):
        models.create("gmm", max_components=0).fit(np.zeros((1, 3)))


def test_auto_checks_its_candidates_parameters_before_fitting_any():
    model = models.create(
        "auto", candidates=("gaussian", "kde"), candidate_params={"kde": {"bandwidth": -1.0}}
    )
    with pytest.raises(InvalidParameterError, match=r"^kde: bandwidth must be a number > 0"):
        model.validate_parameters()
    params = {"gaussian": {"nope": 1}}
    model = models.create("auto", candidates=("gaussian",), candidate_params=params)
    with pytest.raises(ValueError, match="bad parameters for model kind 'gaussian'"):
        model.fit(X)


def test_construction_only_stores_parameters():
    """scikit-learn's convention: a bad value is accepted by the constructor, refused by fit."""
    model = models.create("knn", k=-3)
    assert model.k == -3
    with pytest.raises(InvalidParameterError, match="k must"):
        model.fit(X)


@pytest.mark.parametrize(
    ("constraint", "good", "bad", "words"),
    [
        (Interval(Integral, 1, None), [1, 7, np.int64(3)], [0, 1.0, True, "1"], "an integer ≥ 1"),
        (Interval(Real, 0, 1, closed="neither"), [0.5, 1e-9], [0, 1, np.nan], "a number in (0, 1)"),
        (Interval(Real, 0, 1, closed="both"), [0, 1, 0.3], [-0.1, 1.1], "a number in [0, 1]"),
        (Interval(Real, None, 2, closed="right"), [-5.0, 2], [2.1, -np.inf], "a number ≤ 2"),
        (Interval(Real, None, None), [-1e300], [np.inf, np.nan], "a finite number"),
        (Interval(Integral, 2, None, even=True), [2, 16], [3, 0, 4.0], "an even integer ≥ 2"),
        (Options("a", "b"), ["a"], ["c", None, 1], "one of 'a', 'b'"),
        (SequenceOf(Options("a")), [["a"], ("a", "a")], [[], "a", ["b"]], "a non-empty list"),
        (SequenceOf(Interval(Integral, 1, None), min_length=0), [[], (2,)], [(0,)], "a list,"),
        (bool, [True, False], [0, "yes"], "a bool"),
        (None, [None], [0, ""], "None"),
    ],
)
def test_constraints(constraint, good, bad, words):
    assert all(allows(constraint, v) for v in good)
    assert not any(allows(constraint, v) for v in bad)
    assert describe([constraint]).startswith(words)


# ---------------------------------------------------------------------- hooks a kind must define
def _storage() -> dict[str, Any]:
    return {
        "_state": lambda self: {},
        "_load_state": lambda self, state, fitted: None,
    }


def _hooks() -> dict[str, Any]:
    return {
        "_fit": lambda self, X: None,
        "_log_prob": lambda self, X: np.zeros(len(X)),
        "_sample": lambda self, n, rng: np.zeros((n, 1)),
        **_storage(),
    }


def define(name: str, base: type = DensityModel, **body: Any) -> type:
    return type(name, (base,), {"kind": name.lower(), **body})


def test_a_complete_kind_is_accepted():
    cls = define("Complete", **_hooks())
    assert cls().fit(X[:, :1]).log_prob(X[:3, :1]).shape == (3,)


@pytest.mark.parametrize("hook", ["_fit", "_log_prob", "_sample"])
def test_a_kind_without_a_required_hook_cannot_be_instantiated(hook):
    body = _hooks()
    del body[hook]
    cls = define("Partial", **body)
    with pytest.raises(TypeError, match=f"abstract method.*{hook}"):
        cls()


@pytest.mark.parametrize("hook", ["_build", "_loss", "_module_log_prob", "_module_sample"])
def test_a_torch_kind_without_a_required_hook_cannot_be_instantiated(hook):
    body = {
        "_build": lambda self, dim: None,
        "_loss": lambda self, module, batch, context: None,
        "_module_log_prob": lambda self, module, Z, context: None,
        "_module_sample": lambda self, module, n, context: None,
    }
    del body[hook]
    cls = define("TorchPartial", base=TorchDensity, **body)
    with pytest.raises(TypeError, match=f"abstract method.*{hook}"):
        cls()


@pytest.mark.parametrize(
    ("explanation", "hook"),
    [
        ("closed_form", "_best_replacements"),
        ("mixture", "_conditional_mixtures"),
        ("conditional", "conditional_modes"),
    ],
)
def test_a_kind_without_its_explanations_hook_is_refused_when_defined(explanation, hook):
    with pytest.raises(TypeError, match=f"explanation '{explanation}' needs {hook}"):
        define("Unexplained", explanation=explanation, **_hooks())
    define("Explained", explanation=explanation, **{hook: lambda self: None}, **_hooks())


def test_a_mixture_kind_may_score_its_modes_itself():
    """``mixture`` needs the conditional mixtures, or the hook that replaces the whole step
    (``kde``/``knn`` score their modes on their own mixtures)."""
    with pytest.raises(TypeError, match="needs _conditional_mixtures or _mixture_replacements"):
        define("Unexplained", explanation="mixture", **_hooks())
    define("Scored", explanation="mixture", _mixture_replacements=lambda self: None, **_hooks())


def test_a_kind_with_an_unknown_explanation_is_refused_when_defined():
    with pytest.raises(TypeError, match="explanation must be one of"):
        define("Odd", explanation="oracle", **_hooks())


def test_a_kind_without_storage_is_refused_when_defined():
    body = _hooks()
    del body["_load_state"]
    with pytest.raises(TypeError, match=r"'nostorage' .*storage needs _state and _load_state"):
        define("NoStorage", **body)


def test_a_kind_with_an_unconstrained_parameter_is_refused_when_defined():
    def __init__(self, seed: int = 0, bins: int = 10) -> None:
        super(type(self), self).__init__(seed)
        self.bins = bins

    with pytest.raises(TypeError, match=r"no parameter_constraints for \['bins'\]"):
        define("Loose", __init__=__init__, **_hooks())
    table: Table = {"bins": [Interval(Integral, 2, None)]}
    cls = define("Tight", __init__=__init__, parameter_constraints=table, **_hooks())
    with pytest.raises(InvalidParameterError, match="tight: bins must be an integer ≥ 2, got 1"):
        cls(bins=1).fit(X)


def test_a_base_class_without_a_kind_is_not_checked():
    # like TorchDensity: the kinds below it are checked
    type("Base", (DensityModel,), {"kind": "", "explanation": "mixture"})


# ---------------------------------------------------------------------- GMM convergence
def test_gmm_warns_once_when_em_does_not_converge():
    rng = np.random.default_rng(0)
    X2 = np.concatenate([rng.normal(-3, 1, (150, 2)), rng.normal(3, 0.5, (150, 2))])
    with pytest.warns(ConvergenceWarning) as record:
        models.create("gmm", max_components=3, max_iter=1).fit(X2)
    ours = [w for w in record if issubclass(w.category, ConvergenceWarning)]
    assert len(ours) == 1
    message = str(ours[0].message)
    assert message.startswith("gmm: EM did not converge within max_iter=1 iterations for [")
    assert "raise max_iter" in message
    assert ours[0].filename == __file__  # points at the caller's fit


def test_gmm_does_not_warn_when_em_converges():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = models.create("gmm", max_components=2).fit(X)
    assert model.n_components_ in (1, 2)


# ---------------------------------------------------------------------- the documented table
def table_rows() -> list[str]:
    """docs/models.md's table of what each parameter may be, from the classes' tables."""
    classes: list[type] = []
    for cls in KINDS.values():
        for klass in reversed(cls.__mro__):
            if "parameter_constraints" in vars(klass) and klass not in classes:
                classes.append(klass)
    rows = []
    for klass in classes:
        kinds = [f"`{k}`" for k, cls in KINDS.items() if klass in cls.__mro__]
        label = "every kind" if klass is DensityModel else ", ".join(kinds)
        for name, constraints in vars(klass)["parameter_constraints"].items():
            rows.append(f"| {label} | `{name}` | {describe(constraints)} |")
    return rows


def test_docs_table_of_parameters_matches_the_code():
    docs = (REPO / "docs" / "models.md").read_text()
    missing = [row for row in table_rows() if row not in docs]
    assert not missing, "docs/models.md, ## Parameters: update these rows\n" + "\n".join(missing)
