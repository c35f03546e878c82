import threading

import pytest

from dreambooth_core.errors import Cancelled
from dreambooth_core.events import (
    Artifact, CancelToken, Done, Error, Log, Preview, Progress, Started, event_from_json,
)


def test_every_event_round_trips_through_json():
    events = [
        Started(run_dir="/r", method="lora", total_steps=10),
        Progress(phase="train", step=3, total=10, eta_seconds=1.5, loss=0.25, lr=1e-4, elapsed_seconds=0.7),
        Preview(step=3, path="/r/samples/3.png", prompt="a photo of zwx dog"),
        Artifact(kind="lora", path="/r/outputs/zwx_dog.safetensors", name="zwx_dog", prompt_hint="<lora:zwx_dog:0.8>"),
        Log(level="warning", message="token is a common word"),
        Error(message="boom", user_error=False, traceback="tb"),
        Done(status="completed", run_dir="/r", step=10, artifacts=[{"kind": "lora", "path": "p"}]),
    ]
    for ev in events:
        back = event_from_json(ev.to_json())
        assert type(back) is type(ev) and back == ev


def test_unknown_event_type_becomes_a_log_line():
    ev = event_from_json('{"type": "mystery", "x": 1}')
    assert isinstance(ev, Log) and "mystery" in ev.message


def test_cancel_token_from_another_thread():
    token = CancelToken()
    token.check()
    t = threading.Thread(target=token.cancel)
    t.start()
    t.join()
    assert token.cancelled
    with pytest.raises(Cancelled):
        token.check()
