"""Reading a study file: TOML in, a validated :class:`~balance.config.StudyConfig` out."""

from __future__ import annotations

from pathlib import Path

from balance.config import ConfigError, StudyConfig, build


def load_study_file(path: Path) -> StudyConfig:
    """Read and validate a TOML study file; every problem is reported at once.

    Raises:
        ConfigError: the file is missing, not TOML, or invalid (one line per problem).
    """
    import tomllib

    try:
        text = Path(path).read_text()
    except OSError as error:
        raise ConfigError(f"study: cannot read {path}: {error.strerror}") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"study: {path} is not valid TOML: {error}") from None
    values.setdefault("name", Path(path).stem)
    return build(StudyConfig, values)
