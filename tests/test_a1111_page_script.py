"""javascript/dreambooth_core.js on a stand-in page (needs node): the hidden poll button is
clicked every 1.5 s while a run is active, every 10 s otherwise, never while the tab is
hidden; a declined "Cancel?" never reaches gradio's handler."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run the page script")
def test_polling_cadence_and_cancel_confirmation():
    done = subprocess.run(["node", str(REPO / "tests" / "a1111_fake" / "page.js"), str(REPO / "javascript" / "dreambooth_core.js")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"idle_polls_in_10s": 1, "active_polls_in_6s": 4, "hidden_tab_polls": 0,
                                       "declined_cancel_blocked": True, "confirmed_cancel_blocked": False}
