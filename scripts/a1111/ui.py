"""The DreamBooth tab: its layout, and the handlers its buttons call.

Only the gradio subset that both gradio 3.41 (A1111) and 4.x (Forge) accept is used:
Blocks/Row/Column/Accordion, Textbox/Dropdown/Radio/Checkbox/Number/File/Button/HTML/
Gallery/State/Dataframe (type="array": rows as lists in both), `.click/.change` with
fn/inputs/outputs/queue/show_progress, and `gr.update`. Live updates need no gradio timer: javascript/dreambooth_core.js clicks the
hidden "poll" button while a run is active and the tab is visible; each click is one
short request that returns the run's state.

Handlers are module-level functions of plain values, so tests call them directly.
"""
from __future__ import annotations

from typing import Any

from dreambooth_core.config import PRESETS
from dreambooth_core.errors import UserError

from . import form, host, render
from .session import get_session

TAB_ID = "dreambooth_core"
POLL_ID = "dbc_poll"          # clicked by javascript/dreambooth_core.js
CANCEL_ID = "dbc_cancel"      # confirmed by javascript/dreambooth_core.js
STATUS_ID = "dbc_status"      # carries data-dbc-active for the script


# ---- handlers -----------------------------------------------------------------------------------

def run_outputs(view: dict[str, Any] | None, shown: dict[str, Any] | None, message: str = "") -> tuple:
    """(status, loss plot, gallery, log, shown) for one view of a run; the gallery is only
    re-sent when the run or its number of samples changed since `shown`."""
    import gradio as gr

    status = render.message_html(message) if message else render.status_html(view)
    if view is None:
        return status, "", gr.update(), "", shown or {}
    now = {"run": view["id"], "samples": len(view["samples"])}
    gallery = gr.update() if now == (shown or {}) else _images(view["samples"])
    curves = render.loss_svg(view["losses"]) + render.eval_svg(view.get("evaluations", []), view.get("best_step"))
    return status, curves, gallery, render.log_text(view), now


def _images(paths: list[str]) -> list:
    """Samples as PIL images: gradio 4 refuses to serve files outside its allowed folders."""
    from PIL import Image

    out = []
    for path in paths:
        try:
            with Image.open(path) as img:
                out.append(img.convert("RGB"))
        except OSError:
            continue
    return out


def start(*values: Any, resume: bool = False) -> tuple:
    """Train (or Resume) with the form's values; a bad input comes back as one red sentence."""
    try:
        config = form.build_config(form.Form.from_args(values), resume=resume)
        job_id = get_session().start(config)
    except UserError as exc:
        return run_outputs(None, None, message=str(exc))
    return run_outputs(get_session().view(job_id), None)


def plan(*values: Any) -> str:
    """The memory plan of the form's run on this machine (no weights are loaded), before Train;
    made by the worker Python, which has the libraries and the device the run will use."""
    from dreambooth_core.jobs.worker import plan_in_worker

    try:
        plan = plan_in_worker(form.build_config(form.Form.from_args(values), check_folder=False), host.worker_python())
    except UserError as exc:
        return render.message_html(str(exc))
    return render.plan_html(plan.describe())


def train(*values: Any) -> tuple:
    return start(*values, resume=False)


def resume(*values: Any) -> tuple:
    return start(*values, resume=True)


def poll(shown: dict[str, Any] | None) -> tuple:
    try:
        view = get_session().view()
    except UserError:  # the run was dropped from the (bounded) history
        view = None
    return run_outputs(view, shown)


def cancel() -> str:
    session = get_session()
    try:
        session.cancel()
    except UserError as exc:
        return render.message_html(str(exc))
    return render.status_html(session.view())


def refresh_checkpoints(current: str | None):
    import gradio as gr

    titles = host.refresh_checkpoints()
    return gr.update(choices=titles, value=current if current in titles else host.current_checkpoint())


def method_changed(method_label: str) -> list:
    """A method picks its starting preset, which fills prior preservation and Advanced."""
    import gradio as gr

    preset = form.METHODS[method_label][1]
    return [gr.update(choices=form.presets_for(method_label), value=preset), *preset_filled(preset)]


def preset_changed(preset: str) -> list:
    return preset_filled(preset) if preset in PRESETS else [_skip() for _ in range(2 + len(form.ADVANCED))]


def preset_filled(preset: str) -> list:
    values = form.preset_values(preset)
    return [values["prior"], values["num_class_images"], *(values[key] for key in form.ADVANCED)]


def _skip():
    import gradio as gr

    return gr.update()


def prompts_changed(token: str, class_noun: str) -> tuple[str, str]:
    return form.prompts(token, class_noun)


# ---- layout -------------------------------------------------------------------------------------

def _advanced_control(gr, key: str, value: Any):
    kind, text = form.field_type(key), form.label(key)
    if kind == "choice":
        return gr.Dropdown(label=text, choices=list(form.CHOICES[key]), value=value)
    if kind == "bool":
        return gr.Checkbox(label=text, value=value)
    return gr.Number(label=text, value=value, precision=0 if kind == "int" else None)


def build_tab():
    """The tab's gr.Blocks, with every event wired."""
    import gradio as gr

    preset = host.option(host.DEFAULT_PRESET, "lora")
    preset = preset if preset in PRESETS else "lora"
    method_label = form.method_for_preset(preset)
    start_values = form.preset_values(preset)
    token, class_noun = "zwx", ""
    instance_prompt, class_prompt = form.prompts(token, class_noun)
    c: dict[str, Any] = {}

    with gr.Blocks(analytics_enabled=False) as tab:
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                with gr.Row():
                    c["checkpoint"] = gr.Dropdown(label="Base checkpoint", choices=host.checkpoint_titles(),
                                                  value=host.current_checkpoint(), elem_id="dbc_checkpoint", scale=8)
                    refresh = gr.Button("🔄", elem_id="dbc_refresh_checkpoints", scale=1, min_width=40)
                c["method"] = gr.Radio(label="Method", choices=list(form.METHODS), value=method_label, elem_id="dbc_method")
                with gr.Row():
                    c["images_dir"] = gr.Textbox(label="Instance images folder", placeholder="/path/to/your/photos",
                                                 elem_id="dbc_images_dir", scale=2)
                    c["uploads"] = gr.File(label="…or upload them", file_count="multiple", file_types=["image"],
                                           elem_id="dbc_uploads", scale=1)
                with gr.Row():
                    c["token"] = gr.Textbox(label="Token (a rare word for your subject)", value=token, elem_id="dbc_token")
                    c["class_noun"] = gr.Textbox(label="Class noun", placeholder="dog, person, car…", value=class_noun,
                                                 elem_id="dbc_class_noun")
                with gr.Row():
                    c["instance_prompt"] = gr.Textbox(label="Instance prompt", value=instance_prompt,
                                                      elem_id="dbc_instance_prompt")
                    c["class_prompt"] = gr.Textbox(label="Class prompt", value=class_prompt, elem_id="dbc_class_prompt")
                with gr.Row():
                    c["prior"] = gr.Checkbox(label="Prior preservation (keeps the class looking like itself)",
                                             value=start_values["prior"], elem_id="dbc_prior")
                    c["num_class_images"] = gr.Number(label="Class images", value=start_values["num_class_images"],
                                                      precision=0, elem_id="dbc_num_class_images")
                with gr.Row():
                    c["preset"] = gr.Dropdown(label="Preset", choices=form.presets_for(method_label), value=preset,
                                              elem_id="dbc_preset")
                    c["output_name"] = gr.Textbox(label="Output name", placeholder="default: token_class",
                                                  elem_id="dbc_output_name")
                    c["overwrite"] = gr.Checkbox(label="Overwrite a file of that name", value=False, elem_id="dbc_overwrite")
                with gr.Accordion("Advanced", open=False, elem_id="dbc_advanced"):
                    for row_start in range(0, len(form.ADVANCED), 4):
                        with gr.Row():
                            for key in form.ADVANCED[row_start:row_start + 4]:
                                c[key] = _advanced_control(gr, key, start_values[key])
                    c[form.SETTINGS] = gr.Textbox(label=form.SETTINGS_LABEL, lines=6, placeholder=form.SETTINGS_PLACEHOLDER,
                                                  elem_id="dbc_settings_toml")
                    c[form.CONCEPTS] = gr.Dataframe(
                        label="Concepts (several subjects or styles in one run; empty: the fields above are the one concept)",
                        headers=[header for header, _, _ in form.CONCEPT_COLUMNS],
                        datatype=[kind for _, _, kind in form.CONCEPT_COLUMNS],
                        col_count=(len(form.CONCEPT_COLUMNS), "fixed"), row_count=(1, "dynamic"), type="array",
                        interactive=True, elem_id="dbc_concepts")
                with gr.Row():
                    train_button = gr.Button("Train", variant="primary", elem_id="dbc_train")
                    cancel_button = gr.Button("Cancel", variant="stop", elem_id=CANCEL_ID)
                    resume_button = gr.Button("Resume", elem_id="dbc_resume")
                    plan_button = gr.Button("Plan memory", elem_id="dbc_plan")
                plan_view = gr.HTML(value="", elem_id="dbc_plan_view")
            with gr.Column(scale=2):
                status = gr.HTML(value=render.status_html(None), elem_id=STATUS_ID)
                loss = gr.HTML(value="", elem_id="dbc_loss")
                gallery = gr.Gallery(label="Samples", columns=4, height=320, object_fit="contain", elem_id="dbc_samples")
                log = gr.Textbox(label="Log", lines=12, max_lines=12, interactive=False, elem_id="dbc_log")
        shown = gr.State({})
        poll_button = gr.Button("poll", elem_id=POLL_ID)

        inputs = [c[key] for key in form.FORM_KEYS]
        run_views = [status, loss, gallery, log, shown]
        filled = [c["prior"], c["num_class_images"], *(c[key] for key in form.ADVANCED)]
        train_button.click(fn=train, inputs=inputs, outputs=run_views)
        resume_button.click(fn=resume, inputs=inputs, outputs=run_views)
        plan_button.click(fn=plan, inputs=inputs, outputs=[plan_view])
        cancel_button.click(fn=cancel, inputs=[], outputs=[status], queue=False)
        poll_button.click(fn=poll, inputs=[shown], outputs=run_views, queue=False, show_progress="hidden")
        refresh.click(fn=refresh_checkpoints, inputs=[c["checkpoint"]], outputs=[c["checkpoint"]], queue=False)
        c["method"].change(fn=method_changed, inputs=[c["method"]], outputs=[c["preset"], *filled], queue=False)
        c["preset"].change(fn=preset_changed, inputs=[c["preset"]], outputs=filled, queue=False)
        for source in (c["token"], c["class_noun"]):
            source.change(fn=prompts_changed, inputs=[c["token"], c["class_noun"]],
                          outputs=[c["instance_prompt"], c["class_prompt"]], queue=False)
    return tab


def on_ui_tabs():
    return [(build_tab(), "DreamBooth", TAB_ID)]
