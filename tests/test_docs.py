"""The README documents every setting the worker reads."""

from tests.conftest import REPO
from worker.settings import Settings

README = (REPO / "README.md").read_text()


def test_every_setting_has_a_row_in_the_configuration_table() -> None:
    missing = [
        name for name in Settings.model_fields
        if f"| `{name.upper()}` | `--{name.replace('_', '-')}` |" not in README
    ]
    assert missing == []
