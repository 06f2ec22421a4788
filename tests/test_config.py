"""Config: presets load, values are validated with errors naming key and file, round trip."""

from __future__ import annotations

import dataclasses

import pytest

from migradetect.config import (
    PRESETS,
    Config,
    config_from_dict,
    config_to_dict,
    load_config,
    presets_dir,
    save_config,
)
from migradetect.errors import ConfigError


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_name_their_marker(name):
    cfg = load_config(name)
    assert isinstance(cfg, Config)
    assert cfg.marker == name
    assert (presets_dir() / f"{name}.yaml").is_file()


def test_psf_sigma_from_optics_is_physical():
    cfg = config_from_dict({"optics": {"emission_wavelength_nm": 500.0, "numerical_aperture": 1.0}})
    # 0.21 * lambda / NA, in µm
    assert cfg.optics.psf_sigma == pytest.approx(0.105)
    cfg = config_from_dict({"optics": {"psf_sigma_um": 0.15}})
    assert cfg.optics.psf_sigma == pytest.approx(0.15)


def test_unknown_key_names_key_and_file(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("preset: wga\nmigrasomes:\n  max_diamter_um: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(f)
    msg = str(err.value)
    assert "migrasomes.max_diamter_um" in msg and str(f) in msg and "max_diameter_um" in msg


@pytest.mark.parametrize(
    ("section", "key", "value", "words"),
    [
        ("migrasomes", "min_diameter_um", -1.0, "out of range"),
        ("tracking", "max_gap_frames", "two", "wrong type"),
        ("tracking", "max_gap_frames", 1.5, "wrong type"),
        ("preprocess", "bleach_correction", "yes", "wrong type"),
        ("marker", None, "confocal", "not one of"),
    ],
)
def test_bad_values_are_clear_errors(tmp_path, section, key, value, words):
    data = {section: value} if key is None else {section: {key: value}}
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, source=tmp_path / "x.yaml")
    msg = str(err.value)
    assert words in msg
    assert (key or section) in msg and "x.yaml" in msg


def test_nan_is_not_a_float_parameter():
    with pytest.raises(ConfigError):
        config_from_dict({"migrasomes": {"threshold_snr": float("nan")}})


def test_int_is_accepted_for_float_and_coerced():
    cfg = config_from_dict({"migrasomes": {"max_diameter_um": 3}})
    assert isinstance(cfg.migrasomes.max_diameter_um, float)


def test_invalid_yaml_and_missing_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("cells: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="no such parameter file"):
        load_config(tmp_path / "nope.yaml")


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config("wga", overrides={"tracking": {"max_gap_frames": 4}})
    path = tmp_path / "mine.yaml"
    save_config(cfg, path)
    again = load_config(path)
    assert again == cfg
    assert again.tracking.max_gap_frames == 4


def test_config_is_frozen_and_dict_round_trips():
    cfg = load_config("tspan4_gfp")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.marker = "wga"  # type: ignore[misc]
    assert config_from_dict(config_to_dict(cfg)) == cfg
