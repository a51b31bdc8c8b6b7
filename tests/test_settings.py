"""Environment settings: one place, validated, nothing created by viewers."""

from __future__ import annotations

import pytest

from hessian_lens import settings


@pytest.mark.parametrize("value", ["inf", "abc", "-1", "0", "nan", "1e12"])
def test_bad_upload_limits_are_settings_errors(monkeypatch, value):
    monkeypatch.setenv(settings.UPLOAD_LIMIT_ENV, value)
    with pytest.raises(settings.SettingsError, match="HESSIAN_LENS_MAX_UPLOAD_MB"):
        settings.check_all()


def test_limits_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(settings.UPLOAD_LIMIT_ENV, "0.5")
    assert settings.upload_limit_bytes() == 2**19
    monkeypatch.delenv(settings.UPLOAD_LIMIT_ENV)
    assert settings.upload_limit_bytes() == 500 * 2**20
    monkeypatch.setenv(settings.CACHE_ENV, str(tmp_path / "cache"))
    assert settings.cache_dir() == tmp_path / "cache"
    assert not (tmp_path / "cache").exists()  # a viewer never creates it
    assert settings.cache_dir(create=True).is_dir()
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(settings.CACHE_ENV, str(tmp_path / "file" / "cache"))
    with pytest.raises(settings.SettingsError, match="cannot be created"):
        settings.cache_dir(create=True)
